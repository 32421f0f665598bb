"""Command line: `python -m vitlib <command> ...` (also installed as `vitlib`).

    python -m vitlib train --profile smoke --experiment probe
    python -m vitlib train --profile full --experiment finetune --data data/dogs-vs-cats/train \
        --weights data/weights/jx_vit_base_p16_224-80ecf9dd.pth --resume
    python -m vitlib train --profile cpu --experiment finetune --set finetune.epochs=2
    python -m vitlib variants --profile cpu --data ../dogs-vs-cats-128
    python -m vitlib data inspect DIR         # layout, counts per split and class, skipped files
    python -m vitlib data download --source petimages --dest data/
    torchrun --nproc_per_node=4 -m vitlib train --profile full --experiment finetune  # 4 GPUs

Each command is one `_add_<command>` that registers its arguments and handler; main() parses
and dispatches. Profiles live only in vitlib/config.py; `--set key=value` goes through
`get_config` like a notebook's OVERRIDES, and settings are checked before any work.

Every failure ends in one line on stderr, `vitlib <command>: error: <message>`, never a
traceback (`--debug` shows it): exit status 2 for bad input (a vitlib error, whose message says
what to do, or a ValueError, TypeError or OSError), 1 for anything else (a bug), 130 for Ctrl-C.

Under torchrun, `train` is one of several processes (`vitlib.distributed.session`): every rank
trains on its share of each batch, rank 0 alone logs below warnings, prints and writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from vitlib import distributed
from vitlib.config import PROFILES, Config, DataConfig, get_config
from vitlib.errors import ExperimentError, VitlibError
from vitlib.experiments import EXPERIMENTS, check_inputs, run_experiment
from vitlib.report import default_profile, run_report
from vitlib.variants import run_variants

log = logging.getLogger("vitlib")

# Exit statuses: bad input (as argparse's), a bug, Ctrl-C (128 + SIGINT, as shells report it).
BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130
DEBUG_HINT = "run again with --debug for the traceback"


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the command, return its exit status."""
    parser = argparse.ArgumentParser(
        prog="vitlib", description="A Vision Transformer and the Dogs vs Cats transfer study."
    )
    parser.add_argument(
        "--debug", action="store_true", help="let errors end with their full traceback"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_variants(commands)
    _add_pretrain(commands)
    _add_report(commands)
    _add_data(commands)
    _add_explain(commands)
    _add_sweep(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command != "train" and distributed.launched_world_size() > 1:
            raise ExperimentError(
                f"only `vitlib train` runs as several processes (torchrun); run `vitlib "
                f"{args.command}` as one"
            )
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        again = "; continue it with --resume" if args.command == "train" else ""
        print(f"vitlib {args.command}: interrupted{again}", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        status, message = _failure(exc)
        print(f"vitlib {args.command}: error: {message}", file=sys.stderr)
        return status


def _failure(exc: Exception) -> tuple[int, str]:
    """The exit status and message of an error: a vitlib error's own message (it says what to
    download or pass; a traceback would bury that); for others, one line with their type."""
    if isinstance(exc, VitlibError):
        return BAD_INPUT, str(exc)
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    bad_input = isinstance(exc, ValueError | TypeError | OSError)
    return (BAD_INPUT if bad_input else FAILED), f"{text} ({DEBUG_HINT})"


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """["finetune.epochs=2", "model.pretrained=null"] -> {"finetune.epochs": 2, ...}.

    Values are read as JSON (numbers, true/false, null, lists) and otherwise kept as text.
    """
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text
    return overrides


def _add_profile_arguments(parser: argparse.ArgumentParser, default: str | None = "smoke") -> None:
    parser.add_argument("--profile", default=default, choices=sorted(PROFILES))
    parser.add_argument("--data", metavar="DIR", help="image folder (sets data.root)")
    parser.add_argument(
        "--weights", metavar="PATH|TAG", help="weights file or timm tag (model.pretrained)"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set finetune.epochs=2 (repeatable)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="never download a missing data set; fail at once saying what to fetch",
    )
    _add_debug(parser)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """--debug after the command too; SUPPRESS keeps a --debug given before it."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def _overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """--set, --data, --weights and --no-download as get_config overrides; paths made
    absolute."""
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None
    if args.data:
        overrides.setdefault("data.source", "folder")
        overrides["data.root"] = str(Path(args.data).expanduser().resolve())
    if args.weights:
        weights = Path(args.weights).expanduser()
        overrides["model.pretrained"] = str(weights.resolve()) if weights.exists() else args.weights
    if args.no_download:
        overrides["data.allow_download"] = False
    return overrides


def _config_from_args(args: argparse.Namespace) -> Config:
    try:
        return get_config(args.profile, _overrides_from_args(args))
    except ValueError as exc:  # an unknown key
        raise ExperimentError(str(exc)) from None


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="run one experiment: zero-shot, probe or finetune",
        description="Run one experiment and write runs/<profile>/<experiment>/.",
    )
    _add_profile_arguments(parser)
    parser.add_argument("--experiment", required=True, choices=EXPERIMENTS)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last epoch's checkpoint"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    with distributed.session() as world:  # one of torchrun's processes, or a plain one
        main_rank = distributed.is_main()
        progress = not args.quiet and main_rank
        if world > 1:
            _join_run(cfg, args.experiment, progress=progress)
        metrics = run_experiment(cfg, args.experiment, resume=args.resume, progress=progress)
    if not main_rank:
        return 0
    where = cfg.run_dir / args.experiment
    if not metrics["applicable"]:
        print(f"{cfg.profile}/{args.experiment}: not applicable: {metrics['reason']} ({where})")
        return 0
    print(
        f"{cfg.profile}/{args.experiment}: val accuracy {metrics['val_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['minutes']:.1f} min -> {where}"
    )
    return 0


def _join_run(cfg: Config, experiment: str, *, progress: bool) -> None:
    """Before one of several processes trains: the others log warnings only; the global batch
    must split evenly (checked before the data loads); rank 0 checks the inputs first, so a
    missing data set is downloaded once."""
    if not distributed.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    if experiment in ("probe", "finetune"):
        key = f"{experiment}.batch_size"
        distributed.check_batch_size(getattr(cfg, experiment).batch_size, key)
    with distributed.main_first():
        check_inputs(cfg, experiment, progress=progress)


def _add_variants(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "variants",
        help="train the ViT variants from scratch and compare them",
        description="Train each of the profile's variants (variants.names) from scratch under "
        "one budget, resuming where a run stopped, and write runs/<profile>/variants/.",
    )
    _add_profile_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_variants)


def _variants(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    rows = run_variants(cfg, progress=not args.quiet)
    print(f"{'variant':<12} {'val acc':>8} {'test acc':>8} {'minutes':>8} {'params':>10}")
    for r in rows:
        print(
            f"{r['variant']:<12} {r['val_accuracy']:>8.4f} {r['test_accuracy']:>8.4f} "
            f"{r['train_minutes']:>8.1f} {r['params']:>10,}"
        )
    print(f"-> {cfg.run_dir / 'variants' / 'comparison.csv'}")
    return 0


def _add_pretrain(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="MAE pre-training of the profile's ViT, then optionally the label-efficiency study",
        description="Pre-train cfg.model's architecture as a masked autoencoder on the train "
        "split (labels ignored) and write runs/<profile>/pretrain/ (encoder.safetensors, timm "
        "layout); with --efficiency, then probe and fine-tune every backbone at every label "
        "count (runs/<profile>/efficiency/, finished runs read back).",
    )
    _add_profile_arguments(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last epoch's checkpoint"
    )
    parser.add_argument("--efficiency", action="store_true", help="then the label study")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from vitlib.efficiency import efficiency_table, run_efficiency
    from vitlib.pretrain import run_pretraining

    cfg = _config_from_args(args)
    metrics = run_pretraining(cfg, resume=args.resume, progress=not args.quiet)
    print(
        f"{cfg.profile}/pretrain: {metrics['epochs']} epochs of {metrics['images']} images, "
        f"held-out masked-patch loss {metrics['val_loss']:.4f}, {metrics['minutes']:.1f} min "
        f"-> {metrics['encoder']}"
    )
    if args.efficiency:
        print(efficiency_table(run_efficiency(cfg, progress=not args.quiet)))
        print(f"-> {cfg.run_dir / 'efficiency' / 'table.csv'}")
    return 0


def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="run every notebook and build runs/<profile>/report.html and summary.md",
        description="Execute notebooks/01-08 with papermill, save every figure under "
        "figures/<profile>/ and build runs/<profile>/report.html and summary.md.",
    )
    _add_profile_arguments(parser, default=None)
    parser.add_argument(
        "--project-dir", default=".", help="folder holding notebooks/ (default: here)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="notebooks executed at once (default: the profile's report_jobs; 2 for smoke)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    chosen = args.profile is None
    if chosen:
        args.profile = default_profile()
    overrides = _overrides_from_args(args)
    get_config(args.profile, overrides)  # bad settings fail here, before papermill starts
    if chosen:
        log.warning(
            "=== no --profile given: using %r (%s) ===",
            args.profile,
            "a CUDA GPU is present" if args.profile == "full" else "no CUDA GPU found",
        )
    html = run_report(
        args.profile,
        overrides=overrides,
        project_dir=args.project_dir,
        progress=not args.quiet,
        jobs=args.jobs,
    )
    print(f"report: {html}\nsummary: {html.with_name('summary.md')}")
    return 0


def _add_data(commands: argparse._SubParsersAction) -> None:
    from vitlib.download import SOURCES

    parser = commands.add_parser("data", help="inspect a photo folder or download a photo set")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = sub.add_parser("inspect", help="recognise a folder, write its manifest, list skipped files")
    p.add_argument("folder")
    p.add_argument("--profile", choices=sorted(PROFILES), help="split sizes and cache from here")
    p.add_argument("--split-sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir")
    p.add_argument("--max-listed", type=int, default=50, help="skipped files printed")
    _add_debug(p)
    p.set_defaults(handler=_data_inspect)
    d = sub.add_parser("download", help="download and unpack a public cat/dog photo set")
    d.add_argument("--source", required=True, choices=sorted(SOURCES))
    d.add_argument("--dest", default="data")
    d.add_argument("--url", help="another URL for the same file (a mirror)")
    _add_debug(d)
    d.set_defaults(handler=_data_download)


def _data_inspect(args: argparse.Namespace) -> int:
    from vitlib.manifest import build_manifest, describe

    data = get_config(args.profile).data if args.profile else DataConfig()
    manifest = build_manifest(
        args.folder,
        split_sizes=args.split_sizes or data.split_sizes,
        seed=args.seed,
        cache_dir=args.cache_dir or data.cache_dir,
    )
    print(describe(manifest, max_listed=args.max_listed))
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from vitlib.download import download_source

    folder = download_source(args.source, args.dest, url=args.url)
    print(f"{args.source}: images in {folder}; use them with --data {folder}")
    return 0


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep",
        help="a grid or search of settings on Optuna, shared by every worker of one storage",
        description="Run a sweep's trials (each an ordinary run in runs/<profile>/sweeps/<name>/"
        "<trial>/; objective: validation accuracy) until none is left. Several workers with the "
        "same --name and --storage share the trials; a killed sweep resumes where it stopped.",
    )
    _add_profile_arguments(parser)
    parser.add_argument("--experiment", default="finetune", choices=EXPERIMENTS[1:])
    parser.add_argument("--name", default="sweep", help="the sweep's name (default: sweep)")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...",
        help="one swept setting and its values, e.g. --grid finetune.lr=1e-4,3e-4 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--search", action="append", default=[], metavar="KEY=KIND:LOW:HIGH",
        help="a setting searched by TPE, KIND log, float or int, e.g. finetune.lr=log:1e-5:1e-2",
    )  # fmt: skip
    parser.add_argument("--trials", type=int, help="trials of a --search, all workers together")
    parser.add_argument(
        "--storage", metavar="URL|FILE",
        help="sqlite:///FILE, postgresql://..., or a journal file (default: "
        "runs/<profile>/sweeps/<name>/optuna.journal)",
    )  # fmt: skip
    parser.add_argument("--prune", action="store_true", help="stop hopeless trials (median rule)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from vitlib.sweep import format_rows, parse_space, run_sweep

    overrides = _overrides_from_args(args)
    space = parse_space(args.profile, grid=args.grid, search=args.search, trials=args.trials,
                        overrides=overrides)  # fmt: skip
    rows = run_sweep(args.profile, space, name=args.name, experiment=args.experiment,
                     overrides=overrides, storage=args.storage, prune=args.prune,
                     progress=not args.quiet)  # fmt: skip
    print(format_rows(rows, [*space.grid, *space.search]))
    return 0


def _add_explain(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="where a trained model looks in your photos: probabilities and rollout figures",
        description="Print each photo's class probabilities and write one figure per photo: "
        "the photo, attention rollout and the class-specific gradient rollouts.",
    )
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files or folders")
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--run", metavar="DIR", help="a finished run (default: runs/<profile>/finetune)"
    )
    source.add_argument(
        "--weights", metavar="PATH|TAG", help="a weights file or timm tag, with its own head"
    )
    parser.add_argument("--out", metavar="DIR", help="figures here (default: <run>/explain)")
    _add_debug(parser)
    parser.set_defaults(handler=_explain)


def _explain(args: argparse.Namespace) -> int:
    from vitlib.explain import explain_photos, find_photos, load_model

    photos = find_photos(args.photos)  # every file checked before the model loads
    cfg = get_config(args.profile)
    model = load_model(cfg, run=args.run, weights=args.weights)
    run = Path(args.run) if args.run else cfg.run_dir / "finetune"
    out = Path(args.out) if args.out else (cfg.run_dir if args.weights else run) / "explain"
    for result in explain_photos(model, photos, out):
        top = ", ".join(f"{name} {p:.3f}" for name, p in result.top(5))
        print(f"{result.photo}: {top} -> {result.figures[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
