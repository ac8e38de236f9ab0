"""Output files that are checked before any work and never left half written.

Every file the package writes (model files, checkpoints, decoded patterns)
goes to a temporary file beside its destination first and is renamed when
complete. This module names those temporary files (short enough for any
destination name the file system allows), removes the ones that a killed
process left behind, and checks a destination before hours of fitting or
decoding: that its folder exists and is writable, and that its name, and
its temporary file's, fit the file system's 255 bytes.

It sits beside :mod:`~kikuchipy_neural.geometry`: every part may import it.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

__all__ = [
    "MAX_NAME_BYTES",
    "check_destination",
    "remove_stale_temporaries",
    "temporary_path",
]

#: The longest file name (bytes) of common file systems (ext4, XFS, APFS, NTFS).
MAX_NAME_BYTES = 255


def _name_bytes(name: str) -> int:
    return len(os.fsencode(name))


def temporary_path(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """The temporary file beside ``path`` that this process writes first:
    ``.NAME.PID.TAG`` (keeping ``path``'s suffix, which some writers
    need), ``NAME`` shortened so that the whole stays within
    :data:`MAX_NAME_BYTES` (a 251-character destination used to fail
    because its temporary name did not fit)."""
    path = Path(path)
    suffix = path.suffix if len(path.suffix) <= 16 else ""
    tail = f".{os.getpid()}.{tag}{suffix}"
    name = path.name
    while _name_bytes(f".{name}{tail}") > MAX_NAME_BYTES:
        name = name[:-1]
    return path.with_name(f".{name}{tail}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its files alone
    return True


def remove_stale_temporaries(path: str | os.PathLike, tag: str = "tmp") -> list[Path]:
    """Remove the temporary files (:func:`temporary_path`) of ``path`` whose
    process is gone (a ``kill -9``, a crash, a power cut): what a killed
    save or decode left behind is removed by the next one. Temporary
    folders (a zarr store being written) are left alone: only files this
    function can be sure of are removed.

    Returns
    -------
    removed
        The files removed.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    suffix = path.suffix if len(path.suffix) <= 16 else ""
    pattern = re.compile(
        r"^\.(?P<name>.*)\.(?P<pid>\d+)\." + re.escape(tag) + re.escape(suffix) + "$"
    )
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if (
            match is None
            or not path.name.startswith(match["name"])
            or _pid_alive(int(match["pid"]))
            or not entry.is_file()
            or entry.is_symlink()
        ):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def check_destination(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise before any work if ``path`` cannot be written: no such folder
    (``FileNotFoundError``), a folder that is not writable
    (``PermissionError``), or a name longer than :data:`MAX_NAME_BYTES`
    (``ValueError``). ``what`` names the file in messages.

    Returns
    -------
    path
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not path.name:
        raise ValueError(f"{what} {path}: not a file name")
    if _name_bytes(path.name) > MAX_NAME_BYTES:
        raise ValueError(
            f"{what} {path}: the name is {_name_bytes(path.name)} bytes long, more "
            f"than the {MAX_NAME_BYTES} a file system allows"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: the folder {folder} is not writable")
    if path.is_dir() and not path.is_symlink():
        # Only a zarr store may be a folder; its writer checks it is ours.
        if path.suffix != ".zspy":
            raise IsADirectoryError(f"{what} {path} is a folder")
    return path
