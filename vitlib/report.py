"""The study as one command: execute the notebooks with papermill, then one HTML and a summary.

    python -m vitlib report --profile smoke        # or: make report

Writes runs/<profile>/notebooks/*.ipynb (executed), figures/<profile>/*.png|svg (saved by the
notebooks), runs/<profile>/report.html (all notebooks, code hidden, images embedded) and
runs/<profile>/summary.md (accuracies beside the study's, provenance of weights and data).

The HTML opens with a table of contents and the results: each experiment's test accuracy with
its 95% Wilson interval beside the study's, and McNemar's paired test of the frozen against the
fine-tuned model on the same test images (`vitlib.stats`, from each run's predictions.csv).
Progress bars of the notebooks' kernels go to this process's terminal, not into the cells
(`KERNEL_PROGRESS`); every image gets alternative text, and widgets (which need a live kernel)
show their static fallback.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

from vitlib.config import Config, get_config
from vitlib.errors import ReportError
from vitlib.experiments import EXPERIMENTS, check_inputs
from vitlib.files import atomic_write
from vitlib.runs import PREDICTIONS, RunDir
from vitlib.stats import mcnemar, wilson_interval

__all__ = [
    "NOTEBOOKS",
    "STUDY_ACCURACY",
    "ReportError",
    "build_html",
    "default_profile",
    "PerImage",
    "read_correct",
    "results_markdown",
    "run_report",
    "write_summary",
]

log = logging.getLogger(__name__)

NOTEBOOKS = (
    "01_model_walkthrough",
    "02_frozen_baseline",
    "03_fine_tune",
    "04_position_embedding",
    "05_attention",
    "06_variants",
    "07_pretraining",
    "08_sweep",
)
# The study's test accuracies (report section 3.3); it had no zero-shot baseline.
STUDY_ACCURACY = {"zero-shot": None, "probe": 0.965, "finetune": 0.9865}
EXPERIMENT_TITLES = {
    "zero-shot": "zero-shot (ImageNet head, no training)",
    "probe": "frozen backbone, linear head",
    "finetune": "full fine-tune",
}
STUDY_TEST_IMAGES = 2000  # the study's test split (its section 3.1)
# The notebooks that read another's runs (ensure_experiment/ensure_trained): when both are in one
# report, each starts after those, so notebooks run at once never train the same run twice.
DEPENDS = {
    "03_fine_tune": ("02_frozen_baseline",),
    "04_position_embedding": ("03_fine_tune",),
    "05_attention": ("03_fine_tune",),
}

# Run first in each notebook's kernel (IPython's exec_lines), before any vitlib import: tqdm.auto
# becomes the terminal bar, drawn on the stream the kernel inherited from this process, so bars
# show where `make report` runs and leave no frozen widget or text in the cells. With the
# kernel's fd capture off, that stream is this process's stderr, not the cell's.
# The names it needs are bound as defaults, so a cell's `from tqdm.auto import tqdm` (which
# rebinds `tqdm` in the same namespace) cannot break it.
KERNEL_PROGRESS = (
    "import sys as _sys, tqdm.auto as _auto, tqdm.std as _std; "
    "_auto.tqdm = type('tqdm', (_std.tqdm,), {'__init__': lambda self, *a, file=None, "
    "_init=_std.tqdm.__init__, _err=_sys.__stderr__, **k: _init(self, *a, file=file or _err, "
    "**k)}); del _sys, _auto, _std"
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# nbconvert's lab page without the scripts it loads from the network (require.js, MathJax): the
# report has no widgets or TeX (the notebooks write math as text), and opens offline with no
# failed request. Its embedded images carry their alternative text (the lab template drops it).
REPORT_TEMPLATE = "vitlib_report.html.j2"
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- macro image(output, mime) -%}
<div class="jp-RenderedImage jp-OutputArea-output">
<img src="data:{{ mime }};base64,{{ output.data[mime] | escape_html }}"
alt="{{ output | get_metadata('alt', mime) | escape_html }}">
</div>
{%- endmacro -%}
{%- block data_png scoped -%}{{ image(output, 'image/png') }}{%- endblock data_png -%}
{%- block data_jpg scoped -%}{{ image(output, 'image/jpeg') }}{%- endblock data_jpg -%}
"""


