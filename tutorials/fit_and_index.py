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
# # Fit a neural field to an EBSD map, and index what it reconstructs
#
# This tutorial fits the factorized neural field (TF-INR) to a simulated Ni
# map whose truth is known, then checks the reconstruction the way a
# materials scientist would: by Hough indexing the measured and the
# reconstructed patterns with kikuchipy and comparing the orientations. It
# ends with the coefficient field (the paper's Fig. 4) and the learned bases.
#
# Open it as a notebook with `jupytext --to notebook tutorials/fit_and_index.py`
# (or Jupyter with the jupytext extension). Set `KIKUCHIPY_NEURAL_FAST=1` for
# a tiny map that runs in about a minute.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import kikuchipy_neural as kpn
from kikuchipy_neural.analysis import coefficients, metrics
from kikuchipy_neural.data import synthetic_polycrystal

FAST = os.environ.get("KIKUCHIPY_NEURAL_FAST") == "1"
OUT = Path(os.environ.get("KIKUCHIPY_NEURAL_OUT", tempfile.mkdtemp()))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A map with known truth
# A recrystallised-like Ni polycrystal: Voronoi grains with annealing twins, a
# beam of finite size (boundary patterns are mixtures), a smooth detector
# background and Poisson noise, as 16-bit counts. `s.truth` holds the
# noise-free patterns and `s.xmap` the true orientations.

# %%
shape, pattern_shape = ((16, 16), (40, 40)) if FAST else ((48, 48), (60, 60))
s = synthetic_polycrystal(shape, pattern_shape, twins=not FAST, seed=2)
truth = s.truth
print(s, truth, sep="\n")

# %% [markdown]
# ## Fit
# `set_signal_type("NeuralEBSD")` adds the neural methods to the kikuchipy
# signal. `rank="auto"` keeps every PCA component above the noise edge of the
# spectrum. The default sampler first regresses the network on the PCA scores
# (seconds), then trains network and bases on the patterns with the paper's
# loss; 5 % of the points are held out to decide when to stop. After training,
# one more pass over the patterns solves the bases by least squares given the
# trained network (`refit_bases=True`), kept if it lowers the MAE of the
# held-out points: `model.info["refit_bases"]` says by how much.

