"""What the benchmark scripts record about a run: which checkout of the
package ran, its peak memory, and the JSON line it adds to a results file.

Scripts that compare two versions of the package (``lazy_fit_reads.py``,
``train_step.py``, ``fit_memory.py``) are run by turns with each checkout's root first on
``PYTHONPATH``; :func:`package_info` says which one a run used.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

__all__ = ["append_result", "package_info", "peak_rss_mb", "reset_peak_rss"]


def package_info() -> dict[str, str]:
    """The imported ``kikuchipy_neural``'s checkout and its commit."""
    import kikuchipy_neural

    root = Path(kikuchipy_neural.__file__).parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {"package": str(root), "commit": commit}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux ``VmHWM``). Not
    ``ru_maxrss``: it survives ``execve``, so a child started by a parent that
    held the whole map would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Start a new peak window: :func:`peak_rss_mb` then reports the peak since
    this call (Linux ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def append_result(result: dict, out: str | None) -> None:
    """Print ``result`` as a JSON line and append it to ``out`` if given."""
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
