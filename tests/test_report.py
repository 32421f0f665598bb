"""The one-command report: every figure, the HTML and the summary; failures name the cell."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from vitlib.report import ReportError, run_report

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


@pytest.mark.slow
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
    assert len(html) > 100_000 and html.count("data:image/png;base64") >= len(EXPECTED_FIGURES)
    assert "def " not in html.split("<body")[1][:2000]  # code is hidden
    summary = (project / "runs" / "smoke" / "summary.md").read_text()
    assert "96.50%" in summary and "98.65%" in summary  # the study's numbers beside ours
    assert "sha256" in summary and "manifest" in summary
    assert "Simple ViT" in summary and "Performer" in summary  # notebook 06's comparison
    for name in ("01_model_walkthrough", "05_attention"):
        assert (project / "runs" / "smoke" / "notebooks" / f"{name}.ipynb").is_file()
    print(f"smoke report: {seconds:.0f} s")


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


def test_full_without_data_fails_within_seconds_saying_what_to_pass(tmp_path):
    started = time.perf_counter()
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
    assert time.perf_counter() - started < 30
