"""Quality across maps: super-resolution, denoising and boundaries on maps of
many sizes, grain sizes, noise levels and masks, each against the baseline a
materials scientist would use instead.

Each *cell* is one map: simulated recrystallised Ni
(:func:`kikuchipy_neural.data.synthetic_polycrystal`, 60x60 px) given as
``SIZE:GRAIN[:twins|plain[:DOSE]]`` (``32:8:twins:600``: 32x32 points, mean
grain diameter 8 steps, annealing twins, 600 electrons per pixel), or a
sub-crop of the real Ni superalloy crop as ``real:SIZE`` (rows and columns
from 50, binned to 60x60 px). Jobs:

``superres``
    Fit on every other point in x and y (``mask[::2, ::2]``), decode the
    held-out 75 %; baseline: bilinear interpolation of the training
    patterns. MAE vs the measured patterns (and the noise-free truth), and
    the share of held-out points whose Hough indexing is within 4 deg of the
    measured pattern's indexing (and of the true orientation).
``denoise``
    Fit on every point; the field's reconstruction (``neural``) and the
    measured patterns denoised with the field as prior (``neural_denoise``,
    :meth:`NeuralEBSD.neural_denoise`); baselines: PCA at every rank 2-128 (the best rank
    reported, an oracle), kikuchipy's ``average_neighbour_patterns``
    (Gaussian 3x3, std 1, kept in counts) and NLPAR (PyEBSDIndex, automatic lambda; see
    ``_nlpar.py``). MAE vs the truth and the share of points >= 4 deg from
    the true orientation after Hough indexing.
``boundaries``
    ``neural_boundaries()`` of the denoising fit: distance of the traced
    points to the true boundaries (median, p90, in steps), recall (share of
    the true boundary length within 0.5 step of a trace) and precision
    (share of traced points within 0.5 step of a true boundary).

Every fit uses the package defaults (plus ``--options``) and stops early or at
``--time-budget`` seconds. Results are JSON lines (``--out``); ``report``
turns them into the tables and figure of ``benchmarks/README.md``.

Usage::

    python benchmarks/quality_across_maps.py run --cells 32:8:twins \\
        --jobs superres,denoise,boundaries --out results.jsonl
    python benchmarks/quality_across_maps.py report results.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PATTERN_SHAPE = (60, 60)
# The real crop's pattern centre, estimated by super_resolution.py with
# kikuchipy's hough_indexing_optimize_pc on the 60x60 px binning.
REAL_PC = (0.5257, 0.3471, 0.6214)
DEFAULT_CELLS = (
    "16:6:twins,24:6:twins,32:8:twins,48:8:twins,64:8:twins,"
    "32:4:twins,32:16:twins,32:8:plain,32:8:twins:150,real:32,real:64"
)


# ------------------------------------------------------------------- maps


def parse_cell(spec: str) -> dict:
    parts = spec.split(":")
    if parts[0] == "real":
        return dict(kind="real", size=int(parts[1]), name=spec)
    size, grain = int(parts[0]), float(parts[1])
    twins = (parts[2] if len(parts) > 2 else "twins") == "twins"
    dose = float(parts[3]) if len(parts) > 3 else 600.0
    return dict(
        kind="synthetic", size=size, grain=grain, twins=twins, dose=dose, name=spec
    )


def make_map(cell: dict, seed: int):
    """The cell's map as a NeuralEBSD signal (synthetic ones carry ``truth``)."""
    if cell["kind"] == "real":
        import sys

        sys.path.insert(0, str(HERE))
        from _real_data import load_calvat_crop

        n = cell["size"]
        s = load_calvat_crop(slice(50, 50 + n), slice(50, 50 + n), binning=2)
        s.detector.pc = REAL_PC
        from orix.crystal_map import Phase, PhaseList

        s._phases = PhaseList(Phase("ni", space_group=225))
    else:
        from kikuchipy_neural.data import synthetic_polycrystal

        n, d = cell["size"], cell["grain"]
        n_grains = max(2, round(n * n / (np.pi * d * d / 4)))
        s = synthetic_polycrystal(
            (n, n),
            PATTERN_SHAPE,
            n_grains=n_grains,
            seed=seed,
            twins=cell["twins"],
            dose=cell["dose"],
        )
        s._phases = s.xmap.phases
    s.set_signal_type("NeuralEBSD")
    return s


