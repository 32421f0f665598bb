"""The project as a whole: what the code imports is what pyproject.toml declares, and the house
rules on module and function size."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Declared but never imported, each for a reason.
TOOLS = {
    "ipykernel": "the kernel papermill and JupyterLab run the notebooks in",
    "jupyterlab": "the workbook's interface",
    "ipywidgets": "tqdm.auto's progress bars in a notebook",
}


def imported_modules() -> set[str]:
    """Top-level modules imported by the library and the notebooks."""
    sources = [p.read_text() for p in (ROOT / "vitlib").rglob("*.py")]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        sources += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"vitlib", "__future__"}


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in deps}


def test_every_import_is_declared_and_every_dependency_is_used():
    dists = importlib.metadata.packages_distributions()
    needed = {dists[m][0].lower() for m in imported_modules()}
    assert needed - declared() == set(), "imported but not declared in pyproject.toml"
    assert declared() - needed - set(TOOLS) == set(), "declared but imported by nothing"


def test_modules_and_functions_stay_small():
    """STYLE.md: one idea per module, about 500 lines; functions about 60."""
    for path in sorted((ROOT / "vitlib").rglob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 520, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 70, f"{path}:{node.name}"
