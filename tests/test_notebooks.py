"""Notebooks run with parameters a user passes: papermill in a scratch project folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import papermill

from vitlib.tensorboard import EVENTS  # the runs' TensorBoard folder, beside them
from vitlib.variants import TEACHER

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(tmp_path: Path, name: str, **parameters) -> Path:
    """Execute notebooks/<name>.ipynb with `parameters`, writing only under tmp_path."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(project / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters={"PROJECT_DIR": str(project), "PROGRESS": False, **parameters},
        cwd=str(project / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    return project


def test_variants_notebook_without_deit_still_trains_the_cnn_reference(tmp_path):
    overrides = {
        "variants.names": ["vit", "simple_vit"],
        "variants.train.epochs": 1,
        "data.split_sizes": [48, 16, 16],
        "data.synthetic_per_class": 40,
    }
    project = run_notebook(tmp_path, "06_variants", PROFILE="smoke", OVERRIDES=overrides)
    variants = project / "runs" / "smoke" / "variants"
    found = sorted(p.name for p in variants.iterdir() if p.is_dir() and p.name != EVENTS)
    assert found == sorted(["simple_vit", "vit", TEACHER])  # the teacher: the table's CNN row
    assert (project / "figures" / "smoke" / "06_variants.png").is_file()


def test_attention_notebook_takes_the_query_patch_as_a_list(tmp_path):
    overrides = {"finetune.epochs": 1, "data.split_sizes": [48, 16, 16],
                 "data.synthetic_per_class": 40}  # fmt: skip
    project = run_notebook(
        tmp_path, "05_attention", PROFILE="smoke", OVERRIDES=overrides, QUERY_PATCH=[2, 3]
    )
    assert (project / "figures" / "smoke" / "05_attention_heads_patch.png").is_file()
