"""The one-command report: every figure, the HTML and the summary; failures name the cell."""

import json
import shutil
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from vitlib.config import get_config
from vitlib.report import (
    EXPERIMENT_TITLES,
    STUDY_ACCURACY,
    ReportError,
    run_report,
    write_summary,
)

ROOT = Path(__file__).resolve().parents[1]
# Every figure the smoke report must regenerate, one per study figure and more.
EXPECTED_FIGURES = [
    "01_patches",
    "02_probe_curves",
    "02_probe_confusion",
    "03_training_curves",
    "03_finetune_confusion",
    "03_misclassified",
    "04_position_similarity_pretrained",
    "04_position_similarity_finetuned",
    "04_position_similarity_sincos",
    "04_before_after",
    "05_attention_heads_cls",
    "05_attention_heads_patch",
    "05_rollout",
    "05_attention_distance",
    "05_filters",
    "06_variants",
    "06_attention_memory",
]


def _project_copy(tmp_path: Path) -> Path:
    """The notebooks in a scratch project folder, so the test never touches runs/ or figures/."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "notebooks",
        project / "notebooks",
        ignore=shutil.ignore_patterns(".ipynb_checkpoints"),
    )
    return project


def test_smoke_report_writes_every_figure_the_html_and_the_summary(tmp_path):
    project = _project_copy(tmp_path)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitlib",
            "report",
            "--profile",
            "smoke",
            "--quiet",
            "--project-dir",
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seconds = time.perf_counter() - started
    figures = project / "figures" / "smoke"
    for name in EXPECTED_FIGURES:
        for suffix in (".png", ".svg"):
            path = figures / f"{name}{suffix}"
            assert path.is_file() and path.stat().st_size > 1000, path
    html = (project / "runs" / "smoke" / "report.html").read_text()
    executed = project / "runs" / "smoke" / "notebooks"
    assert_every_saved_figure_is_shown(executed, html)
    assert_code_is_hidden(project / "notebooks", html)
    summary = (project / "runs" / "smoke" / "summary.md").read_text()
    assert_summary_rows_are_the_runs_own(summary, project / "runs" / "smoke")
    assert "sha256" in summary and "manifest" in summary
    assert "Simple ViT" in summary and "Performer" in summary  # notebook 06's comparison
    for name in ("01_model_walkthrough", "05_attention"):
        assert (executed / f"{name}.ipynb").is_file()
    print(f"smoke report: {seconds:.0f} s")


def assert_every_saved_figure_is_shown(executed: Path, html: str) -> None:
    """Each cell that saves a figure shows it, and that very image is embedded in the HTML."""
    saved = 0
    for path in sorted(executed.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code" or "viz.save_figure(" not in cell.source:
                continue
            images = [
                o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})
            ]
            assert images, f"{path.name}: a cell saves a figure but shows none:\n{cell.source}"
            for image in images:
                assert image.strip().replace("\n", "") in html, f"{path.name}: image not in HTML"
            saved += 1
    assert saved == len(EXPECTED_FIGURES)


def assert_code_is_hidden(notebooks: Path, html: str) -> None:
    """The line every notebook's second cell holds is in no notebook's report (code hidden)."""
    line = "cfg = vitlib.get_config(PROFILE, OVERRIDES, root=PROJECT_DIR)"
    assert all(line in path.read_text() for path in notebooks.glob("*.ipynb"))
    assert "get_config(PROFILE" not in html and escape(line) not in html


def assert_summary_rows_are_the_runs_own(summary: str, runs: Path) -> None:
    """The summary's accuracy and epochs per experiment are those of its metrics.json."""
    rows = {
        r.split("|")[1].strip(): r.split("|")[2:]
        for r in summary.splitlines()
        if r.startswith("| ")
    }
    for experiment, title in EXPERIMENT_TITLES.items():
        metrics = json.loads((runs / experiment / "metrics.json").read_text())
        cells = [c.strip() for c in rows[title]]
        if metrics["applicable"]:
            assert cells[0] == f"{metrics['test_accuracy']:.2%}", (experiment, cells)
            assert cells[1] == str(metrics["epochs"]), (experiment, cells)
            assert cells[2] == f"{metrics['minutes']:.1f}", (experiment, cells)
        else:
            assert metrics["reason"] in cells[0]
        study = STUDY_ACCURACY[experiment]
        assert cells[3] == ("—" if study is None else f"{study:.2%}")


def test_the_summary_table_is_each_runs_own_metrics_in_order(tmp_path):
    """write_summary on run folders made here, each with other numbers: a row read from the
    wrong run, a shifted column or a lost row shows; in seconds, not the whole report."""
    cfg = get_config("smoke", {"run_root": str(tmp_path)})
    written = {
        "zero-shot": {"applicable": False, "reason": "no ImageNet-1k head here"},
        "probe": {"applicable": True, "test_accuracy": 0.8125, "epochs": 3, "minutes": 1.5},
        "finetune": {"applicable": True, "test_accuracy": 0.96875, "epochs": 7, "minutes": 12.5},
    }
    for experiment, metrics in written.items():
        (cfg.run_dir / experiment).mkdir(parents=True)
        (cfg.run_dir / experiment / "metrics.json").write_text(json.dumps(metrics))
    summary = write_summary(cfg, minutes=3.0).read_text()
    assert_summary_rows_are_the_runs_own(summary, cfg.run_dir)
    rows = [r.split("|")[1].strip() for r in summary.splitlines() if r.startswith("| ")]
    assert rows[1:] == [EXPERIMENT_TITLES[e] for e in written]  # after the header, in order
    assert "| 81.25% | 3 | 1.5 |" in summary and "| 96.88% | 7 | 12.5 |" in summary
    (cfg.run_dir / "probe" / "metrics.json").unlink()  # a run that never finished
    summary = write_summary(cfg).read_text()
    assert f"| {EXPERIMENT_TITLES['probe']} | not run |" in summary


def test_a_failing_notebook_stops_the_run_and_names_the_cell(tmp_path):
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    book = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('boom')")])
    book.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(book, project / "notebooks" / "bad.ipynb")
    with pytest.raises(
        ReportError, match=r"bad\.ipynb failed in cell \[\d+\] `raise ValueError.*ValueError: boom"
    ):
        run_report("smoke", project_dir=project, notebooks=("bad", "never_reached"), progress=False)
    assert (project / "runs" / "smoke" / "notebooks" / "bad.ipynb").is_file()
    assert not (project / "runs" / "smoke" / "report.html").exists()


def test_full_without_data_fails_before_any_work_saying_what_to_pass(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitlib",
            "report",
            "--profile",
            "full",
            "--data",
            str(tmp_path / "no-photos"),
            "--project-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--data" in result.stderr and "kaggle" in result.stderr.lower()
    assert not (tmp_path / "runs").exists()  # no notebook ran, nothing was written
