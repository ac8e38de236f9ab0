"""Does the field help PCA's quantised scores as a predictor? (issue 7)

Quantised PCA scores through a general codec are the baseline the neural
curve does not beat below ~350 counts. This script measures the obvious hybrid:
code, instead of each point's PCA scores, their residual against the scores
of the field's pattern (the field as a predictor), quantised with the same
step as PCA's b-bit scores, so that the distortion is PCA's, and compressed
with the same codec (``compression._compress_best``, delta filter included);
its bytes are the network file's plus the components' plus the residual maps'.
The same again against ``compression.py``'s stronger PCA (int8 components,
all scores quantised with one step, ``STEPS``), where the hybrid stores only
what predicting the scores needs: the network (the file's arrays but the
bases, through the best codec) and the bases projected on the components
(float32), from which its predictions are computed.
Then sparse corrections: the field everywhere except at the points where it
is furthest behind PCA, which get PCA's quantised scores (see
``_sparse_corrections``).

On the real 200 x 200 crop (``compression.py``'s data cache
``_out/calvat_crop.npy``) with the rank-32 int8 model of the compression
benchmark: ``python benchmarks/compression_residual.py
_out/compression/files/neural_r32_w256_l5_int8.h5 [JSON]`` (about 13 min on
2 cores); writes ``results/compression_residual.json``, or JSON. Crop ratios
are against the raw uint16 patterns; full-map ratios extrapolate as
``compression.py`` does (the network and components stay, the score maps
grow 22.5x).
"""

from __future__ import annotations

import json
import math
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
STEPS = (8, 16, 32, 64)  # one-step quantisation, counts per pixel
MAX_COMPONENTS = max(RANKS) - 1


SPARSE_RANK, SPARSE_BITS = 32, 6  # one of RANKS, BITS
SPARSE_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.7, 0.9)


def _decoded_point_mae(mean, scores, components, data, mask) -> np.ndarray:
    return C._point_maes(lambda a, b: mean + scores[a:b] @ components, data, mask)


def _sparse_corrections(field_mae, pca, raw_bytes, network_bytes) -> dict:
    """The field everywhere, PCA's pattern at the points where the field is
    furthest behind it: is the field's gap to PCA concentrated in few points
    (precipitates, boundaries) that a few stored scores could buy back?

    ``pca``: PCA at ``SPARSE_RANK`` with ``SPARSE_BITS``-bit scores as the
    main loop coded it (``codes``, per-point MAE ``point_mae``, the bytes of
    its mean and components ``fixed`` and of its score maps ``maps``). The
    points with the largest (field MAE - PCA MAE) are corrected, for each
    fraction in ``SPARSE_FRACTIONS``. Bytes: the network file, PCA's mean and
    components, the corrected points as a bitmask and their codes
    (component-major, best codec); on the full map the mask and codes grow
    with the points. Returns rows for the JSON.
    """
    n = len(field_mae)
    codes, pca_mae, fixed = pca["codes"], pca["point_mae"], pca["fixed"]
    gap = field_mae - pca_mae
    order = np.argsort(-gap)
    scale = C.FULL_MAP_POINTS / n
    quantiles = np.quantile(gap, [0.1, 0.5, 0.9, 0.99])
    out = {
        "rank": SPARSE_RANK,
        "bits": SPARSE_BITS,
        "field_mae": float(field_mae.mean()),
        "pca_mae": float(pca_mae.mean()),
        "gap_quantiles_10_50_90_99": [float(v) for v in quantiles],
        "pca_bytes_crop": fixed + pca["maps"],
        "pca_bytes_full": int(fixed + pca["maps"] * scale),
        "rows": [],
    }
    for fraction in SPARSE_FRACTIONS:
        chosen = np.zeros(n, bool)
        chosen[order[: int(round(fraction * n))]] = True
        mask_bytes, _ = C._compress_best(np.packbits(chosen).tobytes())
        point_codes, _ = C._compress_best(
            np.ascontiguousarray(codes[chosen].T).tobytes()
        )
        per_point = mask_bytes + point_codes
        row = {
            "fraction": fraction,
            "share_of_gap": float(gap[chosen].sum() / gap.sum()),
            "mae": float(np.where(chosen, pca_mae, field_mae).mean()),
            "bytes_crop": network_bytes + fixed + per_point,
            "bytes_full": int(network_bytes + fixed + per_point * scale),
        }
        row["ratio_crop"] = raw_bytes / row["bytes_crop"]
        row["ratio_full"] = raw_bytes * scale / row["bytes_full"]
        out["rows"].append(row)
    print(
        f"\nSparse corrections, PCA rank {SPARSE_RANK} at {SPARSE_BITS} bits: field "
        f"{out['field_mae']:.1f} counts, PCA {out['pca_mae']:.1f} counts "
        f"(ratio crop {raw_bytes / out['pca_bytes_crop']:.0f}, full map "
        f"{raw_bytes * scale / out['pca_bytes_full']:.0f}); per-point gap quantiles "
        f"10/50/90/99 %: {', '.join(f'{v:.0f}' for v in quantiles)} counts"
    )
    print("| corrected points | share of the gap | MAE | ratio crop | ratio full map |")
    print("|---|---|---|---|---|")
    for r in out["rows"]:
        print(
            f"| {r['fraction']:.0%} | {r['share_of_gap']:.2f} | {r['mae']:.1f} "
            f"| {r['ratio_crop']:.0f} | {r['ratio_full']:.0f} |"
        )
    return out


