# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Patterns anywhere: queries, upsampling, paths, fill-in and super-resolution
#
# A neural field fitted to an EBSD scan is a continuous function of the scan
# position, so it can be asked for patterns *between* the measured points:
#
# - `s.neural_query(xy)`: patterns at any positions;
# - `s.upsample(factor)`: a finer grid over the same area;
# - `s.neural_path(start, end, n)`: patterns along a segment, and
#   `kikuchipy_neural.analysis.paths.path_profile` to Hough-index them;
# - `s.neural_fill(mask)`: replace bad points by the model's patterns;
# - `s.fit_neural(positions=xy)`: fit patterns measured at arbitrary
#   positions (e.g. a hexagonal grid) and resample them onto a square grid.
#
# The super-resolution protocol of the paper tests the first one: fit on a
# quarter of the scan (every other point along x and y), decode the other
# three quarters, and compare with what was measured there, against nearest
# neighbour and bilinear interpolation. Everything here runs on a simulated
# map whose truth is known.
#
# Figures are saved to the folder in `KIKUCHIPY_NEURAL_OUT` (default: a new
# temporary folder). `KIKUCHIPY_NEURAL_FAST=1` runs a smaller version.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from kikuchipy.signals import EBSD  # noqa: E402
from orix.crystal_map import PhaseList  # noqa: E402

from kikuchipy_neural.analysis.interpolation import (  # noqa: E402
    interpolate_missing,
    sparse_grid_mask,
)
from kikuchipy_neural.analysis.paths import hough_index, path_profile  # noqa: E402
from kikuchipy_neural.data import synthetic_polycrystal  # noqa: E402

out = Path(os.environ.get("KIKUCHIPY_NEURAL_OUT") or tempfile.mkdtemp())
out.mkdir(parents=True, exist_ok=True)
FAST = os.environ.get("KIKUCHIPY_NEURAL_FAST") == "1"
torch.set_num_threads(min(2, os.cpu_count() or 1))

# %% [markdown]
# ## A recrystallised-like map and a sparse training mask
#
# Grains with annealing-twin lamellae and Poisson noise. In fast mode the map
# is 33 x 33 points of 40 x 40 px and the network is small; otherwise 65 x 65
# points of 60 x 60 px and the package's default (the paper's) network. The
# odd number of points puts every held-out point inside the training grid.

# %%
n, px = (33, 40) if FAST else (65, 60)
s = synthetic_polycrystal(
    (n, n), (px, px), seed=1, twins=True, n_grains=6 if FAST else 12
)
truth = s.truth  # keep a reference: s.deepcopy() drops it
s.set_signal_type("NeuralEBSD")
known = sparse_grid_mask((n, n))  # True: train on it
held = ~known
print(truth)
print(f"{known.sum()} training points ({known.mean():.0%}), {held.sum()} held out")

# %% [markdown]
# The first SIREN layer's frequency decides how the field interpolates:
# `fit_neural` sets it from the spacing of the points it trains on (here 2
# steps), so that neighbouring *training* points are 0.5 rad apart in it
# (`phase_per_step`, see `kikuchipy_neural.training.FitOptions`), on maps of
# any size and under any mask. With a quarter of a small scan to learn from,
# half the paper's SIREN width (256) also did better than 512 on such maps:
# 25-30 % lower MAE against the truth (benchmarks/README.md,
# Super-resolution).

# %%
options = dict(siren_width=256, seed=0, show_progressbar=False)
if FAST:
    options.update(siren_width=128, siren_layers=3, eval_every=10, patience=6)
model = s.fit_neural(mask=known, **options)
print(model, model.info["stop_reason"], f"{model.info['seconds']:.0f} s")
print(f"first_omega_0 chosen: {model.field.config['first_omega_0']:.3g}")

# %% [markdown]
# After training, the fit checks itself on points it never trained on (its
# validation points) against linear interpolation of the training patterns,
# and warns when the field is worse; `model.validation` holds the numbers
# and `kikuchipy-neural info` prints them for a saved model.

# %%
report = model.validation
print(
    f"held-out MAE on {report['n_points']} points: field "
    f"{report['mae']['field']:.0f}, linear interpolation "
    f"{report['mae']['interpolation']:.0f} counts; worse than: "
    f"{report['worse_than'] or 'nothing'}"
)

# %% [markdown]
# Early stopping and the choice of the best parameters use the fit's
# validation points: training-mask points held out from the training, so the
# criterion measures interpolation (here over two steps), not memorisation.

