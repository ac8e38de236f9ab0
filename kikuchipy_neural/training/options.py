"""Every hyper-parameter of a fit as a named option with its default.

The defaults of the factorized method are the paper's (Huang & Latypov 2026);
options marked "ours" belong to the faster default sampler. ``fit_neural``
passes its ``**options`` here, so a misspelt option fails before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

__all__ = ["FitOptions", "SAMPLERS"]

SAMPLERS = ("positions", "coordinates")


@dataclass
class FitOptions:
    """Hyper-parameters of :func:`kikuchipy_neural.training.fit`.

    Network (factorized, the paper's)
        siren_width=512, siren_layers=5 (sine layers, input layer included),
        first_omega_0=30, hidden_omega_0=30.
    Loss (the paper's)
        band_weight=2 on band pixels, the ``band_top_fraction=0.15`` of pixels
        with the largest gradient magnitude of each (smoothed) pattern;
        ``band_fraction_range=(0.15, 0.5)`` clips the share of band pixels in a
        batch that subsamples pixels; ``basis_l2=1e-6`` times ``||B||_F^2``.
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
        scores (no pattern reads), early-stopped on the validation MAE after
        ``warm_start_patience=10`` evaluations without improvement, before the
        joint fit of SIREN and bases on patterns.
    Validation and bookkeeping
        ``validation_fraction=0.05`` of the training points (at most
        ``max_validation_points=2048``) are held out and never trained on;
        evaluated every ``eval_every=25`` steps; ``pca_samples=200_000``
        patterns at most for PCA; ``checkpoint`` path written at every
        evaluation; ``memory_budget`` bytes for pattern buffers of lazy data.
    """

    # network
    siren_width: int = 512
    siren_layers: int = 5
    first_omega_0: float = 30.0
    hidden_omega_0: float = 30.0
    # loss
    band_weight: float = 2.0
    band_top_fraction: float = 0.15
    band_fraction_range: tuple[float, float] = (0.15, 0.5)
    basis_l2: float = 1e-6
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
    # validation and bookkeeping
    validation_fraction: float = 0.05
    max_validation_points: int = 2048
    eval_every: int = 25
    pca_samples: int = 200_000
    checkpoint: str | None = None
    memory_budget: int = 2 * 1024**3

    @classmethod
    def from_kwargs(cls, **options: Any) -> FitOptions:
        """Build options, rejecting unknown names with a suggestion."""
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
        opts = cls(**options)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise ``ValueError`` for values that cannot work."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        positive_ints = (
            "siren_width",
            "siren_layers",
            "warmup_steps",
            "plateau_patience",
            "patience",
            "positions_per_batch",
            "batch_size",
            "warm_start_patience",
            "max_validation_points",
            "eval_every",
            "pca_samples",
            "memory_budget",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.pixels_per_position is not None and self.pixels_per_position < 1:
            raise ValueError("pixels_per_position must be None or a positive integer")
        for name in ("lr", "first_omega_0", "hidden_omega_0", "band_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
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
