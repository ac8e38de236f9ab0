"""``fit``: from a signal to a trained :class:`~kikuchipy_neural.NeuralEBSDModel`.

The steps, each in its own module: validate the request (here), preprocess
the data (:mod:`.preprocessing`), build the field (:mod:`kikuchipy_neural.fields`),
build a buffer and samplers (:mod:`.data`, :mod:`.samplers`), and run the
stages (:mod:`.loop`).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from typing import Any

import h5py
import numpy as np
import torch

from kikuchipy_neural._device import resolve_device
from kikuchipy_neural.fields import FIELDS, FactorizedField, JointField, build_field
from kikuchipy_neural.fields.joint import curriculum_scale
from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.model import NeuralEBSDModel
from kikuchipy_neural.training.accelerate import matmul_precision
from kikuchipy_neural.training.checkpoints import CheckpointError, read_checkpoint
from kikuchipy_neural.training.data import HeldPatterns, PatternSource, make_buffer
from kikuchipy_neural.training.distributed import setup as setup_distributed
from kikuchipy_neural.training.loop import CHECKPOINT_FORMAT, StageSpec, Trainer
from kikuchipy_neural.training.options import FitOptions
from kikuchipy_neural.training.point_intensity import fit_point_intensity
from kikuchipy_neural.training.preprocessing import Preprocessed, Spectrum, preprocess
from kikuchipy_neural.training.refit_bases import refit_bases
from kikuchipy_neural.training.samplers import (
    CoordinateSampler,
    PositionSampler,
    ScoreSampler,
    band_share,
)
from kikuchipy_neural.training.validation import (
    held_out_report,
    warn_if_worse_than_baselines,
)

__all__ = ["fit"]

# The paper's step limit, used when max_steps is None.
DEFAULT_MAX_STEPS = 200_000


def _read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's contents; only tensors and plain containers are
    unpickled (``weights_only``), so a crafted file cannot run code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        state = read_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as error:
        if h5py.is_hdf5(path):
            raise ValueError(
                f"{path} is an HDF5 file (a model or pattern file?), not a "
                "checkpoint: a fit resumes from the file its checkpoint= "
                "option wrote"
            ) from None
        # torch's message suggests weights_only=False, which would run any
        # code a crafted file holds: not advice to pass on.
        raise ValueError(
            f"{path} is not a kikuchipy-neural checkpoint, or is damaged "
            f"({type(error).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a kikuchipy-neural checkpoint")
    return state


def _train_mask(mask, geometry: ScanGeometry) -> np.ndarray:
    """Flat boolean mask over scan points (True: may be trained on)."""
    if mask is None:
        return np.ones(geometry.n_points, bool)
    mask = np.asarray(mask)
    if hasattr(mask, "compute"):
        mask = np.asarray(mask.compute())
    if mask.dtype != bool:
        raise TypeError(f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.size != geometry.n_points or mask.shape not in (
        geometry.nav_shape,
        (geometry.nx,),
        (geometry.n_points,),
    ):
        raise ValueError(
            f"mask must have the navigation shape {geometry.nav_shape}, got {mask.shape}"
        )
    return mask.ravel().copy()


def _check_rank(rank, variance) -> None:
    if variance is not None:
        if rank != "auto":
            raise ValueError("Give either rank or variance, not both")
        if not 0 < float(variance) <= 1:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
    elif isinstance(rank, str):
        if rank != "auto":
            raise ValueError(f"rank must be an integer or 'auto', got {rank!r}")
    elif not isinstance(rank, int | np.integer) or isinstance(rank, bool):
        raise TypeError(f"rank must be an integer or 'auto', got {rank!r}")


def _prep_to_tensors(prep: Preprocessed) -> dict[str, Any]:
    """Preprocessing results in a form ``torch.load(weights_only=True)`` reads."""

    def t(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

    return {
        "intensity_range": list(prep.intensity_range),
        "train_points": t(prep.train_points),
        "val_points": t(prep.val_points),
        "val_patterns": t(prep.val_patterns),
        "rank": prep.rank,
        "mean": t(prep.mean),
        "components": t(prep.components),
        "scores": t(prep.scores),
        "spectrum": None
        if prep.spectrum is None
        else {
            k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
            for k, v in prep.spectrum.to_dict().items()
        },
    }


def _prep_from_tensors(d: dict[str, Any]) -> Preprocessed:
    def a(t):
        return None if t is None else t.numpy()

    spectrum = None
    if d["spectrum"] is not None:
        spectrum = Spectrum.from_dict(
            {
                k: (v.numpy() if torch.is_tensor(v) else v)
                for k, v in d["spectrum"].items()
            }
        )
    return Preprocessed(
        intensity_range=tuple(d["intensity_range"]),
        train_points=a(d["train_points"]),
        val_points=a(d["val_points"]),
        val_patterns=a(d["val_patterns"]),
        rank=d["rank"],
        mean=a(d["mean"]),
        components=a(d["components"]),
        spectrum=spectrum,
        scores=a(d["scores"]),
    )


def _build_stages(
    field,
    prep: Preprocessed,
    buffer,
    opts: FitOptions,
    device: torch.device | None = None,
    shard: np.ndarray | None = None,
) -> list[StageSpec]:
    # device: where pattern batches are normalised (CUDA: on the GPU);
    # shard: the training points of a distributed rank (None: all).
    share = band_share(
        opts.band_weight, opts.band_top_fraction, opts.band_fraction_range
    )
    if opts.sampler == "coordinates":
        sampler = CoordinateSampler(
            buffer, prep, opts.batch_size, opts.band_weight, share
        )
    else:
        sampler = PositionSampler(
            buffer,
            prep,
            opts.positions_per_batch,
            opts.pixels_per_position,
            opts.band_weight,
            share,
            device=device,
        )
    stages = []
    if (
        isinstance(field, FactorizedField)
        and opts.warm_start
        and opts.sampler == "positions"
    ):
        stages.append(
            StageSpec(
                name="warm_start",
                sampler=ScoreSampler(
                    prep, opts.warm_start_positions or opts.positions_per_batch, shard
                ),
                parameters=list(field.siren.parameters()),
                patience=opts.warm_start_patience,
                min_delta=0.0,
                # Halving on a stall lets the warm start begin fast and
                # still settle: at a fixed 2e-4 it diverges on real patterns.
                use_plateau=True,
                plateau_patience=opts.warm_start_plateau_patience,
                lr=opts.warm_start_lr,
            )
        )
    joint = isinstance(field, JointField)

    def set_curriculum(step: int) -> None:
        field.set_curriculum(
            curriculum_scale(step, opts.curriculum_start, opts.curriculum_steps)
        )

    stages.append(
        StageSpec(
            name="fit",
            sampler=sampler,
            parameters=list(field.parameters()),
            patience=opts.patience,
            min_delta=opts.min_delta,
            # The joint baseline halves its learning rate on a fixed schedule.
            use_plateau=not joint,
            plateau_warmup=opts.warmup_steps,
            lr_halving_steps=opts.lr_halving_steps if joint else None,
            grad_clip=opts.grad_clip,
            on_step=set_curriculum if joint else None,
            # After a warm start, ramp the learning rate up from 0.
            lr_ramp_steps=opts.lr_ramp_steps if stages else 0,
        )
    )
    return stages


# Half-extent, in scan steps, of the 64-point maps on which the joint
# field's defaults were set: its positions enter at that scale per training
# spacing whatever the map (FitOptions, coordinate frequency).
_JOINT_REFERENCE_SPACINGS = 31.5


def coordinate_frequencies(
    formulation: str, opts: FitOptions, spacing: float
) -> dict[str, float]:
    """The field's coordinate frequency for training points ``spacing`` apart.

    ``spacing`` is in network units (see
    :meth:`~kikuchipy_neural.geometry.ScanGeometry.point_spacing`). Sitzmann's
    first layer has frequencies up to ``omega_0 / 2`` per network unit, so
    ``omega_0 = 2 * phase_per_step / spacing`` puts neighbouring training
    points ``phase_per_step`` radians apart, on any map and under any mask.
    Returns the keyword arguments of the field's constructor.
    """
    if formulation == "joint":
        scale = opts.position_scale
        if scale is None:
            scale = 1.0 / (_JOINT_REFERENCE_SPACINGS * spacing)
        return {
            "first_omega_0": 30.0 if opts.first_omega_0 is None else opts.first_omega_0,
            "position_scale": float(scale),
        }
    omega = opts.first_omega_0
    if omega is None:
        omega = 2.0 * opts.phase_per_step / spacing
    return {"first_omega_0": float(omega)}


def _warn_if_omega_too_high(spacing: float, omega_0: float) -> None:
    """Warn when a given first-layer frequency cannot interpolate.

    Neighbouring training points ``spacing`` (network units) apart are
    ``omega_0 / 2 * spacing`` radians apart in the first layer; above 1 rad
    the network sees them as nearly unrelated and fits each without
    interpolating between them (the paper's 30 on maps of fewer than ~30
    training points across).
    """
    phase = omega_0 / 2 * spacing
    if phase > 1.0:
        warnings.warn(
            f"first_omega_0={omega_0:g} puts neighbouring training points "
            f"{phase:.1f} rad apart in the first SIREN layer: the field will not "
            "interpolate well between them; leave first_omega_0 unset (0.5 rad "
            f"per training spacing, here {1 / spacing:.3g}).",
            stacklevel=3,
        )


def _new_field(
    formulation: str,
    prep: Preprocessed,
    geometry: ScanGeometry,
    opts: FitOptions,
    spacing: float,
):
    frequencies = coordinate_frequencies(formulation, opts, spacing)
    if formulation == "factorized":
        field = FactorizedField(
            prep.rank,
            geometry.pattern_shape,
            width=opts.siren_width,
            layers=opts.siren_layers,
            hidden_omega_0=opts.hidden_omega_0,
            **frequencies,
        )
        std = torch.from_numpy(prep.scores.std(axis=0).astype(np.float32)).clamp_min(
            1e-12
        )
        field.initialize_bases(
            torch.from_numpy(prep.mean), torch.from_numpy(prep.components), std
        )
        return field
    if formulation == "joint":
        return JointField(
            geometry.pattern_shape,
            width=opts.siren_width,
            layers=opts.siren_layers,
            hidden_omega_0=opts.hidden_omega_0,
            fourier_features=opts.fourier_features,
            fourier_sigma=opts.fourier_sigma,
            **frequencies,
        )
    raise ValueError(
        f"Unknown formulation {formulation!r}; expected one of {sorted(FIELDS)}"
    )


def fit(
    signal,
    formulation: str = "factorized",
    rank: int | str = "auto",
    variance: float | None = None,
    mask=None,
    max_steps: int | None = None,
    time_budget: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    show_progressbar: bool | None = None,
    resume: str | os.PathLike | None = None,
    nonfinite: str = "raise",
    positions=None,
    distributed: bool | None = None,
    **options: Any,
) -> NeuralEBSDModel:
    """Fit a neural field to an EBSD signal; see ``NeuralEBSD.fit_neural``.

    ``positions`` (``(n, 2)`` calibrated x, y) places the patterns of a
    signal with one navigation axis at explicit, e.g. hexagonal, positions.
    ``distributed`` (None: when launched by ``torchrun`` with several
    processes; True; False) trains data-parallel over the processes, see
    :mod:`kikuchipy_neural.training.distributed`.
    """
    started = time.perf_counter()
    if formulation not in FIELDS:
        raise ValueError(
            f"Unknown formulation {formulation!r}; expected one of {sorted(FIELDS)}"
        )
    if nonfinite not in ("raise", "mask"):
        raise ValueError(f"nonfinite must be 'raise' or 'mask', got {nonfinite!r}")
    _check_rank(rank, variance)
    if formulation == "joint" and (rank != "auto" or variance is not None):
        raise ValueError(
            "rank and variance do not apply to the 'joint' formulation (it has no "
            "bases); leave them at their defaults"
        )
    if max_steps is not None and (
        not isinstance(max_steps, int | np.integer) or max_steps < 0
    ):
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(
            f"time_budget must be a positive number of seconds, got {time_budget}"
        )
    geometry = ScanGeometry.from_signal(signal)
    if positions is not None:
        geometry = geometry.with_positions(positions)
    train_mask = _train_mask(mask, geometry)
    ctx = setup_distributed(distributed, device)  # None: one process
    device = resolve_device(device) if ctx is None else ctx.device
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    show_bars = _show_progressbar(show_progressbar) and (ctx is None or ctx.is_main)
    checkpoint_state = None
    if resume is not None:
        checkpoint_state = _read_checkpoint(resume)
        if ScanGeometry.from_dict(checkpoint_state["geometry"]) != geometry:
            raise ValueError(f"{resume} was written for another scan geometry")
        if checkpoint_state["formulation"] != formulation:
            raise ValueError(
                f"{resume} holds a {checkpoint_state['formulation']!r} fit, not "
                f"{formulation!r}"
            )
        saved_rank = checkpoint_state["prep"]["rank"]
        if variance is not None or (rank != "auto" and rank != saved_rank):
            raise ValueError(
                f"A resumed fit keeps the checkpoint's rank ({saved_rank}): "
                "leave rank and variance out"
            )
        opts = FitOptions.resumed(checkpoint_state["options"], formulation, **options)
        if opts.checkpoint is None:
            opts.checkpoint = os.fspath(resume)
    else:
        opts = FitOptions.from_kwargs(formulation=formulation, **options)

    source = PatternSource(signal.data)
    if checkpoint_state is not None:
        prep = _prep_from_tensors(checkpoint_state["prep"])
        field = build_field(checkpoint_state["field_config"])
    else:

        def run_preprocess() -> Preprocessed:
            return preprocess(
                source,
                train_mask,
                rank=None if rank == "auto" else rank,
                variance=variance,
                need_pca=formulation == "factorized",
                validation_fraction=opts.validation_fraction,
                max_validation_points=opts.max_validation_points,
                pca_samples=opts.pca_samples,
                memory_budget=opts.memory_budget,
                nonfinite=nonfinite,
                rng=rng,
                show_progressbar=show_bars,
                # The training buffer takes the patterns this pass reads
                # (a data-parallel rank buffers its own shard instead).
                keep_train_patterns=ctx is None,
            )

        if ctx is None:
            prep = run_preprocess()
        else:
            # Rank 0 preprocesses (one pass over the data), the others
            # receive the result, or the error to raise.
            try:
                prep = run_preprocess() if ctx.is_main else None
            except Exception as error:
                prep = error
            prep = ctx.broadcast_object(prep)
        spacing_network = (
            geometry.point_spacing(prep.train_points) * geometry.normalized_per_unit
        )
        if formulation == "factorized" and opts.first_omega_0 is not None:
            _warn_if_omega_too_high(spacing_network, opts.first_omega_0)
        field = _new_field(formulation, prep, geometry, opts, spacing_network)
    field.to(device)

    train_points, stage_opts, shard = prep.train_points, opts, None
    if ctx is not None:
        ctx.broadcast_parameters(field)
        train_points, stage_opts = ctx.shard(source, prep.train_points, opts, seed)
        shard = train_points
        rng = np.random.default_rng([seed, ctx.rank])
    # The warm start's PCA scores (and their whitened copy) are the one other
    # training array that grows with the map (points x rank): they share the
    # budget with the buffered patterns.
    scores_bytes = 0 if prep.scores is None else 2 * prep.scores.nbytes
    buffer = make_buffer(
        source,
        train_points,
        opts.band_top_fraction,
        max(0, opts.memory_budget - scores_bytes),
        rng,
        device=device if device.type == "cuda" else None,
        patterns=prep.train_patterns,
    )
    # Patterns in memory already, which the passes after training (the bases'
    # refit, per-point intensities) take instead of reading the map again.
    held = [HeldPatterns(prep.val_points, prep.val_patterns)]
    if prep.train_patterns is not None:
        held.insert(0, HeldPatterns(prep.train_points, prep.train_patterns))
    xy_all = torch.from_numpy(
        geometry.normalize(geometry.index_to_xy(np.arange(geometry.n_points)))
    )
    trainer = Trainer(
        field,
        prep,
        xy_all,
        _build_stages(field, prep, buffer, stage_opts, device, shard),
        opts,
        device,
        rng,
        checkpoint_extra={
            "geometry": geometry.to_dict(),
            "formulation": formulation,
            "options": opts.to_dict(),
            "field_config": field.config,
            "prep": _prep_to_tensors(prep),
        },
        sync=ctx,
    )
    if checkpoint_state is not None:
        trainer.load_state_dict(checkpoint_state["trainer"])
        if ctx is not None:
            ctx.reseed(trainer.rng, seed, trainer.progress.step)

    total = DEFAULT_MAX_STEPS if max_steps is None else int(max_steps)
    from tqdm.auto import tqdm

    bar = tqdm(
        # Early stopping usually ends a fit long before the paper's 200 000
        # steps: a bar over them would show a meaningless ETA.
        total=None if max_steps is None else total,
        initial=trainer.progress.step,
        desc="fit_neural",
        unit="step",
        disable=not show_bars,
        dynamic_ncols=True,
    )
    try:
        try:
            with matmul_precision(opts.precision, device):
                reason = trainer.run(total, time_budget, started, opts.checkpoint, bar)
        finally:
            bar.close()
            buffer.close()

        detector = copy.deepcopy(getattr(signal, "detector", None))
        xmap = getattr(signal, "xmap", None)
        model = NeuralEBSDModel(
            field,
            geometry,
            prep.intensity_range,
            detector=detector,
            history=trainer.progress.history,
            spectrum=prep.spectrum,
            options={**opts.to_dict(), "formulation": formulation, "seed": seed},
            info={
                "stop_reason": reason,
                "steps": trainer.progress.step,
                "seconds": trainer.elapsed,
                "n_train_points": int(len(prep.train_points)),
                "n_val_points": int(len(prep.val_points)),
                "data_dtype": str(signal.data.dtype),
                "world_size": 1 if ctx is None else ctx.world_size,
                # The field's frequency is in its config; this is what it
                # was set for (also after a resume, whose field is restored).
                "training_spacing": geometry.point_spacing(prep.train_points),
            },
            phases=None if xmap is None else xmap.phases,
            validation_points=prep.val_points,
        )
        # The passes after training read patterns of their own: let go of
        # training's arrays first (batch work arrays, validation targets and
        # band flags, optimiser moments, a shuffle buffer's slots).
        del trainer, buffer
        if formulation == "factorized" and opts.refit_bases:
            # Each process reads its own shard (train_points); the sums meet
            # in one all-reduce.
            points, held_out = train_points, (prep.val_points, prep.val_patterns)
            if opts.refit_bases == "all":
                # Every point the fit reads, nothing held out; every process
                # has the validation points, rank 0 adds them to its shard.
                if ctx is None or ctx.is_main:
                    points = np.concatenate([train_points, prep.val_points])
                held_out = (None, None)
            model.info["refit_bases"] = refit_bases(
                model,
                source,
                points,
                *held_out,
                show_progressbar=show_bars,
                reduce=None if ctx is None else ctx.sum_over_ranks,
                held=held,
            )
            if ctx is not None:
                # Bit-identical models on every rank, whatever the devices.
                ctx.broadcast_parameters(field)
        # Before per-point intensities, which are fitted to the validation
        # points' own patterns too. Rank 0 reads the training neighbours of
        # the validation points (the other ranks read their shard only).
        report = None
        if ctx is None or ctx.is_main:
            try:
                report = held_out_report(
                    model, prep, source, held, masked=not train_mask.all()
                )
            except Exception as error:
                if ctx is None:
                    raise
                report = error  # raised on every rank by the broadcast
        if ctx is not None:
            report = ctx.broadcast_object(report)
        model.info["validation"] = report
        if ctx is None or ctx.is_main:
            warn_if_worse_than_baselines(report, model.info)
    finally:
        if ctx is not None:
            ctx.close()
    if opts.point_intensity:
        # Every point the fit was allowed to read (training and validation).
        readable = np.zeros(geometry.n_points, bool)
        readable[prep.train_points] = True
        readable[prep.val_points] = True
        model.point_intensity = fit_point_intensity(
            model, source, readable, held=held, show_progressbar=show_bars
        )
    return model


def _show_progressbar(show: bool | None) -> bool:
    if show is not None:
        return bool(show)
    from hyperspy.defaults_parser import preferences

    return bool(preferences.General.show_progressbar)
