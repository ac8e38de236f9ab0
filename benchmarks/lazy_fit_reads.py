"""How often a fit reads a lazy map that fits its memory budget, and what
that costs, on the real crop from a kikuchipy h5ebsd file.

Writes the crop (``--rows`` scan rows of it) to an h5ebsd file once (kept
for later runs), loads it lazily with kikuchipy and fits it (factorized,
fixed rank, ``--max-steps`` steps, so that the run measures what happens
around training: preprocessing, the training buffer, the bases' refit and
per-point intensities), counting the patterns read from the file
(``PatternSource.read_tile``) and the seconds spent reading them, and
recording the process's peak resident memory.

To compare two versions of the package side by side, run this script with
each checkout's root first on ``PYTHONPATH``, alternately, and compare the
JSON lines it appends to ``--out``.

Run: ``python benchmarks/lazy_fit_reads.py --cache _out/calvat_crop.npy
--h5 _out/crop.h5 --out benchmarks/results/lazy_fit_reads.jsonl``
(about 2 minutes a run on 2 cores for the whole crop, page cache warm).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _runs import append_result, package_info, peak_rss_mb

HERE = Path(__file__).resolve().parent


def _write_h5ebsd(path: Path, cache: str | None, rows: int) -> None:
    import kikuchipy as kp
    from compression import _load_data

    data = _load_data(cache)[:rows]
    kp.signals.EBSD(np.ascontiguousarray(data)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="the crop's .npy cache")
    parser.add_argument("--h5", required=True, help="h5ebsd file (written if missing)")
    parser.add_argument("--rows", type=int, default=200, help="scan rows of the crop")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--point-intensity", action="store_true")
    parser.add_argument("--label", default="", help="name of this run in the output")
    parser.add_argument("--out", default=None, help="append a JSON line here")
    args = parser.parse_args()

    path = Path(args.h5)
    if not path.exists():
        _write_h5ebsd(path, args.cache, args.rows)

    import kikuchipy as kp

    from kikuchipy_neural.training import data as data_module

    read = {"patterns": 0, "seconds": 0.0}
    original = data_module.PatternSource.read_tile

    def counted(self, tile):
        started = time.perf_counter()
        out = original(self, tile)
        read["seconds"] += time.perf_counter() - started
        read["patterns"] += tile.n_points
        return out

    data_module.PatternSource.read_tile = counted
    s = kp.load(path, lazy=True)
    s.set_signal_type("NeuralEBSD")
    n_points = int(np.prod(s.axes_manager.navigation_shape))
    started = time.perf_counter()
    model = s.fit_neural(
        rank=args.rank,
        max_steps=args.max_steps,
        refit_bases="all",
        point_intensity=args.point_intensity,
        siren_width=128,
        show_progressbar=False,
    )
    seconds = time.perf_counter() - started
    training = float(model.history["seconds"][-1]) if model.history["seconds"] else 0
    result = {
        "label": args.label,
        **package_info(),
        "points": n_points,
        "h5ebsd_bytes": path.stat().st_size,
        "rank": args.rank,
        "steps": int(model.info["steps"]),
        "point_intensity": args.point_intensity,
        "patterns_read": read["patterns"],
        "reads_per_point": read["patterns"] / n_points,
        "read_seconds": read["seconds"],
        "fit_seconds": seconds,
        "training_seconds_at_last_evaluation": training,
        "peak_rss_mb": peak_rss_mb(),
    }
    append_result(result, args.out)


if __name__ == "__main__":
    main()
