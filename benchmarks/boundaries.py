"""Boundary localisation: ridges of the diffraction gradient against grid
thresholding of orientations, on synthetic maps whose boundaries are known.

For each map (64 x 64 scans of 60 x 60 px by default: a recrystallised-like
map with annealing twins, and one with intragranular orientation gradients),
in one run:

- fit the factorized field with default options (or load it from ``--cache``);
- trace boundaries as ridges of S on a grid ``--factor`` times finer, the
  same ridge pixels refined three ways: none (fine-grid pixels), the parabola
  peak of S, the centroid of S across the ridge (the default);
- the conventional route: Hough indexing (kikuchipy + PyEBSDIndex) and
  disorientation thresholding between neighbouring scan points (>= 2 deg),
  boundary points at the midpoints; and the same thresholding of the *true*
  orientations (perfect indexing), the best any grid method can do;
- metrics against the truth (``s.truth.boundary_distance``), in scan steps:
  localisation error of every detected point (median, 90th and 99th
  percentiles), recall (share of the true boundary length within 0.5 step of
  a detected point: true boundaries sampled as the points of a 20x finer grid
  within 0.025 step of a boundary), precision (share of detected points
  within 0.5 step of a true boundary), and the grain count of the watershed
  segmentation against the true count (connected true grains of at least a
  quarter of a step squared on the same grid: slivers smaller than that are
  one or two grid pixels cut off at the scan's edge).

Writes ``benchmarks/results/boundaries.json``, ``boundaries.md`` (table) and
figures ``benchmarks/figures/boundaries_<map>.png`` (S with both boundary sets,
the paper's Fig. 7) and ``boundaries_errors.png`` (error distributions).

Run: ``nice -n 10 python benchmarks/boundaries.py`` (add ``--cache DIR`` to
keep the fitted models, ``--size 32`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MAPS = {
    "recrystallised": dict(twins=True),
    "gradients": dict(orientation_gradient=0.5),
}
TARGETS = dict(median=0.1, p90=0.3, recall=0.95, grains=0.05)


def build_map(name: str, size: int, pattern: int, seed: int):
    from kikuchipy_neural.data import synthetic_polycrystal

    s = synthetic_polycrystal((size, size), (pattern, pattern), seed=seed, **MAPS[name])
    truth = s.truth
    s.set_signal_type("NeuralEBSD")
    return s, truth


def fitted_model(s, name: str, cache: Path | None, seed: int):
    """Fit with default options, or load the model of an earlier run."""
    import kikuchipy_neural

    path = None
    if cache is not None:
        shape = "x".join(str(v) for v in s.data.shape)
        path = cache / f"boundaries_{name}_{shape}_seed{seed}.h5"
        if path.exists():
            model = kikuchipy_neural.load_model(path)
            s.neural_model = model
            return model, float("nan")
    start = time.perf_counter()
    model = s.fit_neural(seed=seed, show_progressbar=False)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path, precision="float32")
    return model, seconds


def true_boundary_samples(truth, geometry, factor: int = 20) -> np.ndarray:
    """Points within half a fine step of a true boundary, inside the scan:
    their number is proportional to the boundary length."""
    xy = geometry.grid_xy(factor)
    near = truth.boundary_distance(xy) < 0.5 * geometry.step / factor
    return xy[near]


def localisation(points, truth, samples, step) -> dict:
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return dict(
            n=0, median=np.nan, p90=np.nan, p99=np.nan, recall=0.0, precision=np.nan
        )
    error = truth.boundary_distance(points) / step
    reach = cKDTree(points).query(samples)[0] / step
    return dict(
        n=int(len(points)),
        median=float(np.median(error)),
        p90=float(np.percentile(error, 90)),
        p99=float(np.percentile(error, 99)),
        recall=float(np.mean(reach <= 0.5)),
        precision=float(np.mean(error <= 0.5)),
        errors=error,
    )


def true_grain_count(truth, xy, step, min_area_steps: float = 0.25) -> int:
    from skimage.measure import label

    gid = truth.grain_id_at(xy)
    components = label(gid + 1, connectivity=1, background=0)
    pixel = abs((xy[0, 1, 0] - xy[0, 0, 0]) * (xy[1, 0, 1] - xy[0, 0, 1]))
    areas = np.bincount(components.ravel())[1:] * pixel
    return int((areas >= min_area_steps * step**2).sum())


def run_map(name: str, args, cache: Path | None) -> dict:
    from kikuchipy_neural.analysis import boundaries as B
    from kikuchipy_neural.analysis.gradient import evaluate_gradient, tensor_to_normal
    from kikuchipy_neural.analysis.metrics import hough_index

    print(f"\n== {name}", flush=True)
    s, truth = build_map(name, args.size, args.pattern, args.seed)
    model, fit_seconds = fitted_model(s, name, cache, args.fit_seed)
    geometry = model.geometry
    step = geometry.step
    print(f"model {model} (fit {fit_seconds:.0f} s)", flush=True)
    samples = true_boundary_samples(truth, geometry)
    result: dict = dict(
        map=dict(name=name, shape=list(s.data.shape), seed=args.seed, **MAPS[name]),
        model=dict(rank=model.rank, fit_seconds=fit_seconds, info=model.info),
        methods={},
    )

    # S ridges, once; the refinements reuse the same ridge pixels.
    start = time.perf_counter()
    trace = B.ridge_trace(model, factor=args.factor, refine=None)
    trace_seconds = time.perf_counter() - start
    start = time.perf_counter()
    centroid, _ = B._refine_centroid(model, trace.points, trace.normals, step)
    centroid_seconds = time.perf_counter() - start
    peak, _ = B._refine_peak(model, trace.points, trace.normals, step / args.factor)
    result["thresholds"] = dict(low=trace.low, high=trace.high)
    for method, points in (
        ("S ridge, centroid (default)", centroid),
        ("S ridge, parabola peak", peak),
        (f"S ridge, fine-grid pixel (x{args.factor})", trace.points),
    ):
        result["methods"][method] = localisation(points, truth, samples, step)
    result["seconds"] = dict(ridges=trace_seconds, centroid=centroid_seconds)

    # The conventional route.
    true_ob = B.orientation_boundaries(s.xmap, thresholds=(2, 10))
    result["methods"]["grid thresholding, true orientations"] = localisation(
        true_ob.points, truth, samples, step
    )
    hough_ob = None
    if not args.no_hough:
        start = time.perf_counter()
        xmap = hough_index(s)
        result["seconds"]["hough"] = time.perf_counter() - start
        error = truth.orientation_error(xmap)
        result["hough_orientation_error_deg"] = dict(
            median=float(np.median(error)), p95=float(np.percentile(error, 95))
        )
        hough_ob = B.orientation_boundaries(xmap, thresholds=(2, 10))
        result["methods"]["grid thresholding, Hough-indexed"] = localisation(
            hough_ob.points, truth, samples, step
        )

    # Grains.
    start = time.perf_counter()
    seg = B.segment_grains(model, factor=4)
    n_true = true_grain_count(truth, seg.xy, step)
    result["grains"] = dict(
        segmented=seg.n_grains,
        truth=n_true,
        relative_error=(seg.n_grains - n_true) / n_true,
        seconds=time.perf_counter() - start,
        median_diameter=float(np.median(seg.equivalent_diameters)),
    )
    for method, r in result["methods"].items():
        print(
            f"{method:42s} n {r['n']:6d}  median {r['median']:.3f}  p90 {r['p90']:.3f}  "
            f"p99 {r['p99']:.3f}  recall {r['recall']:.3f}  precision {r['precision']:.3f}",
            flush=True,
        )
    print(f"grains: {seg.n_grains} segmented, {n_true} true", flush=True)

    # Figure: S with both boundary sets (Fig. 7), and a profile.
    final = B.BoundaryTrace(
        polylines=_relink(trace, centroid),
        points=centroid,
        strength=trace.strength,
        normals=trace.normals,
        low=trace.low,
        high=trace.high,
        factor=trace.factor,
        step=step,
        units=geometry.units,
    )
    _figure(name, s, model, final, hough_ob or true_ob, truth, args)
    s_grid = evaluate_gradient(model, geometry.grid_xy(1), "tensor")
    result["S_interior_median"] = float(
        np.median(tensor_to_normal(s_grid)[0][truth.interior_mask(0.5)])
    )
    return result


def _relink(trace, points):
    """The trace's polylines with refined points (same order)."""
    lookup = {
        tuple(p): q for p, q in zip(map(tuple, trace.points), points, strict=True)
    }
    return [np.array([lookup[tuple(p)] for p in line]) for line in trace.polylines]


