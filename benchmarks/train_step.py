"""Time per training step on the real crop, the part of a fit that grows
with its length.

Fits the real 200 x 200 crop (in memory; or, with ``--map demo``, the
synthetic 64 x 64 map of 60 x 60 px that ``kikuchipy-neural demo`` fits)
with the default sampler but no warm start, so that every step is a step of the main stage (1024 positions
x all pixels), for ``--steps`` steps, and reports the time per step
between the first and the last evaluation (preprocessing and the buffer
excluded; the evaluations every 25 steps, a few per cent of the time,
included). Also the step time of the warm start (regression on PCA scores),
from a second fit.

To compare two versions of the package side by side, run this script with
each checkout's root first on ``PYTHONPATH``, alternately, and compare the
JSON lines it appends to ``--out``.

Run: ``python benchmarks/train_step.py --cache _out/calvat_crop.npy --out
benchmarks/results/train_step.jsonl`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _runs import append_result, package_info


def _stage_seconds_per_step(model, stage: str) -> float:
    """Seconds per step of ``stage``, from the history's evaluations."""
    h = model.history
    rows = [i for i, s in enumerate(h["stage"]) if s == stage]
    if len(rows) < 2:
        raise RuntimeError(f"fewer than two evaluations in stage {stage!r}")
    first, last = rows[0], rows[-1]
    steps = h["step"][last] - h["step"][first]
    return (h["seconds"][last] - h["seconds"][first]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="the crop's .npy cache")
    parser.add_argument(
        "--map",
        choices=("crop", "demo"),
        default="crop",
        help="the real crop, or the demo's synthetic 64x64 map of 60x60 px",
    )
    parser.add_argument("--rank", type=int, default=206)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None, help="append a JSON line here")
    args = parser.parse_args()

    from compression import _load_data, _scan

    from kikuchipy_neural.training.fit import fit

    if args.map == "crop":
        data = np.ascontiguousarray(_load_data(args.cache))
    else:
        from kikuchipy_neural.data import synthetic_polycrystal

        data = synthetic_polycrystal((64, 64), (60, 60), twins=True, seed=0).data
    common = dict(
        rank=args.rank,
        siren_width=args.width,
        refit_bases=False,
        show_progressbar=False,
        eval_every=25,
        patience=10**6,
        warm_start_patience=10**6,
    )
    started = time.perf_counter()
    main_stage = fit(_scan(data), max_steps=args.steps, warm_start=False, **common)
    warm = fit(_scan(data), max_steps=args.steps, **common)
    result = {
        "label": args.label,
        **package_info(),
        "map": args.map,
        "rank": args.rank,
        "width": args.width,
        "steps": args.steps,
        "main_stage_ms_per_step": 1e3 * _stage_seconds_per_step(main_stage, "fit"),
        "warm_start_ms_per_step": 1e3 * _stage_seconds_per_step(warm, "warm_start"),
        "seconds": time.perf_counter() - started,
    }
    append_result(result, args.out)


if __name__ == "__main__":
    main()
