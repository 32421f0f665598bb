"""The one-command report: every figure, the HTML and the summary; failures name the cell."""

import base64
import csv
import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
from html import escape
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vitlib.config import get_config
from vitlib.report import (
    EXPERIMENT_TITLES,
    STUDY_ACCURACY,
    ReportError,
    build_html,
    read_correct,
    results_markdown,
    run_in_order,
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
    "07_pretraining_loss",
    "07_reconstructions",
    "07_label_efficiency",
    "07_backbones",
    "08_sweep_heatmap",
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
    assert_nothing_but_results_in_the_cells(executed, html)
    assert "Alternative text is missing" not in result.stderr
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


def assert_nothing_but_results_in_the_cells(executed: Path, html: str) -> None:
    """No stderr block (warnings, logs), no progress bar, no widget view in any cell; the page
    opens with its contents and the results table, and every image has alternative text."""
    for path in sorted(executed.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                assert output.get("name") != "stderr", (path.name, cell.source, output["text"])
                text = output.get("text", "") + output.get("data", {}).get("text/plain", "")
                assert "it/s]" not in text and "img/s]" not in text, (path.name, text)
    assert "application/vnd.jupyter.widget" not in html and '<script src="https://' not in html
    first = 'id="section-01-model-walkthrough"'
    assert html.index('id="Contents"') < html.index('id="Results"') < html.index(first)
    assert '<a href="#section-05-attention">' in html and 'id="section-05-attention"' in html
    assert html.count("<img") == html.count('alt="') and "No description has been" not in html


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


def _notebook(*sources: str) -> nbformat.NotebookNode:
    book = new_notebook(cells=[new_code_cell(source) for source in sources])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}  # fmt: skip
    return book


def test_a_failing_notebook_stops_the_run_and_names_the_cell(tmp_path):
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    nbformat.write(
        _notebook("x = 1", "raise ValueError('boom')"), project / "notebooks" / "bad.ipynb"
    )
    marker = tmp_path / "reached"
    nbformat.write(_notebook(f"open({str(marker)!r}, 'w').close()"),
                   project / "notebooks" / "never_reached.ipynb")  # fmt: skip
    with pytest.raises(
        ReportError, match=r"bad\.ipynb failed in cell \[\d+\] `raise ValueError.*ValueError: boom"
    ):
        run_report("smoke", project_dir=project, notebooks=("bad", "never_reached"),
                   progress=False, jobs=1)  # fmt: skip
    assert (project / "runs" / "smoke" / "notebooks" / "bad.ipynb").is_file()
    assert not (project / "runs" / "smoke" / "report.html").exists() and not marker.exists()


def test_a_missing_notebook_fails_before_any_work_naming_it(tmp_path):
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    nbformat.write(_notebook("x = 1"), project / "notebooks" / "here.ipynb")
    with pytest.raises(
        ReportError, match=r"not found in .*notebooks: \['01_model_walkthrough.ipynb'\]"
    ):
        run_report("smoke", project_dir=project, notebooks=("here", "01_model_walkthrough.ipynb"))
    assert not (project / "runs").exists()


def test_the_smoke_report_runs_two_notebooks_at_once_in_the_order_given(tmp_path):
    """Each notebook waits for the other to have started: run one after the other, the first
    would time out. The page keeps the order asked for."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    for me, other in (("one", "two"), ("two", "one")):
        nbformat.write(_notebook(
            "import pathlib, time\n"
            f"pathlib.Path({str(tmp_path / me)!r}).touch()\n"
            "deadline = time.time() + 60\n"
            f"while not pathlib.Path({str(tmp_path / other)!r}).exists():\n"
            "    assert time.time() < deadline, 'the other notebook never started'\n"
            "    time.sleep(0.05)",
            f"print('this is {me}')",
        ), project / "notebooks" / f"{me}.ipynb")  # fmt: skip
    assert get_config("smoke").report_jobs == 2
    html = run_report("smoke", project_dir=project, notebooks=("two", "one"), progress=False)
    page = html.read_text()
    assert page.index("this is two") < page.index("this is one")


def test_runs_start_after_those_they_read_and_at_most_jobs_at_once():
    events, lock = [], threading.Lock()
    together = threading.Barrier(2, timeout=30)  # a and b must run at the same time

    def run(name):
        with lock:
            events.append(("start", name))
        if name in ("a", "b"):
            together.wait()
        with lock:
            events.append(("end", name))
        return name.upper()

    depends = {"c": ("a",), "d": ("c", "not_in_this_run")}
    assert run_in_order(["a", "b", "c", "d"], run, jobs=2, depends=depends) == list("ABCD")
    assert events.index(("end", "a")) < events.index(("start", "c"))
    assert events.index(("end", "c")) < events.index(("start", "d"))
    running, most = 0, 0
    for kind, _ in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2


def test_the_first_failure_starts_no_other_run_and_is_raised():
    started = []

    def run(name):
        started.append(name)
        if name == "b":
            raise ReportError("b failed")
        return name

    with pytest.raises(ReportError, match="b failed"):
        run_in_order(["a", "b", "c"], run, jobs=1)
    assert started == ["a", "b"]
    started.clear()
    with pytest.raises(ReportError, match="b failed"):  # c reads b: never started
        run_in_order(["b", "c"], run, jobs=2, depends={"c": ("b",)})
    assert started == ["b"]


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


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval by its formula (independent of scipy)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _write_run(run_dir: Path, right: list[bool], paths: list[str] | None = None) -> None:
    """A finished run's metrics.json and predictions.csv: image i right or wrong."""
    run_dir.mkdir(parents=True)
    n = len(right)
    metrics = {"applicable": True, "test_accuracy": sum(right) / n, "epochs": 1, "minutes": 0.1,
               "classes": ["cat", "dog"], "n": {"test": n}}  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    paths = paths or [f"test/{i}.jpg" for i in range(n)]
    with open(run_dir / "predictions.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["index", "path", "label", "pred", "p_cat", "p_dog"])
        for i in reversed(range(n)):  # any order on disk: rows are matched by index
            rows.writerow([i, paths[i], "cat", "cat" if right[i] else "dog", 0.5, 0.5])


def test_results_table_intervals_and_mcnemar_match_hand_computed_values(tmp_path):
    cfg = get_config("smoke", {"run_root": str(tmp_path)})
    probe = [True] * 6 + [False, True, False, False]  # 7 of 10 right
    tuned = [True] * 5 + [False, True, True, True, True]  # 9 of 10 right
    # only the probe right: image 5; only the fine-tune: images 6, 8, 9
    _write_run(cfg.run_dir / "probe", probe)
    _write_run(cfg.run_dir / "finetune", tuned)
    (cfg.run_dir / "zero-shot").mkdir()
    (cfg.run_dir / "zero-shot" / "metrics.json").write_text(
        json.dumps({"applicable": False, "reason": "no ImageNet head"})
    )
    assert read_correct(cfg.run_dir / "probe").correct.tolist() == probe
    text = results_markdown(cfg)
    low, high = _wilson(7, 10)
    assert f"| {EXPERIMENT_TITLES['probe']} | 70.00% ({low:.2%} – {high:.2%}) | 10 |" in text
    low, high = _wilson(9, 10)
    assert f"| {EXPERIMENT_TITLES['finetune']} | 90.00% ({low:.2%} – {high:.2%}) | 10 |" in text
    assert f"| {EXPERIMENT_TITLES['zero-shot']} | n/a: no ImageNet head | | — |" in text
    # exact McNemar: 1 against 3 discordant, two-sided 2 * P(X <= 1 | 4, 1/2) = 2 * 5/16
    assert "fine-tuned model is right on 3 images, only the frozen one on 1" in text
    assert "p = 0.625: no significant difference" in text
    for accuracy, k in ((STUDY_ACCURACY["probe"], 1930), (STUDY_ACCURACY["finetune"], 1973)):
        low, high = _wilson(k, 2000)
        assert f"{accuracy:.2%} ({low:.2%} – {high:.2%})" in text  # the study's column
    assert "do not overlap" in text  # 96.50% against 98.65%: (95.59 - 97.22), (98.04 - 99.07)


def test_no_paired_test_when_the_runs_saw_other_images_or_did_not_finish(tmp_path):
    cfg = get_config("smoke", {"run_root": str(tmp_path)})
    _write_run(cfg.run_dir / "probe", [True, False])
    assert "No paired test: the frozen and the fine-tuned runs are not both finished" in (
        results_markdown(cfg)
    )
    assert f"| {EXPERIMENT_TITLES['finetune']} | not run |" in results_markdown(cfg)
    _write_run(cfg.run_dir / "finetune", [True, True], paths=["a.jpg", "b.jpg"])
    assert "tested on different images" in results_markdown(cfg)
    (cfg.run_dir / "probe" / "predictions.csv").unlink()
    with pytest.raises(ReportError, match="predictions.csv not found: run the experiment again"):
        results_markdown(cfg)


def _executed(path: Path, cells: list) -> Path:
    book = new_notebook(cells=cells)
    nbformat.write(book, path)
    return path


def test_the_html_has_contents_alt_text_and_no_widget_views(tmp_path):
    png = base64.b64encode(_png_bytes()).decode()
    figure = new_code_cell("fig", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": png, "text/plain": "Figure"},
        metadata={"image/png": {"alt": "Figure: Loss per epoch"}},
    )])  # fmt: skip
    bare = new_code_cell("plt.imshow(x)", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": png, "text/plain": "<Figure>"}
    )])  # fmt: skip
    widget = new_code_cell("explorer", outputs=[nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {
            "model_id": "abc", "version_major": 2, "version_minor": 0}, "image/png": png,
            "text/plain": "Attention explorer"},
    )])  # fmt: skip
    first = _executed(tmp_path / "01_one.ipynb", [
        new_markdown_cell("# 01 · The *first* part\n\nSome words."),
        new_markdown_cell("The training curves."), figure,
    ])  # fmt: skip
    second = _executed(tmp_path / "02_two.ipynb", [
        new_markdown_cell("# 02 · Second"), new_markdown_cell("A bare image."), bare, widget,
    ])  # fmt: skip
    html = build_html([first, second], tmp_path / "r.html", title="T", header="## Results\n\nX")
    page = html.read_text()
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', page)
    assert alts == ["The training curves. Figure: Loss per epoch", "A bare image.",
                    "A bare image."]  # fmt: skip
    assert "widget-view" not in page and "jupyter-widgets" not in page
    assert '<a href="#section-01-one">01 · The first part</a>' in page
    assert '<a href="#section-02-two">02 · Second</a>' in page
    assert (
        page.index('id="Contents"') < page.index('id="Results"') < page.index('id="section-01-one"')
    )


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_progress_bars_go_to_the_terminal_not_into_the_cells(tmp_path, capfd):
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    book = new_notebook(cells=[new_code_cell(
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='counting sheep'):\n    pass"
    )])  # fmt: skip
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}  # fmt: skip
    nbformat.write(book, project / "notebooks" / "bars.ipynb")
    run_report("smoke", project_dir=project, notebooks=("bars",), progress=True)
    terminal = capfd.readouterr().err
    assert "counting sheep: 100%" in terminal  # the kernel's bar, on this process's stderr
    executed = nbformat.read(project / "runs" / "smoke" / "notebooks" / "bars.ipynb", 4)
    assert executed.cells[0].outputs == []
    assert "widgets" not in executed.metadata
