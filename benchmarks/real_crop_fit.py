"""Fit the factorized field to the real 200x200 crop of 120x120 patterns.

The Ni-superalloy crop of ``../shared/data/real/rx_ni_superalloy_calvat``
(Calvat et al., CC0), fitted on the crop only with the package's defaults
(rank from the noise edge, default sampler) and any ``--option KEY=VALUE``
(recorded in the JSON). Reported: time on this machine,
model bytes (file at float16), and the paper's map MAE inside the circular
aperture (counts and % of the crop's max) over every point, next to PCA at
the same rank. The paper's own model on this crop: MAE 350 counts.

Run: ``python benchmarks/real_crop_fit.py [--time-budget S] [--rows 200]
[--option KEY=VALUE ...] [--name NAME]``.
Writes benchmarks/results/NAME.json and benchmarks/figures/NAME.png
(``--name``, default ``real_crop_fit``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="square sub-crop size")
    parser.add_argument("--time-budget", type=float, default=None)
    parser.add_argument("--rank", default="auto")
    parser.add_argument(
        "--option", action="append", default=[], help="KEY=VALUE fit option"
    )
    parser.add_argument(
        "--name", default="real_crop_fit", help="stem of the result JSON and figure"
    )
    args = parser.parse_args()

    import torch
    from _real_data import load_calvat_crop

    from kikuchipy_neural.analysis.coefficients import plot_coefficient_field
    from kikuchipy_neural.analysis.metrics import map_mae
    from kikuchipy_neural.cli import parse_option

    torch.set_num_threads(2)
    n = args.rows
    s = load_calvat_crop(slice(0, n), slice(0, n))
    s.set_signal_type("NeuralEBSD")
    measured = s.data
    full_scale = float(measured.max())
    rank = args.rank if args.rank == "auto" else int(args.rank)
    options = dict(parse_option(o) for o in args.option)

    started = time.perf_counter()
    model = s.fit_neural(
        rank=rank, time_budget=args.time_budget, show_progressbar=True, **options
    )
    fit_seconds = time.perf_counter() - started
    rec = model.reconstruct()
    mae = map_mae(rec, measured, full_scale=full_scale)
    mae_field = mae
    if model.point_intensity is not None:
        # The field alone, for comparison with fits without the option.
        table, model.point_intensity = model.point_intensity, None
        mae_field = map_mae(model.reconstruct(), measured, full_scale=full_scale)
        model.point_intensity = table

    # PCA at the same rank, from the same kind of subsample, on every point.
    x = torch.from_numpy(measured.reshape(n * n, -1).astype(np.float32))
    mean = x.mean(0)
    torch.manual_seed(0)
    _, _, v = torch.svd_lowrank(
        x[:: max(1, (n * n) // 20000)] - mean, q=model.rank + 20, niter=4
    )
    v = v[:, : model.rank - 1]
    pca = (mean + (x - mean) @ v @ v.T).numpy().reshape(measured.shape)
    pca_mae = map_mae(pca, measured, full_scale=full_scale)
    del x, pca

    # Kept for ``compression.py evaluate --models benchmarks/_out/real_crop``.
    keep = HERE / "_out" / "real_crop"
    keep.mkdir(parents=True, exist_ok=True)
    model.save(keep / f"neural_real_crop_{n}.h5", precision="float32")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {
            p: model.save(Path(tmp) / f"m_{p}.h5", precision=p).stat().st_size
            for p in ("float32", "float16")
        }
    raw = measured.size * 2
    result = {
        "crop": f"{n}x{n} points of 120x120 px (rows/cols 0..{n - 1} of the 200x200 crop)",
        "rank": model.rank,
        "parameters": model.n_parameters,
        "fit_seconds": fit_seconds,
        "steps": model.info["steps"],
        "stop_reason": model.info["stop_reason"],
        "refit_bases": model.info.get("refit_bases"),
        "torch_threads": torch.get_num_threads(),
        "mae_aperture_counts": mae.counts,
        "mae_aperture_percent_of_max": mae.percent_of_max,
        "mae_aperture_counts_without_point_intensity": mae_field.counts,
        "pca_same_rank_mae_aperture_counts": pca_mae.counts,
        "file_bytes": sizes,
        "raw_uint16_bytes": raw,
        "compression_ratio": {p: raw / b for p, b in sizes.items()},
        "options": options,
        "history": {k: list(v) for k, v in model.history.items()},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kikuchipy_neural.analysis.metrics import pattern_mae

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    model.plot_history(ax=axes[0])
    plot_coefficient_field(model, ax=axes[1])
    im = axes[2].imshow(pattern_mae(rec, measured), cmap="viridis")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[2].set_title("MAE in the aperture (counts)")
    i = j = n // 2
    axes[3].imshow(np.hstack([measured[i, j], rec[i, j]]), cmap="gray")
    axes[3].set_title(f"measured | reconstructed, point ({i}, {j})")
    axes[3].axis("off")
    fig.tight_layout()
    (HERE / "figures").mkdir(exist_ok=True)
    fig.savefig(HERE / "figures" / f"{args.name}.png", dpi=110)


if __name__ == "__main__":
    main()
