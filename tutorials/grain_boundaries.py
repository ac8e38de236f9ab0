# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Grain boundaries without indexing: the diffraction gradient
#
# A neural field of an EBSD scan is a smooth function of the beam position,
# so it can be differentiated. The *diffraction gradient*
# `S(x, y) = ||d A / d(x, y)||` (the change of the field's coefficients, in
# pattern units, per micrometre) is small inside grains, where patterns
# barely change, and large where the beam crosses a boundary. It is computed
# by automatic differentiation of the network (never by finite differences),
# at any point, so boundaries can be placed *between* scan points.
#
# This tutorial, on a simulated Ni map whose boundaries are known:
#
# 1. maps `S` with `s.diffraction_gradient(factor)`;
# 2. traces boundaries as ridges of `S` (`s.neural_boundaries()`) and
#    segments grains (`s.neural_grains()`), with no pattern indexing;
# 3. compares them with the conventional route: Hough indexing and
#    disorientation thresholds (2 and 10 deg) between neighbouring scan
#    points, as in the paper's Fig. 7;
# 4. draws `S` along a path across boundaries.
#
# Figures go to the folder in `KIKUCHIPY_NEURAL_OUT` (default: a new temporary
# folder). `KIKUCHIPY_NEURAL_FAST=1` runs a small version in about a minute.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kikuchipy_neural.analysis.boundaries import orientation_boundaries  # noqa: E402
from kikuchipy_neural.analysis.metrics import hough_index  # noqa: E402
from kikuchipy_neural.analysis.plotting import plot_boundaries, plot_profile  # noqa: E402
from kikuchipy_neural.data import synthetic_polycrystal  # noqa: E402

FAST = os.environ.get("KIKUCHIPY_NEURAL_FAST") == "1"
OUT = Path(os.environ.get("KIKUCHIPY_NEURAL_OUT") or tempfile.mkdtemp())
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A map with known boundaries
# A recrystallised-like Ni polycrystal: Voronoi grains with annealing twins,
# Poisson noise, and a beam of finite size, so that patterns next to a
# boundary are mixtures of both grains' patterns. `s.truth` knows the exact
# distance of any point to the nearest boundary.

# %%
if FAST:
    shape, pattern_shape, n_grains = (20, 20), (40, 40), 5
else:
    shape, pattern_shape, n_grains = (48, 48), (60, 60), 24
s = synthetic_polycrystal(shape, pattern_shape, n_grains=n_grains, twins=True, seed=5)
truth = s.truth
s.set_signal_type("NeuralEBSD")
print(s)
print(truth)

# %% [markdown]
# ## Fit the field
# Default options (the paper's network) take a minute or two for this map on
# two CPU cores; the fast version uses a small network. The first layer's
# frequency is set per scan step (`phase_per_step`), whatever the map's size.

# %%
options = (
    dict(siren_width=128, siren_layers=3, eval_every=10, patience=6) if FAST else {}
)
model = s.fit_neural(show_progressbar=not FAST, **options)
print(model)

# %% [markdown]
# ## The diffraction gradient
# `factor=4` samples `S` on a grid four times finer than the scan. The result
# is a HyperSpy `Signal2D` with calibrated axes: use `.plot()`, `.isig[...]`,
# `.save(...)` as with any signal. A logarithmic colour scale shows both the
# boundaries and the faint structure inside grains.

# %%
s_map = s.diffraction_gradient(factor=4)
print(s_map, s_map.axes_manager.signal_axes)
ax = plot_boundaries(s_map)
ax.set_title("diffraction gradient S (log scale)")
ax.figure.savefig(OUT / "gradient_map.png", dpi=110)

# %% [markdown]
# Very fine maps of large scans are best evaluated lazily: with `lazy=True`
# nothing is computed until asked for, and then chunk by chunk (bounded
# memory). Here only a 2 x 2 um window of a 10x finer map is computed.

# %%
fine = s.diffraction_gradient(factor=10, lazy=True)
window = fine.isig[2.0:4.0, 2.0:4.0]
window.compute()
print(fine, "->", window, f"max S in the window: {window.data.max():.3g}")

