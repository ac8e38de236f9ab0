"""Per-point codes on top of the field: can they put the neural curve ahead of
quantised PCA below the best field's MAE? (issue 7)

Below ~343 counts on the real crop every neural file trails PCA with
quantised score maps: the field has no per-point degrees of freedom, and the
field's gap to PCA is broad (``compression_residual.py``). This script
measures the three ways a model file could buy them back, each coded the way
PCA's baseline is (per-component ``bits``-bit min/max quantisation,
``compression._quantise``; component-major maps through the best codec,
``compression._score_maps_bytes``), so that only the representation differs:

1. **Leading codes**: each point gets least-squares coefficients on the
   field's first ``k`` bases for its residual (measured minus field pattern),
   ``k`` in ``LEADING``. If the field's deficit sat in a few directions (a
   gain, a background, the leading bands), a few codes per point would close
   most of it for a few bytes per point.
2. **Full codes, refined for the MAE** (models of rank <= ``MAX_REFINED``):
   codes on all bases, then bases and codes refined together by Adam on the
   MAE itself (the field's network frozen; ``EPOCHS`` epochs of
   ``BATCH``-point batches, cosine learning rate), which PCA (least squares)
   cannot do. The refined bases are written back into the model and the
   model re-saved at the file's precision, so that bytes and MAE are those
   of a real file. Bytes: that file plus the code maps.
3. **Local rank of the residual**: per 10 x 10 tile of the scan, the MAE left
   after the best rank-``k`` approximation (SVD) of the tile's residuals,
   against the same for random groups of 100 points. A per-point deficit
   with few local degrees of freedom (orientation or pattern-centre jitter
   within a grain) would leave much less in tiles than in random groups;
   then a latent of a few dimensions per point, decoded by the network,
   could code it. (Fitted on the tile itself, so both numbers are optimistic
   by the same overfit.)

``python benchmarks/compression_point_codes.py MODEL [MODEL ...]`` (the
crop cache ``_out/calvat_crop.npy`` of ``compression.py``); writes
``results/compression_point_codes.json`` and ``figures/compression_point_codes.png``
(``--replot`` redraws the figure from the JSON). Crop and full-map ratios as in
``compression.py`` (network and bases stay, code maps grow 22.5x).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compression as C  # noqa: E402

RESULTS = HERE / "results" / "compression_point_codes.json"
FIGURE = HERE / "figures" / "compression_point_codes.png"
LEADING = (4, 8, 16)
BITS = (5, 6, 8)
MAX_REFINED = 64
EPOCHS, BATCH = 20, 1000
TILE = 10
LOCAL_RANKS = (1, 2, 4, 8)


def _coded(codes_float: np.ndarray, bits: int, shape) -> tuple[np.ndarray, int]:
    """PCA's quantiser and map coder applied to per-point codes: the
    dequantised values and the maps' bytes."""
    codes, lo, step = C._quantise(codes_float, bits)
    maps, _ = C._score_maps_bytes(codes, shape)
    return lo + codes.astype(np.float32) * step, maps


