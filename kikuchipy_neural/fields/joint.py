"""Joint field (4D-INR): one SIREN of ``(x, y, u, v)``, the paper's baseline.

The network input of a scan position ``(x, y)`` and a detector pixel
``(u, v)`` is ``[s x, s y, c u, c v, gamma(c u, c v)]`` (``s`` the position
scale): the raw coordinates and
``m`` random Fourier features ``gamma`` of the detector coordinates
(:class:`~kikuchipy_neural.fields.encodings.FourierFeatures`), ``4 + 2 m``
values in all. ``c`` is the curriculum scale: training raises it from
``curriculum_start`` to 1 over the first steps so that the detector content
is learnt coarse to fine; it is a buffer, saved with the weights, so a model
always decodes at the scale it was trained with (1 once the curriculum is
over).

Speed without changing the maths: the first SIREN layer is linear in its
input, so its pre-activation splits exactly into a position part and a pixel
part,

    W1 [x, y, g(u, v)] + b1 = W_xy [x, y] + (W_g g(u, v) + b1).

The pixel part (514 of the 516 input columns) is computed once per distinct
pixel of a batch, the position part once per position, and the two are added
(broadcast over positions x pixels for whole patterns). Only the later layers
run once per (position, pixel) pair, and those run as fused sine layers
(:class:`_SineLinear`): the same operations as ``sin(omega_0 * linear(h))``
under autograd, with fewer temporary arrays
(on CPU, allocating and first touching large arrays costs about as much as
the arithmetic on them). On one core this makes a paper-size training step
about 1.5x faster than the plain network (benchmarks/joint_vs_factorized.py).
On a GPU the plain network trains as fast (the row gather and scatter-add of
the split cost what the first layer saves), so training there uses it; the
split is kept for decoding whole patterns, where it is about 5x faster.

Coordinates: ``(x, y)`` are network coordinates (see
:meth:`kikuchipy_neural.geometry.ScanGeometry.normalize`); ``u`` runs along
detector columns and ``v`` along rows, both centred, with the longer detector
side spanning [-1, 1] (isotropic, like the scan coordinates).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kikuchipy_neural.fields.base import NeuralField
from kikuchipy_neural.fields.encodings import FourierFeatures
from kikuchipy_neural.fields.siren import Siren

__all__ = ["JointField", "curriculum_scale", "detector_coordinates"]

# (position, pixel) pairs per block when whole patterns are decoded: every
# layer's activations then take at most this many times width floats, so
# memory stays bounded whatever number of points a caller asks for.
_BLOCK_PAIRS = 2**16


class _SineLinear(torch.autograd.Function):
    """``sin(omega * (h W^T + b))`` with a hand-written backward pass.

    Autograd's version keeps ``omega * z`` and in the backward pass allocates
    ``cos``, ``grad * cos`` and ``(grad * cos) * omega`` separately; here the
    pre-activation is scaled in place and the backward pass reuses one array.
    The operations are the same (forward bit for bit; gradients up to the
    summation order of the matrix products). ``weight`` and ``bias`` may be
    None (the activation alone).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, omega):
        ctx.omega = omega
        if weight is None:
            z = h * omega
            ctx.save_for_backward(z)
        else:
            z = torch.addmm(bias, h, weight.T).mul_(omega)
            ctx.save_for_backward(z, h, weight)
        return torch.sin(z)

    @staticmethod
    def backward(ctx, grad_out):
        z, *hw = ctx.saved_tensors
        g = torch.cos(z)
        g.mul_(grad_out).mul_(ctx.omega)  # d sin(omega z') / d z'
        if not hw:
            return g, None, None, None
        h, weight = hw
        grad_h = g @ weight if ctx.needs_input_grad[0] else None
        grad_w = g.T @ h if ctx.needs_input_grad[1] else None
        grad_b = g.sum(dim=0) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None


def detector_coordinates(pattern_shape: tuple[int, int]) -> torch.Tensor:
    """``(u, v)`` of every pixel in row-major order, ``(rows * columns, 2)``.

    ``u`` follows columns, ``v`` rows; centred on the detector, the longer
    side spanning [-1, 1].
    """
    rows, cols = int(pattern_shape[0]), int(pattern_shape[1])
    half = max(1, max(rows, cols) - 1) / 2
    v, u = torch.meshgrid(
        (torch.arange(rows, dtype=torch.float32) - (rows - 1) / 2) / half,
        (torch.arange(cols, dtype=torch.float32) - (cols - 1) / 2) / half,
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=1)