def run_report(
    profile: str,
    *,
    overrides: dict[str, Any] | None = None,
    project_dir: str | Path = ".",
    notebooks: tuple[str, ...] = NOTEBOOKS,
    progress: bool = True,
    jobs: int | None = None,
) -> Path:
    """Execute `notebooks` (names in project_dir/notebooks/); return report.html.

    `jobs` notebooks run at once (default: the profile's `report_jobs`), each after those it
    reads from (`DEPENDS`). Inputs (data folder, weights) are checked first, so a `full` run
    without them fails in seconds. A failing notebook stops the run with a ReportError naming
    the notebook and cell, once the notebooks already running have finished.
    """
    project_dir = Path(project_dir).resolve()
    # papermill writes parameters as Python literals but turns a tuple into its string: JSON's
    # types (lists) go through unchanged.
    overrides = json.loads(json.dumps(overrides or {}))
    cfg = get_config(profile, overrides, root=project_dir)
    jobs = min(jobs or cfg.report_jobs, len(notebooks))
    if jobs < 1:
        raise ReportError(f"expected jobs >= 1 and a notebook to run, got {jobs}, {notebooks}")
    check_inputs(cfg, "probe", progress=progress)  # the data and weights first: the usual miss
    folder = project_dir / "notebooks"
    missing = [n for n in notebooks if not (folder / f"{n}.ipynb").is_file()]
    if missing:
        raise ReportError(
            f"notebooks not found in {folder}: {missing}; expected names without .ipynb, "
            f"e.g. {NOTEBOOKS[0]!r}: pass --project-dir, the folder that holds notebooks/"
        )
    started = time.perf_counter()
    out_dir = cfg.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None  # the cores, shared
    if jobs > 1:
        _prepare_shared_inputs(cfg, progress=progress)
    parameters = {
        "PROFILE": profile,
        "OVERRIDES": overrides,
        "PROJECT_DIR": str(project_dir),
        # Two kernels' bars on one terminal line garble each other: one bar of notebooks then.
        "PROGRESS": progress and jobs == 1,
    }

    def execute(name: str) -> Path:
        return _execute(folder / f"{name}.ipynb", out_dir, parameters,
                        progress=progress and jobs == 1, threads=threads)  # fmt: skip

    executed = run_in_order(notebooks, execute, jobs=jobs, progress=progress and jobs > 1)
    html = build_html(
        executed,
        cfg.run_dir / "report.html",
        title=f"vitlib study ({profile})",
        header=results_markdown(cfg),
    )
    write_summary(cfg, minutes=(time.perf_counter() - started) / 60)
    log.info("report: %s", html)
    return html


def _execute(
    source: Path, out_dir: Path, parameters: dict[str, Any], *, progress: bool, threads: int | None
) -> Path:
    """Execute one notebook with papermill into out_dir; a failure as a ReportError."""
    import papermill

    target = out_dir / source.name
    log.info("running %s (profile %s)", source.name, parameters["PROFILE"])
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=parameters,
            cwd=str(source.parent),
            kernel_name="python3",
            progress_bar=progress,
            extra_arguments=kernel_arguments(threads),
        )
    except papermill.PapermillExecutionError as exc:
        first_line = (exc.source or "").strip().splitlines()[:1] or [""]
        raise ReportError(
            f"{source.name} failed in cell [{exc.exec_count}] `{first_line[0]}`: "
            f"{exc.ename}: {exc.evalue}\n"
            f"The executed notebook with the full traceback is {target}"
        ) from None
    return target


