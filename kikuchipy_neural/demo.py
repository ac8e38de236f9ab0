"""The whole pipeline on an embedded synthetic map, written as a report.

``kikuchipy-neural demo`` runs :func:`run_demo`: simulate a Ni polycrystal
with known truth, fit the factorized field, reconstruct every pattern,
Hough-index measured and reconstructed patterns, and write figures, a summary
table (Markdown and JSON), an HTML page showing both, and the model file.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo simulates and how it fits.

    The default is a recrystallised-like 64x64 map (twins on) of 60x60
    patterns, fitted with the package's defaults: a few minutes on 2 cores.
    ``quick()`` is a tiny map for smoke tests.
    """

    shape: tuple[int, int] = (64, 64)
    pattern_shape: tuple[int, int] = (60, 60)
    twins: bool = True
    seed: int = 0
    fit_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            shape=(16, 16),
            pattern_shape=(40, 40),
            twins=False,
            fit_options=(
                ("siren_width", 128),
                ("siren_layers", 3),
                ("eval_every", 10),
                ("patience", 5),
                ("warm_start_patience", 8),
                ("lr_ramp_steps", 20),
            ),
        )


def _ipf_rgb(xmap) -> np.ndarray:
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation
    from orix.vector import Vector3d

    phase = xmap.phases[xmap.phases.ids[0]]
    orientations = Orientation(xmap.rotations, symmetry=phase.point_group)
    key = IPFColorKeyTSL(phase.point_group.laue, direction=Vector3d.zvector())
    return key.orientation2color(orientations).reshape(*xmap.shape, 3)