def as_ebsd(like, patterns: np.ndarray, detector=None):
    """A kikuchipy EBSD of ``(ny, nx, h, w)`` or ``(n, h, w)`` patterns."""
    import kikuchipy as kp

    out = kp.signals.EBSD(np.asarray(patterns, np.float32))
    det = (detector or like.detector).deepcopy()
    if det.navigation_shape != (1,) and det.navigation_shape != patterns.shape[:-2]:
        det = kp.detectors.EBSDDetector(
            shape=det.shape, pc=det.pc_average, sample_tilt=det.sample_tilt
        )
    out.detector = det
    return out


def index(like, patterns: np.ndarray, background: np.ndarray):
    """Hough indexing of patterns (any leading shape), rotations as orix."""
    from kikuchipy_neural.analysis.metrics import hough_index

    flat = patterns.reshape(-1, *patterns.shape[-2:])
    xmap = hough_index(as_ebsd(like, flat), like._phases, static_background=background)
    return xmap


def angle_between(xmap_a, rotations_b) -> np.ndarray:
    from orix.quaternion import Orientation

    sym = xmap_a.phases[xmap_a.phases.ids[0]].point_group
    oa = Orientation(xmap_a.rotations, symmetry=sym)
    ob = Orientation(rotations_b, symmetry=sym)
    return np.rad2deg(oa.angle_with(ob))


def neighbour_average(data: np.ndarray) -> np.ndarray:
    """kikuchipy's ``average_neighbour_patterns`` (Gaussian 3x3 window, std
    1) in counts: kikuchipy rescales each averaged pattern to its dtype's
    range, so the same weighted average is taken here with its window."""
    from kikuchipy.filters import Window
    from scipy.ndimage import correlate

    window = np.asarray(Window("gaussian", shape=(3, 3), std=1), np.float64)
    kernel = window[:, :, None, None]
    total = correlate(data.astype(np.float64), kernel, mode="constant")
    weight = correlate(np.ones(data.shape[:2]), window, mode="constant")
    return (total / weight[:, :, None, None]).astype(np.float32)