# %% [markdown]
# ## Super-resolution: decoded vs interpolated vs measured
#
# The model's patterns at the held-out points, and the two baselines
# computed from the same training patterns.
#
# Near a boundary the field decodes a blend of the two grains' patterns, as
# a measured pattern is when the beam straddles the boundary, and Hough
# indexing can pick the blend's minority grain. For orientation maps,
# `sharpen_boundaries=True` (in `neural_query`, `upsample`, `neural_path`,
# `neural_fill`) replaces each blend by the pattern of the grain dominating
# it, taken from the field one step either side along the boundary normal
# (the direction in which the field's patterns change fastest). Inside
# grains it changes next to nothing. It gives up the faithful blend: the
# MAE against the truth rises near boundaries while more points index to
# the grain under the beam centre (benchmarks/README.md, Super-resolution).

# %%
decoded = s.neural_reconstruct().data  # the model on the scan grid
x_axis, y_axis = s.axes_manager.navigation_axes
xy = np.stack(np.meshgrid(x_axis.axis, y_axis.axis), -1)  # (x, y) of every point
sharpened = decoded.copy()
sharpened[held] = s.neural_query(xy[held], sharpen_boundaries=True).data
variants = {
    "nearest": interpolate_missing(s.data, known, "nearest"),
    "bilinear": interpolate_missing(s.data, known, "linear"),
    "neural": decoded,
    "sharpened": sharpened,
}
measured = s.data.astype(np.float32)
near = held & (truth.boundary_distance_grid <= truth.step)
print(f"{near.sum()} held-out points lie within one step of a boundary")
print("MAE at held-out points (counts):   vs measured | vs noise-free truth")
for name, p in variants.items():
    print(
        f"  {name:9s} {np.abs(p[held] - measured[held]).mean():8.0f}"
        f" | {np.abs(p[held] - truth.clean[held]).mean():8.0f}"
    )

# %% [markdown]
# Hough indexing (PyEBSDIndex through kikuchipy) of the measured map, and of
# the map with its held-out points replaced by each estimate.

# %%
phase_list = PhaseList(s.xmap.phases[0])


def index(data):
    e = EBSD(np.array(data, dtype=np.float32))
    e.detector = s.detector.deepcopy()
    e.static_background = s.static_background.astype(np.float32)
    return hough_index(e, phase_list)


errors = {"measured": truth.orientation_error(index(measured))}
for name, p in variants.items():
    filled = measured.copy()
    filled[held] = p[held]
    errors[name] = truth.orientation_error(index(filled))
for name, e in errors.items():
    print(
        f"{name:9s} held-out within 4 deg of the truth: {np.mean(e[held] < 4):6.1%}"
        f"  (near boundaries {np.mean(e[near] < 4):6.1%},"
        f" interior {np.mean(e[held & ~near] < 4):6.1%})"
    )

# %%
names = ["measured", "nearest", "bilinear", "neural", "sharpened"]
fig, axes = plt.subplots(1, 5, figsize=(16, 3.6), layout="constrained")
for ax, name in zip(axes, names, strict=True):
    shown = np.where(held, np.minimum(errors[name], 10), np.nan)
    im = ax.imshow(shown, cmap="magma_r", vmin=0, vmax=10, interpolation="nearest")
    ax.set_title(f"{name}: {np.mean(errors[name][held] >= 4):.1%} >= 4 deg")
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, label="deviation from the truth at held-out points (deg)")
fig.savefig(out / "super_resolution_errors.png", dpi=80)

# %% [markdown]
# ## Upsampling
#
# `s.upsample(factor)` decodes a grid `factor` times finer over the same
# area (any positive factor); axes are calibrated and the detector is carried
# over (per-point pattern centres would be interpolated). Here the model
# trained on a quarter of the points is upsampled 4 x beyond its training
# grid, i.e. 2 x beyond the full scan. The mean intensity of each pattern
# shows the grains.

# %%
up = s.upsample(2)
print(up)
print(up.axes_manager)
fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), layout="constrained")
axes[0].imshow(measured[::2, ::2].mean(axis=(2, 3)), cmap="gray")
axes[0].set_title("training points (every other)")
axes[1].imshow(measured.mean(axis=(2, 3)), cmap="gray")
axes[1].set_title("all measured points")
axes[2].imshow(up.data.mean(axis=(2, 3)), cmap="gray")
axes[2].set_title("upsample(2) of the sparse fit")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.savefig(out / "super_resolution_upsampled.png", dpi=80)

# %% [markdown]
# Queries are lazy on request (`lazy=True`, or automatically above 1 GiB):
# a dask array decoded chunk by chunk, computed by any dask scheduler.

# %%
lazy_up = s.upsample(4, lazy=True)
print(lazy_up, lazy_up.data.chunksize)
print(
    np.allclose(
        lazy_up.inav[:3, :2].data.compute(), s.upsample(4).inav[:3, :2].data, rtol=1e-5
    )
)

