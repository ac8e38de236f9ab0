"""Checkpoint files: a fit's whole state, with a SHA-256 over its bytes.

A checkpoint is what :func:`torch.save` writes (a zip; read back with
``weights_only=True``, so a crafted file cannot run code) of
``{"format": CONTAINER_FORMAT, "sha256": hex, "payload": uint8 tensor}``,
the payload itself the bytes of ``torch.save`` of the trainer's state.
:func:`read_checkpoint` checks the digest before it unpickles the payload:
of five single-byte flips of an unchecked checkpoint, two resumed silently
with altered weights and one raised an ``IndexError``; now each is refused
as a :class:`CheckpointError`. Checkpoints written before the digest
(the bare state) still load, with a warning.

The file is written beside its destination under a temporary name and
renamed (:mod:`~kikuchipy_neural.safe_files`): a crash while writing keeps
the previous checkpoint, and temporary files of killed processes are
removed by the next write.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch

from kikuchipy_neural.safe_files import remove_stale_temporaries, temporary_path

__all__ = ["CONTAINER_FORMAT", "CheckpointError", "read_checkpoint", "write_checkpoint"]

#: The ``format`` of a checkpoint file with a digest.
CONTAINER_FORMAT = "kikuchipy-neural-checkpoint-sha256/1"
# The format of checkpoints written before the digest: the state itself.
_UNCHECKED_FORMAT = "kikuchipy-neural-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint whose content is corrupted (its digest does not match)."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` (tensors and plain containers) to ``path`` with its
    SHA-256, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    container = {
        "format": CONTAINER_FORMAT,
        "sha256": _digest(data),
        "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        torch.save(container, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path: str | os.PathLike) -> object:
    """The state a :func:`write_checkpoint` file holds, its digest checked.

    Raises
    ------
    CheckpointError
        The digest does not match the payload (a corrupted file), or the
        container is malformed.
    Exception
        Whatever :func:`torch.load` raises for a file that is not a
        ``torch.save`` zip.
    """
    path = Path(path)
    outer = torch.load(os.fspath(path), weights_only=True, map_location="cpu")
    if not isinstance(outer, dict):
        raise CheckpointError(f"{path} is not a kikuchipy-neural checkpoint")
    if outer.get("format") != CONTAINER_FORMAT:
        if outer.get("format") != _UNCHECKED_FORMAT or "sha256" in outer:
            # A flipped bit in the format must not pass as an old file.
            raise CheckpointError(
                f"{path} is not a kikuchipy-neural checkpoint (or its header is "
                "corrupted)"
            )
        warnings.warn(
            f"{path} has no checksum (a checkpoint written before 2026-12): it "
            "cannot be checked for corruption",
            stacklevel=3,
        )
        return outer
    payload, digest = outer.get("payload"), outer.get("sha256")
    if (
        not isinstance(payload, torch.Tensor)
        or payload.dtype != torch.uint8
        or payload.ndim != 1
        or not isinstance(digest, str)
    ):
        raise CheckpointError(f"{path}: a malformed checkpoint (corrupted?)")
    data = payload.numpy().tobytes()
    if _digest(data) != digest:
        raise CheckpointError(
            f"{path}: checksum mismatch, the checkpoint was altered or corrupted "
            "after it was written; refusing to resume from it"
        )
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # the digest matched: written so, by a bug
        raise CheckpointError(
            f"{path}: the checkpoint's payload cannot be read "
            f"({type(err).__name__}: {err})"
        ) from None
