"""Out-of-core training: a map on disk several times the memory budget.

One run, four fits, each in its own process so that its peak RSS is its own:

``baseline``
    imports everything and loads the small map, no fit (Python, torch,
    kikuchipy, numba, HyperSpy).
``in_memory``
    a small synthetic map (64 x 64 points of 60 x 60 px) fitted in memory.
``streamed_small`` and ``streamed``
    synthetic maps of ``--small-size`` and ``--size`` squared points of
    60 x 60 px written to h5ebsd files, loaded lazily (dask chunks of
    ``--chunk`` rows x 128 columns) and fitted with
    ``memory_budget=--budget-mb``: patterns are read chunk by chunk into a
    bounded shuffle buffer, the next chunk prefetched by a background
    thread. Both files exceed the budget.

Every fit runs for the same wall-clock budget (``--seconds``, preprocessing
included) at the same rank (``--rank``) and number of validation points, so
that everything outside ``memory_budget`` (imports, the validation set, the
work arrays of a batch and of PCA) is the same for all of them.

The fixed overhead is measured on the smaller streamed map: its peak RSS
minus the budget and its model. The target (issue 8): the peak RSS of the
large streamed map stays below budget + model + that overhead, i.e. memory
does not grow with the data; and throughput (scan positions processed per
second of training: steps x positions per batch / training seconds) within
2x of the in-memory fit.

Run: ``python benchmarks/out_of_core.py`` (about 15 minutes on 2 cores).
Writes ``benchmarks/results/out_of_core.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _runs import peak_rss_mb

HERE = Path(__file__).resolve().parent
WORK = HERE / "_out" / "out_of_core"
# The same validation set size for every fit (the 64 x 64 map holds out 205).
_VALIDATION_POINTS = 200
_CHUNK_COLUMNS = 128


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


def _child(
    mode: str, path: str, seconds: float, budget_mb: float, chunk: int, rank: int
) -> None:
    import kikuchipy as kp
    import torch

    torch.set_num_threads(2)
    from kikuchipy_neural.data import synthetic_polycrystal

    if mode.startswith("streamed"):
        s = kp.load(path, lazy=True)
        # The same chunk (chunk x 128 points) for every map: the transient
        # copies of a chunk being read scale with it, not with the map.
        s.data = s.data.rechunk((chunk, _CHUNK_COLUMNS, -1, -1))
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
            rank=rank,
            max_validation_points=_VALIDATION_POINTS,
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
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def _run(mode: str, args, path: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--child", mode, "--path", str(path),
        "--seconds", str(args.seconds), "--budget-mb", str(args.budget_mb),
        "--chunk", str(args.chunk), "--rank", str(args.rank),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="scan side (points)")
    parser.add_argument(
        "--small-size", type=int, default=128, help="scan side of the overhead run"
    )
    parser.add_argument("--chunk", type=int, default=8, help="rows per dask chunk")
    parser.add_argument("--budget-mb", type=float, default=96.0)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=150.0, help="per fit")
    parser.add_argument(
        "--child", choices=["baseline", "in_memory", "streamed", "streamed_small"]
    )
    parser.add_argument("--path", default=None)
    args = parser.parse_args()
    if args.child:
        _child(
            args.child, args.path, args.seconds, args.budget_mb, args.chunk, args.rank
        )
        return

    WORK.mkdir(parents=True, exist_ok=True)
    paths = {}
    for mode, size in (("streamed_small", args.small_size), ("streamed", args.size)):
        paths[mode] = WORK / f"map_{size}.h5"
        if not paths[mode].exists():
            t = time.perf_counter()
            _write_map(paths[mode], size, args.chunk)
            print(f"wrote {paths[mode]} in {time.perf_counter() - t:.0f} s")
    file_mb = {mode: p.stat().st_size / 2**20 for mode, p in paths.items()}
    runs = {
        mode: _run(mode, args, paths.get(mode, paths["streamed"]))
        for mode in ("baseline", "in_memory", "streamed_small", "streamed")
    }
    small, streamed, in_memory = (
        runs["streamed_small"],
        runs["streamed"],
        runs["in_memory"],
    )
    overhead = small["peak_rss_mb"] - args.budget_mb - small["model_mb"]
    bound = args.budget_mb + streamed["model_mb"] + overhead
    result = {
        "file_mb": file_mb,
        "budget_mb": args.budget_mb,
        "file_over_budget": {m: mb / args.budget_mb for m, mb in file_mb.items()},
        "rank": args.rank,
        "validation_points": _VALIDATION_POINTS,
        "imports_mb": runs["baseline"]["peak_rss_mb"],
        "fixed_overhead_mb": overhead,
        "bound_mb": bound,
        "runs": runs,
        "streamed_rss_below_bound": streamed["peak_rss_mb"] <= bound,
        "streamed_growth_mb": streamed["peak_rss_mb"] - small["peak_rss_mb"],
        "data_growth_mb": streamed["data_mb"] - small["data_mb"],
        "throughput_ratio_in_memory_over_streamed": in_memory["positions_per_second"]
        / streamed["positions_per_second"],
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "out_of_core.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