# %% [markdown]
# ## A path across boundaries (cf. the paper's Fig. 6c)
#
# `path_profile` decodes patterns along a segment, Hough-indexes them and
# returns the confidence metric, misorientations and the model's diffraction
# gradient along it. Dashed lines: where the path crosses true boundaries.

# %%
start, end = (0.0, n * 0.45), (n - 1.0, n * 0.55)
profile = path_profile(s, start, end, 4 * n)
ids = truth.grain_id_at(profile.xy)
crossings = profile.distance[:-1][np.diff(ids) != 0] + np.diff(profile.distance)[0] / 2
fig = profile.plot(boundaries=crossings)
fig.savefig(out / "super_resolution_path.png", dpi=80)
jumps = np.sort(
    profile.distance[np.argsort(profile.misorientation_step)[-len(crossings) :]]
)
print("true boundary crossings (um):         ", np.round(crossings, 1))
print("largest orientation jumps of the path (um):", np.round(jumps, 1))

# %% [markdown]
# ## Filling in damaged points
#
# A block of points is damaged (here: NaN) and a few random points are
# missing. `s.neural_fill(mask)` fits a model without them (they are never
# read) and returns the signal with the masked points replaced.

# %%
damaged = s.deepcopy()
damaged.change_dtype("float32")
bad = np.zeros((n, n), bool)
bad[n // 3 : n // 3 + 4, n // 2 : n // 2 + 5] = True
bad |= np.random.default_rng(0).random((n, n)) < 0.03
damaged.data[bad] = np.nan
filled = damaged.neural_fill(bad, **options)
print(
    f"filled {bad.sum()} points; MAE vs noise-free truth there: "
    f"{np.abs(filled.data[bad] - truth.clean[bad]).mean():.0f} counts "
    f"(the measured patterns themselves: {np.abs(measured[bad] - truth.clean[bad]).mean():.0f})"
)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), layout="constrained")
axes[0].imshow(damaged.data.mean(axis=(2, 3)), cmap="gray")
axes[0].set_title("damaged (NaN shown white)")
axes[1].imshow(filled.data.mean(axis=(2, 3)), cmap="gray")
axes[1].set_title("neural_fill")
i, j = np.argwhere(bad)[0]
axes[2].imshow(filled.data[i, j], cmap="gray")
axes[2].set_title(f"filled pattern at ({i}, {j})")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.savefig(out / "super_resolution_fill.png", dpi=80)

# %% [markdown]
# ## A hexagonal scan resampled onto a square grid
#
# Patterns measured at arbitrary positions are a signal with one navigation
# axis plus their `(x, y)`; `fit_neural(positions=xy)` fits them, and
# `upsample(factor)` then decodes a square grid of spacing `step / factor`
# (the median neighbour distance) over their bounding rectangle. Here the
# hexagonal scan is simulated from the truth with Poisson noise.

# %%
hex_step = 1.0
rows = []
for r in range(int((n - 1) / (hex_step * np.sqrt(3) / 2)) + 1):
    x = np.arange(0, n - 1 - hex_step / 2 + 1e-9, hex_step) + (
        hex_step / 2 if r % 2 else 0
    )
    rows.append(np.stack([x, np.full_like(x, r * hex_step * np.sqrt(3) / 2)], -1))
hex_xy = np.concatenate(rows)
clean = truth.patterns(hex_xy)
hex_counts = np.random.default_rng(1).poisson(clean / truth.gain) * truth.gain
hexscan = EBSD(hex_counts.astype(np.float32))
hexscan.axes_manager.navigation_axes[0].units = "um"
hexscan.set_signal_type("NeuralEBSD")
hexscan.fit_neural(positions=hex_xy, **options)
square = hexscan.upsample(1)
print(
    f"{len(hex_xy)} hexagonal points -> square grid {square.axes_manager.navigation_shape}"
)
x_axis, y_axis = square.axes_manager.navigation_axes
grid_xy = np.stack(np.meshgrid(x_axis.axis, y_axis.axis), -1)
print(
    "MAE vs noise-free truth on the square grid: "
    f"{np.abs(square.data - truth.patterns(grid_xy)).mean():.0f} counts"
)
fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
axes[0].scatter(*hex_xy.T, c=hex_counts.mean(axis=(1, 2)), s=6, cmap="gray")
axes[0].set_aspect("equal")
axes[0].invert_yaxis()
axes[0].set_title("hexagonal scan (mean intensity)")
axes[1].imshow(square.data.mean(axis=(2, 3)), cmap="gray")
axes[1].set_title("resampled onto a square grid")
fig.savefig(out / "super_resolution_hexagonal.png", dpi=80)
print(f"figures in {out}")