def run_in_order(
    names: tuple[str, ...] | list[str],
    run: Callable[[str], Any],
    *,
    jobs: int = 1,
    depends: dict[str, tuple[str, ...]] = DEPENDS,
    progress: bool = False,
) -> list[Any]:
    """`run(name)` for every name, at most `jobs` at once (threads), each started, in the order
    of `names`, once the names it depends on that are among `names` have finished; the results
    in the order of `names`. The first failure starts nothing more and is raised once the runs
    in flight end."""
    from tqdm.auto import tqdm

    unknown = {d for n in names for d in depends.get(n, ())} - set(names)
    wanted = {n: tuple(d for d in depends.get(n, ()) if d not in unknown) for n in names}
    pending, running, results = list(names), {}, {}
    with (
        ThreadPoolExecutor(max_workers=jobs) as pool,
        tqdm(total=len(names), desc="notebooks", unit="nb", disable=not progress) as bar,
    ):
        while pending or running:
            ready = [n for n in pending if all(d in results for d in wanted[n])]
            for name in ready[: jobs - len(running)]:
                pending.remove(name)
                running[pool.submit(run, name)] = name
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()  # a failure: the pool waits
                bar.update()
    return [results[n] for n in names]


def _prepare_shared_inputs(cfg: Config, *, progress: bool) -> None:
    """Build what notebooks running at once would otherwise build together: the data set (a
    synthetic one is generated) and its decoded cache at the model's input size."""
    from vitlib.checkpoints import build_model
    from vitlib.data import load_splits

    pretrained_cfg = build_model(cfg.model, seed=cfg.seed).pretrained_cfg
    load_splits(cfg.data, pretrained_cfg, seed=cfg.seed, progress=progress)


def kernel_arguments(threads: int | None = None) -> list[str]:
    """The notebook kernel's command-line settings: progress to the terminal (see
    `KERNEL_PROGRESS`) and, given `threads`, torch's threads per kernel (kernels run at once
    that each take every core spin against each other)."""
    lines = KERNEL_PROGRESS
    if threads:
        lines += f"; import torch as _torch; _torch.set_num_threads({int(threads)}); del _torch"
    return ["--IPKernelApp.capture_fd_output=False", f"--IPKernelApp.exec_lines={lines}"]


