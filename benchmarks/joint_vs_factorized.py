"""Joint (4D-INR) against factorized (TF-INR) on the same map and time budget.

Both formulations fit the same synthetic 64x64 map of 60x60 patterns with
their default (the paper's) options, one after the other in this process,
each with the same wall-clock budget (preprocessing included). Then:

- map MAE (paper's Eqs. 9-10, inside the detector aperture) against the
  measured patterns and against the noise-free truth ``s.truth.clean``;
- orientation deviation after Hough indexing (PyEBSDIndex through
  kikuchipy): each reconstruction against the indexing of the measured
  patterns and against the true orientations ``s.xmap``; fraction of points
  >= 4 deg;
- model bytes: parameters x 4 (float32) and x 2 (float16), and the size of
  the model file saved at float16;
- seconds per training step of the joint field's variants on the same batch
  (loss values printed to show they compute the same thing): the plain
  SIREN over the full 516-wide input, the split first layer, the split first
  layer with fused sine layers (what ``JointField`` does), and a positions x
  pixels batch (32 positions x 1024 pixels, ``sampler="positions"``).

Both fits use ``max_validation_points=64`` (the validation MAE curve is the
figure's time axis; a joint evaluation decodes 3600 network outputs per
point). On CPU the joint fit evaluates every ``--joint-eval-every`` steps
(default 20 on CPU: one CPU step takes seconds, so the default 1000 would give
no curve; early stopping cannot trigger within the budget either way).

Writes ``benchmarks/results/joint_vs_factorized[_TAG].json`` and
``benchmarks/figures/joint_vs_factorized[_TAG].png``.

Run (about 50 minutes on one core)::

    nice -n 10 python benchmarks/joint_vs_factorized.py --budget 600

GPU variant (the map is generated here, where kikuchipy is installed; the
fits run where only torch, numpy, h5py, scipy and dask are needed)::

    python benchmarks/joint_vs_factorized.py --save-map benchmarks/_out/gpu/map.npz
    # on the GPU machine:
    python benchmarks/joint_vs_factorized.py --fit-only --map benchmarks/_out/gpu/map.npz \\
        --device cuda --budget 240 --out $OUT
    # back here, with the model files:
    python benchmarks/joint_vs_factorized.py --models DIR --tag gpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
MAP_SHAPE, PATTERN_SHAPE = (64, 64), (60, 60)
RUNS = {
    # name: (formulation, extra options)
    "factorized": ("factorized", {}),
    "joint": ("joint", {}),
    "joint (positions 32x1024)": ("joint", {"sampler": "positions"}),
}


# ------------------------------------------------------------------ speed


def step_times(device: str, repeats: int = 5) -> dict:
    """Seconds per training step (forward + backward) of the joint field's
    variants on one batch of 32768 coordinates, paper-size network."""
    import torch
    import torch.nn.functional as F

    from kikuchipy_neural.fields import JointField

    torch.manual_seed(0)
    field = JointField(PATTERN_SHAPE).to(device)
    field.set_curriculum(0.5)
    n, n_pixels = 32768, field.n_pixels
    gen = torch.Generator().manual_seed(1)
    xy = (torch.rand(n, 2, generator=gen) * 2 - 1).to(device)
    pixels = torch.randint(0, n_pixels, (n,), generator=gen).to(device)
    target = torch.rand(n, generator=gen).to(device)
    grid_xy = xy[:32]
    grid_pixels = torch.randperm(n_pixels, generator=gen)[:1024].sort().values
    grid_pixels = grid_pixels.to(device)
    grid_target = torch.rand(32, 1024, generator=gen).to(device)

    def split_plain():
        # Split first layer, then torch's own autograd sine layers.
        pixel_part = field._pixel_part(None)
        pre = field._position_part(xy) + F.embedding(pixels, pixel_part)
        h = torch.sin(field.siren.net[0].omega_0 * pre)
        for layer in field.siren.net[1:]:
            h = layer(h)
        return field.siren.last(h).squeeze(-1)

    variants = {
        "full input (plain SIREN)": (
            lambda: field.siren(field.encode(xy, pixels)).squeeze(-1),
            target,
        ),
        "split first layer": (split_plain, target),
        "split + fused sine layers (JointField)": (
            lambda: field.values_at(xy, pixels),
            target,
        ),
        "positions x pixels, 32 x 1024 (JointField)": (
            lambda: field.pattern_values(grid_xy, grid_pixels),
            grid_target,
        ),
    }

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = {name: [] for name in variants}
    losses, grads = {}, {}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (values, tgt) in variants.items():
            field.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            loss = ((values() - tgt) ** 2).mean()
            loss.backward()
            sync()
            times[name].append(time.perf_counter() - t0)
            losses[name] = float(loss.detach())
            grads[name] = torch.cat([p.grad.reshape(-1) for p in field.parameters()])
    reference = grads["full input (plain SIREN)"]
    out = {}
    for name in variants:
        g = grads[name]
        out[name] = {
            "seconds_per_step": float(np.median(times[name][1:])),
            "loss": losses[name],
            "grad_max_rel_diff_vs_plain": (
                float((g - reference).abs().max() / reference.abs().max())
                if "positions" not in name
                else None
            ),
        }
    # Decoding whole patterns (no graph): 16 positions x 3600 pixels.
    with torch.no_grad():
        pts = xy[:16]
        all_pixels = torch.arange(n_pixels, device=device)
        decode = {
            "full input (plain SIREN)": lambda: torch.stack(
                [
                    field.siren(field.encode(p.expand(n_pixels, 2), all_pixels))
                    for p in pts
                ]
            ),
            "JointField.pattern_values": lambda: field.pattern_values(pts),
        }
        ts = {name: [] for name in decode}
        for _ in range(repeats + 1):  # interleaved: the machine is noisy
            for name, fn in decode.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                ts[name].append(time.perf_counter() - t0)
        for name in decode:
            out[f"decode 16 patterns: {name}"] = {
                "seconds": float(np.median(ts[name][1:]))
            }
    return out


# ----------------------------------------------------------------- fitting


def save_map(path: Path, seed: int) -> None:
    """The benchmark map as plain arrays, for a machine without kikuchipy."""
    from kikuchipy_neural.data import synthetic_polycrystal

    s = synthetic_polycrystal(MAP_SHAPE, PATTERN_SHAPE, seed=seed)
    axes = s.axes_manager
    nav, sig = axes.navigation_axes, axes.signal_axes
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        data=s.data,
        nav=np.array([[a.size, a.scale, a.offset] for a in nav], float),
        sig=np.array([[a.size, a.scale, a.offset] for a in sig], float),
        units=np.array(str(nav[0].units)),
    )
    print(f"wrote {path}")


def map_signal(path: Path):
    """A stand-in for the EBSD signal with what ``fit`` reads from it."""
    d = np.load(path)

    def axis(row, units):
        return SimpleNamespace(
            size=int(row[0]), scale=float(row[1]), offset=float(row[2]), units=units
        )

    units = str(d["units"])
    return SimpleNamespace(
        data=d["data"],
        axes_manager=SimpleNamespace(
            navigation_axes=[axis(r, units) for r in d["nav"]],
            signal_axes=[axis(r, "px") for r in d["sig"]],
        ),
    )


def fit_runs(signal, runs, budget, device, joint_eval_every, seed, deepcopy=True):
    """Fit every run on ``signal``; returns {name: (model, wall seconds)}."""
    from kikuchipy_neural.training import fit

    models = {}
    for name in runs:
        formulation, extra = RUNS[name]
        options = dict(max_validation_points=64, **extra)
        if formulation == "joint" and joint_eval_every:
            options["eval_every"] = joint_eval_every
        target = signal.deepcopy() if deepcopy else signal
        t0 = time.perf_counter()
        model = fit(
            target,
            formulation=formulation,
            time_budget=budget,
            device=device,
            seed=seed,
            show_progressbar=False,
            **options,
        )
        wall = time.perf_counter() - t0
        h = model.history
        print(
            f"{name}: {model.info['steps']} steps in {wall:.0f} s "
            f"({model.info['stop_reason']}), last val MAE {h['val_mae'][-1]:.1f}",
            flush=True,
        )
        models[name] = (model, wall)
    return models


# -------------------------------------------------------------- evaluation


def evaluate(s, truth, models: dict, xmap_measured) -> dict:
    import tempfile

    from kikuchipy_neural.analysis import queries
    from kikuchipy_neural.analysis.metrics import (
        hough_index,
        map_mae,
        orientation_deviation,
    )

    measured = s.data
    full_scale = float(measured.max())
    results, recs = {}, {}
    for name, (model, wall) in models.items():
        t0 = time.perf_counter()
        rec = model.reconstruct()
        decode_s = time.perf_counter() - t0
        recs[name] = rec
        rec_signal = queries.patterns_to_signal(
            rec,
            queries.axis_dicts(s.axes_manager.navigation_axes[::-1]),
            queries.axis_dicts(s.axes_manager.signal_axes[::-1]),
            detector=s.detector,
        )
        xmap = hough_index(rec_signal, phase_list=s.xmap.phases)
        ang_meas, frac_meas = orientation_deviation(xmap, xmap_measured)
        ang_truth, frac_truth = orientation_deviation(xmap, s.xmap)
        with tempfile.TemporaryDirectory() as tmp:
            file_bytes = (
                model.save(Path(tmp) / "m.h5", precision="float16").stat().st_size
            )
        n_par = model.n_parameters
        h = model.history
        results[name] = {
            "formulation": model.formulation,
            "rank": model.rank,
            "steps": model.info["steps"],
            "fit_seconds": wall,
            "stop_reason": model.info["stop_reason"],
            "seconds_per_step": (
                float(h["seconds"][-1] - h["seconds"][0])
                / max(1, h["step"][-1] - h["step"][0])
            ),
            "decode_seconds": decode_s,
            "mae_vs_measured": map_mae(rec, measured, full_scale=full_scale).counts,
            "mae_vs_clean": map_mae(rec, truth.clean, full_scale=full_scale).counts,
            "deviation_vs_measured_ge4": frac_meas,
            "deviation_vs_truth_ge4": frac_truth,
            "deviation_vs_truth_median_deg": float(np.median(ang_truth)),
            "parameters": n_par,
            "bytes_float32": 4 * n_par,
            "bytes_float16": 2 * n_par,
            "file_bytes_float16": file_bytes,
            "history": {k: list(v) for k, v in h.items()},
            "_angles_truth": ang_truth,
        }
    return results, recs


def reference_rows(s, truth, xmap_measured) -> dict:
    from kikuchipy_neural.analysis.metrics import map_mae, orientation_deviation

    full_scale = float(s.data.max())
    mean = s.data.mean(axis=(0, 1), keepdims=True)
    _, frac = orientation_deviation(xmap_measured, s.xmap)
    return {
        "measured (noise floor)": {
            "mae_vs_clean": map_mae(s.data, truth.clean, full_scale=full_scale).counts,
            "deviation_vs_truth_ge4": frac,
        },
        "mean pattern": {
            "mae_vs_measured": map_mae(
                np.broadcast_to(mean, s.data.shape), s.data, full_scale=full_scale
            ).counts,
            "mae_vs_clean": map_mae(
                np.broadcast_to(mean, s.data.shape), truth.clean, full_scale=full_scale
            ).counts,
        },
    }


# ------------------------------------------------------------------ figure


def figure(s, truth, results, recs, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig = plt.figure(figsize=(4 + 3.2 * len(names), 9.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.25])
    axes = top.subplots(1, 1 + len(names), width_ratios=[1.5] + [1] * len(names))
    ax = axes[0]
    for k, name in enumerate(names):
        h = results[name]["history"]
        ax.plot(h["seconds"], h["val_mae"], ".-", color=f"C{k}", label=name)
    ax.set_xlabel("fit time (s)")
    ax.set_ylabel("validation MAE (counts)")
    ax.set_yscale("log")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("held-out MAE during the fit")
    for ax, name in zip(axes[1:], names, strict=True):
        ang = results[name]["_angles_truth"]
        im = ax.imshow(ang, vmin=0, vmax=8, cmap="magma")
        frac = results[name]["deviation_vs_truth_ge4"]
        ax.set_title(f"{name}\nvs truth: {100 * frac:.1f} % >= 4 deg", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    top.colorbar(im, ax=axes[1:], shrink=0.8, label="orientation deviation (deg)")

    # Patterns: an interior point, the point nearest a boundary, a random one.
    geometry_xy = np.stack(
        np.meshgrid(s.axes_manager["x"].axis, s.axes_manager["y"].axis, indexing="xy"),
        axis=-1,
    )
    dist = truth.boundary_distance(geometry_xy.reshape(-1, 2)).reshape(MAP_SHAPE)
    interior = np.unravel_index(np.argmax(dist), MAP_SHAPE)
    boundary = np.unravel_index(np.argmin(dist), MAP_SHAPE)
    rng = np.random.default_rng(0)
    other = tuple(int(v) for v in rng.integers(0, MAP_SHAPE[0], 2))
    points = {"grain interior": interior, "at a boundary": boundary, "random": other}
    columns = {"measured": s.data, "noise-free truth": truth.clean}
    columns.update(recs)
    grid = bottom.subplots(len(points), len(columns))
    for i, (label, (r, c)) in enumerate(points.items()):
        clean = truth.clean[r, c]
        lo, hi = np.percentile(clean, [1, 99])
        for j, (cname, arr) in enumerate(columns.items()):
            ax = grid[i, j]
            ax.imshow(arr[r, c], cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cname, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{label}\n(row {r}, col {c})", fontsize=8)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# -------------------------------------------------------------------- main


def print_table(results: dict, refs: dict) -> None:
    cols = (
        ("steps", "{:d}", "steps"),
        ("fit_seconds", "{:.0f}", "fit s"),
        ("seconds_per_step", "{:.3g}", "s/step"),
        ("mae_vs_measured", "{:.1f}", "MAE meas"),
        ("mae_vs_clean", "{:.1f}", "MAE clean"),
        ("deviation_vs_measured_ge4", "{:.1%}", ">=4deg vs meas"),
        ("deviation_vs_truth_ge4", "{:.1%}", ">=4deg vs truth"),
        ("parameters", "{:d}", "params"),
        ("bytes_float32", "{:d}", "bytes f32"),
        ("bytes_float16", "{:d}", "bytes f16"),
        ("file_bytes_float16", "{:d}", "file f16"),
        ("decode_seconds", "{:.0f}", "decode s"),
    )
    print("| run | " + " | ".join(c[2] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in {**results, **refs}.items():
        cells = [
            c[1].format(row[c[0]]) if row.get(c[0]) is not None else "" for c in cols
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per fit")
    parser.add_argument("--seed", type=int, default=1, help="seed of the map")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--joint-eval-every", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="speed repeats")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--save-map", type=Path)
    parser.add_argument("--map", type=Path, help="npz from --save-map (--fit-only)")
    parser.add_argument("--fit-only", action="store_true")
    parser.add_argument("--out", type=Path, help="folder for --fit-only's models")
    parser.add_argument("--models", type=Path, help="evaluate models of --fit-only")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.save_map:
        save_map(args.save_map, args.seed)
        return
    if args.joint_eval_every is None and args.device == "cpu":
        args.joint_eval_every = 20
    speed = {} if args.skip_speed else step_times(args.device, args.repeats)
    for name, row in speed.items():
        print(f"{name}: {row}", flush=True)
    if args.speed_only:
        return

    if args.fit_only:
        signal = map_signal(args.map)
        models = fit_runs(
            signal, args.runs, args.budget, args.device, args.joint_eval_every,
            seed=0, deepcopy=False,
        )  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        for k, (name, (model, wall)) in enumerate(models.items()):
            model.info["benchmark_wall_seconds"] = wall
            model.info["benchmark_run"] = name
            model.info["benchmark_budget"] = args.budget
            model.info["benchmark_device"] = args.device
            model.save(args.out / f"model{k}.h5", precision="float32")
        (args.out / "speed.json").write_text(json.dumps(speed, indent=1))
        return

    from kikuchipy_neural.analysis.metrics import hough_index
    from kikuchipy_neural.data import synthetic_polycrystal

    s = synthetic_polycrystal(MAP_SHAPE, PATTERN_SHAPE, seed=args.seed)
    truth = s.truth  # lost by deepcopy: keep a reference
    s.set_signal_type("NeuralEBSD")
    if args.models:
        import kikuchipy_neural as kn

        models = {}
        for path in sorted(args.models.glob("model*.h5")):
            model = kn.load_model(path)
            models[model.info["benchmark_run"]] = (
                model,
                model.info["benchmark_wall_seconds"],
            )
        args.budget = model.info["benchmark_budget"]
        speed_file = args.models / "speed.json"
        if speed_file.exists():
            speed = json.loads(speed_file.read_text())
    else:
        models = fit_runs(
            s, args.runs, args.budget, args.device, args.joint_eval_every, seed=0
        )
    for model, _ in models.values():
        model.to("cpu")
    xmap_measured = hough_index(s)
    results, recs = evaluate(s, truth, models, xmap_measured)
    refs = reference_rows(s, truth, xmap_measured)
    print_table(results, refs)
    tag = f"_{args.tag}" if args.tag else ""
    figure(
        s,
        truth,
        results,
        recs,
        HERE / "figures" / f"joint_vs_factorized{tag}.png",
        f"Joint vs factorized, {MAP_SHAPE[0]}x{MAP_SHAPE[1]} map of "
        f"{PATTERN_SHAPE[0]}x{PATTERN_SHAPE[1]} px, {args.budget:g} s per fit"
        + (f" ({args.tag})" if args.tag else ""),
    )
    out = {
        "command": "python benchmarks/joint_vs_factorized.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v not in (None, False, "")
        ),
        "budget_seconds": args.budget,
        "threads": args.threads,
        "speed": speed,
        "references": refs,
        "runs": {
            k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
            for k, v in results.items()
        },
    }
    path = HERE / "results" / f"joint_vs_factorized{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
