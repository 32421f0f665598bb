"""End to end: wall time of `python -m vitlib report --profile smoke` (target <= 90 s here),
with the profile's two notebooks at once (`--jobs 2`, the default) against one at a time.

    python -m benchmarks.bench_report            # both; --quick: the default only

Each runs in its own scratch copy of the notebooks so runs/ and figures/ of the checkout stay as
they are; the synthetic data and its decoded cache are generated from scratch, as on a fresh clone.
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
    rows, summary = [], ""
    for jobs in (2,) if quick else (2, 1):
        seconds, summary = _report_seconds(jobs)
        rows.append({
            "measure": f"report --profile smoke --jobs {jobs}",
            "seconds": seconds,
            "target_s": TARGET_SECONDS,
            "met": seconds <= TARGET_SECONDS,
        })  # fmt: skip
    if len(rows) == 2:
        print(f"two notebooks at once: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x faster")
    result = {"rows": rows, "summary_md": summary}
    path = write_result("report", result)
    print(format_table(rows, list(rows[0])))
    print(f"-> {path}")
    return result


def _report_seconds(jobs: int) -> tuple[float, str]:
    """Seconds of one smoke report from scratch, `jobs` notebooks at once; its summary.md."""
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        shutil.copytree(ROOT / "notebooks", project / "notebooks")
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vitlib", "report", "--profile", "smoke", "--quiet",
             "--jobs", str(jobs), "--project-dir", str(project)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        return seconds, (project / "runs" / "smoke" / "summary.md").read_text()


if __name__ == "__main__":
    run()