def _validation_rows(report: dict[str, Any] | None) -> dict[str, Any]:
    """Summary rows of the fit's held-out report (model.validation)."""
    if not report:
        return {}
    n = report["n_points"]
    rows = {
        f"held-out MAE vs measured, {name} ({n} points never trained on)": round(
            report["mae"][key], 1
        )
        for key, name in (
            ("field", "field"),
            ("interpolation", "linear interpolation"),
            ("pca", "interpolation of PCA-denoised patterns, same rank"),
        )
        if report["mae"].get(key) is not None
    }
    rows["field worse than"] = ", ".join(report["worse_than"]) or "no baseline"
    return rows


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def run_demo(
    out: str | Path, config: DemoConfig | None = None, progress: bool = True
) -> dict:
    """Run the pipeline and write the report into ``out`` (created).

    Returns
    -------
    summary
        The numbers of the summary table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kikuchipy_neural.analysis import coefficients as coef
    from kikuchipy_neural.analysis.metrics import (
        hough_index,
        map_mae,
        orientation_deviation,
        pattern_mae,
    )
    from kikuchipy_neural.data import synthetic_polycrystal

    config = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    figures: dict[str, str] = {}
    started = time.perf_counter()

    say(f"[1/5] Simulating a {config.shape[0]}x{config.shape[1]} Ni map ...")
    s = synthetic_polycrystal(
        config.shape, config.pattern_shape, twins=config.twins, seed=config.seed
    )
    truth = s.truth
    s.set_signal_type("NeuralEBSD")
    measured = s.data.astype(np.float32)
    full_scale = float(measured.max())

    say("[2/5] Fitting the factorized neural field ...")
    model = s.fit_neural(
        seed=config.seed, show_progressbar=progress, **dict(config.fit_options)
    )
    model_path = out / "model.h5"
    model.save(model_path)

    say("[3/5] Reconstructing and measuring errors ...")
    rec = s.neural_reconstruct()
    mae_measured = map_mae(rec, measured, full_scale=full_scale)
    mae_truth = map_mae(rec, truth.clean, full_scale=full_scale)
    floor = map_mae(measured, truth.clean, full_scale=full_scale)
    denoised = map_mae(s.neural_denoise(), truth.clean, full_scale=full_scale)

    say("[4/5] Hough indexing measured and reconstructed patterns ...")
    phases = s.xmap.phases
    xmap_measured = hough_index(s, phase_list=phases)
    xmap_rec = hough_index(
        rec, phase_list=phases, static_background=s.static_background
    )
    dev_rec_meas, frac_rec_meas = orientation_deviation(xmap_rec, xmap_measured)
    _, frac_meas_truth = orientation_deviation(xmap_measured, s.xmap)
    _, frac_rec_truth = orientation_deviation(xmap_rec, s.xmap)

    say("[5/5] Writing figures and the summary ...")
    extent = (*model.geometry.x_range, *model.geometry.y_range[::-1])
    units = model.geometry.units

    def label(ax) -> None:
        ax.set_xlabel(f"x ({units})")
        ax.set_ylabel(f"y ({units})")

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for ax, (title, xm) in zip(
        axes[:3],
        (
            ("truth", s.xmap),
            ("Hough: measured", xmap_measured),
            ("Hough: reconstructed", xmap_rec),
        ),
        strict=True,
    ):
        ax.imshow(_ipf_rgb(xm), extent=extent, interpolation="nearest")
        ax.set_title(f"IPF-Z, {title}")
        label(ax)
    im = axes[3].imshow(dev_rec_meas, extent=extent, cmap="magma", vmin=0, vmax=5)
    axes[3].set_title("reconstructed vs measured (deg)")
    label(axes[3])
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    figures["Orientation maps (IPF-Z) and their difference"] = _save(
        fig, out / "orientations.png"
    )

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (title, ref) in zip(
        axes, (("measured", measured), ("noise-free truth", truth.clean)), strict=True
    ):
        im = ax.imshow(pattern_mae(rec, ref), extent=extent, cmap="viridis")
        ax.set_title(f"MAE vs {title} (counts)")
        label(ax)
        fig.colorbar(im, ax=ax, fraction=0.046)
    figures["Per-pattern MAE inside the aperture"] = _save(fig, out / "mae_maps.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    model.plot_history(ax=ax)
    figures["Training curve"] = _save(fig, out / "training.png")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    model.plot_spectrum(ax=ax)
    figures["PCA spectrum, noise edge and chosen rank"] = _save(
        fig, out / "spectrum.png"
    )

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    coef.plot_coefficient_field(model, factor=2, ax=ax)
    figures["Coefficient field (PCA of A to RGB), 2x finer than the scan"] = _save(
        fig, out / "coefficients.png"
    )
    fig, axes = plt.subplots(1, 6, figsize=(11, 2.2))
    coef.plot_bases(model, 6, axes)
    figures["Learned bases"] = _save(fig, out / "bases.png")

    i, j = np.unravel_index(
        np.argmax(truth.boundary_distance_grid < 0.5), truth.grain_id.shape
    )
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9))
    for ax, (title, image) in zip(
        axes,
        (
            ("measured", measured[i, j]),
            ("reconstructed", rec.data[i, j]),
            ("truth", truth.clean[i, j]),
        ),
        strict=True,
    ):
        ax.imshow(image, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"pattern at a boundary, row {i}, column {j}")
    figures["A boundary pattern"] = _save(fig, out / "patterns.png")

    raw_bytes = measured.size * 2
    file_bytes = model_path.stat().st_size
    summary = {
        "map": f"synthetic Ni {config.shape[0]}x{config.shape[1]}, "
        f"{config.pattern_shape[0]}x{config.pattern_shape[1]} px, twins={config.twins}",
        "rank": model.rank,
        "parameters": model.n_parameters,
        "fit seconds": round(model.info["seconds"], 1),
        "fit steps": model.info["steps"],
        "MAE vs measured (counts)": round(mae_measured.counts, 1),
        "MAE vs measured (% of max)": round(mae_measured.percent_of_max, 3),
        "MAE vs truth (counts)": round(mae_truth.counts, 1),
        "noise floor: measured vs truth (counts)": round(floor.counts, 1),
        "MAE vs truth, measured patterns denoised with the field "
        "(neural_denoise, counts)": round(denoised.counts, 1),
        ">= 4 deg, reconstructed vs measured indexing (%)": round(
            100 * frac_rec_meas, 2
        ),
        ">= 4 deg, measured indexing vs truth (%)": round(100 * frac_meas_truth, 2),
        ">= 4 deg, reconstructed indexing vs truth (%)": round(100 * frac_rec_truth, 2),
        **_validation_rows(model.validation),
        "model file (bytes, float16)": file_bytes,
        "raw uint16 patterns (bytes)": raw_bytes,
        "compression ratio": round(raw_bytes / file_bytes, 1),
        "total seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["# kikuchipy-neural demo", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += [""] + [
        f"## {title}\n\n![{title}]({name})\n" for title, name in figures.items()
    ]
    (out / "report.md").write_text("\n".join(lines))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    body = "".join(
        f"<h2>{html.escape(t)}</h2><img src='{html.escape(n)}'>"
        for t, n in figures.items()
    )
    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>kikuchipy-neural demo</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}img{max-width:100%}</style>"
        f"<h1>kikuchipy-neural demo</h1><table>{rows}</table>{body}"
    )
    say(f"Report written to {out / 'report.html'}")
    return summary
