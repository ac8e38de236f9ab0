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
# # Maps larger than memory, clusters, GPUs, and the joint formulation
#
# Real maps hold 10^5 to 10^6 patterns and tens of GB. This tutorial shows
# how kikuchipy-neural scales, on a map small enough to run anywhere:
#
# 1. **out-of-core training**: a lazy signal backed by an h5ebsd file is
#    fitted within a `memory_budget`: dask chunks stream through a bounded
#    shuffle buffer, the next chunk read by a background thread;
# 2. **distributed decoding**: reconstructions, finer grids and gradient maps
#    are dask graphs that any scheduler computes, a `dask.distributed`
#    cluster included; the model travels to each worker once;
# 3. **checkpoints**: a fit of hours survives interruptions and resumes
#    where it stopped;
# 4. **data-parallel training** with `torchrun` (one process per GPU), shown
#    as the script to launch;
#
# and ends with the **joint** formulation (4D-INR), the paper's baseline,
# behind the same methods.
#
# `KIKUCHIPY_NEURAL_FAST=1` runs it in about a minute.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import kikuchipy as kp
import matplotlib.pyplot as plt
from distributed import Client, LocalCluster

from kikuchipy_neural.analysis.metrics import map_mae
from kikuchipy_neural.data import synthetic_polycrystal

FAST = os.environ.get("KIKUCHIPY_NEURAL_FAST") == "1"
OUT = Path(os.environ.get("KIKUCHIPY_NEURAL_OUT", tempfile.mkdtemp()))
OUT.mkdir(parents=True, exist_ok=True)
# Small networks and patience in fast mode; the method is the same.
FIT = (
    dict(siren_width=128, siren_layers=3, eval_every=10, patience=5,
         warm_start_patience=8, lr_ramp_steps=20)
    if FAST
    else {}
)  # fmt: skip

# %% [markdown]
# ## A map on disk, opened lazily
# We write a synthetic map to kikuchipy's h5ebsd format and open it with
# `lazy=True`: nothing is read until it is needed. Dask chunks of a few scan
# rows are what the fit streams.

# %%
shape, pattern_shape = ((24, 24), (40, 40)) if FAST else ((64, 64), (60, 60))
s = synthetic_polycrystal(shape, pattern_shape, n_grains=8 if FAST else 30, seed=5)
path = OUT / "map.h5"
s.save(path, overwrite=True)
lazy = kp.load(path, lazy=True)
lazy.data = lazy.data.rechunk((4, -1, -1, -1))
lazy.set_signal_type("NeuralEBSD")
print(lazy, lazy.data.chunksize)

# %% [markdown]
# ## Out-of-core fit within a memory budget
# `memory_budget` (bytes) bounds the patterns held for training. Here it is
# a quarter of the map, so the fit must stream: the shuffle buffer holds a
# few chunks, samples batches from them, and swaps in the next chunk (read in
# the background) once the current ones have been visited enough. PCA
# initialisation reads a bounded sample the same way. (A map whose training
# patterns fit the budget is read twice in all: the PCA sample, then one
# pass whose patterns stay in memory for training, the bases' refit and
# per-point intensities.) What does not grow with the map comes on top: the
# validation patterns and a batch's work arrays, about 0.9 GB at 120 x 120 px
# with the default batch (`benchmarks/fit_memory.py`: a fit of the real
# 200 x 200 crop with a 600 MB budget peaked 1.5 GB above what the process
# held before it).

# %%
budget = lazy.data.nbytes // 4
model = lazy.fit_neural(memory_budget=budget, seed=0, **FIT)
rec = lazy.neural_reconstruct(lazy=True)  # a dask array, decoded per chunk
print(model)
print(f"data {lazy.data.nbytes / 1e6:.1f} MB, budget {budget / 1e6:.1f} MB")
mae = map_mae(rec.data.compute(), s.truth.clean)
print(f"map MAE against the noise-free truth: {mae.counts:.0f} counts")

# %% [markdown]
# ## Decoding on a dask.distributed cluster
# `neural_reconstruct(lazy=True)`, `upsample(..., lazy=True)` and
# `diffraction_gradient(..., lazy=True)` return dask graphs whose chunks all
# refer to one node holding the model: a cluster ships the model to a worker
# once, not with every chunk. The same code runs on a laptop's
# `LocalCluster` or on a cluster of many machines.

