"""Command line: `python -m vitlib <command> ...` (also installed as `vitlib`).

    python -m vitlib train --profile smoke --experiment probe
    python -m vitlib train --profile full --experiment finetune --data data/dogs-vs-cats/train \
        --weights data/weights/jx_vit_base_p16_224-80ecf9dd.pth --resume
    python -m vitlib train --profile cpu --experiment finetune --set finetune.epochs=2

Each command is one `_add_<command>` that registers its arguments and handler; main() parses
and dispatches. Profiles live only in vitlib/config.py; `--set key=value` goes through
`get_config` like a notebook's OVERRIDES.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from vitlib.checkpoints import CheckpointError
from vitlib.config import PROFILES, Config, get_config
from vitlib.train import EXPERIMENTS, ExperimentError, run_experiment

log = logging.getLogger("vitlib")


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the command, return its exit status."""
    parser = argparse.ArgumentParser(
        prog="vitlib", description="A Vision Transformer and the Dogs vs Cats transfer study."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ExperimentError, CheckpointError, FileNotFoundError) as exc:
        # These messages say what to download or pass; a traceback would bury that.
        print(f"vitlib {args.command}: error: {exc}", file=sys.stderr)
        return 2


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


def _add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
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


def _config_from_args(args: argparse.Namespace) -> Config:
    try:
        overrides = parse_overrides(args.set)
        if args.data:
            overrides.setdefault("data.source", "folder")
            overrides["data.root"] = args.data
        if args.weights:
            overrides["model.pretrained"] = args.weights
        return get_config(args.profile, overrides)
    except ValueError as exc:  # an unknown key or a malformed --set
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
    metrics = run_experiment(cfg, args.experiment, resume=args.resume, progress=not args.quiet)
    where = cfg.run_dir / args.experiment
    if not metrics["applicable"]:
        print(f"{cfg.profile}/{args.experiment}: not applicable: {metrics['reason']} ({where})")
        return 0
    print(
        f"{cfg.profile}/{args.experiment}: val accuracy {metrics['val_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['minutes']:.1f} min -> {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
