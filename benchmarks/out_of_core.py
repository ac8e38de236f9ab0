"""Out-of-core training: a map on disk several times the memory budget.

One run, three fits, each in its own process so that its peak RSS is its own:

``baseline``
    imports everything and loads the small map, no fit: the fixed overhead
    (Python, torch, kikuchipy, numba, HyperSpy).
``in_memory``
    a small synthetic map (64 x 64 points of 60 x 60 px) fitted in memory.
``streamed``
    a large synthetic map (``--size`` squared points of 60 x 60 px) written to
    an h5ebsd file, loaded lazily (dask chunks of ``--chunk`` rows) and fitted
    with ``memory_budget=--budget-mb``: patterns are read chunk by chunk into a
    bounded shuffle buffer, the next chunk prefetched by a background thread.

Both fits run for the same wall-clock budget (``--seconds``, preprocessing
included) with default options. Reported: peak RSS of each process, the file
size against the budget, and the throughput in scan positions processed per
second of training (steps x positions per batch / training seconds). Targets
(issue 8): peak RSS of the streamed fit below budget + model + the fixed
overhead; throughput within 2x of the in-memory fit.

Run: ``python benchmarks/out_of_core.py`` (about 10 minutes on 2 cores).
Writes ``benchmarks/results/out_of_core.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_out" / "out_of_core"


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux ``VmHWM``). Not
    ``ru_maxrss``: it survives ``execve``, so a child started by a parent that
    held the whole map would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _write_map(path: Path, size: int, chunk: int) -> None:
    """Write a size x size synthetic map block by block of rows, so that the
    writer never holds the whole map either."""
    import dask.array as da
    import numpy as np

    from kikuchipy_neural.data import synthetic_polycrystal

    s = synthetic_polycrystal((size, size), (60, 60), seed=11, n_grains=size**2 // 100)
    s.data = da.from_array(np.asarray(s.data), chunks=(chunk, size, -1, -1))
    s = s.as_lazy()
    s.save(path, overwrite=True)


def _child(mode: str, path: str, seconds: float, budget_mb: float, chunk: int) -> None:
    import kikuchipy as kp
    import torch

    torch.set_num_threads(2)
    from kikuchipy_neural.data import synthetic_polycrystal

    if mode == "streamed":
        s = kp.load(path, lazy=True)
        s.data = s.data.rechunk((chunk, -1, -1, -1))
    else:
        s = synthetic_polycrystal((64, 64), (60, 60), seed=11, n_grains=40)
    s.set_signal_type("NeuralEBSD")
    result = {"mode": mode, "nav_shape": list(s.axes_manager.navigation_shape)}
    result["data_mb"] = s.data.nbytes / 2**20
    if mode != "baseline":
        started = time.perf_counter()
        model = s.fit_neural(
            time_budget=seconds,
            memory_budget=int(budget_mb * 2**20),
            show_progressbar=False,
        )
        wall = time.perf_counter() - started
        history = model.history
        train_seconds = history["seconds"][-1] - history["seconds"][0]
        steps = history["step"][-1] - history["step"][0]
        per_batch = model.options["positions_per_batch"]
        result.update(
            wall_seconds=wall,
            steps=int(model.info["steps"]),
            positions_per_second=steps * per_batch / max(train_seconds, 1e-9),
            val_mae=float(min(history["val_mae"])),
            model_mb=sum(p.numel() * 4 for p in model.field.parameters()) / 2**20,
            rank=model.rank,
        )
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def _run(mode: str, args, path: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--child", mode, "--path", str(path),
        "--seconds", str(args.seconds), "--budget-mb", str(args.budget_mb),
        "--chunk", str(args.chunk),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="scan side (points)")
    parser.add_argument("--chunk", type=int, default=8, help="rows per dask chunk")
    parser.add_argument("--budget-mb", type=float, default=96.0)
    parser.add_argument("--seconds", type=float, default=180.0, help="per fit")
    parser.add_argument("--child", choices=["baseline", "in_memory", "streamed"])
    parser.add_argument("--path", default=None)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.path, args.seconds, args.budget_mb, args.chunk)
        return

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"map_{args.size}.h5"
    if not path.exists():
        t = time.perf_counter()
        _write_map(path, args.size, args.chunk)
        print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
    file_mb = path.stat().st_size / 2**20
    runs = {
        mode: _run(mode, args, path) for mode in ("baseline", "in_memory", "streamed")
    }
    overhead = runs["baseline"]["peak_rss_mb"]
    streamed, in_memory = runs["streamed"], runs["in_memory"]
    bound = args.budget_mb + streamed["model_mb"] + overhead
    result = {
        "file_mb": file_mb,
        "budget_mb": args.budget_mb,
        "file_over_budget": file_mb / args.budget_mb,
        "fixed_overhead_mb": overhead,
        "bound_mb": bound,
        "runs": runs,
        "streamed_rss_below_bound": streamed["peak_rss_mb"] <= bound,
        "throughput_ratio_in_memory_over_streamed": in_memory["positions_per_second"]
        / streamed["positions_per_second"],
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "out_of_core.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
