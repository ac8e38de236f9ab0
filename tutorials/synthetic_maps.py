# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Simulated Ni EBSD maps with a known truth
#
# `kikuchipy_neural.data.synthetic_polycrystal` projects kikuchipy's bundled
# Ni master pattern onto a detector for a known microstructure: Voronoi
# grains with random orientations, optional annealing twins (Sigma3
# lamellae) and orientation gradients, a beam of finite size that mixes the
# patterns of neighbouring grains near boundaries, a smooth background and
# Poisson noise. The returned kikuchipy `EBSD` signal carries the truth as
# `s.truth`.
#
# Figures are saved to the folder in `KIKUCHIPY_NEURAL_OUT` (default: a new
# temporary folder).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kikuchipy_neural.data import synthetic_polycrystal  # noqa: E402

out = Path(os.environ.get("KIKUCHIPY_NEURAL_OUT") or tempfile.mkdtemp())
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# A 48 x 48 map of 60 x 60 px patterns, "recrystallised-like": twins in half
# of the grains and a weak orientation gradient (0.1 deg per scan step).

# %%
s = synthetic_polycrystal(
    (48, 48), (60, 60), n_grains=20, seed=4, twins=True, orientation_gradient=0.1
)
truth = s.truth
print(s)
print(truth)
print(f"dose {truth.dose:.0f} e/px, gain {truth.gain:.1f} counts/e")
print(f"noise floor: mean |measured - clean| = {truth.noise_floor_mae():.0f} counts")

# %% [markdown]
# Grain ids (twin lamellae are grains of their own) and the distance of
# every scan point to the nearest grain or twin boundary, in um.

# %%
extent = (-0.5, 47.5, 47.5, -0.5)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
axes[0].imshow(truth.grain_id, cmap="tab20", extent=extent, interpolation="nearest")
axes[0].set_title("grain id")
im = axes[1].imshow(truth.boundary_distance_grid, cmap="viridis", extent=extent)
axes[1].contour(
    truth.xy[..., 0], truth.xy[..., 1], truth.boundary_distance_grid, [truth.beam_reach]
)
axes[1].set_title("distance to nearest boundary (um); beam reach contour")
fig.colorbar(im, ax=axes[1])
for ax in axes:
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
fig.savefig(out / "synthetic_truth_maps.png", dpi=80)

# %% [markdown]
# A scan point whose beam straddles a boundary: its noise-free pattern is the
# area-weighted sum of the two grains' pure patterns, which
# `truth.grain_patterns` gives at the same position (and `truth.patterns`
# gives noise-free patterns, mixtures included, at any continuous position).

# %%
fractions = truth.beam_fractions(truth.xy)  # (ny, nx, n_grain_ids)
n_parts = np.count_nonzero(fractions, axis=-1)
balance = np.sort(fractions, axis=-1)[..., -2]  # the smaller of two parts
i, j = np.unravel_index(np.argmax(np.where(n_parts == 2, balance, 0)), balance.shape)
g = np.flatnonzero(fractions[i, j])
f = fractions[i, j, g]
pure = truth.grain_patterns(g, truth.xy[i, j])  # (2, h, w)
mixed = truth.clean[i, j]
print(f"row {i}, col {j}: grains {g} with beam fractions {np.round(f, 3)}")
print(
    "max |mixture - weighted sum| / max:",
    np.abs(mixed - np.tensordot(f, pure, axes=1)).max() / mixed.max(),
)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), layout="constrained")
panels = [
    (pure[0], f"grain {g[0]}: {f[0]:.2f} of the beam"),
    (mixed, f"noise-free mixture, row {i} col {j}"),
    (pure[1], f"grain {g[1]}: {f[1]:.2f} of the beam"),
    (s.data[i, j], "measured (Poisson noise)"),
]
for ax, (img, title) in zip(axes, panels, strict=True):
    ax.imshow(img, cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.savefig(out / "synthetic_mixture_pattern.png", dpi=80)
print("saved figures to", out)