def _least_squares(residual: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Coefficients ``(n, k)`` minimising ``||residual - c @ bases||_2``."""
    gram = bases.astype(np.float64) @ bases.T.astype(np.float64)
    return ((residual @ bases.T) @ np.linalg.inv(gram).astype(np.float32)).astype(
        np.float32
    )


def _mae(base: np.ndarray, codes: np.ndarray, bases: np.ndarray, measured) -> float:
    """Map MAE of ``base + codes @ bases`` against ``measured`` (aperture
    pixels, all ``(n, p)``), in blocks."""
    total = 0.0
    for a in range(0, len(base), C._BLOCK):
        b = slice(a, a + C._BLOCK)
        diff = base[b] + codes[b] @ bases - measured[b]
        total += np.abs(diff).mean(axis=1).sum()
    return float(total / len(base))


def _row(kind, k, bits, mae, fixed_bytes, maps, raw, scale) -> dict:
    row = dict(
        kind=kind,
        codes_per_point=k,
        bits=bits,
        mae=float(mae),
        code_map_bytes=maps,
        bytes_crop=fixed_bytes + maps,
        bytes_full=int(fixed_bytes + maps * scale),
    )
    row["ratio_crop"] = raw / row["bytes_crop"]
    row["ratio_full"] = raw * scale / row["bytes_full"]
    print(json.dumps(row), flush=True)
    return row


def _refine(coef, codes, bases, measured, seed: int = 0):
    """Bases and codes refined for the MAE by Adam, the field's coefficients
    ``coef`` fixed: pattern = (coef + codes) @ bases."""
    gen = torch.Generator().manual_seed(seed)
    coef_t, meas_t = torch.from_numpy(coef), torch.from_numpy(measured)
    d = torch.from_numpy(codes.copy()).requires_grad_(True)
    b = torch.from_numpy(bases.copy()).requires_grad_(True)
    # Steps relative to each tensor's scale; 5x (codes) and 10x (bases)
    # larger ones, without the cosine decay, diverged on the crop (the MAE
    # rose from 336 to 377 counts within 10 epochs).
    opt = torch.optim.Adam(
        [
            {"params": [d], "lr": 2e-3 * float(d.detach().std())},
            {"params": [b], "lr": 2e-4 * float(b.detach().abs().mean())},
        ]
    )
    n = len(coef)
    steps = EPOCHS * -(-n // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(EPOCHS):
        for idx in torch.randperm(n, generator=gen).split(BATCH):
            loss = (meas_t[idx] - (coef_t[idx] + d[idx]) @ b).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return d.detach().numpy(), b.detach().numpy()


def _local_rank(residual: np.ndarray, shape, seed: int = 0) -> dict:
    """MAE left after a rank-k SVD of each tile's residuals vs random groups."""
    ny, nx = shape
    index = np.arange(ny * nx).reshape(ny, nx)
    tiles = [
        index[i : i + TILE, j : j + TILE].ravel()
        for i in range(0, ny, TILE)
        for j in range(0, nx, TILE)
    ]
    shuffled = np.random.default_rng(seed).permutation(ny * nx)
    out = {}
    for label, groups in (
        ("tiles", tiles),
        ("random", np.array_split(shuffled, len(tiles))),
    ):
        left = dict.fromkeys(LOCAL_RANKS, 0.0)
        for g in groups:
            r = torch.from_numpy(residual[g])
            u, s, v = torch.linalg.svd(r, full_matrices=False)
            for k in LOCAL_RANKS:
                approx = (u[:, :k] * s[:k]) @ v[:k]
                left[k] += float((r - approx).abs().mean(dim=1).sum())
        out[label] = {k: v / len(residual) for k, v in left.items()}
    print("local rank:", json.dumps(out), flush=True)
    return out


def evaluate_model(path: str, data, mask) -> dict:
    from kikuchipy_neural.io.model_file import file_summary, load_model

    t0 = time.perf_counter()
    ny, nx = data.shape[:2]
    n = ny * nx
    raw, scale = data.size * 2, C.FULL_MAP_POINTS / n
    model = load_model(path)
    file_bytes = os.path.getsize(path)
    precision = file_summary(path)["precision"]
    lo, hi = model.intensity_range
    bases = (model.field.bases.detach().numpy() * (hi - lo))[:, mask].astype(np.float32)
    grid = model.geometry.grid_xy().reshape(-1, 2)
    flat = data.reshape(n, -1)
    measured = np.empty((n, int(mask.sum())), np.float32)
    field = np.empty_like(measured)
    for a in range(0, n, C._BLOCK):
        b = slice(a, a + C._BLOCK)
        measured[b] = flat[b][:, mask]
        field[b] = model.query(grid[b]).reshape(-1, flat.shape[1])[:, mask]
    residual = measured - field
    field_mae = float(np.abs(residual).mean(axis=1).mean())
    print(
        f"{Path(path).name}: field {field_mae:.1f} counts, {file_bytes:,} B", flush=True
    )
    result = dict(
        model=Path(path).name,
        rank=model.rank,
        file_bytes=file_bytes,
        field_mae=field_mae,
        rows=[],
    )

    least_squares = {}
    for k in [k for k in LEADING if k < model.rank] + [model.rank]:
        least_squares[k] = codes = _least_squares(residual, bases[:k])
        for bits in BITS:
            values, maps = _coded(codes, bits, (ny, nx))
            mae = _mae(field, values, bases[:k], measured)
            result["rows"].append(
                _row("least squares", k, bits, mae, file_bytes, maps, raw, scale)
            )

    if model.rank <= MAX_REFINED:
        t = time.perf_counter()
        with torch.no_grad():
            coef = model.field.coefficients(
                torch.from_numpy(model.geometry.normalize(grid))
            ).numpy()
        codes, refined = _refine(coef, least_squares[model.rank], bases, measured - lo)
        # Write the refined bases into the model (pixels outside the
        # aperture keep theirs) and re-save at the file's precision: bytes
        # and MAE of a real file.
        full = model.field.bases.detach().numpy().copy()
        full[:, mask] = refined / (hi - lo)
        model.field.bases.data = torch.from_numpy(full)
        with tempfile.TemporaryDirectory() as tmp:
            refined_path = Path(tmp) / "refined.h5"
            model.save(refined_path, precision=precision)
            refined_bytes = os.path.getsize(refined_path)
            stored = load_model(refined_path)
        stored_bases = (stored.field.bases.detach().numpy() * (hi - lo))[:, mask]
        base = coef @ stored_bases + lo
        result["refine_seconds"] = time.perf_counter() - t
        result["refined_file_bytes"] = refined_bytes
        result["refined_unquantised_mae"] = _mae(base, codes, stored_bases, measured)
        print(
            f"refined in {result['refine_seconds']:.0f} s: unquantised "
            f"{result['refined_unquantised_mae']:.1f} counts",
            flush=True,
        )
        for bits in BITS:
            values, maps = _coded(codes, bits, (ny, nx))
            mae = _mae(base, values, stored_bases, measured)
            result["rows"].append(
                _row("refined", model.rank, bits, mae, refined_bytes, maps, raw, scale)
            )
    result["local_rank"] = _local_rank(residual, (ny, nx))
    result["seconds"] = time.perf_counter() - t0
    return result


def _figure(results: list[dict], path: Path) -> None:
    """Field + codes points over the low-MAE end of ``compression.py``'s
    rate-distortion curves (PCA lines and the neural front from its JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = json.loads(C.RESULTS.read_text())
    rows = base["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, key, code_key, title in (
        (axes[0], "bytes", "bytes_crop", "200 x 200 crop (measured)"),
        (axes[1], "bytes_full_map", "bytes_full", "900 x 1000 map (extrapolated)"),
    ):
        for method, style in (
            ("pca_f16", dict(color="0.3", marker="s")),
            ("pca_q8", dict(color="C1", marker="^")),
            ("pca_q6", dict(color="C2", marker="v")),
        ):
            sel = sorted(
                (r for r in rows if r["method"] == method), key=lambda r: r[key]
            )
            ax.plot([r[key] for r in sel], [r["mae_counts"] for r in sel], ms=5,
                    label=sel[0]["label"], **style)  # fmt: skip
        one_step = C._front([r for r in rows if r["method"] == "pca_u"], key)
        if one_step:
            ax.plot([r[key] for r in one_step], [r["mae_counts"] for r in one_step],
                    color="C5", lw=1.5, label=one_step[0]["label"] + " (front)")  # fmt: skip
        front = C._front([r for r in rows if r["method"] == "neural"], key)
        ax.plot([r[key] for r in front], [r["mae_counts"] for r in front], "ko--",
                ms=4, lw=1, label="neural files (front)")  # fmt: skip
        for i, result in enumerate(results):
            color = ("C0", "C3", "C4")[i % 3]
            for kind, marker in (("least squares", "P"), ("refined", "*")):
                sel = [r for r in result["rows"] if r["kind"] == kind]
                if sel:
                    ax.scatter([r[code_key] for r in sel], [r["mae"] for r in sel],
                               color=color, marker=marker, s=60 if marker == "*" else 35,
                               edgecolor="k", lw=0.4, zorder=3,
                               label=f"rank-{result['rank']} field + codes, {kind}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("stored bytes")
        ax.set_title(title)
    axes[0].set_ylim(312, 372)
    axes[0].set_ylabel("map MAE inside the aperture (counts)")
    axes[1].legend(fontsize=7, loc="upper right", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str]) -> None:
    """``MODEL [MODEL ...]`` to measure, or ``--replot`` to redraw the figure
    from the JSON."""
    if argv != ["--replot"]:
        torch.set_num_threads(2)
        data = np.load(C.HERE / "_out" / "calvat_crop.npy", mmap_mode="r")
        mask = C._aperture(data.shape[2:])
        results = [evaluate_model(p, data, mask) for p in argv]
        RESULTS.write_text(json.dumps(dict(models=results), indent=1) + "\n")
    _figure(json.loads(RESULTS.read_text())["models"], FIGURE)


if __name__ == "__main__":
    main(sys.argv[1:])
