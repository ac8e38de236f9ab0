"""Does the field help PCA's quantised scores as a predictor? (issue 7)

Quantised PCA scores through a general codec are the baseline the neural
curve does not beat below ~350 counts. This script measures the obvious hybrid:
code, instead of each point's PCA scores, their residual against the scores
of the field's pattern (the field as a predictor), quantised with the same
step as PCA's b-bit scores, so that the distortion is PCA's, and compressed
with the same codec (``compression._compress_best``, delta filter included);
its bytes are the network file's plus the components' plus the residual maps'.

On the real 200 x 200 crop (``compression.py``'s data cache
``_out/calvat_crop.npy``) with the rank-32 int8 model of the compression
benchmark: ``python benchmarks/compression_residual.py
_out/compression/files/neural_r32_w256_l5_int8.h5`` (about 3 min on 2 cores);
writes ``results/compression_residual.json``. Crop ratios are against the raw
uint16 patterns; full-map ratios extrapolate as ``compression.py`` does (the
network and components stay, the score maps grow 22.5x).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compression as C  # noqa: E402

RESULTS = HERE / "results" / "compression_residual.json"
RANKS = (16, 32, 64)
BITS = (6, 8)
MAX_COMPONENTS = max(RANKS) - 1


def _decoded_mae(mean, scores, components, data, mask) -> float:
    return C._map_mae(lambda a, b: mean + scores[a:b] @ components, data, mask)


def main(model_path: str) -> None:
    from kikuchipy_neural.io.model_file import load_model

    torch.set_num_threads(2)
    data = np.load(C.HERE / "_out" / "calvat_crop.npy", mmap_mode="r")
    ny, nx = data.shape[:2]
    n = ny * nx
    raw_bytes = data.size * 2
    mask = C._aperture(data.shape[2:])
    model = load_model(model_path)
    network_bytes = os.path.getsize(model_path)

    # PCA exactly as compression.py computes it (same seed and solver).
    mean, components, scores = C._pca(data, MAX_COMPONENTS)

    t = time.perf_counter()
    predicted = np.empty_like(scores)
    grid = model.geometry.grid_xy().reshape(-1, 2)
    for a in range(0, n, C._BLOCK):
        patterns = model.query(grid[a : a + C._BLOCK]).reshape(-1, len(mean))
        predicted[a : a + C._BLOCK] = (patterns - mean) @ components.T
    print(f"field decoded and projected in {time.perf_counter() - t:.0f} s")

    scale = C.FULL_MAP_POINTS / n
    rows = []
    for rank in RANKS:
        k = rank - 1
        fixed, _ = C._components_bytes(mean, components[:k])
        fixed += 8 * k  # per-component offset and step
        c16 = components[:k].astype(np.float16).astype(np.float32)
        m16 = mean.astype(np.float16).astype(np.float32)
        for bits in BITS:
            codes, lo, step = C._quantise(scores[:, :k], bits)
            pca_maps, _ = C._score_maps_bytes(codes, (ny, nx))
            pca_values = lo + codes.astype(np.float32) * step
            residual = scores[:, :k] - predicted[:, :k]
            r_lo = residual.min(axis=0)
            r_codes = np.rint((residual - r_lo) / step).astype(np.int64)
            r_codes = r_codes.astype(np.uint8 if r_codes.max() < 256 else "<u2")
            residual_maps, _ = C._score_maps_bytes(r_codes, (ny, nx))
            hybrid_values = predicted[:, :k] + r_lo + r_codes * step
            row = dict(
                rank=rank,
                bits=bits,
                residual_std_over_score_std=float(
                    (residual.std(axis=0) / scores[:, :k].std(axis=0)).mean()
                ),
                pca_mae=_decoded_mae(m16, pca_values, c16, data, mask),
                hybrid_mae=_decoded_mae(m16, hybrid_values, c16, data, mask),
                pca_score_maps_bytes=pca_maps,
                residual_maps_bytes=residual_maps,
                pca_bytes_crop=fixed + pca_maps,
                hybrid_bytes_crop=network_bytes + fixed + residual_maps,
                pca_bytes_full=int(fixed + pca_maps * scale),
                hybrid_bytes_full=int(network_bytes + fixed + residual_maps * scale),
            )
            for where, raw in (("crop", raw_bytes), ("full", raw_bytes * scale)):
                for method in ("pca", "hybrid"):
                    row[f"{method}_ratio_{where}"] = (
                        raw / row[f"{method}_bytes_{where}"]
                    )
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.write_text(
        json.dumps(dict(model=Path(model_path).name, rows=rows), indent=1) + "\n"
    )
    print("\n| rank | bits | MAE (PCA / hybrid) | residual/score std | "
          "score maps: PCA / residual bytes | ratio crop: PCA / hybrid | "
          "ratio full map: PCA / hybrid |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['rank']} | {r['bits']} | {r['pca_mae']:.1f} / {r['hybrid_mae']:.1f} "
            f"| {r['residual_std_over_score_std']:.2f} "
            f"| {r['pca_score_maps_bytes']:,} / {r['residual_maps_bytes']:,} "
            f"| {r['pca_ratio_crop']:.0f} / {r['hybrid_ratio_crop']:.0f} "
            f"| {r['pca_ratio_full']:.0f} / {r['hybrid_ratio_full']:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