def _figure(name, s, model, trace, ob, truth, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kikuchipy_neural.analysis.plotting import plot_boundaries, plot_profile

    s_map = s.diffraction_gradient(factor=4, show_progressbar=False)
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), layout="constrained")
    plot_boundaries(s_map, trace, ob, ax=axes[0])
    axes[0].set_title(f"{name}: S (log), S ridges and Hough-indexed boundaries")
    n = args.size
    zoom = (n * 0.3, n * 0.55, n * 0.55, n * 0.3)
    plot_boundaries(s_map, trace, ob, ax=axes[1], colorbar=False)
    # True boundaries in the zoom, as a thin contour of the distance.
    fine = model.geometry.grid_xy(10)
    dist = truth.boundary_distance(fine)
    axes[1].contour(
        fine[..., 0], fine[..., 1], dist, levels=[0.02], colors="lime", linewidths=0.8
    )
    axes[1].plot([], [], color="lime", lw=0.8, label="true boundaries")
    axes[1].legend(loc="upper right", fontsize="small")
    axes[1].set_xlim(zoom[0], zoom[1])
    axes[1].set_ylim(zoom[2], zoom[3])
    axes[1].set_title("zoom, with the true boundaries")
    path = HERE / "figures" / f"boundaries_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    # Profile along a row through the middle.
    y = model.geometry.y0 + model.geometry.dy * (model.geometry.ny // 2 + 0.37)
    x_end = model.geometry.x_range[1] * 0.5
    ax = plot_profile(
        s, (model.geometry.x0, y), (x_end, y), n=600, trace=trace, orientation=ob
    )
    ax.figure.savefig(HERE / "figures" / f"boundaries_{name}_profile.png", dpi=110)
    plt.close(ax.figure)
    print(f"figures: {path}", flush=True)


def _error_figure(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(results),
        figsize=(6 * len(results), 4),
        layout="constrained",
        squeeze=False,
    )
    bins = np.linspace(0, 0.8, 41)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        for method, m in r["methods"].items():
            if "errors" in m and "pixel" not in method:
                ax.hist(
                    m["errors"],
                    bins,
                    histtype="step",
                    density=True,
                    label=method,
                    lw=1.5,
                )
        ax.set_xlabel("distance to the nearest true boundary (scan steps)")
        ax.set_title(name)
        ax.legend(fontsize="small")
    path = HERE / "figures" / "boundaries_errors.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(results) -> str:
    lines = [
        "| map | method | points | median (step) | p90 (step) | p99 (step) | recall <= 0.5 step | precision <= 0.5 step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for method, m in r["methods"].items():
            lines.append(
                f"| {name} | {method} | {m['n']} | {m['median']:.3f} | {m['p90']:.3f} | "
                f"{m['p99']:.3f} | {100 * m['recall']:.1f} % | {100 * m['precision']:.1f} % |"
            )
    lines += [
        "",
        "| map | grains segmented | true grains | error |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        g = r["grains"]
        lines.append(
            f"| {name} | {g['segmented']} | {g['truth']} | {100 * g['relative_error']:+.1f} % |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--maps", default=",".join(MAPS), help="comma-separated: " + ", ".join(MAPS)
    )
    parser.add_argument("--size", type=int, default=64, help="scan side (points)")
    parser.add_argument("--pattern", type=int, default=60, help="pattern side (px)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the maps")
    parser.add_argument("--fit-seed", type=int, default=0)
    parser.add_argument(
        "--factor", type=int, default=8, help="ridge search grid refinement"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder for fitted models"
    )
    parser.add_argument("--no-hough", action="store_true", help="skip Hough indexing")
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2))
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    (HERE / "figures").mkdir(exist_ok=True)
    (HERE / "results").mkdir(exist_ok=True)
    results = {}
    for name in args.maps.split(","):
        if name not in MAPS:
            parser.error(f"unknown map {name!r}; choose from {sorted(MAPS)}")
        results[name] = run_map(name, args, args.cache)
    _error_figure(results)
    table = _table(results)
    print("\n" + table)
    for r in results.values():
        for m in r["methods"].values():
            m.pop("errors", None)
    (HERE / "results" / "boundaries.json").write_text(
        json.dumps(
            dict(args={k: str(v) for k, v in vars(args).items()}, results=results),
            indent=1,
            default=float,
        )
    )
    (HERE / "results" / "boundaries.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
