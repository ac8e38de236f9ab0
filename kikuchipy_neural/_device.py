"""Which torch device a fit, a model or a decoder runs on."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> "cuda" when available, else "cpu".

    Raises ``ValueError`` for a device name torch does not know and for CUDA
    on a machine without it (torch would fail later, with an
    ``AssertionError`` deep in the first tensor move).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"Unknown device {device!r}: use e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available"
        )
    return device