def mae(a, b) -> float:
    """Mean absolute difference in counts over all pixels and points."""
    return float(np.mean(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# --------------------------------------------------------------- jobs


def fit(s, mask, args):
    options = dict(json.loads(args.options or "{}"))
    started = time.perf_counter()
    model = s.fit_neural(
        mask=mask,
        time_budget=args.time_budget,
        seed=args.seed,
        show_progressbar=False,
        **options,
    )
    return model, time.perf_counter() - started


def _fit_record(job: str, cell: dict, model, seconds: float) -> dict:
    """What every job records about its fit."""
    return dict(
        job=job,
        cell=cell["name"],
        fit_seconds=seconds,
        steps=model.info["steps"],
        rank=model.rank,
        first_omega_0=model.field.config.get("first_omega_0"),
        validation=model.validation,
    )


def superres_job(s, cell, args) -> dict:
    ny, nx = s.axes_manager.navigation_shape[::-1]
    mask = np.zeros((ny, nx), bool)
    mask[::2, ::2] = True
    model, seconds = fit(s, mask, args)
    data = np.asarray(s.data, np.float32)
    held = ~mask
    xy = model.geometry.grid_xy()[held]
    neural = model.query(xy)
    sharpened = model.query(xy, sharpen_boundaries=True)
    # Bilinear interpolation of the training subgrid (every point of the map
    # lies inside it or on its last row/column, extended linearly).
    from scipy.interpolate import RegularGridInterpolator

    rows, cols = np.arange(0, ny, 2), np.arange(0, nx, 2)
    interp = RegularGridInterpolator(
        (rows, cols), data[::2, ::2], bounds_error=False, fill_value=None
    )
    r, c = np.nonzero(held)
    bilinear = interp(np.stack([r, c], axis=-1)).astype(np.float32)
    measured = data[held]
    background = data.mean(axis=(0, 1))
    result = dict(
        **_fit_record("superres", cell, model, seconds),
        n_heldout=int(held.sum()),
        mae_measured=dict(
            neural=mae(neural, measured),
            sharpened=mae(sharpened, measured),
            bilinear=mae(bilinear, measured),
        ),
    )
    x_meas = index(s, measured, background)
    x_neural = index(s, neural, background)
    x_sharp = index(s, sharpened, background)
    x_bil = index(s, bilinear, background)
    decoded = (("neural", x_neural), ("sharpened", x_sharp), ("bilinear", x_bil))
    result["within4_measured_idx"] = {
        name: float(np.mean(angle_between(x, x_meas.rotations) < 4))
        for name, x in decoded
    }
    truth = getattr(s, "truth", None)
    if truth is not None:
        clean = truth.clean[held].astype(np.float32)
        true_rot = truth.orientation_at(xy)
        result["mae_truth"] = dict(
            neural=mae(neural, clean),
            sharpened=mae(sharpened, clean),
            bilinear=mae(bilinear, clean),
            measured=mae(measured, clean),
        )
        result["within4_truth"] = {
            name: float(np.mean(angle_between(x, true_rot) < 4))
            for name, x in (*decoded, ("measured", x_meas))
        }
    return result


def denoise_job(s, cell, args) -> tuple[dict, object]:
    truth = s.truth
    model, seconds = fit(s, None, args)
    data = np.asarray(s.data, np.float32)
    ny, nx = data.shape[:2]
    clean = truth.clean.astype(np.float32)
    flat = data.reshape(ny * nx, -1)
    candidates = {"neural": model.reconstruct(), "neural_denoise": None}
    s.neural_model = model
    candidates["neural_denoise"] = np.asarray(s.neural_denoise(lazy=False).data)
    # PCA at every rank (mean + components), the best one: an oracle rank.
    mean = flat.mean(axis=0)
    u, sv, vt = np.linalg.svd(flat - mean, full_matrices=False)
    best = (np.inf, None)
    pca_curve = {}
    scores = u * sv
    rec = np.broadcast_to(mean, flat.shape).astype(np.float32)
    for rank in range(2, min(129, len(sv) + 2)):
        k = rank - 1
        rec = rec + np.outer(scores[:, k - 1], vt[k - 1])
        err = mae(rec.reshape(data.shape), clean)
        pca_curve[rank] = err
        if err < best[0]:
            best = (err, rank)
    k = best[1] - 1
    candidates["pca_best"] = (mean + (u[:, :k] * sv[:k]) @ vt[:k]).reshape(data.shape)
    if model.rank is not None and model.rank - 1 <= len(sv):
        k = model.rank - 1
        candidates["pca_same_rank"] = (mean + (u[:, :k] * sv[:k]) @ vt[:k]).reshape(
            data.shape
        )
    candidates["neighbour_average"] = neighbour_average(data)
    try:
        import sys

        sys.path.insert(0, str(HERE))
        from _nlpar import nlpar_denoise

        candidates["nlpar"], lam = nlpar_denoise(s.data)
    except ImportError:
        lam = None
    background = data.mean(axis=(0, 1))
    true_rot = truth.orientation_at(model.geometry.grid_xy().reshape(-1, 2))
    result = dict(
        **_fit_record("denoise", cell, model, seconds),
        pca_best_rank=best[1],
        pca_curve=pca_curve,
        nlpar_lambda=lam,
        mae_truth={"measured": mae(data, clean)},
        off4_truth={},
    )
    for name, patterns in [("measured", data), *candidates.items()]:
        if name != "measured":
            result["mae_truth"][name] = mae(patterns, clean)
        xmap = index(s, np.asarray(patterns), background)
        result["off4_truth"][name] = float(np.mean(angle_between(xmap, true_rot) >= 4))
    return result, model


def boundaries_job(s, cell, model) -> dict:
    from scipy.spatial import cKDTree

    truth = s.truth
    geometry = model.geometry
    started = time.perf_counter()
    trace = s.neural_boundaries(show_progressbar=False)
    seconds = time.perf_counter() - started
    step = geometry.step
    fine = geometry.grid_xy(20)
    samples = fine[truth.boundary_distance(fine) < 0.5 * step / 20]
    result = dict(
        job="boundaries",
        cell=cell["name"],
        seconds=seconds,
        polylines=len(trace.polylines),
        points=int(len(trace.points)),
        true_boundary=bool(len(samples)),
        low=trace.low,
        high=trace.high,
    )
    if len(trace.points):
        error = truth.boundary_distance(trace.points) / step
        result.update(
            median=float(np.median(error)),
            p90=float(np.percentile(error, 90)),
            precision=float(np.mean(error <= 0.5)),
        )
        if len(samples):
            reach = cKDTree(trace.points).query(samples)[0] / step
            result["recall"] = float(np.mean(reach <= 0.5))
    else:
        result.update(
            median=None, p90=None, precision=None, recall=0.0 if len(samples) else None
        )
    return result


# -------------------------------------------------------------- commands


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    jobs = args.jobs.split(",")
    for spec in args.cells.split(","):
        cell = parse_cell(spec)
        s = make_map(cell, args.seed)
        common = dict(tag=args.tag, options=args.options, seed=args.seed)
        if "superres" in jobs:
            _emit({**superres_job(s, cell, args), **common}, args.out)
        if cell["kind"] == "real":
            continue
        if "denoise" in jobs or "boundaries" in jobs:
            r, model = denoise_job(s, cell, args)
            if "denoise" in jobs:
                _emit({**r, **common}, args.out)
            if "boundaries" in jobs:
                _emit({**boundaries_job(s, cell, model), **common}, args.out)


def _emit(result: dict, out: str | None) -> None:
    import sys

    sys.path.insert(0, str(HERE))
    from _runs import append_result, package_info

    append_result({**result, **package_info()}, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="fit and evaluate cells")
    p.add_argument("--cells", default=DEFAULT_CELLS)
    p.add_argument("--jobs", default="superres,denoise,boundaries")
    p.add_argument("--options", default=None, help="further fit options, JSON")
    p.add_argument("--tag", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=150.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.set_defaults(func=run)
    p = sub.add_parser("report", help="tables and figure from results")
    p.add_argument("results", nargs="+")
    p.add_argument("--tag", default=None, help="only runs with this tag")
    p.add_argument(
        "--figure", default=str(HERE / "figures" / "quality_across_maps.png")
    )
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    args.func(args)


def _load(paths, tag: str | None) -> list[dict]:
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if tag is None or r.get("tag", "") == tag:
                    rows.append(r)
    # The last run of each (job, cell) counts.
    latest = {(r["job"], r["cell"]): r for r in rows}
    return list(latest.values())


def _verdict(validation: dict | None) -> str:
    """The held-out report's verdict; "-" for runs of its first version
    (PCA projected the held-out pattern itself, see model.validation)."""
    if not validation or "rmse_noise_free" in validation:
        return "-"
    return ", ".join(validation["worse_than"]) or "none"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _tables(rows: list[dict]) -> str:
    out = []
    sr = [r for r in rows if r["job"] == "superres"]
    if sr:
        out += [
            "| map | fit | within 4 deg of measured idx: neural / sharpened / "
            "bilinear | within 4 deg of truth: neural / sharpened / bilinear / "
            "measured | "
            "MAE vs measured: neural / bilinear | MAE vs truth: neural / bilinear | "
            "field worse than (held out) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sr:
            w, t = r["within4_measured_idx"], r.get("within4_truth")
            m, mt = r["mae_measured"], r.get("mae_truth")
            out.append(
                f"| {r['cell']} | {r['steps']} steps, {r['fit_seconds']:.0f} s, "
                f"rank {r['rank']} | {_pct(w['neural'])} / "
                f"{_pct(w.get('sharpened'))} / {_pct(w['bilinear'])} | "
                + (
                    f"{_pct(t['neural'])} / {_pct(t.get('sharpened'))} / "
                    f"{_pct(t['bilinear'])} / {_pct(t['measured'])}"
                    if t
                    else "-"
                )
                + f" | {m['neural']:.0f} / {m['bilinear']:.0f} | "
                + (f"{mt['neural']:.0f} / {mt['bilinear']:.0f}" if mt else "-")
                + f" | {_verdict(r.get('validation'))} |"
            )
        out.append("")
    dn = [r for r in rows if r["job"] == "denoise"]
    if dn:
        names = (
            "neural",
            "neural_denoise",
            "pca_best",
            "pca_same_rank",
            "nlpar",
            "neighbour_average",
        )
        out += [
            "| map | fit | MAE vs truth: measured / "
            + " / ".join(names)
            + " | >= 4 deg from truth: measured / "
            + " / ".join(names)
            + " | field worse than (held out) |",
            "|---|---|---|---|---|",
        ]
        for r in dn:
            e, o = r["mae_truth"], r["off4_truth"]
            out.append(
                f"| {r['cell']} | {r['steps']} steps, {r['fit_seconds']:.0f} s, "
                f"rank {r['rank']} (PCA best {r['pca_best_rank']}) | "
                + " / ".join(
                    f"{e[k]:.0f}" if k in e else "-" for k in ("measured", *names)
                )
                + " | "
                + " / ".join(
                    f"{100 * o[k]:.1f}" if k in o else "-" for k in ("measured", *names)
                )
                + f" | {_verdict(r.get('validation'))} |"
            )
        out.append("")
    bd = [r for r in rows if r["job"] == "boundaries"]
    if bd:
        out += [
            "| map | polylines | median (step) | p90 (step) | recall | precision |",
            "|---|---|---|---|---|---|",
        ]
        for r in bd:
            fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            out.append(
                f"| {r['cell']} | {r['polylines']} | {fmt(r['median'])} | "
                f"{fmt(r['p90'])} | {_pct(r.get('recall'))} | {_pct(r['precision'])} |"
            )
    return "\n".join(out)


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _load(args.results, args.tag)
    print(_tables(rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sr = [r for r in rows if r["job"] == "superres"]
    x = np.arange(len(sr))
    for k, (name, colour) in enumerate((("neural", "C0"), ("bilinear", "C1"))):
        axes[0].bar(
            x + (k - 0.5) * 0.4,
            [100 * r["within4_measured_idx"][name] for r in sr],
            0.4,
            color=colour,
            label=name,
        )
    axes[0].set_xticks(x, [r["cell"] for r in sr], rotation=60, fontsize=7)
    axes[0].set_ylim(75, 100)
    axes[0].set_ylabel(
        "held-out points within 4 deg of\nthe measured pattern's indexing (%)"
    )
    axes[0].set_title("super-resolution from [::2, ::2]")
    axes[0].legend(frameon=False)
    dn = [r for r in rows if r["job"] == "denoise"]
    x = np.arange(len(dn))
    names = ("neural", "neural_denoise", "pca_best", "nlpar", "neighbour_average")
    for k, name in enumerate(names):
        axes[1].bar(
            x + (k - 2) * 0.16,
            [r["mae_truth"].get(name, np.nan) for r in dn],
            0.16,
            label=name.replace("_", " "),
        )
    axes[1].set_xticks(x, [r["cell"] for r in dn], rotation=60, fontsize=7)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("MAE vs the noise-free truth (counts)")
    axes[1].set_title("denoising")
    axes[1].legend(frameon=False, fontsize=7)
    bd = [r for r in rows if r["job"] == "boundaries"]
    x = np.arange(len(bd))
    for k, key in enumerate(("median", "p90")):
        axes[2].bar(
            x + (k - 0.5) * 0.4,
            [r[key] if r[key] is not None else np.nan for r in bd],
            0.4,
            label=f"{key} distance (step)",
        )
    axes[2].axhline(0.1, color="C0", lw=0.8, ls="--")
    axes[2].axhline(0.3, color="C1", lw=0.8, ls="--")
    axes[2].set_xticks(x, [r["cell"] for r in bd], rotation=60, fontsize=7)
    axes[2].set_title("boundaries: distance to the truth (targets dashed)")
    axes[2].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