def build_html(
    executed: list[Path], target: Path, *, title: str, header: str | None = None
) -> Path:
    """Concatenate executed notebooks into one self-contained HTML page, code hidden.

    The page opens with `title`, a table of contents linking each notebook's section and
    `header` (Markdown, e.g. `results_markdown`). Widget views are left out (they need a live
    kernel and scripts from the network; an output that has one also has a static fallback),
    and every image without alternative text gets its figure's description.
    """
    import nbformat  # here, not at import: notebooks 02-03 import this module for its numbers
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    merged = nbformat.v4.new_notebook()
    contents = []
    for path in executed:
        cells = nbformat.read(path, as_version=4).cells
        anchor = f"section-{_slug(path.stem)}"
        heading = next((c for c in cells if c.cell_type == "markdown"), None)
        if heading is not None:
            heading.source = f'<a id="{anchor}"></a>\n\n{heading.source}'
            contents.append(f"- [{_plain(_heading_text(heading.source)) or path.stem}](#{anchor})")
        merged.cells.extend(cells)
    _static_outputs(merged.cells)
    top = [f"# {title}", "", "## Contents", "", *contents, "", header or ""]
    merged.cells.insert(0, nbformat.v4.new_markdown_cell("\n".join(top)))
    merged.metadata["title"] = title
    exporter = HTMLExporter(
        template_name="lab",
        template_file=REPORT_TEMPLATE,
        extra_loaders=[DictLoader({REPORT_TEMPLATE: OFFLINE_TEMPLATE})],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(merged)
    atomic_write(target, body)
    return target


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _heading_text(markdown: str) -> str:
    """The first Markdown heading's text ("01 · The model"), or ""."""
    found = re.search(r"^#+\s+(.+)$", markdown, flags=re.MULTILINE)
    return found.group(1).strip() if found else ""


def _plain(markdown: str) -> str:
    """Markdown as one line of plain text (for alternative text)."""
    text = re.sub(r"<[^>]+>|[`*_#>]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", markdown)
    return " ".join(text.split())


def _static_outputs(cells: list[Any]) -> None:
    """In place: widget views dropped (their fallback stays), alternative text on every image:
    the figure's own (vitlib.viz sets it) after the sentence before its cell."""
    said = ""
    for cell in cells:
        if cell.cell_type == "markdown":
            said = _plain(cell.source)
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            data.pop(WIDGET_VIEW, None)
            for mime in ("image/png", "image/jpeg", "image/svg+xml"):
                if mime not in data:
                    continue
                meta = output.setdefault("metadata", {}).setdefault(mime, {})
                own = meta.get("alt", "")
                meta["alt"] = " ".join(p for p in (said, own) if p) or "figure"


def results_markdown(cfg: Config) -> str:
    """The report's results (Markdown): each experiment's test accuracy with its 95% Wilson
    interval beside the study's (on its 2,000 test images), and McNemar's exact test of the
    frozen against the fine-tuned model on the same test images (each run's predictions.csv)."""
    lines = [
        "## Results",
        "",
        "| experiment | test accuracy (95% interval) | test images "
        f"| study, Zhang 2022 ({STUDY_TEST_IMAGES:,} images) |",
        "|---|---|---|---|",
    ]
    correct = {}
    for experiment in EXPERIMENTS:
        title, study = EXPERIMENT_TITLES[experiment], _with_interval(STUDY_ACCURACY[experiment])
        run = RunDir(cfg.run_dir / experiment)
        metrics = run.read_metrics() if run.finished else None
        if metrics is None or not metrics["applicable"]:
            why = "not run" if metrics is None else f"n/a: {metrics['reason']}"
            lines.append(f"| {title} | {why} | | {study} |")
            continue
        results = correct[experiment] = read_correct(run.path)
        n = len(results.correct)
        text = _interval_text(int(results.correct.sum()), n)
        lines.append(f"| {title} | {text} | {n:,} | {study} |")
    lines += ["", *_paired_lines(correct), "", *_study_lines(), ""]
    return "\n".join(lines)


class PerImage(NamedTuple):
    """Which test images a run got right: their paths and a bool array, in test-split order."""

    paths: list[str]
    correct: Any  # (n,) bool


def read_correct(run_dir: str | Path) -> PerImage:
    """A finished run's per-image results, from its predictions.csv."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise ReportError(f"{path} not found: run the experiment again to write its predictions")
    with open(path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    return PerImage([r["path"] for r in rows], np.array([r["label"] == r["pred"] for r in rows]))


def _interval_text(correct: int, total: int) -> str:
    low, high = wilson_interval(correct, total)
    return f"{correct / total:.2%} ({low:.2%} – {high:.2%})"


def _with_interval(accuracy: float | None) -> str:
    if accuracy is None:
        return "—"
    return _interval_text(round(accuracy * STUDY_TEST_IMAGES), STUDY_TEST_IMAGES)


def _paired_lines(correct: dict[str, PerImage]) -> list[str]:
    """McNemar's test of the probe against the fine-tune, when both ran on the same images."""
    if not {"probe", "finetune"} <= set(correct):
        return ["No paired test: the frozen and the fine-tuned runs are not both finished."]
    frozen, tuned = correct["probe"], correct["finetune"]
    if frozen.paths != tuned.paths:
        return ["No paired test: the frozen and fine-tuned runs were tested on different images."]
    test = mcnemar(frozen.correct, tuned.correct)
    verdict = "a real difference" if test.significant else "no significant difference"
    return [
        f"**Frozen against fine-tuned, on the same {len(tuned.paths):,} test images** (McNemar's exact "
        f"test): only the fine-tuned model is right on {test.only_b} images, only the frozen one "
        f"on {test.only_a}; two-sided p = {test.p_value:.3g}: {verdict} at the 5% level."
    ]


def _study_lines() -> list[str]:
    probe, tuned = (round(STUDY_ACCURACY[e] * STUDY_TEST_IMAGES) for e in ("probe", "finetune"))
    (a_low, a_high), (b_low, b_high) = (
        wilson_interval(c, STUDY_TEST_IMAGES) for c in (probe, tuned)
    )
    overlap = "overlap" if b_low <= a_high else "do not overlap"
    return [
        f"**The study's own figures:** {probe / STUDY_TEST_IMAGES:.2%} against "
        f"{tuned / STUDY_TEST_IMAGES:.2%} on {STUDY_TEST_IMAGES:,} test images; their 95% "
        f"intervals ({a_low:.2%} – {a_high:.2%} and {b_low:.2%} – {b_high:.2%}) {overlap}. "
        "It published no per-image results, so no paired test can be made of it."
    ]


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(cfg: Config, *, minutes: float | None = None) -> Path:
    """runs/<profile>/summary.md: accuracies beside the study's, and where weights and data
    came from."""
    rows, provenance = [], {}
    for experiment in EXPERIMENTS:
        run_dir = RunDir(cfg.run_dir / experiment)
        metrics = run_dir.read_metrics() if run_dir.finished else None
        run = run_dir.read_info()
        study = STUDY_ACCURACY[experiment]
        study_text = "—" if study is None else f"{study:.2%}"
        if metrics is None:
            rows.append(f"| {EXPERIMENT_TITLES[experiment]} | not run | | | {study_text} |")
            continue
        if not metrics["applicable"]:
            rows.append(
                f"| {EXPERIMENT_TITLES[experiment]} | n/a: {metrics['reason']} | | | {study_text} |"
            )
        else:
            rows.append(
                f"| {EXPERIMENT_TITLES[experiment]} | {metrics['test_accuracy']:.2%} "
                f"| {metrics['epochs']} | {metrics['minutes']:.1f} | {study_text} |"
            )
        if run:
            provenance = {
                "weights": run.get("weights", {}),
                "data": run.get("data", {}),
                "machine": run.get("machine", {}),
                "config": run.get("config", {}),
            }
    weights = provenance.get("weights", {})
    data = provenance.get("data", {})
    preprocessing = provenance.get("config", {}).get("model", {})
    lines = [
        f"# vitlib study — profile `{cfg.profile}`",
        "",
        "| experiment | test accuracy | epochs | minutes | study (Zhang 2022) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Whole report: {minutes:.1f} minutes." if minutes is not None else "",
        "",
        *_variant_lines(cfg),
        "## Weights",
        "",
        f"- source: {weights.get('weights', 'unknown')}",
        f"- file: {weights.get('file', '—')}",
        f"- sha256: {weights.get('sha256', '—')}",
        f"- architecture: {preprocessing.get('arch', '—')} {preprocessing.get('arch_kwargs') or ''}",
        "",
        "## Data",
        "",
        *(f"- {key}: {value}" for key, value in data.items()),
        "",
        f"Machine: {provenance.get('machine', {}).get('device', '—')}, "
        f"{provenance.get('machine', {}).get('processor', '')}",
    ]
    path = cfg.run_dir / "summary.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _variant_lines(cfg: Config) -> list[str]:
    """The variants comparison (notebook 06) as a Markdown table, if it was run."""
    rows = _read_json(cfg.run_dir / "variants" / "comparison.json")
    if not rows:
        return []
    return [
        "## Variants from scratch (notebook 06)",
        "",
        "| variant | val accuracy | test accuracy | minutes | parameters |",
        "|---|---|---|---|---|",
        *(
            f"| {r['title']} | {r['val_accuracy']:.2%} | {r['test_accuracy']:.2%} "
            f"| {r['train_minutes']:.1f} | {r['params']:,} |"
            for r in rows
        ),
        "",
    ]


def default_profile() -> str:
    """`full` on a machine with a CUDA GPU, `smoke` otherwise."""
    import torch

    return "full" if torch.cuda.is_available() else "smoke"