def _sizes(fixed, pca_maps, predictor, residual_maps, raw_bytes, scale) -> dict:
    """Bytes and compression ratios, crop and full map, of PCA (``fixed``:
    mean and components, plus its score maps) and of the hybrid (the
    ``predictor``, ``fixed`` and the residual maps); the maps grow with the
    points (``scale``), the rest does not."""
    sizes = dict(
        pca_score_maps_bytes=pca_maps,
        residual_maps_bytes=residual_maps,
        pca_bytes_crop=fixed + pca_maps,
        hybrid_bytes_crop=predictor + fixed + residual_maps,
        pca_bytes_full=int(fixed + pca_maps * scale),
        hybrid_bytes_full=int(predictor + fixed + residual_maps * scale),
    )
    for where, raw in (("crop", raw_bytes), ("full", raw_bytes * scale)):
        for method in ("pca", "hybrid"):
            sizes[f"{method}_ratio_{where}"] = raw / sizes[f"{method}_bytes_{where}"]
    return sizes


def main(model_path: str, results: Path = RESULTS) -> None:
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
    field_point_mae = np.empty(n)
    grid = model.geometry.grid_xy().reshape(-1, 2)
    flat = data.reshape(n, -1)
    for a in range(0, n, C._BLOCK):
        patterns = model.query(grid[a : a + C._BLOCK]).reshape(-1, len(mean))
        predicted[a : a + C._BLOCK] = (patterns - mean) @ components.T
        field_point_mae[a : a + C._BLOCK] = C._point_mae(
            patterns, flat[a : a + C._BLOCK], mask
        )
    print(f"field decoded and projected in {time.perf_counter() - t:.0f} s")

    # The one-step hybrid stores only what predicting the scores needs: the
    # network (every array of the file but the bases) and the bases projected
    # on the components; the scores' prediction is computed from exactly
    # those.
    intensity_lo, intensity_hi = model.intensity_range
    with torch.no_grad():
        coefficients = model.field.coefficients(
            torch.from_numpy(model.geometry.normalize(grid))
        ).numpy()
    bases = model.field.bases.detach().numpy() * (intensity_hi - intensity_lo)
    network_only = C._payload_bytes(model_path, skip_prefix="bases")

    scale = C.FULL_MAP_POINTS / n
    m16 = mean.astype(np.float16).astype(np.float32)
    rows = []
    for rank in RANKS:
        k = rank - 1
        fixed, _ = C._components_bytes(mean, components[:k])
        fixed += 8 * k  # per-component offset and step
        c16 = components[:k].astype(np.float16).astype(np.float32)
        residual = scores[:, :k] - predicted[:, :k]
        for bits in BITS:
            codes, lo, step = C._quantise(scores[:, :k], bits)
            pca_maps, _ = C._score_maps_bytes(codes, (ny, nx))
            pca_values = lo + codes.astype(np.float32) * step
            r_lo = residual.min(axis=0)
            r_codes = np.rint((residual - r_lo) / step).astype(np.int64)
            r_codes = r_codes.astype(np.uint8 if r_codes.max() < 256 else "<u2")
            residual_maps, _ = C._score_maps_bytes(r_codes, (ny, nx))
            hybrid_values = predicted[:, :k] + r_lo + r_codes * step
            pca_point_mae = _decoded_point_mae(m16, pca_values, c16, data, mask)
            if (rank, bits) == (SPARSE_RANK, SPARSE_BITS):
                sparse_pca = dict(
                    codes=codes, point_mae=pca_point_mae, fixed=fixed, maps=pca_maps
                )
            row = dict(
                rank=rank,
                bits=bits,
                residual_std_over_score_std=float(
                    (residual.std(axis=0) / scores[:, :k].std(axis=0)).mean()
                ),
                pca_mae=float(pca_point_mae.mean()),
                hybrid_mae=float(
                    _decoded_point_mae(m16, hybrid_values, c16, data, mask).mean()
                ),
                **_sizes(
                    fixed, pca_maps, network_bytes, residual_maps, raw_bytes, scale
                ),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
        # The same with compression.py's stronger PCA: int8 components, all
        # scores (and residuals) quantised with one step.
        m8, c8, fixed8, _ = C._int8_components(mean, components[:k], data.shape[2:])
        fixed8 += 4 + 4 * k  # the step and an integer offset per component
        # float32: projected bases reach millions of counts
        projection = (bases @ components[:k].T).astype(np.float32)
        offset = ((intensity_lo - mean) @ components[:k].T).astype(np.float32)
        lean_predicted = coefficients @ projection + offset
        predictor_bytes = network_only + 4 * (projection.size + offset.size)
        drift = np.abs(lean_predicted - predicted[:, :k]).max()
        print(f"rank {rank}: projected bases move predicted scores by <= {drift:.1f}")
        lean_residual = scores[:, :k] - lean_predicted
        for per_pixel in STEPS:
            step = per_pixel * math.sqrt(components.shape[1])
            pca_values, pca_maps, _ = C._one_step(scores[:, :k], step, (ny, nx))
            r_values, residual_maps, _ = C._one_step(lean_residual, step, (ny, nx))
            row = dict(
                rank=rank,
                step_per_pixel=per_pixel,
                pca_mae=float(
                    _decoded_point_mae(m8, pca_values, c8, data, mask).mean()
                ),
                hybrid_mae=float(
                    _decoded_point_mae(
                        m8, lean_predicted + r_values, c8, data, mask
                    ).mean()
                ),
                predictor_bytes=predictor_bytes,
                **_sizes(
                    fixed8, pca_maps, predictor_bytes, residual_maps, raw_bytes, scale
                ),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    sparse = _sparse_corrections(field_point_mae, sparse_pca, raw_bytes, network_bytes)
    results.write_text(
        json.dumps(
            dict(model=Path(model_path).name, rows=rows, sparse_corrections=sparse),
            indent=1,
        )
        + "\n"
    )
    print("\n| rank | quantiser | MAE (PCA / hybrid) | "
          "score maps: PCA / residual bytes | ratio crop: PCA / hybrid | "
          "ratio full map: PCA / hybrid |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        quantiser = (
            f"{r['bits']}-bit" if "bits" in r else f"one step {r['step_per_pixel']}/px"
        )
        print(
            f"| {r['rank']} | {quantiser} | {r['pca_mae']:.1f} / {r['hybrid_mae']:.1f} "
            f"| {r['pca_score_maps_bytes']:,} / {r['residual_maps_bytes']:,} "
            f"| {r['pca_ratio_crop']:.0f} / {r['hybrid_ratio_crop']:.0f} "
            f"| {r['pca_ratio_full']:.0f} / {r['hybrid_ratio_full']:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1], *(Path(p) for p in sys.argv[2:3]))
