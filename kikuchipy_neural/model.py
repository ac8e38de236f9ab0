"""``NeuralEBSDModel``: a trained field with everything needed to use it.

The model couples a :class:`~kikuchipy_neural.fields.NeuralField` with the
scan geometry (calibrated coordinates), the intensity scale (the field works
in [0, 1] units, users in measured counts), the detector, and the record of
its training. Its methods return numpy arrays; the signal classes wrap them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kikuchipy_neural._device import resolve_device
from kikuchipy_neural.fields.base import NeuralField
from kikuchipy_neural.geometry import ScanGeometry

if TYPE_CHECKING:  # pragma: no cover
    from kikuchipy_neural.training.preprocessing import Spectrum

__all__ = ["NeuralEBSDModel"]

# Intermediate float32 values per decoding chunk (bounds memory for any n).
_CHUNK_VALUES = 2**24


class NeuralEBSDModel:
    """A fitted neural field of an EBSD scan.

    Parameters
    ----------
    field
        The trained field.
    geometry
        Scan geometry of the training signal.
    intensity_range
        ``(low, high)``: the field's 0 and 1 in measured intensity units.
    detector
        kikuchipy ``EBSDDetector`` of the training signal, or None.
    history
        Training history, columns as in
        :data:`kikuchipy_neural.training.loop.HISTORY_COLUMNS`.
    spectrum
        PCA spectrum used to choose the rank (factorized models).
    options
        Fit options used, as a plain dict.
    info
        Other facts about the fit (stop reason, time, data dtype, ...).
    phases
        orix ``PhaseList`` of the training signal's crystal map, if any.
    validation_points
        Flat (row-major) scan indices held out for early stopping.
    point_intensity
        float32 ``(n_points, 2)`` gain and offset per scan point, applied
        wherever the model decodes (see
        :mod:`kikuchipy_neural.training.point_intensity`), or None.
    """

    def __init__(
        self,
        field: NeuralField,
        geometry: ScanGeometry,
        intensity_range: tuple[float, float],
        detector=None,
        history: dict[str, list] | None = None,
        spectrum: Spectrum | None = None,
        options: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
        phases=None,
        validation_points: np.ndarray | None = None,
        point_intensity: np.ndarray | None = None,
    ) -> None:
        self.field = field.eval()
        self.geometry = geometry
        self.intensity_range = (float(intensity_range[0]), float(intensity_range[1]))
        self.detector = detector
        self.history = history if history is not None else {}
        self.spectrum = spectrum
        self.options = options or {}
        self.info = info or {}
        self.phases = phases
        # Flat scan indices held out of training for early stopping (their
        # patterns are what the history's validation MAE measures).
        self.validation_points = validation_points
        self.point_intensity = point_intensity

    # ------------------------------------------------------------ properties

    @property
    def formulation(self) -> str:
        """``"factorized"`` or ``"joint"``."""
        return self.field.formulation

    @property
    def rank(self) -> int | None:
        """Number of bases (mean included); None for the joint formulation."""
        return getattr(self.field, "rank", None)

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return self.geometry.pattern_shape

    @property
    def validation(self) -> dict[str, Any] | None:
        """The fit's error on held-out points next to simple baselines.

        Computed after training on the validation points, which the field
        never trained on: the MAE and RMS error (counts) against the
        measured patterns of the field, of linear interpolation of the
        training patterns and of the same interpolation denoised by PCA at
        the field's rank, and ``worse_than``, the baselines the field lost
        to (the fit then warned). None for models fitted without validation points. See
        :func:`kikuchipy_neural.training.validation.held_out_report`.
        """
        return self.info.get("validation")

    @property
    def device(self) -> torch.device:
        return next(self.field.parameters()).device

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.field.parameters())

    def to(self, device: str | torch.device) -> NeuralEBSDModel:
        """Move the field to ``device``; returns the model."""
        self.field.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        g = self.geometry
        rank = f", rank {self.rank}" if self.rank is not None else ""
        return (
            f"<NeuralEBSDModel {self.formulation}{rank}, scan {g.ny}x{g.nx}, "
            f"patterns {g.pattern_shape[0]}x{g.pattern_shape[1]}, "
            f"{self.n_parameters} parameters, {self.device}>"
        )

    # -------------------------------------------------------------- decoding

    def _chunk_points(self, values_per_point: int) -> int:
        return max(1, _CHUNK_VALUES // max(1, values_per_point))

    def _to_network(self, xy: np.ndarray, extrapolate: bool) -> torch.Tensor:
        self.geometry.check_inside(xy, extrapolate)
        flat = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return torch.from_numpy(self.geometry.normalize(flat))

    def _normalize(self, raw) -> torch.Tensor:
        """Measured intensities ``(...)`` -> float32 field units on the model's
        device (the inverse of the scaling at the end of :meth:`_decode`)."""
        lo, hi = self.intensity_range
        x = torch.as_tensor(np.asarray(raw, np.float32), device=self.device)
        return (x - lo) / (hi - lo)

    @torch.no_grad()
    def _decode(self, flat_xy: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Patterns at ``(n, 2)`` positions already checked, written into
        ``out`` (C-contiguous float32 ``(n, n_pixels)``) and returned."""
        net = torch.from_numpy(self.geometry.normalize(flat_xy)).to(self.device)
        values = self.field.pattern_values_into(net, torch.from_numpy(out))
        lo, hi = self.intensity_range
        values.mul_(hi - lo).add_(lo)  # in place: no temporaries
        if self.point_intensity is not None:
            from kikuchipy_neural.training.point_intensity import (
                apply_point_intensity,
            )

            apply_point_intensity(self.geometry, self.point_intensity, flat_xy, out)
        return out

    def query(
        self, xy, extrapolate: bool = False, sharpen_boundaries: bool = False
    ) -> np.ndarray:
        """Patterns at calibrated positions.

        Parameters
        ----------
        xy
            Array ``(..., 2)`` of ``(x, y)`` in the scan's calibrated units.
        extrapolate
            Allow points outside the scanned rectangle.
        sharpen_boundaries
            Replace the blend of two grains' patterns that the field decodes
            near a boundary by the pattern of the grain dominating it (see
            :mod:`kikuchipy_neural.analysis.sharpening`): for indexing
            orientations at points that were not measured. About 4x the
            decoding time.

        Returns
        -------
        patterns
            float32 ``(..., rows, columns)`` in measured intensity units.
        """
        xy = np.asarray(xy, dtype=np.float64)
        self.geometry.check_inside(xy, extrapolate)
        flat = xy.reshape(-1, 2)
        out = np.empty((len(flat), self.geometry.n_pixels), np.float32)
        if sharpen_boundaries:
            from kikuchipy_neural.analysis.sharpening import (
                sharpen_boundaries as sharpen,
            )
        # Sharpening holds two more decoded chunks and a Jacobian per point.
        values_per_point = self.geometry.n_pixels * (4 if sharpen_boundaries else 1)
        step = self._chunk_points(values_per_point)
        for start in range(0, len(flat), step):
            chunk = flat[start : start + step]
            patterns = self._decode(chunk, out[start : start + step])
            if sharpen_boundaries:
                patterns[...] = sharpen(self, chunk, patterns)
        return out.reshape(*xy.shape[:-1], *self.pattern_shape)

    def reconstruct(self) -> np.ndarray:
        """Patterns on the training grid, float32 ``(ny, nx, rows, columns)``."""
        return self.query(self.geometry.grid_xy())

    def gradient(
        self, xy, extrapolate: bool = False, per_component: bool = False
    ) -> np.ndarray:
        """Diffraction gradient ``S = ||d descriptor / d(x, y)||`` by autograd.

        For the factorized field the descriptor is the coefficient vector in
        pattern units, for the joint field the whole pattern (see
        :meth:`~kikuchipy_neural.fields.NeuralField.descriptor`). Derivatives
        are per calibrated unit of the scan.

        Parameters
        ----------
        xy
            ``(..., 2)`` calibrated positions.
        extrapolate
            Allow points outside the scanned rectangle.
        per_component
            Return the Jacobian ``(..., d, 2)`` (d/dx, d/dy of each
            descriptor component) instead of its norm.

        Returns
        -------
        S
            float32 ``(...)``, or ``(..., d, 2)`` with ``per_component``.
        """
        from kikuchipy_neural.analysis.gradient import spatial_jacobian

        xy = np.asarray(xy, dtype=np.float64)
        net = self._to_network(xy, extrapolate)
        d = self.field.descriptor(net[:1].to(self.device)).shape[1]
        # Forward-mode AD keeps primal and tangent activations of every layer:
        # bound the chunk by the widest layer too, not by the output alone.
        width = max(
            (
                m.out_features
                for m in self.field.modules()
                if isinstance(m, torch.nn.Linear)
            ),
            default=0,
        )
        step = self._chunk_points(4 * (d + width))
        scale = self.geometry.normalized_per_unit
        parts = []
        for start in range(0, len(net), step):
            jac = spatial_jacobian(
                self.field, net[start : start + step].to(self.device)
            )
            jac = jac * scale  # chain rule: network units -> calibrated units
            parts.append(jac if per_component else jac.pow(2).sum(dim=(1, 2)).sqrt())
        out = torch.cat(parts).cpu().numpy().astype(np.float32)
        return out.reshape(*xy.shape[:-1], *out.shape[1:])

    # ------------------------------------------------------------------ file

    def save(
        self,
        path,
        precision: str = "float16",
        overwrite: bool = True,
        balanced_bases: bool = False,
    ):
        """Write the model to one HDF5 file (no pickle: loading runs no code).

        Parameters
        ----------
        path
            File to write, e.g. ``"model.h5"``.
        precision
            ``"float32"`` (bit-exact), ``"float16"`` (default) or ``"int8"``
            (8-bit bases and weight matrices, float16 biases); see
            :data:`kikuchipy_neural.io.model_file.PRECISIONS`.
        overwrite
            Replace an existing file.
        balanced_bases
            At ``precision="int8"``: the field stored in its principal axes
            (the same patterns; the first basis the mean pattern, the others
            orthogonal and ordered by energy) and the bases quantised with
            steps inversely proportional to the RMS of their coefficients,
            so that each adds the same error to the patterns (in total twice
            the variance of 256 codes per basis); low-energy bases then pack
            tighter (the real crop's rank-3 model: 33 % smaller than plain
            int8 for 0.25 % more MAE). Factorized models only.

        Returns
        -------
        path
            The path written, as a ``pathlib.Path``. Read it back with
            :func:`kikuchipy_neural.load_model` or :func:`kikuchipy_neural.load`.
        """
        from kikuchipy_neural.io.model_file import save_model

        return save_model(
            self,
            path,
            precision=precision,
            overwrite=overwrite,
            balanced_bases=balanced_bases,
        )

    # ----------------------------------------------------------- consistency

    def check_signal_compatible(self, signal) -> None:
        """Raise ``ValueError`` if ``signal`` cannot use this model: other
        pattern shape, other navigation units, or a scan outside the model's."""
        sig_shape = tuple(int(a.size) for a in signal.axes_manager.signal_axes[::-1])
        if sig_shape != tuple(self.pattern_shape):
            raise ValueError(
                f"The model was fitted on patterns of shape {self.pattern_shape}, "
                f"this signal has patterns of shape {sig_shape}"
            )
        other = ScanGeometry.from_signal(signal)
        if self.geometry.scattered:
            # Explicit positions belong to the patterns in order: the signal
            # must be the training list itself.
            if other.nav_shape != self.geometry.nav_shape:
                raise ValueError(
                    f"The model was fitted on {self.geometry.n_points} patterns at "
                    "explicit positions; this signal's navigation shape is "
                    f"{signal.axes_manager.navigation_shape[::-1]}"
                )
            return
        if other.units != self.geometry.units:
            raise ValueError(
                f"The model's scan is in {self.geometry.units!r}, this signal's "
                f"in {other.units!r}"
            )
        corners = np.array(
            [[x, y] for x in other.x_range for y in other.y_range], dtype=np.float64
        )
        try:
            self.geometry.check_inside(corners)
        except ValueError as err:
            raise ValueError(
                "This signal's scan reaches outside the area the model was fitted "
                f"on: {err}"
            ) from None

    # --------------------------------------------------------------- figures

    def plot_history(self, ax=None):
        """Training loss and validation MAE against time, by stage."""
        import matplotlib.pyplot as plt

        h = self.history
        if not h.get("step"):
            raise ValueError("This model has no training history")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        seconds = np.asarray(h["seconds"], float)
        mae = np.asarray(h["val_mae"], float)
        stages = np.asarray(h["stage"])
        for k, name in enumerate(dict.fromkeys(stages)):
            sel = stages == name
            ax.plot(seconds[sel], mae[sel], ".-", color=f"C{k}", label=f"{name}")
        ax.set_xlabel("time since the fit started (s)")
        ax.set_ylabel("validation MAE (counts)")
        ax.set_yscale("log")
        ax.legend(frameon=False, title="stage")
        return ax

    def plot_spectrum(self, ax=None):
        """PCA spectrum with the noise edge and the chosen rank."""
        if self.spectrum is None:
            raise ValueError("This model has no PCA spectrum (joint formulation?)")
        return self.spectrum.plot(rank=self.rank, ax=ax)