# %% [markdown]
# `S` sums the changes of all the field's coefficients. The per-coefficient
# gradients are there too: `model.gradient(xy, per_component=True)` returns
# d/dx and d/dy of every coefficient (in pattern units). Different
# coefficients light up different boundaries.

# %%
xy = model.geometry.grid_xy(4)
jacobian = model.gradient(xy, per_component=True)  # (ny', nx', R - 1, 2)
per_coefficient = np.linalg.norm(jacobian, axis=-1)
fig, axes = plt.subplots(1, 3, figsize=(12, 4), layout="constrained")
for k, ax in enumerate(axes):
    ax.imshow(per_coefficient[..., k], cmap="magma")
    ax.set_title(f"|grad A_{k + 1}|")
    ax.set_axis_off()
fig.savefig(OUT / "gradient_per_coefficient.png", dpi=110)

# %% [markdown]
# ## Boundaries as ridges of S
# `neural_boundaries` finds the ridges of `S` (non-maximum suppression along
# the direction of fastest change), keeps those that pass hysteresis
# thresholds (chosen automatically from the distribution of ridge heights),
# moves every ridge point across the ridge to the centroid of `S` evaluated
# exactly along the normal, and links the points into polylines in
# micrometres.

# %%
trace = s.neural_boundaries(factor=8)
print(trace)
print("first polyline (x, y in um):\n", trace.polylines[0][:4].round(3))

# %% [markdown]
# ## Grains
# A watershed of `S` seeded in the low-`S` grain interiors gives a grain-id
# map (here on a 4x finer grid) and grain sizes, again without indexing.

# %%
grains = s.neural_grains(factor=4)
print(grains)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
grains.plot(ax=axes[0])
axes[0].set_title(f"{grains.n_grains} grains from S")
axes[1].hist(grains.equivalent_diameters, bins=15)
axes[1].set_xlabel("equivalent circle diameter (um)")
axes[1].set_ylabel("grains")
fig.savefig(OUT / "grains.png", dpi=110)

# %% [markdown]
# ## The conventional route, and both together
# Hough indexing of the measured patterns (kikuchipy with PyEBSDIndex), then
# disorientation between neighbouring scan points: 2-10 deg low-angle and
# >= 10 deg high-angle boundaries, drawn on the edges between pixels, the
# usual staircase. The S ridges follow the boundaries between scan points.

# %%
xmap = hough_index(s)
indexed = orientation_boundaries(xmap, thresholds=(2, 10))
fig, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
plot_boundaries(s_map, trace, indexed, ax=axes[0])
plot_boundaries(s_map, trace, indexed, ax=axes[1], colorbar=False)
x0, y0 = 0.3 * shape[1], 0.3 * shape[0]
axes[1].set_xlim(x0, x0 + 0.3 * shape[1])
axes[1].set_ylim(y0 + 0.3 * shape[0], y0)
axes[1].set_title("zoom")
fig.savefig(OUT / "boundaries_overlay.png", dpi=110)

# %% [markdown]
# Because the truth is known, the two boundary sets can be scored: the
# distance of every detected boundary point to the nearest true boundary, in
# scan steps. Grid thresholding puts boundaries at midpoints between scan
# points, up to half a step off; the S ridges are placed continuously.

# %%
step = model.geometry.step
for name, points in (("S ridges", trace.points), ("indexed, >= 2 deg", indexed.points)):
    error = truth.boundary_distance(points) / step
    print(
        f"{name:18s}: {len(points):5d} points, median {np.median(error):.3f} step, "
        f"90th percentile {np.percentile(error, 90):.3f} step"
    )

# %% [markdown]
# ## S along a path
# `plot_profile` evaluates `S` exactly along a straight segment and marks the
# S-ridge and indexed boundaries that the segment crosses.

# %%
y = model.geometry.y0 + 0.5 * (shape[0] - 1) * model.geometry.dy + 0.3
ax = plot_profile(
    s, (0.0, y), ((shape[1] - 1) * 0.6, y), n=400, trace=trace, orientation=indexed
)
ax.set_title(f"S along y = {y:.2f} um")
ax.figure.tight_layout()
ax.figure.savefig(OUT / "gradient_profile.png", dpi=110)
print("figures in", OUT)