# %%
s.set_signal_type("NeuralEBSD")
options = (
    dict(siren_width=128, siren_layers=3, eval_every=10, patience=5) if FAST else {}
)
model = s.fit_neural(show_progressbar=not FAST, **options)
print(model)
print(model.info)
refit = model.info["refit_bases"]
print(
    f"bases refitted: {refit['applied']}, held-out MAE "
    f"{refit['validation_mae_before']:.1f} -> {refit['validation_mae_after']:.1f} counts"
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
model.plot_history(ax=axes[0])
model.plot_spectrum(ax=axes[1])
fig.tight_layout()
fig.savefig(OUT / "fit_history_spectrum.png")

# %% [markdown]
# ## Reconstruction error
# MAE inside the circular aperture, per pattern, against the measured
# patterns and against the noise-free truth. Against the measured patterns the
# best possible is the noise floor; against the truth, lower is better.

# %%
rec = s.neural_reconstruct()
measured = s.data.astype(np.float32)
full_scale = measured.max()
print("vs measured:", metrics.map_mae(rec, measured, full_scale=full_scale))
print("vs truth:   ", metrics.map_mae(rec, truth.clean, full_scale=full_scale))
print("noise floor:", metrics.map_mae(measured, truth.clean, full_scale=full_scale))

# %% [markdown]
# ## Hough indexing: measured vs reconstructed
# Both pattern sets go through the same kikuchipy pipeline (static and dynamic
# background removal, PyEBSDIndex). The reconstruction is compared with the
# indexing of the measured patterns, and both with the truth.

# %%
xmap_measured = metrics.hough_index(s, phase_list=s.xmap.phases)
xmap_rec = metrics.hough_index(
    rec, phase_list=s.xmap.phases, static_background=s.static_background
)
angles, fraction = metrics.orientation_deviation(xmap_rec, xmap_measured)
print(f"reconstructed vs measured indexing: {100 * fraction:.2f} % of points >= 4 deg")
for name, xm in (("measured", xmap_measured), ("reconstructed", xmap_rec)):
    _, f = metrics.orientation_deviation(xm, s.xmap)
    print(f"{name} indexing vs truth: {100 * f:.2f} % of points >= 4 deg")

fig, ax = plt.subplots(figsize=(4.5, 4))
im = ax.imshow(angles, cmap="magma", vmin=0, vmax=5)
fig.colorbar(im, ax=ax, label="deg")
ax.set_title("reconstructed vs measured orientation")
fig.savefig(OUT / "orientation_difference.png")

# %% [markdown]
# ## The coefficient field and the bases
# Each point's coefficient vector, projected on its three principal directions
# and shown as colour (the paper's Fig. 4), on a grid twice as fine as the scan:
# grains and twins appear without any indexing. Then the first learned bases,
# the mean pattern first.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
coefficients.plot_coefficient_field(model, factor=2, ax=ax)
fig.savefig(OUT / "coefficient_field.png")
fig, axes = plt.subplots(1, 5, figsize=(10, 2.2))
coefficients.plot_bases(model, 5, axes)
fig.savefig(OUT / "bases.png")

# %% [markdown]
# ## Save, load, share
# One HDF5 file holds everything (no pickle); `kikuchipy_neural.load` gives a
# lazy signal decoded from the model on demand.

# %%
path = model.save(OUT / "model.h5")
lazy = kpn.load(path)
print(
    lazy,
    f"{Path(path).stat().st_size / 1e6:.2f} MB for {measured.nbytes / 2e6:.1f} MB of uint16 patterns",
)
np.testing.assert_allclose(
    lazy.inav[0, 0].data.compute(), rec.inav[0, 0].data, atol=0.02 * full_scale
)

# %% [markdown]
# `precision="int8"` stores the bases and the network's weight matrices as
# 8-bit codes (one offset and step per row): half the float16 file for the
# real crop's models in the benchmarks, for a pattern error far below the
# noise (2 counts of MAE on ~360). A small model like the quick run's, whose
# biases, first layer and header weigh more, saves less (38 % in fast mode).

# %%
path8 = model.save(OUT / "model_int8.h5", precision="int8")
decoded8 = kpn.load_model(path8).reconstruct()
print(
    f"int8: {Path(path8).stat().st_size / 1e6:.2f} MB, mean |int8 - float32| = "
    f"{np.abs(decoded8 - model.reconstruct()).mean():.1f} counts"
)
assert Path(path8).stat().st_size < 0.75 * Path(path).stat().st_size

# %% [markdown]
# `balanced_bases=True` stores the field in its principal axes (the same
# patterns: the first basis becomes the mean pattern, the others orthogonal
# and ordered by energy, like PCA's components) and spends the bases'
# rounding error where it costs fewest bytes: steps inversely proportional
# to each basis's coefficient RMS, so that every basis adds the same error
# (in total twice the error variance of plain int8). The real crop's int8
# files shrink by another 25-37 % at ranks 2-16 and 28-61 % at ranks
# 32-128 (the more bases, the more of them carry little energy), for 1.0-1.9
# counts of MAE. The file reads like any other int8 file.

# %%
path8b = model.save(OUT / "model_int8b.h5", precision="int8", balanced_bases=True)
decoded8b = kpn.load_model(path8b).reconstruct()
print(
    f"int8, balanced bases: {Path(path8b).stat().st_size / 1e6:.3f} MB "
    f"(plain int8 {Path(path8).stat().st_size / 1e6:.3f} MB), mean |int8 - float32| = "
    f"{np.abs(decoded8b - model.reconstruct()).mean():.1f} counts"
)
assert Path(path8b).stat().st_size <= Path(path8).stat().st_size

# %% [markdown]
# A file meant to stand in for the map (compression) answers only at the
# map's points, so the held-out points need not stay held out:
# `refit_bases="all"` solves the bases on every point and keeps the result.
# Not the default: with many bases the solve also fits the points' noise,
# which can make patterns between points slightly worse.

# %%
compact = s.deepcopy().fit_neural(
    refit_bases="all", show_progressbar=not FAST, **options
)
print(compact.info["refit_bases"])
for name, m in (("default", model), ('refit_bases="all"', compact)):
    mae = metrics.map_mae(m.reconstruct(), measured, full_scale=full_scale)
    print(f"{name}: map MAE vs measured {mae.counts:.1f} counts")

# %% [markdown]
# ## Pattern-to-pattern intensity changes
# Real scans flicker: beam current and exposure change the overall intensity
# of each pattern a little, in no spatial order. A continuous field cannot
# follow that; PCA scores can. `point_intensity=True` fits, after training,
# a gain and an offset per scan point (4 bytes per point in a float16
# file) and applies them wherever the model decodes: exactly at scan points,
# bilinearly between them. Here we add a known flicker to the map.

# %%
rng = np.random.default_rng(0)
gain = 1 + 0.03 * rng.standard_normal(s.data.shape[:2])
offset = 200 * rng.standard_normal(s.data.shape[:2])
flicker = s.deepcopy()
flicker.change_dtype("float32")
flicker.data = gain[..., None, None] * flicker.data + offset[..., None, None]
flicker_truth = gain[..., None, None] * truth.clean + offset[..., None, None]
for point_intensity in (False, True):
    m = flicker.deepcopy().fit_neural(
        point_intensity=point_intensity, show_progressbar=not FAST, **options
    )
    mae = metrics.map_mae(m.reconstruct(), flicker_truth, full_scale=full_scale)
    print(f"point_intensity={point_intensity}: MAE vs truth {mae.counts:.0f} counts")
fig, ax = plt.subplots(figsize=(4, 3.5))
ax.scatter(offset.ravel(), m.point_intensity[:, 1], s=4)
ax.set_xlabel("added offset (counts)")
ax.set_ylabel("fitted offset (counts)")
fig.tight_layout()
fig.savefig(OUT / "point_intensity.png")

# %% [markdown]
# ## Outlying pixels: `loss="mae"`
# Dead or saturated pixels, cosmic rays and read-out spikes put a few values
# per pattern far from the rest. The paper's squared error follows them; the
# absolute error (`loss="mae"`, the accuracy maps are judged by) hardly
# does. Here 1 % of the values are saturated at random.

# %%
spiky = s.deepcopy()
hit = np.random.default_rng(1).random(spiky.data.shape) < 0.01
spiky.data[hit] = np.iinfo(spiky.data.dtype).max
fits = {
    loss: spiky.deepcopy().fit_neural(
        loss=loss, seed=0, show_progressbar=not FAST, **options
    )
    for loss in ("mse", "mae")
}
for loss, m in fits.items():
    mae = metrics.map_mae(m.reconstruct(), truth.clean, full_scale=full_scale)
    print(f'loss="{loss}": MAE vs truth {mae.counts:.0f} counts')
row, col = (n // 2 for n in s.data.shape[:2])
panels = {
    "measured, 1 % saturated": spiky.data[row, col],
    'loss="mse"': fits["mse"].reconstruct()[row, col],
    'loss="mae"': fits["mae"].reconstruct()[row, col],
    "truth": truth.clean[row, col],
}
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, (title, image) in zip(axes, panels.items(), strict=True):
    ax.imshow(image, cmap="gray", vmin=0, vmax=truth.clean.max())
    ax.set_title(title)
    ax.set_axis_off()
fig.tight_layout()
fig.savefig(OUT / "mae_loss.png", bbox_inches="tight")
