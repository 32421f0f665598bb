"""The study as one command: execute the notebooks with papermill, then one HTML and a summary.

    python -m vitlib report --profile smoke        # or: make report

Writes runs/<profile>/notebooks/*.ipynb (executed), figures/<profile>/*.png|svg (saved by the
notebooks), runs/<profile>/report.html (all notebooks, code hidden, images embedded) and
runs/<profile>/summary.md (accuracies beside the study's, provenance of weights and data).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import nbformat

from vitlib.config import Config, get_config
from vitlib.errors import ReportError
from vitlib.experiments import EXPERIMENTS, check_inputs
from vitlib.files import atomic_write
from vitlib.runs import RunDir

__all__ = [
    "NOTEBOOKS",
    "STUDY_ACCURACY",
    "ReportError",
    "build_html",
    "default_profile",
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
)
# The study's test accuracies (report section 3.3); it had no zero-shot baseline.
STUDY_ACCURACY = {"zero-shot": None, "probe": 0.965, "finetune": 0.9865}
EXPERIMENT_TITLES = {
    "zero-shot": "zero-shot (ImageNet head, no training)",
    "probe": "frozen backbone, linear head",
    "finetune": "full fine-tune",
}


def run_report(
    profile: str,
    *,
    overrides: dict[str, Any] | None = None,
    project_dir: str | Path = ".",
    notebooks: tuple[str, ...] = NOTEBOOKS,
    progress: bool = True,
) -> Path:
    """Execute `notebooks` (names in project_dir/notebooks/) in order; return report.html.

    Inputs (data folder, weights) are checked first, so a `full` run without them fails in
    seconds. A failing notebook stops the run with a ReportError naming the notebook and cell.
    """
    import papermill

    project_dir = Path(project_dir).resolve()
    # papermill writes parameters as Python literals but turns a tuple into its string: JSON's
    # types (lists) go through unchanged.
    overrides = json.loads(json.dumps(overrides or {}))
    cfg = get_config(profile, overrides, root=project_dir)
    check_inputs(cfg, "probe", progress=progress)
    started = time.perf_counter()
    out_dir = cfg.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for name in notebooks:
        source = project_dir / "notebooks" / f"{name}.ipynb"
        target = out_dir / f"{name}.ipynb"
        log.info("running %s (profile %s)", source.name, profile)
        try:
            papermill.execute_notebook(
                str(source),
                str(target),
                parameters={
                    "PROFILE": profile,
                    "OVERRIDES": overrides,
                    "PROJECT_DIR": str(project_dir),
                    "PROGRESS": progress,
                },
                cwd=str(source.parent),
                kernel_name="python3",
                progress_bar=progress,
            )
        except papermill.PapermillExecutionError as exc:
            first_line = (exc.source or "").strip().splitlines()[:1] or [""]
            raise ReportError(
                f"{source.name} failed in cell [{exc.exec_count}] `{first_line[0]}`: "
                f"{exc.ename}: {exc.evalue}\n"
                f"The executed notebook with the full traceback is {target}"
            ) from None
        executed.append(target)
    html = build_html(executed, cfg.run_dir / "report.html", title=f"vitlib study ({profile})")
    write_summary(cfg, minutes=(time.perf_counter() - started) / 60)
    log.info("report: %s", html)
    return html


def build_html(executed: list[Path], target: Path, *, title: str) -> Path:
    """Concatenate executed notebooks into one self-contained HTML page, code hidden."""
    from nbconvert import HTMLExporter

    merged = nbformat.v4.new_notebook()
    for path in executed:
        merged.cells.extend(nbformat.read(path, as_version=4).cells)
    merged.metadata["title"] = title
    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(merged)
    atomic_write(target, body)
    return target


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