def curriculum_scale(step: int, start: float, steps: int) -> float:
    """Detector-coordinate scale at a training step: ``start`` at step 0,
    rising linearly to 1 at ``steps`` and staying there (1 if ``steps`` is 0).
    """
    if steps <= 0:
        return 1.0
    return float(start + (1.0 - start) * min(1.0, step / steps))


class JointField(NeuralField):
    """A SIREN over scan and detector coordinates, with Fourier features.

    Parameters
    ----------
    pattern_shape
        Detector shape ``(rows, columns)``.
    width, layers, first_omega_0, hidden_omega_0
        SIREN architecture (the paper's 4D-INR: width 256, 5 sine layers,
        omega_0 = 30); see :class:`~kikuchipy_neural.fields.siren.Siren`.
    fourier_features
        Number ``m`` of random Fourier frequencies of ``(u, v)``; 0: none.
    fourier_sigma
        Standard deviation of the frequencies (cycles per unit of ``u, v``).
    position_scale
        Factor on the network coordinates ``(x, y)`` before the first layer:
        sets how fast the field may vary per scan step (the fit chooses it
        from the spacing of the training points, see
        :class:`~kikuchipy_neural.training.FitOptions`); 1 is the paper's.
    """

    formulation = "joint"

    def __init__(
        self,
        pattern_shape: tuple[int, int],
        width: int = 256,
        layers: int = 5,
        first_omega_0: float = 30.0,
        hidden_omega_0: float = 30.0,
        fourier_features: int = 256,
        fourier_sigma: float = 3.0,
        position_scale: float = 1.0,
    ) -> None:
        super().__init__(pattern_shape)
        if fourier_features < 0:
            raise ValueError(f"fourier_features must be >= 0, got {fourier_features}")
        if not position_scale > 0:
            raise ValueError(f"position_scale must be > 0, got {position_scale}")
        self.position_scale = float(position_scale)
        self.fourier = (
            FourierFeatures(2, fourier_features, fourier_sigma)
            if fourier_features
            else None
        )
        self.n_inputs = 4 + 2 * int(fourier_features)
        self.siren = Siren(
            self.n_inputs, 1, width, layers, first_omega_0, hidden_omega_0
        )
        # The curriculum scale c of (u, v); the training loop sets it, and it
        # is saved with the weights (see the module docstring).
        self.register_buffer("uv_scale", torch.ones(()))
        # Derived from pattern_shape, hence not saved.
        self.register_buffer(
            "pixel_uv", detector_coordinates(self.pattern_shape), persistent=False
        )
        self._arch = dict(
            width=int(width),
            layers=int(layers),
            first_omega_0=float(first_omega_0),
            hidden_omega_0=float(hidden_omega_0),
            fourier_features=int(fourier_features),
            fourier_sigma=float(fourier_sigma),
            position_scale=self.position_scale,
        )

    @property
    def config(self) -> dict[str, Any]:
        return dict(
            formulation=self.formulation,
            pattern_shape=list(self.pattern_shape),
            **self._arch,
        )

    # ------------------------------------------------------------ curriculum

    @property
    def curriculum(self) -> float:
        """The current detector-coordinate scale ``c``."""
        return float(self.uv_scale)

    @torch.no_grad()
    def set_curriculum(self, scale: float) -> None:
        """Set the detector-coordinate scale ``c`` (the training loop's hook)."""
        if not 0 < scale <= 1:
            raise ValueError(f"The curriculum scale must be in (0, 1], got {scale}")
        self.uv_scale.fill_(scale)

    # --------------------------------------------------------------- inputs

    def pixel_features(self, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """``[c u, c v, gamma(c u, c v)]`` of the given (flat) pixels, or of
        every pixel, ``(n_pix, n_inputs - 2)``."""
        uv = self.pixel_uv if pixels is None else self.pixel_uv[pixels]
        uv = uv * self.uv_scale
        if self.fourier is None:
            return uv
        return torch.cat([uv, self.fourier(uv)], dim=1)

    def encode(self, xy: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The SIREN's full input ``[x, y, c u, c v, gamma(c u, c v)]`` of
        (position, pixel) pairs, ``(n, n_inputs)``.

        ``field.siren(field.encode(xy, pixels))`` is what :meth:`values_at`
        computes, without the split of the first layer (kept as the
        reference of the maths, for tests and timings).
        """
        return torch.cat([xy * self.position_scale, self.pixel_features(pixels)], dim=1)

    # --------------------------------------------------- split first layer

    def _position_part(self, xy: torch.Tensor) -> torch.Tensor:
        first = self.siren.net[0].linear
        return F.linear(xy * self.position_scale, first.weight[:, :2])

    def _pixel_part(self, pixels: torch.Tensor | None) -> torch.Tensor:
        first = self.siren.net[0].linear
        return F.linear(self.pixel_features(pixels), first.weight[:, 2:], first.bias)

    def _head(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """Every layer after the first layer's linear map; ``(..., width)``
        pre-activations to ``(...)`` intensities."""
        lead = pre_activation.shape[:-1]
        h = pre_activation.reshape(-1, pre_activation.shape[-1])
        layers = self.siren.net
        if not torch.is_grad_enabled():
            # No graph to keep (decoding, validation, forward-mode gradients):
            # work in place.
            h = (h * layers[0].omega_0).sin_()
            for layer in layers[1:]:
                lin = layer.linear
                h = torch.addmm(lin.bias, h, lin.weight.T).mul_(layer.omega_0).sin_()
        elif h.is_cpu:
            h = _SineLinear.apply(h, None, None, layers[0].omega_0)
            for layer in layers[1:]:
                lin = layer.linear
                h = _SineLinear.apply(h, lin.weight, lin.bias, layer.omega_0)
        else:
            # On a GPU, allocations are cheap and autograd's kernels are as
            # fast as the fused layer (H100: 3.5 vs 3.6 ms per step).
            h = torch.sin(layers[0].omega_0 * h)
            for layer in layers[1:]:
                h = layer(h)
        return F.linear(h, self.siren.last.weight, self.siren.last.bias).reshape(lead)

    # ------------------------------------------------------------ interface

    def values_at(self, xy: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        if not xy.is_cpu:
            # On a GPU the full 516-wide first layer is a fast matrix product,
            # while the split's row gather and scatter-add are not (H100,
            # paper-size batch: 3.3 ms per step full, 3.5 ms split).
            return self.siren(self.encode(xy, pixels)).squeeze(-1)
        # Random (point, pixel) pairs repeat pixels heavily (a batch of 32768
        # on a 60x60 detector holds ~3600 distinct ones): the 514-column part
        # of the first layer runs once per distinct pixel.
        if len(pixels) >= self.n_pixels:
            # Batches larger than the detector hold (nearly) every pixel.
            pixel_part, index = self._pixel_part(None), pixels
        else:
            distinct, index = self._distinct(pixels)
            pixel_part = self._pixel_part(distinct)
        # embedding = row gather; its backward is the fastest scatter-add here.
        pre = self._position_part(xy) + F.embedding(index, pixel_part)
        return self._head(pre)

    def _distinct(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.unique(pixels, return_inverse=True)`` by counting, not
        sorting (pixel indices are bounded; CPU sorts are slow here)."""
        present = torch.zeros(self.n_pixels, dtype=torch.bool, device=pixels.device)
        present[pixels] = True
        distinct = present.nonzero().squeeze(1)
        inverse = (torch.cumsum(present, 0) - 1)[pixels]
        return distinct, inverse

    def pattern_values(
        self, xy: torch.Tensor, pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        pixel_part = self._pixel_part(pixels)  # (q, width)
        position_part = self._position_part(xy)  # (n, width)
        per_block = max(1, _BLOCK_PAIRS // pixel_part.shape[0])
        blocks = [
            self._head(position_part[start : start + per_block, None] + pixel_part)
            for start in range(0, len(xy), per_block)
        ]
        if not blocks:
            return pixel_part.new_zeros((0, pixel_part.shape[0]))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def descriptor(self, xy: torch.Tensor) -> torch.Tensor:
        # The whole pattern: S = ||dI/d(x, y)|| over the detector pixels.
        return self.pattern_values(xy)