# %%
with (
    LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
    Client(cluster),
):
    fine = lazy.upsample(2, lazy=True).data.compute()
    gradient = lazy.diffraction_gradient(factor=2, lazy=True)
    gradient.compute()
print(fine.shape, gradient)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(fine[..., 20, 20], cmap="gray")
axes[0].set_title("one detector pixel over a 2x finer grid")
axes[1].imshow(gradient.data, cmap="magma")
axes[1].set_title("diffraction gradient S, 2x finer")
fig.savefig(OUT / "large_maps_cluster.png", dpi=100)

# %% [markdown]
# ## Long fits: checkpoints and resuming
# A fit of a real map takes hours. With `checkpoint=` the training state
# (network, optimiser, schedules, sampler, history) is written at every
# evaluation and whenever the fit stops: on a step or time limit, or on an
# interrupt (Ctrl-C keeps the best model so far). A crash loses at most
# `eval_every` steps. `resume=` continues from the checkpoint; what shaped
# the network and the validation split cannot change then (it raises),
# limits and learning rates can. Here a fit stopped by a step limit is
# resumed with a larger one.

# %%
ckpt = OUT / "fit.ckpt"
steps = 40 if FAST else 400
first = lazy.fit_neural(
    memory_budget=budget, seed=0, max_steps=steps, checkpoint=str(ckpt), **FIT
)
resumed = lazy.fit_neural(
    memory_budget=budget, seed=0, max_steps=2 * steps, resume=str(ckpt), **FIT
)
print(
    f"first fit: {first.info['steps']} steps ({first.info['stop_reason']}); "
    f"resumed: {resumed.info['steps']} steps ({resumed.info['stop_reason']})"
)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(resumed.history["step"], resumed.history["val_mae"], "o-", label="resumed fit")
ax.plot(first.history["step"], first.history["val_mae"], "x", label="first fit")
ax.axvline(first.info["steps"], color="gray", ls="--")
ax.set_xlabel("step")
ax.set_ylabel("validation MAE (counts)")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "large_maps_resume.png", dpi=100)

# %% [markdown]
# ## Data-parallel training on several GPUs
# The same `fit_neural` call trains data-parallel when the script is
# launched by `torchrun`: each process reads its own shard of chunks, the
# gradients are averaged over processes (NCCL between GPUs, gloo on CPUs),
# and every process returns the same model. Save it from rank 0:
#
# ```python
# # fit_big_map.py
# import kikuchipy as kp
# from kikuchipy_neural.training.distributed import is_main_process
#
# s = kp.load("big_map.h5", lazy=True)
# s.set_signal_type("NeuralEBSD")
# model = s.fit_neural(memory_budget=8 * 1024**3, precision="tf32")
# if is_main_process():
#     model.save("big_map_model.h5")
# ```
#
# ```bash
# torchrun --nproc_per_node 4 fit_big_map.py
# ```

# %% [markdown]
# ## The joint formulation (4D-INR)
# One SIREN over (x, y, u, v) with random Fourier features of (u, v): the
# paper's baseline. It has no bases, so `rank` does not apply, and every
# method above works on it through the same field interface. On the same
# budget it reconstructs far worse than the factorized field (see
# `benchmarks/README.md`).

# %%
small = synthetic_polycrystal((12, 12), (40, 40), n_grains=4, seed=3) if FAST else s
small.set_signal_type("NeuralEBSD")
joint_options = (
    dict(siren_width=128, siren_layers=3, fourier_features=64, batch_size=4096,
         lr=3e-4, curriculum_steps=200, eval_every=100, max_steps=600)
    if FAST
    else dict(time_budget=300)
)  # fmt: skip
joint = small.fit_neural("joint", seed=0, **joint_options)
print(joint)
joint_rec = small.neural_reconstruct()
joint_mae = map_mae(joint_rec.data, small.truth.clean)
print(f"joint map MAE against the truth: {joint_mae.counts:.0f} counts")
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, image, title in zip(
    axes,
    (small.data[3, 3], joint_rec.data[3, 3], small.truth.clean[3, 3]),
    ("measured", "joint reconstruction", "noise-free truth"),
    strict=True,
):
    ax.imshow(image, cmap="gray")
    ax.set_title(title)
    ax.axis("off")
fig.savefig(OUT / "large_maps_joint.png", dpi=100)
