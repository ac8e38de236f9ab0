"""Peak memory of each phase of a fit on the real crop.

Fits the real 200 x 200 crop of 120 x 120 px (in memory; ``--rows`` keeps
the first rows of the scan; ``--lazy`` wraps it in a dask array of 10-row
chunks, so that a ``--budget`` below the data streams it through a shuffle
buffer) for ``--steps`` steps of the main stage (no warm start), with the
bases' refit and per-point intensities, and reports the peak resident
memory (Linux ``VmHWM``, reset between phases through
``/proc/self/clear_refs``) of each phase: preprocessing (PCA sample, one
pass over the map), the training buffer, training, the bases' refit and
per-point intensities, each in MB above the memory held before the fit
(interpreter, libraries and the map).

To compare two versions of the package side by side, run this script with
each checkout's root first on ``PYTHONPATH``, alternately, and compare the
JSON lines it appends to ``--out``.

Run: ``python benchmarks/fit_memory.py --cache _out/calvat_crop.npy --rows
100 --out benchmarks/results/fit_memory.jsonl`` (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time

import numpy as np
from _runs import append_result, package_info, peak_rss_mb, reset_peak_rss

# The fit's phases, each ended by the return of one of these functions of
# kikuchipy_neural.training.fit (training ends where the bases' refit begins).
_PHASE_ENDS = {
    "preprocess": "preprocessing",
    "make_buffer": "buffer",
    "refit_bases": "refit",
    "fit_point_intensity": "point_intensity",
}


def _instrument(fit_module, peaks: dict[str, float]) -> None:
    """Record the peak of each phase into ``peaks`` as the fit runs."""

    def wrap(name: str, phase: str):
        original = getattr(fit_module, name)

        @functools.wraps(original)
        def recorded(*args, **kwargs):
            if name == "refit_bases":  # training ends here
                peaks["training"] = peak_rss_mb()
                reset_peak_rss()
            result = original(*args, **kwargs)
            peaks[phase] = peak_rss_mb()
            reset_peak_rss()
            return result

        setattr(fit_module, name, recorded)

    for name, phase in _PHASE_ENDS.items():
        wrap(name, phase)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="the crop's .npy cache")
    parser.add_argument("--rows", type=int, default=200, help="scan rows to keep")
    parser.add_argument("--lazy", action="store_true", help="a dask array")
    parser.add_argument(
        "--budget", type=int, default=None, help="memory_budget in bytes"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None, help="append a JSON line here")
    args = parser.parse_args()

    from compression import _load_data, _scan

    fit_module = importlib.import_module("kikuchipy_neural.training.fit")
    # A copy in memory (the cache is memory-mapped): held before the fit.
    data = np.array(_load_data(args.cache)[: args.rows])
    signal = _scan(data)
    if args.lazy:
        signal = signal.as_lazy()
        signal.data = signal.data.rechunk((10, -1, -1, -1))
    options = {} if args.budget is None else {"memory_budget": args.budget}
    peaks: dict[str, float] = {}
    _instrument(fit_module, peaks)
    before = peak_rss_mb()
    reset_peak_rss()
    held = peak_rss_mb()  # the current RSS: interpreter, libraries, the map
    started = time.perf_counter()
    model = fit_module.fit(
        signal,
        max_steps=args.steps,
        warm_start=False,
        point_intensity=True,
        show_progressbar=False,
        **options,
    )
    result = {
        "label": args.label,
        **package_info(),
        "points": int(data.shape[0] * data.shape[1]),
        "lazy": args.lazy,
        "memory_budget": args.budget,
        "rank": model.rank,
        "steps": model.info["steps"],
        "fit_seconds": round(time.perf_counter() - started, 1),
        "held_mb": round(held, 1),
        "peak_before_fit_mb": round(before, 1),
        "phase_peak_mb": {k: round(v, 1) for k, v in peaks.items()},
        "phase_peak_above_held_mb": {k: round(v - held, 1) for k, v in peaks.items()},
        "fit_peak_above_held_mb": round(max(peaks.values()) - held, 1),
    }
    append_result(result, args.out)


if __name__ == "__main__":
    main()
