"""fit_neural with the factorized field: accuracy, options, masks, seeds,
resume, bad input. Maps are tiny; thresholds are justified where set."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import FAST_FIT

from kikuchipy_neural.analysis.metrics import (
    aperture_mask,
    hough_index,
    map_mae,
    orientation_deviation,
    pattern_mae,
)
from kikuchipy_neural.training import FitOptions
from kikuchipy_neural.training.checkpoints import read_checkpoint
from kikuchipy_neural.training.data import PatternSource, ShuffleBuffer


def _state(model):
    return {k: v.clone() for k, v in model.field.state_dict().items()}


def _equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------- accuracy


def test_fit_beats_mean_pattern_by_far_and_denoises(small_map, small_model):
    truth = small_map.truth
    rec = small_model.reconstruct()
    clean = truth.clean
    mae = np.abs(rec - clean).mean()
    mean_pattern_mae = np.abs(clean.mean(axis=(0, 1)) - clean).mean()
    # A model no better than the measured patterns would sit at the noise
    # floor (~640 counts here); a quarter of it means the field learnt the
    # signal and averaged the noise away.
    assert mae < 0.25 * truth.noise_floor_mae()
    assert mae < 0.15 * mean_pattern_mae
    # Against the measured patterns the field cannot beat the noise floor by
    # much, and must not be much worse than it either.
    vs_measured = np.abs(rec - small_map.data).mean()
    assert abs(vs_measured - truth.noise_floor_mae()) < 0.1 * truth.noise_floor_mae()


def test_reconstruction_indexes_to_true_orientations(small_map, fitted_map):
    rec = fitted_map.neural_reconstruct()
    xmap = hough_index(rec, phase_list=small_map.xmap.phases)
    angles, _ = orientation_deviation(xmap, small_map.xmap)
    interior = small_map.truth.interior_mask(margin=1.0)
    assert interior.sum() > 40
    # Noise-free patterns index within 1 deg at >= 99 % of interior points
    # (tests/test_synthetic.py); the reconstruction may lose a little.
    assert np.mean(angles[interior] < 2.0) >= 0.95


def test_reconstruction_keeps_detector_axes_dtype(fitted_map):
    rec = fitted_map.neural_reconstruct()
    assert rec.data.dtype == np.float32
    assert rec.data.shape == fitted_map.data.shape
    np.testing.assert_allclose(rec.detector.pc, fitted_map.detector.pc)
    for a, b in zip(rec.axes_manager._axes, fitted_map.axes_manager._axes, strict=True):
        assert (a.scale, a.offset, a.units, a.size) == (
            b.scale,
            b.offset,
            b.units,
            b.size,
        )
    lazy = fitted_map.neural_reconstruct(lazy=True)
    assert lazy._lazy
    np.testing.assert_allclose(lazy.data.compute(), rec.data, rtol=1e-6, atol=1e-2)


def test_rank_auto_near_the_best_pca_rank():
    from kikuchipy_neural.data import synthetic_polycrystal

    s = synthetic_polycrystal((24, 24), (40, 40), n_grains=6, seed=5)
    s.set_signal_type("NeuralEBSD")
    # PCA's best rank against the truth, by brute force.
    x = s.data.reshape(-1, 1600).astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    clean = s.truth.clean.reshape(-1, 1600)
    errors = {
        r: np.abs(mean + (x - mean) @ vt[: r - 1].T @ vt[: r - 1] - clean).mean()
        for r in range(2, 30)
    }
    best = min(errors, key=errors.get)
    model = s.fit_neural(max_steps=0, **FAST_FIT)
    assert best / 2 <= model.rank <= 2 * best
    # The spectrum behind the choice is kept and can be plotted.
    assert model.spectrum.noise_edge > 0
    assert (
        model.spectrum.eigenvalues[: model.rank - 1] > model.spectrum.noise_edge
    ).all()
    assert model.plot_spectrum() is not None


def test_variance_picks_the_smallest_rank(small_map):
    model = small_map.deepcopy().fit_neural(variance=0.9, max_steps=0, **FAST_FIT)
    ratio = model.spectrum.explained_variance_ratio
    assert ratio[model.rank - 2] >= 0.9
    assert model.rank == 2 or ratio[model.rank - 3] < 0.9


# ------------------------------------------------------------ determinism


def test_same_seed_same_model_other_seed_other_model(small_map):
    options = dict(FAST_FIT, max_steps=30)
    a = small_map.deepcopy().fit_neural(seed=7, **options)
    b = small_map.deepcopy().fit_neural(seed=7, **options)
    c = small_map.deepcopy().fit_neural(seed=8, **options)
    assert _equal_states(_state(a), _state(b))
    assert not _equal_states(_state(a), _state(c))


# -------------------------------------------------------------------- masks


def test_masked_points_are_never_read(small_map):
    s = small_map.deepcopy()
    s.change_dtype("float32")
    mask = np.ones((12, 12), bool)
    mask[5:7, 5:8] = False
    s.data[~mask] = np.nan  # any read of these would poison the fit
    model = s.fit_neural(mask=mask, **FAST_FIT)
    assert model.info["n_train_points"] + model.info["n_val_points"] == mask.sum()
    rec = model.reconstruct()
    assert np.isfinite(rec).all()
    # The hole is filled by the field: far closer to the truth there than
    # the mean pattern of the map is.
    clean = small_map.truth.clean
    hole = np.abs(rec[~mask] - clean[~mask]).mean()
    mean_pattern = np.abs(clean.mean(axis=(0, 1)) - clean[~mask]).mean()
    assert hole < 0.5 * mean_pattern


def test_bad_masks_raise(small_map):
    with pytest.raises(ValueError, match="navigation shape"):
        small_map.fit_neural(mask=np.ones((5, 5), bool), **FAST_FIT)
    with pytest.raises(TypeError, match="boolean"):
        small_map.fit_neural(mask=np.ones((12, 12)), **FAST_FIT)
    with pytest.raises(ValueError, match="no scan points"):
        small_map.fit_neural(mask=np.zeros((12, 12), bool), **FAST_FIT)


# --------------------------------------------------------- samplers, lazy


def test_paper_coordinate_sampler_learns(small_map):
    s = small_map.deepcopy()
    model = s.fit_neural(
        sampler="coordinates", batch_size=4096, max_steps=40, **FAST_FIT
    )
    assert [st for st in model.history["stage"]] == ["fit"] * len(
        model.history["stage"]
    )
    mae = model.history["val_mae"]
    assert mae[-1] < mae[0]


def test_band_biased_pixel_subsets(small_map):
    s = small_map.deepcopy()
    model = s.fit_neural(pixels_per_position=400, max_steps=40, **FAST_FIT)
    assert np.isfinite(model.history["val_mae"]).all()


def test_position_batches_reuse_their_arrays_with_the_right_values(small_map):
    from kikuchipy_neural.training.data import InMemoryBuffer
    from kikuchipy_neural.training.losses import band_mask
    from kikuchipy_neural.training.preprocessing import preprocess
    from kikuchipy_neural.training.samplers import PositionSampler

    source = PatternSource(small_map.data)
    prep = preprocess(
        source,
        np.ones(144, bool),
        rank=4,
        variance=None,
        need_pca=True,
        validation_fraction=0.1,
        max_validation_points=100,
        pca_samples=1000,
        memory_budget=10**8,
        nonfinite="raise",
        rng=np.random.default_rng(0),
    )
    buffer = InMemoryBuffer(source, prep.train_points, 0.15)
    sampler = PositionSampler(buffer, prep, 16, None, 2.0, 0.5)
    rng = np.random.default_rng(1)
    first, second = sampler(rng), sampler(rng)
    # The second batch is written into the first one's arrays ...
    assert second.target is first.target and second.weight is first.weight
    # ... with the values of its own points.
    lo, hi = prep.intensity_range
    raw = small_map.data.reshape(144, -1)[second.points].astype(np.float64)
    np.testing.assert_allclose(second.target.numpy(), (raw - lo) / (hi - lo), rtol=1e-6)
    band = band_mask(torch.from_numpy(raw), (40, 40), 0.15).numpy()
    np.testing.assert_array_equal(second.weight.numpy(), np.where(band, 2.0, 1.0))


def test_lazy_signal_streams_through_a_shuffle_buffer(small_map):
    s = small_map.deepcopy().as_lazy()
    s.data = s.data.rechunk((4, 4, -1, -1))
    # A budget of a few chunks forces the shuffle buffer.
    budget = 3 * 16 * 1600 * 2
    model = s.fit_neural(memory_budget=budget, **FAST_FIT)
    rec = model.reconstruct()
    assert (
        np.abs(rec - small_map.truth.clean).mean()
        < 0.35 * small_map.truth.noise_floor_mae()
    )


def test_shuffle_buffer_visits_points_uniformly():
    import dask.array as da

    data = da.from_array(
        np.arange(16 * 16 * 4, dtype=np.uint16).reshape(16, 16, 2, 2),
        chunks=(4, 4, 2, 2),
    )
    source = PatternSource(data)
    train = np.arange(256)[np.arange(256) % 7 != 0]  # 219 points over 16 chunks
    rng = np.random.default_rng(0)
    buffer = ShuffleBuffer(source, train, 0.15, max_bytes=4 * 16 * 12, rng=rng)
    assert buffer.n_slots < len(buffer.tiles)
    counts = np.zeros(256)
    for _ in range(2000):
        points, raw, _ = buffer.sample(8, rng)
        counts[points] += 1
        # Patterns come with their own points.
        np.testing.assert_array_equal(raw[:, 0] // 4, points)
    buffer.close()
    assert counts[np.arange(256) % 7 == 0].sum() == 0
    visits = counts[train]
    expected = 2000 * 8 / len(train)
    # Every point is visited, with the frequency of uniform sampling (each
    # chunk leaves once its points were drawn once on average).
    assert visits.min() > 0.5 * expected
    assert abs(visits.mean() - expected) < 1e-9 * expected + 1
    assert visits.std() < 0.35 * expected


def test_a_budget_below_three_chunks_warns():
    import dask.array as da

    data = da.zeros((8, 8, 2, 2), np.uint16, chunks=(2, 8, 2, 2))
    chunk = 16 * (4 * 2 + 1)  # 16 points: 4 uint16 values + 1 byte of band bits
    with pytest.warns(UserWarning, match="fewer than three chunks"):
        ShuffleBuffer(
            PatternSource(data), np.arange(64), 0.15, 2 * chunk, np.random.default_rng()
        ).close()


def test_pca_scores_share_the_memory_budget(small_map, monkeypatch):
    from kikuchipy_neural.training import data

    budgets = []
    original = data.make_buffer

    def spy(source, train_points, top_fraction, memory_budget, *args, **kwargs):
        budgets.append(memory_budget)
        return original(
            source, train_points, top_fraction, memory_budget, *args, **kwargs
        )

    fit_module = importlib.import_module("kikuchipy_neural.training.fit")
    monkeypatch.setattr(fit_module, "make_buffer", spy)
    budget = 10**7
    model = small_map.deepcopy().fit_neural(
        rank=6, memory_budget=budget, max_steps=1, **FAST_FIT
    )
    n_train = model.geometry.n_points - len(model.validation_points)
    # Scores (float32, rank - 1 per training point) and their whitened copy.
    assert budget - budgets[0] == 2 * 5 * 4 * n_train


def test_a_lazy_map_within_the_budget_is_read_twice_in_all(small_map, monkeypatch):
    """The PCA sample and one pass over the map: the training buffer, the
    bases' refit and the per-point intensities take the patterns that pass
    kept (each read the map once more before), with the results of reading."""
    import copy

    from kikuchipy_neural.training.point_intensity import fit_point_intensity
    from kikuchipy_neural.training.refit_bases import refit_bases

    read = []
    original = PatternSource.read_tile

    def counted(self, tile):
        read.append(tile.n_points)
        return original(self, tile)

    monkeypatch.setattr(PatternSource, "read_tile", counted)
    s = small_map.deepcopy().as_lazy()
    s.data = s.data.rechunk((4, 4, -1, -1))
    model = s.fit_neural(
        max_steps=20, refit_bases="all", point_intensity=True, **FAST_FIT
    )
    n = model.geometry.n_points
    # All 144 points are in the PCA sample (pca_samples is far larger).
    assert sum(read) == 2 * n
    assert model.info["refit_bases"]["applied"]
    assert model.info["refit_bases"]["points"] == n

    monkeypatch.setattr(PatternSource, "read_tile", original)
    source = PatternSource(small_map.data)
    again = copy.deepcopy(model)
    again.point_intensity = None
    refit_bases(again, source, np.arange(n))  # given the network: the same
    np.testing.assert_allclose(
        again.field.bases.detach().numpy(),
        model.field.bases.detach().numpy(),
        rtol=0,
        atol=1e-5 * float(model.field.bases.detach().abs().max()),
    )
    table = fit_point_intensity(again, source, np.ones(n, bool))
    np.testing.assert_allclose(table, model.point_intensity, rtol=1e-4, atol=1e-3)


def test_kept_training_patterns_are_those_of_the_training_points(small_map):
    import dask.array as da

    from kikuchipy_neural.training.preprocessing import _drop_rows, preprocess

    data = small_map.data.astype(np.float32)
    flat_data = data.reshape(144, -1)
    bad = [3, 30, 64, 100, 131, 143]  # in different chunks
    flat_data[bad[:3]] = np.nan
    flat_data[bad[3:], 7] = np.inf
    source = PatternSource(da.from_array(data, chunks=(5, 5, -1, -1)))
    options = dict(
        rank=4,
        variance=None,
        need_pca=True,
        validation_fraction=0.1,
        max_validation_points=100,
        pca_samples=10,  # most bad points are found by the pass, not the sample
        memory_budget=10**7,
        nonfinite="mask",
        rng=np.random.default_rng(0),
        keep_train_patterns=True,
    )
    prep = preprocess(source, np.ones(144, bool), **options)
    assert len(prep.train_points) + len(prep.val_points) == 144 - len(bad)
    np.testing.assert_array_equal(prep.train_patterns, flat_data[prep.train_points])
    # numpy data is not copied, and lazy data beyond the budget is not kept
    # (patterns of 1600 float32 values and their masks: 0.8 MB for 130).
    assert (
        preprocess(
            PatternSource(data),
            np.ones(144, bool),
            **{**options, "rng": np.random.default_rng(0)},
        ).train_patterns
        is None
    )
    tight = {**options, "memory_budget": 5 * 10**5, "rng": np.random.default_rng(0)}
    assert preprocess(source, np.ones(144, bool), **tight).train_patterns is None

    # Holes closed in place: the rows kept, in order, in the same memory.
    rows = np.arange(50 * 3).reshape(50, 3)
    keep = np.random.default_rng(1).random(50) < 0.7
    expected = rows[keep].copy()
    closed = _drop_rows(rows, keep)
    np.testing.assert_array_equal(closed, expected)
    assert np.shares_memory(closed, rows)


def test_training_arrays_are_released_before_the_passes_after_training(
    small_map, monkeypatch
):
    """The bases' refit and per-point intensities run after the trainer (its
    batch work arrays, validation targets, optimiser moments) and the shuffle
    buffer (its slots and the chunk read ahead) are gone."""
    import gc
    import weakref

    from kikuchipy_neural.training import loop

    fit_module = importlib.import_module("kikuchipy_neural.training.fit")
    refs = {}
    original_init, original_buffer = loop.Trainer.__init__, fit_module.make_buffer

    def init(self, *args, **kwargs):
        refs["trainer"] = weakref.ref(self)
        original_init(self, *args, **kwargs)

    def buffer(*args, **kwargs):
        made = original_buffer(*args, **kwargs)
        assert isinstance(made, ShuffleBuffer)
        refs["buffer"] = weakref.ref(made)
        refs["slots"] = weakref.ref(made.patterns)
        return made

    alive = []

    def after_training(name, original):
        def check(*args, **kwargs):
            # Reference counting alone must free them (no cycles left
            # for the collector): the passes after training run at once.
            alive.append((name, {k: r() is not None for k, r in refs.items()}))
            return original(*args, **kwargs)

        return check

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    monkeypatch.setattr(fit_module, "make_buffer", buffer)
    for name in ("refit_bases", "fit_point_intensity"):
        monkeypatch.setattr(
            fit_module, name, after_training(name, getattr(fit_module, name))
        )
    s = small_map.deepcopy().as_lazy()
    s.data = s.data.rechunk((3, 12, -1, -1))
    gc.disable()
    try:
        s.fit_neural(
            rank=6,
            memory_budget=400_000,  # a shuffle buffer of 36-point chunks
            max_steps=10,
            warm_start=False,
            point_intensity=True,
            **FAST_FIT,
        )
    finally:
        gc.enable()
    assert [name for name, _ in alive] == ["refit_bases", "fit_point_intensity"]
    for name, state in alive:
        assert state == {"trainer": False, "buffer": False, "slots": False}, name


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_validation_is_the_band_weighted_error_held_as_flags(
    small_map, monkeypatch, loss
):
    """The trainer keeps the validation patterns' band flags (a byte per
    value), not float weights, and on CPUs no float copy of the patterns; it
    evaluates in blocks: the loss (the training loss's) and MAE equal the
    formula on all validation points at once."""
    from kikuchipy_neural.training import loop
    from kikuchipy_neural.training.losses import band_mask

    trainers = []
    original = loop.Trainer.__init__

    def init(self, *args, **kwargs):
        trainers.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    monkeypatch.setattr(loop, "_VALIDATION_BLOCK", 5)  # several blocks
    s = small_map.deepcopy()
    s.fit_neural(max_steps=5, validation_fraction=0.2, loss=loss, **FAST_FIT)
    trainer = trainers[-1]
    assert trainer.val_band.dtype == torch.bool
    assert not hasattr(trainer, "val_weight")
    assert trainer.val_target is None  # normalised per block from the raw

    prep = trainer.prep
    target = prep.normalize(prep.val_patterns)
    band = band_mask(target, trainer.field.pattern_shape, 0.15)
    with torch.no_grad():
        diff = trainer.field.pattern_values(trainer.val_xy) - target
    weight = 1.0 + (2.0 - 1.0) * band.double()
    lo, hi = prep.intensity_range
    val_loss, mae = trainer.evaluate()
    assert len(target) > 5 and band.any()
    power = 2 if loss == "mse" else 1
    np.testing.assert_allclose(
        val_loss, float((weight * diff.double().abs() ** power).mean()), 1e-5
    )
    np.testing.assert_allclose(mae, float(diff.double().abs().mean()) * (hi - lo), 1e-5)


def test_mae_loss_ignores_impulse_noise(small_map):
    """1 % of the values saturated at random (dead or saturated pixels,
    cosmic rays): the squared error follows them, the absolute error does
    not. Truth: the noise-free patterns."""
    s = small_map.deepcopy()
    hit = np.random.default_rng(0).random(s.data.shape) < 0.01
    s.data[hit] = np.iinfo(s.data.dtype).max
    clean = small_map.truth.clean
    error = {}
    for loss in ("mse", "mae"):
        model = s.deepcopy().fit_neural(seed=0, loss=loss, **FAST_FIT)
        assert model.options["loss"] == loss
        error[loss] = np.abs(model.reconstruct() - clean).mean()
    # Measured: 629 (mse) and 199 (mae) counts; without the impulses both
    # fits reach 120, and the Poisson noise alone is 640.
    assert error["mae"] < 0.5 * error["mse"]
    assert error["mae"] < 0.4 * small_map.truth.noise_floor_mae()


def test_total_variance_is_summed_without_float32_drift():
    from kikuchipy_neural.training.preprocessing import _sum_of_squares

    # 20 M values: a float32 norm or dot product drifts by 1e-4 to 1e-3 here.
    x = torch.rand(2000, 10_000, generator=torch.Generator().manual_seed(0))
    x = 0.3 * x + 0.2
    x -= x.mean(dim=0)
    exact = float((x.double() ** 2).sum())
    assert abs(_sum_of_squares(x) / exact - 1) < 1e-6


# ----------------------------------------------------------- resume & stop


def test_resume_continues_exactly_where_it_stopped(small_map, tmp_path):
    options = dict(FAST_FIT, eval_every=5, patience=100, warm_start_patience=100)
    ckpt = tmp_path / "fit.ckpt"
    full = small_map.deepcopy().fit_neural(seed=3, max_steps=40, **options)
    first = small_map.deepcopy().fit_neural(
        seed=3, max_steps=20, checkpoint=str(ckpt), **options
    )
    assert first.info["steps"] == 20 and ckpt.exists()
    resumed = small_map.deepcopy().fit_neural(
        seed=3, max_steps=40, resume=str(ckpt), **options
    )
    assert resumed.info["steps"] == 40
    assert resumed.history["step"] == full.history["step"]
    np.testing.assert_allclose(
        resumed.history["val_mae"], full.history["val_mae"], rtol=1e-5
    )
    assert _equal_states(_state(resumed), _state(full))


def test_a_step_limit_between_evaluations_still_writes_the_checkpoint(
    small_map, tmp_path
):
    # 7 steps, evaluations every 5: the checkpoint holds step 7, not 5 (and
    # a fit shorter than one evaluation interval leaves one at all).
    options = dict(FAST_FIT, eval_every=5)
    ckpt = tmp_path / "fit.ckpt"
    small_map.deepcopy().fit_neural(max_steps=7, checkpoint=str(ckpt), **options)
    assert read_checkpoint(ckpt)["trainer"]["step"] == 7
    resumed = small_map.deepcopy().fit_neural(max_steps=12, resume=str(ckpt), **options)
    assert resumed.info["steps"] == 12
    assert resumed.history["step"][-1] == 12
    # What the checkpoint's network and split were built from cannot change.
    for changed, match in [
        ({"siren_width": 32}, "siren_width=32"),
        ({"validation_fraction": 0.2}, "validation_fraction=0.2"),
        ({"sampler": "coordinates"}, "sampler='coordinates'"),
        ({"loss": "mae"}, "loss='mae'"),  # it picks the parameters kept
        ({"rank": 5}, "keeps the checkpoint's rank"),
        ({"variance": 0.9}, "keeps the checkpoint's rank"),
    ]:
        with pytest.raises(ValueError, match=match):
            small_map.fit_neural(resume=str(ckpt), **{**options, **changed})
    rank = resumed.rank
    again = small_map.deepcopy().fit_neural(
        max_steps=13, resume=str(ckpt), rank=rank, lr=5e-5, **options
    )
    assert again.rank == rank and again.info["steps"] == 13


def test_unreadable_checkpoints_raise_clear_errors(small_map, small_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        small_map.fit_neural(resume=tmp_path / "missing.ckpt", **FAST_FIT)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a kikuchipy-neural checkpoint") as info:
        small_map.fit_neural(resume=garbage, **FAST_FIT)
    assert "weights_only" not in str(info.value)
    with pytest.raises(ValueError, match="HDF5 file .* not a checkpoint"):
        small_map.fit_neural(resume=small_model.save(tmp_path / "m.h5"), **FAST_FIT)
    # A pickle that would run code when unpickled is refused, not run.
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    crafted = tmp_path / "crafted.ckpt"
    torch.save({"x": Payload()}, crafted, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a kikuchipy-neural checkpoint"):
        small_map.fit_neural(resume=crafted, **FAST_FIT)
    tensors = tmp_path / "tensors.ckpt"
    torch.save({"format": "other"}, tensors)
    with pytest.raises(ValueError, match="not a kikuchipy-neural checkpoint"):
        small_map.fit_neural(resume=tensors, **FAST_FIT)


def test_keyboard_interrupt_keeps_the_model_and_checkpoint(
    small_map, tmp_path, monkeypatch
):
    from kikuchipy_neural.training import loop

    calls = {"n": 0}
    original = loop.Trainer._train_step

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 27:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "_train_step", interrupted)
    ckpt = tmp_path / "fit.ckpt"
    with pytest.warns(UserWarning, match="interrupted"):
        model = small_map.deepcopy().fit_neural(checkpoint=str(ckpt), **FAST_FIT)
    assert model.info["stop_reason"] == "interrupted"
    assert model.info["steps"] == 26
    state = read_checkpoint(ckpt)
    # At most one evaluation interval is lost: here none, it was saved on stop.
    assert state["trainer"]["step"] == 26


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_before_training(small_map):
    import kikuchipy as kp

    s = small_map.deepcopy()
    s.change_dtype("float32")
    s.data[3, 4, 10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        s.fit_neural(**FAST_FIT)
    model = s.fit_neural(nonfinite="mask", max_steps=10, **FAST_FIT)
    assert model.info["n_train_points"] + model.info["n_val_points"] == 143

    for dtype in (np.complex64, bool):
        odd = small_map.deepcopy()
        odd.data = odd.data.astype(dtype)
        with pytest.raises(TypeError, match="must be real numbers"):
            odd.fit_neural(**FAST_FIT)
    flat = small_map.deepcopy()
    flat.data[:] = 1000
    with pytest.raises(ValueError, match="constant"):
        flat.fit_neural(**FAST_FIT)
    with pytest.raises(ValueError, match="rank=5000"):
        small_map.fit_neural(rank=5000, **FAST_FIT)
    with pytest.raises(TypeError, match="did you mean 'siren_width'"):
        small_map.fit_neural(siren_widht=3)
    with pytest.raises(ValueError, match="formulation"):
        small_map.fit_neural(formulation="quantum")
    with pytest.raises(ValueError, match="rank"):
        small_map.fit_neural(rank="many")
    with pytest.raises(ValueError, match="either rank or variance"):
        small_map.fit_neural(rank=4, variance=0.9)
    with pytest.raises(ValueError, match="sampler"):
        small_map.fit_neural(sampler="magic")
    single = kp.signals.EBSD(small_map.data[0, 0])
    single.set_signal_type("NeuralEBSD")
    with pytest.raises(ValueError, match="no navigation axes"):
        single.fit_neural()
    with pytest.raises(ValueError, match="Unknown device 'gpu0'"):
        small_map.fit_neural(device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises_a_clear_error(small_map, small_model):
    # torch itself fails later with "AssertionError: Torch not compiled with
    # CUDA enabled" (model.to) or deep in the fit.
    with pytest.raises(ValueError, match="CUDA is not available"):
        small_map.fit_neural(device="cuda:0")
    with pytest.raises(ValueError, match="CUDA is not available"):
        small_model.to("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        small_model.to("bogus")
    assert small_model.to("cpu").device == torch.device("cpu")


def test_options_are_validated():
    with pytest.raises(ValueError, match="lr"):
        FitOptions.from_kwargs(lr=-1.0)
    with pytest.raises(ValueError, match="band_top_fraction"):
        FitOptions.from_kwargs(band_top_fraction=1.5)
    with pytest.raises(ValueError, match="loss must be one of"):
        FitOptions.from_kwargs(loss="l1")
    assert FitOptions.from_kwargs().siren_width == 512  # the paper's default


def test_warm_start_has_its_own_learning_rate_and_batch(small_map, monkeypatch):
    from kikuchipy_neural.training.samplers import ScoreSampler

    sizes = []
    original = ScoreSampler.__call__

    def spy(self, rng):
        batch = original(self, rng)
        sizes.append(len(batch.points))
        return batch

    monkeypatch.setattr(ScoreSampler, "__call__", spy)
    # No halving on a stall here: this test is about the starting values.
    options = dict(
        FAST_FIT,
        lr_ramp_steps=0,
        warm_start_patience=2,
        warm_start_plateau_patience=100,
        patience=2,
    )
    model = small_map.deepcopy().fit_neural(
        max_steps=150, warm_start_lr=3e-4, warm_start_positions=16, lr=5e-5, **options
    )
    h = model.history
    stage_lr = list(zip(h["stage"], h["lr"], strict=True))
    lrs = {
        stage: {lr for s, lr in stage_lr if s == stage}
        for stage in ("warm_start", "fit")
    }
    assert lrs["warm_start"] == {3e-4}
    assert lrs["fit"] == {5e-5}
    assert sizes and set(sizes) == {16}
    with pytest.raises(ValueError, match="warm_start_lr"):
        FitOptions.from_kwargs(warm_start_lr=0.0)
    with pytest.raises(ValueError, match="warm_start_positions"):
        FitOptions.from_kwargs(warm_start_positions=0)


def test_warm_start_halves_its_learning_rate_on_a_stall(small_map):
    # A learning rate far too high for the warm start: its validation loss
    # stalls, and with warm_start_plateau_patience=0 every evaluation that
    # does not improve halves the rate. The stage ends after
    # warm_start_patience such evaluations, so the rate has halved at
    # least that often, all but the last halving before an evaluation the
    # history records; the fit stage, before its warmup_steps, keeps lr.
    options = dict(FAST_FIT, lr_ramp_steps=0, warm_start_patience=4, patience=2)
    model = small_map.deepcopy().fit_neural(
        max_steps=2000,
        warm_start_lr=1e-2,
        warm_start_plateau_patience=0,
        lr=5e-5,
        warmup_steps=10**6,
        **options,
    )
    h = model.history
    warm = [lr for s, lr in zip(h["stage"], h["lr"], strict=True) if s == "warm_start"]
    fit = {lr for s, lr in zip(h["stage"], h["lr"], strict=True) if s == "fit"}
    assert warm[0] == 1e-2
    assert np.all(np.diff(warm) <= 0)
    assert warm[-1] <= 1e-2 / 2 ** (4 - 1)
    assert fit == {5e-5}
    for name in ("warm_start_plateau_patience", "plateau_patience", "warmup_steps"):
        assert getattr(FitOptions.from_kwargs(**{name: 0}), name) == 0
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 0"):
            FitOptions.from_kwargs(**{name: -1})


def test_progressbar_and_history(small_map, capsys):
    model = small_map.deepcopy().fit_neural(
        max_steps=12, point_intensity=True, **dict(FAST_FIT, show_progressbar=True)
    )
    err = capsys.readouterr().err
    assert "fit_neural" in err
    # Preprocessing reads the data twice, the passes after training once
    # more each (minutes for a large map on disk).
    assert "PCA sample" in err and "reading the scan" in err
    assert "refit_bases" in err and "point_intensity" in err
    h = model.history
    assert set(h) >= {"step", "seconds", "loss", "val_loss", "val_mae"}
    assert h["step"][0] == 0 and h["step"][-1] == 12
    assert np.all(np.diff(h["seconds"]) >= 0)
    assert model.plot_history() is not None


# ------------------------------------------------------------------ metrics


def test_metrics_on_known_values(small_map):
    mask = aperture_mask((40, 40))
    assert abs(mask.sum() - np.pi * 20**2) < 0.03 * np.pi * 20**2
    a = np.zeros((2, 3, 40, 40))
    b = a.copy()
    b[..., ~mask] = 100.0  # outside the aperture: ignored
    b[0, 0][mask] = 10.0
    per = pattern_mae(b, a)
    assert per[0, 0] == pytest.approx(10.0) and per[1, 2] == 0
    err = map_mae(b, a, full_scale=1000.0)
    assert err.counts == pytest.approx(10 / 6)
    assert err.percent_of_max == pytest.approx(100 * 10 / 6 / 1000)
    angles, fraction = orientation_deviation(small_map.xmap, small_map.xmap)
    assert np.allclose(angles, 0, atol=1e-3) and fraction == 0
