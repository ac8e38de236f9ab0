"""Every hyper-parameter of a fit as a named option with its default.

The defaults of the factorized method are the paper's (Huang & Latypov 2026);
options marked "ours" belong to the faster default sampler. ``fit_neural``
passes its ``**options`` here, so a misspelt option fails before any work.

Some defaults depend on the formulation: :data:`FORMULATION_DEFAULTS` holds
the joint (4D-INR) baseline's own values, applied to every option the user
did not give, and :data:`FORMULATION_ONLY` the options that mean something
for one formulation only (giving one to the other formulation raises).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FIXED_ON_RESUME",
    "FORMULATION_DEFAULTS",
    "FORMULATION_ONLY",
    "FitOptions",
    "LOSSES",
    "SAMPLERS",
]

SAMPLERS = ("positions", "coordinates")
# Training losses (see kikuchipy_neural.training.losses.LOSS_FUNCTIONS).
LOSSES = ("mse", "mae")
# Numerical precision of training (see kikuchipy_neural.training.accelerate).
PRECISIONS = ("float32", "tf32", "bf16")

# Values that differ from the dataclass defaults (the factorized method's) for
# a formulation; applied to the options the user did not give.
FORMULATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "factorized": {},
    # The paper's 4D-INR baseline.
    "joint": dict(
        siren_width=256,
        sampler="coordinates",
        batch_size=32768,
        eval_every=1000,
        min_delta=2e-5,
        grad_clip=1.0,
    ),
}

# Extra defaults of the joint field with the positions sampler: as many
# (position, pixel) pairs per batch as the paper's 32768 coordinates, since
# whole patterns of 1024 positions would be millions of network evaluations.
_JOINT_POSITIONS_DEFAULTS: dict[str, Any] = dict(
    positions_per_batch=32, pixels_per_position=1024
)

# Options that apply to one formulation only.
FORMULATION_ONLY: dict[str, tuple[str, ...]] = {
    "factorized": (
        "phase_per_step",
        "basis_l2",
        "warmup_steps",
        "plateau_factor",
        "plateau_patience",
        "min_lr",
        "warm_start",
        "warm_start_patience",
        "warm_start_plateau_patience",
        "warm_start_lr",
        "warm_start_positions",
        "lr_ramp_steps",
        "refit_bases",
    ),
    "joint": (
        "position_scale",
        "fourier_features",
        "fourier_sigma",
        "curriculum_steps",
        "curriculum_start",
        "lr_halving_steps",
    ),
}


# Options fixed when a fit starts (network shape, validation split, stages);
# FitOptions.resumed refuses to change them.
FIXED_ON_RESUME = (
    "siren_width",
    "siren_layers",
    "first_omega_0",
    "phase_per_step",
    "hidden_omega_0",
    "position_scale",
    "fourier_features",
    "fourier_sigma",
    "validation_fraction",
    "max_validation_points",
    "pca_samples",
    "warm_start",
    "sampler",
    "loss",  # the validation loss that picks the best parameters
)


@dataclass
class FitOptions:
    """Hyper-parameters of :func:`kikuchipy_neural.training.fit`.

    Network (factorized, the paper's)
        siren_width=512, siren_layers=5 (sine layers, input layer included),
        hidden_omega_0=30.
    Coordinate frequency (ours; the paper's is ``first_omega_0=30``)
        ``first_omega_0=None`` sets the first sine layer's frequency per
        spacing of the training points (the median distance to the third
        nearest training point: one step on a full grid, two on a
        ``[::2, ::2]`` mask, about 1.8 on a random 25 %), so that
        neighbouring training points are ``phase_per_step=0.5`` radians
        apart in the first layer (Sitzmann's first-layer frequencies reach
        ``omega_0 / 2`` per network unit): the field then behaves the same
        per step on maps of any size and under any mask. The paper's value
        applies to network coordinates normalised to the map, so its phase
        per step shrinks as the map grows and jumps under a mask; a number
        given here is used as it is. The joint field's positions are scaled
        likewise by ``position_scale`` (None: network positions in units of
        31.5 training spacings, the scale of a 64-point map, on which the
        joint defaults were set).
    Loss (the paper's)
        band_weight=2 on band pixels, the ``band_top_fraction=0.15`` of pixels
        with the largest gradient magnitude of each (smoothed) pattern;
        ``band_fraction_range=(0.15, 0.5)`` clips the share of band pixels in a
        batch that subsamples pixels; ``basis_l2=1e-6`` times ``||B||_F^2``.
        ``loss="mse"``, the band-weighted squared error; ``"mae"`` (ours) the
        band-weighted absolute error, the error maps are judged by (on the
        real crop 0.7-3.8 % lower map MAE at ranks 2 to 8, in 1.3-2.4x the
        steps) and robust to outlying pixels (dead or saturated pixels,
        cosmic rays). Validation, and so early stopping and the parameters
        kept, use the same loss.
    Optimisation (the paper's)
        Adam ``lr=1e-4``; ReduceLROnPlateau (``plateau_factor=0.5``,
        ``plateau_patience=10`` evaluations, ``min_lr=1e-6``) after
        ``warmup_steps=4000``; early stopping when the validation loss improves
        by no more than ``min_delta=1e-5`` for ``patience=30`` evaluations;
        ``max_steps=200_000`` (fit_neural's argument).
    Sampling
        ``sampler="positions"`` (ours, the default): each batch is
        ``positions_per_batch=1024`` scan positions times
        ``pixels_per_position`` detector pixels (None: all, else a band-biased
        subset), so the SIREN runs once per position.
        ``sampler="coordinates"`` (the paper's): ``batch_size=32768``
        independent random (x, y, u, v) coordinates.
    Warm start (ours, positions sampler)
        ``warm_start=True`` first regresses the SIREN on the whitened PCA
        scores (no pattern reads), ``warm_start_positions`` per batch (None:
        ``positions_per_batch``) at ``warm_start_lr=2e-4`` (None: ``lr``;
        higher than ``lr`` because regressing scores is an easier problem:
        it reaches a given accuracy 1.5-2x sooner, and 1e-3 diverges),
        its learning rate halved whenever the validation loss has not
        improved for more than ``warm_start_plateau_patience=1`` evaluation
        (a fixed 2e-4 diverges on real patterns after its best point),
        early-stopped after ``warm_start_patience=10`` evaluations without
        improvement, before the
        joint fit of SIREN and bases on patterns, whose learning rate then
        rises linearly from 0 to ``lr`` over ``lr_ramp_steps=200`` steps (a
        fresh Adam would otherwise jolt the warm-started parameters).
    Joint formulation (4D-INR, the paper's baseline)
        One SIREN of ``(x, y, u, v)`` with ``fourier_features=256`` random
        Fourier features of ``(u, v)`` (frequencies from
        ``N(0, fourier_sigma**2)``, ``fourier_sigma=3.0``); ``(u, v)`` scaled
        by a factor rising linearly from ``curriculum_start=0.25`` to 1 over
        ``curriculum_steps=20_000`` steps; the learning rate halved every
        ``lr_halving_steps=40_000`` steps (instead of the plateau schedule);
        gradient norm clipped to ``grad_clip`` (joint default 1.0; None, the
        factorized default, does not clip). Joint defaults of the shared
        options (see :data:`FORMULATION_DEFAULTS`): ``siren_width=256``,
        ``sampler="coordinates"``, ``batch_size=32768``,
        ``eval_every=1000``, ``min_delta=2e-5``; with ``sampler="positions"``
        ``positions_per_batch=32`` x ``pixels_per_position=1024``.
    Validation and bookkeeping
        ``validation_fraction=0.05`` of the training points (at most
        ``max_validation_points=2048``) are held out and never trained on;
        evaluated every ``eval_every=25`` steps; ``pca_samples=200_000``
        patterns at most for PCA; ``checkpoint`` path written at every
        evaluation and when the fit stops (a step or time limit, an
        interrupt), so ``resume=`` continues from the last step;
        ``memory_budget`` bytes, per process, for what grows with a lazy
        map: the buffered patterns and the warm start's PCA scores while
        training, the PCA subsample before (a lazy map whose training
        patterns fit it is read twice: the subsample, then one pass whose
        patterns stay for training and the passes after it). What does not
        grow with the map (the validation set, at most
        ``max_validation_points`` patterns, and the work arrays of a batch)
        comes on top.
    After training
        ``refit_bases=True`` (ours, factorized): one more pass over the
        training patterns (from memory where the fit holds them) solves the
        bases by least squares given the trained network, kept if it lowers
        the validation MAE (see
        :mod:`kikuchipy_neural.training.refit_bases`). ``"all"``: solved on
        every point the fit reads (all of the map, or of ``mask``),
        validation points included, and kept: for compression, where only
        the map's points count (with many bases the
        solve also fits the points' noise, so patterns between points may
        get slightly worse).
        ``point_intensity=False``: with True, a gain and an offset per scan
        point, fitted to the measured patterns after training and applied
        wherever the model decodes (4 bytes per point in float16 files; see
        :mod:`kikuchipy_neural.training.point_intensity`).
    Hardware
        ``precision="float32"``; ``"tf32"`` (TF32 matmuls on CUDA) or
        ``"bf16"`` (bfloat16 basis product, sine layers in float32) trade
        accuracy for speed on GPUs, see
        :mod:`kikuchipy_neural.training.accelerate`.
    """

    # network
    siren_width: int = 512
    siren_layers: int = 5
    first_omega_0: float | None = None
    phase_per_step: float = 0.5
    hidden_omega_0: float = 30.0
    position_scale: float | None = None
    # loss
    band_weight: float = 2.0
    band_top_fraction: float = 0.15
    band_fraction_range: tuple[float, float] = (0.15, 0.5)
    basis_l2: float = 1e-6
    loss: str = "mse"
    # optimisation
    lr: float = 1e-4
    warmup_steps: int = 4000
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    min_lr: float = 1e-6
    patience: int = 30
    min_delta: float = 1e-5
    # sampling
    sampler: str = "positions"
    positions_per_batch: int = 1024
    pixels_per_position: int | None = None
    batch_size: int = 32768
    # warm start
    warm_start: bool = True
    warm_start_patience: int = 10
    warm_start_plateau_patience: int = 1
    warm_start_lr: float | None = 2e-4
    warm_start_positions: int | None = None
    lr_ramp_steps: int = 200
    # joint formulation
    fourier_features: int = 256
    fourier_sigma: float = 3.0
    curriculum_steps: int = 20_000
    curriculum_start: float = 0.25
    lr_halving_steps: int | None = 40_000
    grad_clip: float | None = None
    # validation and bookkeeping
    validation_fraction: float = 0.05
    max_validation_points: int = 2048
    eval_every: int = 25
    pca_samples: int = 200_000
    checkpoint: str | None = None
    memory_budget: int = 2 * 1024**3
    # hardware
    precision: str = "float32"
    # after training
    refit_bases: bool | str = True  # or "all"
    point_intensity: bool = False

    @classmethod
    def from_kwargs(cls, formulation: str = "factorized", **options: Any) -> FitOptions:
        """Build the options of a ``formulation`` fit from the user's.

        Unknown names are rejected with a suggestion, options of the other
        formulation with the formulation's name; options not given take the
        formulation's defaults.
        """
        cls._check_names(formulation, options)
        return cls._build({**cls.formulation_defaults(formulation, options), **options})

    @classmethod
    def resumed(
        cls, saved: dict[str, Any], formulation: str, **options: Any
    ) -> FitOptions:
        """Options of a resumed fit: the checkpoint's ``saved`` options,
        overridden by the user's (checked as in :meth:`from_kwargs`).

        Those in :data:`FIXED_ON_RESUME` shaped the network, the validation
        split or the stages when the fit started: a different value raises,
        instead of being silently ignored.
        """
        cls._check_names(formulation, options)
        names = {f.name for f in dataclasses.fields(cls)}
        saved = {k: v for k, v in saved.items() if k in names}
        changed = [
            f"{k}={options[k]!r} (checkpoint: {saved[k]!r})"
            for k in FIXED_ON_RESUME
            if k in options and k in saved and options[k] != saved[k]
        ]
        if changed:
            raise ValueError(
                "A resumed fit continues the checkpoint's network, validation "
                "split and stages; these options cannot change: " + ", ".join(changed)
            )
        return cls._build({**saved, **options})

    @staticmethod
    def formulation_defaults(
        formulation: str, given: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The defaults of ``formulation`` that differ from the dataclass's,
        given the options the user set (some depend on the sampler)."""
        if formulation not in FORMULATION_DEFAULTS:
            raise ValueError(
                f"Unknown formulation {formulation!r}; expected one of "
                f"{sorted(FORMULATION_DEFAULTS)}"
            )
        defaults = dict(FORMULATION_DEFAULTS[formulation])
        sampler = (given or {}).get("sampler", defaults.get("sampler"))
        if formulation == "joint" and sampler == "positions":
            defaults.update(_JOINT_POSITIONS_DEFAULTS)
        return defaults

    @classmethod
    def _check_names(cls, formulation: str, options: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, names, n=1)
                hints.append(
                    f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                )
            raise TypeError(
                f"Unknown fit option(s): {', '.join(hints)}. Valid options: "
                f"{', '.join(sorted(names))}."
            )
        cls.formulation_defaults(formulation)  # rejects unknown formulations
        foreign = sorted(
            name
            for other, only in FORMULATION_ONLY.items()
            if other != formulation
            for name in only
            if name in options
        )
        if foreign:
            raise TypeError(
                f"Option(s) {', '.join(map(repr, foreign))} do not apply to the "
                f"{formulation!r} formulation."
            )

    @classmethod
    def _build(cls, values: dict[str, Any]) -> FitOptions:
        opts = cls(**values)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise ``ValueError`` for values that cannot work."""
        for name in ("warm_start", "point_intensity"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False")
        if not (isinstance(self.refit_bases, bool) or self.refit_bases == "all"):
            raise ValueError(
                f"refit_bases must be True, False or 'all', got {self.refit_bases!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        positive_ints = (
            "siren_width",
            "siren_layers",
            "patience",
            "positions_per_batch",
            "batch_size",
            "warm_start_patience",
            "max_validation_points",
            "eval_every",
            "pca_samples",
            "memory_budget",
        )
        non_negative_ints = (
            "warmup_steps",
            "plateau_patience",
            "warm_start_plateau_patience",
            "lr_ramp_steps",
        )
        for names, low, what in (
            (positive_ints, 1, "a positive integer"),
            (non_negative_ints, 0, "an integer >= 0"),
        ):
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    raise ValueError(f"{name} must be {what}, got {value!r}")
        for name in ("pixels_per_position", "warm_start_positions"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name} must be None or a positive integer")
        if self.warm_start_lr is not None and not self.warm_start_lr > 0:
            raise ValueError(
                f"warm_start_lr must be None (lr) or > 0, got {self.warm_start_lr!r}"
            )
        for name in ("fourier_features", "curriculum_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.lr_halving_steps is not None and (
            not isinstance(self.lr_halving_steps, int) or self.lr_halving_steps < 1
        ):
            raise ValueError(
                "lr_halving_steps must be None (constant) or a positive integer, "
                f"got {self.lr_halving_steps!r}"
            )
        if not self.fourier_sigma > 0:
            raise ValueError(f"fourier_sigma must be > 0, got {self.fourier_sigma!r}")
        if not 0 < self.curriculum_start <= 1:
            raise ValueError(
                f"curriculum_start must be in (0, 1], got {self.curriculum_start!r}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"grad_clip must be None (no clipping) or > 0, got {self.grad_clip!r}"
            )
        for name in ("lr", "phase_per_step", "hidden_omega_0", "band_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("first_omega_0", "position_scale"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and np.isfinite(value) and value > 0
            ):
                raise ValueError(
                    f"{name} must be None (set per training spacing) or > 0, "
                    f"got {value!r}"
                )
        if not 0 < self.band_top_fraction < 1:
            raise ValueError("band_top_fraction must be in (0, 1)")
        lo, hi = self.band_fraction_range
        if not 0 <= lo <= hi <= 1:
            raise ValueError("band_fraction_range must satisfy 0 <= low <= high <= 1")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in [0, 1)")
        if not 0 < self.plateau_factor < 1:
            raise ValueError("plateau_factor must be in (0, 1)")
        if self.basis_l2 < 0 or self.min_delta < 0 or self.min_lr < 0:
            raise ValueError("basis_l2, min_delta and min_lr must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["band_fraction_range"] = list(self.band_fraction_range)
        return d
