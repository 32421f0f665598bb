"""End to end: wall time of `python -m vitlib report --profile smoke` (target <= 90 s here).

    python -m benchmarks.bench_report

Runs in a scratch copy of the notebooks so runs/ and figures/ of the checkout stay as they are;
the synthetic data and its decoded cache are generated from scratch, as on a fresh clone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import format_table, write_result

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 90


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        shutil.copytree(ROOT / "notebooks", project / "notebooks")
        started = time.perf_counter()
        subprocess.run(
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
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - started
        summary = (project / "runs" / "smoke" / "summary.md").read_text()
    row = {
        "measure": "report --profile smoke",
        "seconds": seconds,
        "target_s": TARGET_SECONDS,
        "met": seconds <= TARGET_SECONDS,
    }
    result = {"rows": [row], "summary_md": summary}
    path = write_result("report", result)
    print(format_table([row], list(row)))
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    run()
