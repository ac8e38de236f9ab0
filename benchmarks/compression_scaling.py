"""Does a network of fixed size fit a larger map as well? (issue 7)

The full-map ratios of ``compression.py`` assume that the crop's MAE holds on
the paper's 900 x 1000 map with the same network and bases (only per-point
arrays grow), and they assume the same of PCA. Only the 200 x 200 crop is on
disk, so this script tests the assumption over a factor of four: the same
network (``RANK``, ``WIDTH``) fitted to a 100 x 100 quadrant and to the whole
crop, with the same options, seed and time budget, both evaluated on the
quadrant's points; PCA at the same rank likewise (components from the
quadrant, and from the whole crop). If the field lost more than PCA when its
map grows, the full-map comparison would flatter it.

``python benchmarks/compression_scaling.py [--quadrants 0,3] [--time-budget
600]`` (quadrants numbered 0 1 / 2 3, row-major; the crop cache
``_out/calvat_crop.npy`` of ``compression.py``); writes
``results/compression_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compression as C  # noqa: E402

RESULTS = HERE / "results" / "compression_scaling.json"
RANK, WIDTH = 16, 128


def _fit(data: np.ndarray, time_budget: float):
    from kikuchipy_neural.training.fit import fit

    t = time.perf_counter()
    model = fit(
        C._scan(np.ascontiguousarray(data)),
        rank=RANK,
        time_budget=time_budget,
        seed=0,
        show_progressbar=False,
        siren_width=WIDTH,
    )
    info = dict(
        points=int(data.shape[0] * data.shape[1]),
        steps=int(model.info["steps"]),
        seconds=time.perf_counter() - t,
        stop_reason=str(model.info["stop_reason"]),
    )
    print(json.dumps(info), flush=True)
    return model, info


def _field_mae(model, grid_xy: np.ndarray, data: np.ndarray, mask) -> float:
    """Map MAE of ``model`` at ``grid_xy`` ``(ny, nx, 2)`` against ``data``."""
    flat_xy = grid_xy.reshape(-1, 2)
    p = data.shape[2] * data.shape[3]
    return C._map_mae(lambda a, b: model.query(flat_xy[a:b]).reshape(-1, p), data, mask)


def _pca_mae(mean, components, scores, data, mask) -> float:
    return C._map_mae(lambda a, b: mean + scores[a:b] @ components, data, mask)


def _save(result: dict) -> None:
    """Written after every fit: an interrupted run keeps what it measured."""
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quadrants", default="0,3")
    parser.add_argument("--time-budget", type=float, default=600.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    crop = np.load(C.HERE / "_out" / "calvat_crop.npy", mmap_mode="r")
    ny, nx = crop.shape[:2]
    hy, hx = ny // 2, nx // 2
    mask = C._aperture(crop.shape[2:])
    k = RANK - 1  # PCA's rank counts the mean, as the field's does

    crop_model, crop_fit = _fit(crop, args.time_budget)
    crop_grid = crop_model.geometry.grid_xy()
    mean, comps, scores = C._pca(crop, k)
    scores = scores.reshape(ny, nx, k)
    result = dict(
        rank=RANK,
        width=WIDTH,
        time_budget=args.time_budget,
        crop_fit=crop_fit,
        crop_field_mae=_field_mae(crop_model, crop_grid, crop, mask),
        crop_pca_mae=_pca_mae(mean, comps, scores.reshape(-1, k), crop, mask),
        quadrants=[],
    )
    print(json.dumps({key: result[key] for key in ("crop_field_mae", "crop_pca_mae")}))
    _save(result)
    for q in (int(v) for v in args.quadrants.split(",")):
        rows = slice((q // 2) * hy, (q // 2 + 1) * hy)
        cols = slice((q % 2) * hx, (q % 2 + 1) * hx)
        part = np.ascontiguousarray(crop[rows, cols])
        model, info = _fit(part, args.time_budget)
        q_mean, q_comps, q_scores = C._pca(part, k)
        entry = dict(
            quadrant=q,
            fit=info,
            field_fitted_on_quadrant=_field_mae(
                model, model.geometry.grid_xy(), part, mask
            ),
            field_fitted_on_crop=_field_mae(
                crop_model, crop_grid[rows, cols], part, mask
            ),
            pca_of_quadrant=_pca_mae(q_mean, q_comps, q_scores, part, mask),
            pca_of_crop=_pca_mae(
                mean, comps, np.ascontiguousarray(scores[rows, cols]).reshape(-1, k),
                part, mask,
            ),
        )  # fmt: skip
        print(json.dumps(entry), flush=True)
        result["quadrants"].append(entry)
        _save(result)


if __name__ == "__main__":
    main()
