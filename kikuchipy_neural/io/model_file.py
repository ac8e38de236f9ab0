"""The model file: one HDF5 file per :class:`~kikuchipy_neural.NeuralEBSDModel`.

Layout (format version 5)
-------------------------
Root attributes: ``format`` (``"kikuchipy-neural model"``), ``format_version``
(int) and ``checksum`` (``"sha256:<hex>"``), the strings fixed-length UTF-8.
One uint8 dataset, ``payload``: the header's stream length (little-endian
uint32), the header's stream, then the arrays' streams.

The header
    A raw deflate stream (:func:`array_codec.compress_header`, with the
    preset dictionary of :mod:`~kikuchipy_neural.io.header_dictionary`) of
    a UTF-8 JSON document: ``precision``, ``package_version``, the field's
    ``config`` (rebuilt with :func:`kikuchipy_neural.fields.build_field`),
    the scan geometry, the intensity scale, detector and phases, PCA
    spectrum scalars, the history array's length (``history_bytes``),
    options and info, and ``storage``: one ``[codec, bytes]`` per array
    below, in name order.
The arrays' streams
    Each a bounded LZMA stream of its little-endian bytes
    (:mod:`~kikuchipy_neural.io.array_codec`, the smallest of no coding,
    LZMA2, and LZMA2 after a byte shuffle), concatenated in name order.
    Their names, dtypes and shapes are not stored: they follow from the
    header's architecture, geometry and precision (where each of the
    field's tensors is stored follows from its shape:
    :func:`_tensor_layout`), and a stream that does not decode to exactly
    that many bytes is refused.

The arrays:

``network``
    The field's parameters other than the bases (and, at ``int8``, other
    than the weight matrices in ``network_codes``), flattened and
    concatenated in ``state_dict`` order (float32, or float16).
``network_codes``
    ``int8`` files only: every weight matrix whose rows hold at least
    ``_QUANTISE_MIN_ROW`` (8) values, i.e. the SIREN's hidden and output
    layers, as uint8 codes, flattened and concatenated, with one
    ``network_codes_offset`` and ``network_codes_step`` (float32) per matrix
    row (rows shorter than ``_OWN_STEP_MIN_ROW``, 32, repeat their
    matrix's; files written before 2026-12-03 keep such matrices in
    ``network`` as float16: the reader does not care). Biases and the
    factorized field's first layer (two inputs per row) stay in ``network``
    as float16: a sine layer multiplies them by its omega_0, and on the real
    crop 8-bit biases cost a count of MAE where 8-bit matrices cost none,
    for a few kB.
``bases``
    ``(R, n_pixels)`` basis patterns of factorized fields: float32, float16,
    or, for 8-bit quantisation, uint8 codes with per-basis ``bases_offset``
    and ``bases_step`` (float32; 256 codes over each basis's range, or
    coarser steps balanced by the coefficients with
    ``save_model(balanced_bases=True)``: the reader does not care). Where
    the codes pack smaller that way (the header's ``bases_differenced`` is
    then true), they are stored as their second difference over each basis
    image (``c[i, j] - c[i - 1, j] - c[i, j - 1] + c[i - 1, j - 1]`` modulo
    256, zero outside the image); reading integrates them back exactly.
    Smooth bases (the mean, the
    leading components) pack up to a fifth tighter so; noisy high-order ones
    do not, which is why it is decided per file: one choice for all bases,
    as a codec packs rows of one kind better than a mix (choosing per basis
    made the rank-128 crop model's int8 file 18 kB larger under gzip).
``history``
    The training history as UTF-8 JSON (:func:`_history_json`): its floats
    rounded to float32 in float32 files, to 4 significant digits in float16
    files, 3 in int8 files; its ``step`` column as first differences.
``detector_pc``, ``scan_positions``, ``spectrum_eigenvalues``
    float64 arrays, present when the model has them.
``point_intensity``
    ``(n_points, 2)`` per-point gain minus 1 and offset (measured units), in
    the network's dtype; present when the header's ``point_intensity`` is
    true (see :mod:`kikuchipy_neural.training.point_intensity`).

Formats 1-4 have the root attributes ``package_version`` and
``precision`` too, and a ``header`` dataset whose JSON also lists the
tensors (name, shape, where stored) and holds the history. Formats 1-3
store each array as its own HDF5 dataset of that name (gzip and byte
shuffle from 4 kB), and the header as plain JSON bytes. Format
version 1 (0.1.0.dev0 until 2026-12-01) had no ``network_codes``: its
``int8`` files keep the whole network in float16. Format version 2 (until
2026-12-02) stored the 8-bit basis codes as they are. Format 3 (until
2026-12-02) differenced them, gzip deciding. All are still read. Since
version 3 the file is written with HDF5 1.10's object formats (readers need
HDF5 1.10 or newer). Loading an older file and saving it writes the current
format; an int8 file of format 2 or 3 saved at int8 keeps every parameter
bit-exact (8-bit codes of decoded values are the codes they came from), but
for networks narrower than 32, whose float16 matrices are now coded too.
Format 4 replaced gzip with LZMA and the ten datasets with two: the real
crop's models' int8 files 5.1-11.1 kB (13-21 %) smaller at ranks 2-8,
float16 files 5-11 %, float32 files 3-6 %. Saving takes longer (LZMA at
preset 9e, each array coded two or three ways): 1.4 s for a 2.2 MB float32
file, against 0.4 s with gzip. Format 4 kept the header (with the
``tensors`` layout, the ``history`` and a ``storage`` list of ``{"name",
"codec", "bytes"}``) as an LZMA stream in a dataset of its own, and the
precision and package version as root attributes. Format 5 moved the
header into ``payload`` as a deflate stream with a preset dictionary, the
history into an array of its own, and derives the layout: the real crop's
rank-2 and rank-3 int8 files 1.4-1.5 kB (12 and 9 %) smaller.

The checksum is a SHA-256 over every array, the header's JSON (and, from
format 5, the history's) included, in name order: name, dtype, shape, then
the little-endian bytes.

Safety
------
Loading never unpickles or executes anything: JSON is parsed with
:mod:`json`, arrays are read only from the datasets named above, after their
dtype, shape and storage (no external files, no virtual datasets, no filter
other than gzip/shuffle/fletcher32, which would make HDF5 load plugins) have
been checked against the header, and the header's architecture has been
built on PyTorch's ``meta`` device (no memory) and checked against size
limits. Streams are decoded with a bound (the header to 64 MiB, each array to
the bytes its checked shape needs), so a crafted stream cannot exhaust
memory.

Every resource is bounded before it is allocated: the architecture's sizes
(layers, widths, rank, Fourier features) before anything is built, even on
``meta`` (a header declaring a million layers took minutes and gigabytes
to build there), the scan's points and the pattern's pixels, phases and
atoms. And a file cannot declare more decoded bytes (header and arrays)
than :data:`MAX_EXPANSION` times the bytes it stores, plus 1 MiB: LZMA
packs zeros about 7000-fold, so a 177 kB file could otherwise declare
per-point tables of gigabytes (trained parameters pack 1.0-1.2-fold,
an untrained model's zero bases far more). ``trust=True`` lifts that
ratio for files one wrote oneself; the absolute limits stay.

Anything wrong with a file's content, its HDF5 structure included, raises
:class:`ModelFileError` naming the problem (a ``ValueError``; files that
HDF5 cannot read raise its subclass :class:`UnreadableModelFileError`,
an ``OSError`` too), never another exception type.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.io import array_codec, principal_axes
from kikuchipy_neural.safe_files import (
    check_destination,
    remove_stale_temporaries,
    temporary_path,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_EXPANSION",
    "PRECISIONS",
    "ModelFileError",
    "UnreadableModelFileError",
    "file_summary",
    "load_model",
    "save_model",
]

FORMAT_NAME = "kikuchipy-neural model"
FORMAT_VERSION = 5
# The oldest version this release reads (version 1 lacks network codes,
# version 2 stores the basis codes undifferenced).
OLDEST_FORMAT_VERSION = 1
# The first version whose int8 basis codes may be stored as 2D differences.
_DIFFERENCED_BASES_FROM = 3
_DIFFERENCED = "bases_differenced"  # the header's flag
# The first version that stores its arrays as LZMA streams in one dataset.
_STREAMS_FROM = 4
# The first version with the header inside that dataset (a deflate stream
# with a preset dictionary), the tensors' layout derived from the
# architecture (_tensor_layout) and the training history an array.
_PACKED_FROM = 5
_PAYLOAD = "payload"
_HISTORY = "history"
# The header's stream length before it in the payload: little-endian uint32.
_HEADER_LENGTH_BYTES = 4

#: Storage precisions of :func:`save_model` and what each stores.
PRECISIONS = {
    "float32": "network and bases in float32 (bit-exact round trip)",
    "float16": "network and bases in float16",
    "int8": "bases and weight matrices quantised to 8 bits per value (one "
    "offset and step per basis, per matrix row, or per matrix where rows are "
    "shorter than 32), biases and the first layer in float16",
}

# Weight matrices with rows at least this long are stored as 8-bit codes at
# "int8" (the first layer's rows, two inputs, are not). Rows of at least
# _OWN_STEP_MIN_ROW values get an offset and step each (8 bytes, at most a
# quarter of what the codes save over float16); shorter rows, of the narrow
# networks of the smallest files, share their matrix's, repeated per row
# (the format has one per row), which the codec packs to a few bytes. (Until
# 2026-12-03 rows shorter than 32 stayed float16.) Format 5 derives which
# matrices are coded from _QUANTISE_MIN_ROW (_tensor_layout): changing it
# needs a new format version.
_QUANTISE_MIN_ROW = 8
_OWN_STEP_MIN_ROW = 32

# Sanity limits checked before anything is allocated (trust=True or not).
_MAX_HEADER_BYTES = 64 * 1024**2
_MAX_PARAMETERS = 2**30  # 4 GiB of float32
# 4.3 G scan points: 40 times the largest maps measured today; the lazy
# signal of kikuchipy_neural.load builds its coordinates per chunk.
_MAX_POINTS = 2**32
_MAX_PATTERN_PIXELS = 2**24
_MAX_EIGENVALUES = 2**24
_MAX_ATOMS = 10_000  # over all phases
_MAX_PHASES = 256
# Architecture sizes, checked before the field is built even on "meta"
# (building 10^5 layers there took 36 s and 1 GB); the paper uses 5 layers
# of 256-512 and ranks up to a few hundred.
_MAX_ARCHITECTURE = {
    "layers": 256,
    "width": 2**16,
    "rank": 2**16,
    "fourier_features": 2**16,
}

#: How many times more decoded bytes (header and arrays) than it stores a
#: file may declare without ``trust=True`` (plus :data:`_EXPANSION_SLACK`).
MAX_EXPANSION = 64
# Tiny arrays of zeros (an untrained model's bases, empty tables) pack far
# beyond MAX_EXPANSION and are harmless: this much is always allowed.
_EXPANSION_SLACK = 1024**2

# Root attributes of formats 1-4; format 5 keeps the package version and
# the precision in the header, where the checksum covers them.
_ROOT_ATTRS = {"format", "format_version", "package_version", "precision", "checksum"}
_PACKED_ROOT_ATTRS = {"format", "format_version", "checksum"}
_BASES = "bases"
_CODES = "network_codes"
# HDF5 filters that are built into HDF5 itself; any other id would make the
# library look for (and load) a plugin.
_ALLOWED_FILTERS = {
    h5py.h5z.FILTER_DEFLATE,
    h5py.h5z.FILTER_SHUFFLE,
    h5py.h5z.FILTER_FLETCHER32,
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# HDF5's limit for a compact dataset is 64 kiB minus its object header.
_COMPACT_MAX_BYTES = 60_000


class ModelFileError(ValueError):
    """A model file whose content is invalid, inconsistent or corrupted."""


class UnreadableModelFileError(ModelFileError, OSError):
    """A model file that HDF5 cannot read (not HDF5, or corrupted structure).

    Both a :class:`ModelFileError` and an ``OSError`` (what it was before it
    had a type of its own).
    """


# --------------------------------------------------------------------------
# writing


def save_model(
    model,
    path: str | os.PathLike,
    precision: str = "float16",
    overwrite: bool = True,
    balanced_bases: bool = False,
) -> Path:
    """Write ``model`` to one HDF5 file.

    Parameters
    ----------
    model
        A :class:`~kikuchipy_neural.NeuralEBSDModel`.
    path
        File to write (conventionally ``.h5``). Written to a temporary file
        beside it first and renamed, so an interrupted save never leaves a
        truncated model behind.
    precision
        ``"float32"`` (bit-exact), ``"float16"`` or ``"int8"``; see
        :data:`PRECISIONS`.
    overwrite
        Replace an existing file; False raises ``FileExistsError``.
    balanced_bases
        At ``precision="int8"``, store the field in its principal axes
        (:mod:`~kikuchipy_neural.io.principal_axes`: the same patterns,
        the first basis the mean pattern, the others orthogonal and ordered
        by energy, their coefficients decorrelated) and quantise the bases
        with steps inversely proportional to the RMS of their coefficients
        over the scan, so that they add equal errors to the decoded
        patterns, in total twice the error variance of 256 codes over each
        basis's range (:func:`_balanced_basis_steps`). Low-energy bases then
        use few distinct codes, which pack tighter. The file format is the
        same; the loaded model's bases, last layer and coefficient maps
        (:func:`~kikuchipy_neural.analysis.coefficients.coefficient_map`)
        are those of the principal axes (``model`` itself is left
        unchanged), and so is its diffraction gradient, which with
        orthogonal bases is exactly the norm of the pattern's spatial
        gradient (with the trained bases, correlated, it weighs the
        coefficients' gradients by the bases' norms alone: on the real
        crop's rank-3 model 8 % apart at the median point, correlation
        0.995). Default False: the parameters as trained, every basis spans
        its range with 256 codes. Only for factorized models (a joint field
        has no bases).

    Returns
    -------
    path
        The path written.
    """
    check_save_arguments(precision, model.formulation, balanced_bases)
    # Else h5py's error names the temporary file, not the user's path.
    path = check_destination(path, "Cannot write the model file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    arrays, header = _encode(model, precision, balanced_bases)
    _write_file(path, arrays, header)
    return path


def check_save_arguments(
    precision: str, formulation: str, balanced_bases: bool = False
) -> None:
    """Raise ``ValueError`` for arguments :func:`save_model` refuses, for a
    model of ``formulation`` (the CLI checks them before it fits)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}"
        )
    if balanced_bases and precision != "int8":
        raise ValueError(
            f"balanced_bases quantises the bases' 8-bit codes: it needs "
            f"precision='int8', got {precision!r}"
        )
    if balanced_bases and formulation != "factorized":
        raise ValueError(
            "balanced_bases needs a factorized model (a joint field has no bases)"
        )


def _write_file(
    path: Path, arrays: dict[str, np.ndarray], header: dict[str, Any]
) -> None:
    """Write ``arrays`` and ``header`` (which gains the ``storage`` list) as a
    model file at ``path``, through a temporary file renamed at the end."""
    # Every array as its smallest bounded LZMA stream (array_codec), one
    # after the other in name order after the header, in one dataset: HDF5
    # has no LZMA filter, and each dataset costs ~0.3 kB of HDF5 structure.
    streams, storage = [], []
    for name in sorted(arrays):
        codec, stream = array_codec.encode(arrays[name])
        streams.append(stream)
        storage.append([codec, len(stream)])
    header = {**header, "storage": storage}
    header_json = json.dumps(header, allow_nan=True, separators=(",", ":")).encode(
        "utf-8"
    )
    header_stream = array_codec.compress_header(header_json)
    checksum = _checksum({**arrays, "header": np.frombuffer(header_json, np.uint8)})
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        # HDF5 1.10's object formats (less structure than HDF5 1.8's), and
        # metadata not padded to 2 kB blocks: 0.4 kB less.
        with h5py.File(tmp, "w", libver=("v110", "v110"), meta_block_size=0) as f:
            _set_string_attr(f, "format", FORMAT_NAME)
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            _set_string_attr(f, "checksum", checksum)
            length = len(header_stream).to_bytes(_HEADER_LENGTH_BYTES, "little")
            _write_bytes(f, _PAYLOAD, length + header_stream + b"".join(streams))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_bytes(f: h5py.File, name: str, data: bytes) -> None:
    """A uint8 dataset of ``data``: compact (inside its object header) where
    HDF5 allows, which saves 0.3 kB; contiguous otherwise."""
    if len(data) > _COMPACT_MAX_BYTES:
        f.create_dataset(name, data=np.frombuffer(data, np.uint8), track_times=False)
        return
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    dcpl.set_obj_track_times(False)  # no time stamps: 16 bytes
    space = h5py.h5s.create_simple((len(data),))
    dataset = h5py.h5d.create(f.id, name.encode(), h5py.h5t.STD_U8LE, space, dcpl=dcpl)
    if data:
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.frombuffer(data, np.uint8))


def _set_string_attr(f: h5py.File, name: str, value: str) -> None:
    """Store a string attribute as fixed-length UTF-8.

    h5py stores ``str`` attributes as variable-length strings, which HDF5 keeps
    in a global heap whose smallest collection is 4 kB: 4-6 % of a small int8
    model file (70-100 kB). Readers get ``bytes`` back (``_attr_str`` decodes
    them).
    """
    data = value.encode("utf-8")
    f.attrs.create(name, np.array(data, h5py.string_dtype("utf-8", len(data))))


def _encode(
    model, precision: str, balanced_bases: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The model as named little-endian arrays and a JSON-able header."""
    from kikuchipy_neural import __version__

    state = {
        k: v.detach().to("cpu", torch.float32)
        for k, v in model.field.state_dict().items()
    }
    net_dtype = np.dtype("<f4") if precision == "float32" else np.dtype("<f2")
    network, codes = [], []
    arrays: dict[str, np.ndarray] = {}
    differenced = None  # how int8 basis codes are stored
    coefficient_rms = None
    if balanced_bases:
        state, coefficient_rms = _balanced_state(model, state)
    shapes = {name: tuple(value.shape) for name, value in state.items()}
    for entry in _tensor_layout(shapes, precision):
        value = state[entry["name"]].numpy()
        if entry["dataset"] == _BASES:
            bases, differenced = _encode_bases(
                value, precision, model.geometry.pattern_shape, coefficient_rms
            )
            arrays.update(bases)
        elif entry["dataset"] == _CODES:
            codes.append(_quantise_matrix(value))
        else:
            network.append(value.ravel())
    arrays["network"] = (
        np.concatenate(network) if network else np.zeros(0, np.float32)
    ).astype(net_dtype)
    if codes:
        arrays[_CODES] = np.concatenate([c.ravel() for c, _, _ in codes])
        arrays[f"{_CODES}_offset"] = np.concatenate([lo for _, lo, _ in codes])
        arrays[f"{_CODES}_step"] = np.concatenate([step for _, _, step in codes])
    arrays[_HISTORY] = np.frombuffer(
        _history_json(model.history, _HISTORY_DIGITS[precision]), np.uint8
    )

    geometry = model.geometry.to_dict()
    positions = geometry.pop("positions", None)
    if positions is not None:
        arrays["scan_positions"] = np.asarray(positions, "<f8").reshape(-1, 2)
    header: dict[str, Any] = {
        "precision": precision,
        "package_version": str(__version__),
        "field": _plain(model.field.config),
        "geometry": _plain(geometry),
        "scan_positions": positions is not None,
        "intensity_range": [float(v) for v in model.intensity_range],
        "network_dtype": net_dtype.str,
        "detector": None,
        "phases": None,
        "spectrum": None,
        "history_bytes": int(arrays[_HISTORY].size),
        "options": _plain(model.options),
        "info": _plain({k: v for k, v in model.info.items() if k != "model_file"}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    table = getattr(model, "point_intensity", None)
    header["point_intensity"] = table is not None
    if table is not None:
        # Gains are close to 1: storing gain - 1 keeps float16's precision.
        stored = np.asarray(table, np.float64).copy()
        stored[:, 0] -= 1.0
        arrays["point_intensity"] = stored.astype(net_dtype)
    if model.detector is not None:
        header["detector"], arrays["detector_pc"] = _encode_detector(model.detector)
    if model.phases is not None:
        header["phases"] = _encode_phases(model.phases)
    if model.spectrum is not None:
        d = model.spectrum.to_dict()
        arrays["spectrum_eigenvalues"] = np.asarray(d.pop("eigenvalues"), "<f8").ravel()
        header["spectrum"] = _plain(
            {**d, "n_eigenvalues": arrays["spectrum_eigenvalues"].size}
        )
    if differenced is not None:
        header[_DIFFERENCED] = differenced
    return arrays, header


def _tensor_layout(
    shapes: dict[str, tuple[int, ...]], precision: str
) -> list[dict[str, Any]]:
    """Where each of the field's tensors is stored, from their shapes in
    ``state_dict`` order: the bases (2D ``bases``) in ``bases``; at int8,
    the weight matrices whose rows hold at least :data:`_QUANTISE_MIN_ROW`
    values in ``network_codes`` (``offset`` into the codes, ``row`` into
    their offsets and steps); everything else in ``network`` at ``offset``.

    Format 5 derives it from the architecture (so this rule is part of the
    format: changing it needs a new format version); formats 1-4 store it
    in the header's ``tensors``.
    """
    layout, n_net, n_codes, n_rows = [], 0, 0, 0
    for name, shape in shapes.items():
        entry: dict[str, Any] = {"name": name, "shape": list(shape)}
        size = math.prod(shape)
        if name == _BASES and len(shape) == 2:
            entry["dataset"] = _BASES
        elif precision == "int8" and len(shape) == 2 and shape[1] >= _QUANTISE_MIN_ROW:
            entry.update(dataset=_CODES, offset=n_codes, row=n_rows)
            n_codes += size
            n_rows += shape[0]
        else:
            entry.update(dataset="network", offset=n_net)
            n_net += size
        layout.append(entry)
    return layout


def _encode_bases(
    bases: np.ndarray,
    precision: str,
    pattern_shape: tuple[int, int],
    coefficient_rms: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], bool | None]:
    """The bases' datasets, and (int8 only) whether the codes are stored as
    their 2D differences. ``coefficient_rms`` (int8 only): balance the
    bases' steps by it (:func:`_balanced_basis_steps`)."""
    if precision == "float32":
        return {_BASES: bases.astype("<f4")}, None
    if precision == "float16":
        return {_BASES: bases.astype("<f2")}, None
    min_steps = None
    if coefficient_rms is not None:
        min_steps = _balanced_basis_steps(bases, coefficient_rms)
    codes, lo, step = _quantise_rows(bases, min_steps)
    stored, differenced = _smaller_of_codes_or_differences(codes, pattern_shape)
    return {_BASES: stored, "bases_offset": lo, "bases_step": step}, differenced


def _balanced_state(
    model, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The parameters a balanced int8 file stores and the RMS of each basis's
    coefficient over the scan (float64 ``(R,)``, the mean pattern's constant
    1 first): the field in its principal axes
    (:mod:`~kikuchipy_neural.io.principal_axes`; every RMS 1), or as it is
    where its coefficients' covariance is singular."""
    mean, cov = principal_axes.coefficient_moments(model)
    rotated = principal_axes.principal_axes_state(state, mean, cov)
    if rotated is not None:
        return rotated, np.ones(model.field.rank)
    rms = np.sqrt(mean**2 + np.clip(np.diag(cov), 0, None))
    return state, np.concatenate([[1.0], rms])


# How much more rounding error (variance, summed over the bases) balanced
# steps allow than 256 codes over each basis's range give.
_BALANCED_ERROR_RATIO = 2.0


def _balanced_basis_steps(bases: np.ndarray, coefficient_rms: np.ndarray) -> np.ndarray:
    """Quantisation steps of ``bases`` ``(R, n_pixels)`` that spend the
    rounding error where it saves the most bytes.

    A pattern is ``sum_k A_k bases[k]``, so a step ``d_k`` of basis ``k``
    adds an error of variance ``(rms(A_k) d_k)**2 / 12`` to it (the bases'
    rounding errors are independent). For a given total, bytes are fewest
    when every basis adds the same error ``e`` (a basis whose coefficient is
    small then needs few distinct codes), except that no basis can have a
    finer step than 256 codes over its range give (its error ``e_k`` then
    stays): the error of basis ``k`` is ``max(e, e_k)``. ``e`` is set so
    that the total is :data:`_BALANCED_ERROR_RATIO` times what 256 codes per
    basis give, whatever the rank: about 1.4 times the RMS error, which on
    the real crop costs a few tenths of a per cent of MAE. A basis that
    does not vary, or whose coefficient is zero everywhere, adds no error
    whatever its step: it gets its whole range.
    """
    rms = np.asarray(coefficient_rms, np.float64)
    ranges = np.ptp(np.asarray(bases, np.float64), axis=1)
    own = rms * ranges / 255.0  # each basis's error with 256 codes (x sqrt 12)
    active = own > 0
    if not active.any():
        return ranges
    own = own[active]
    target = _BALANCED_ERROR_RATIO * np.sum(own**2)
    # sum(max(e, own)**2) grows with e: bisect for the target.
    lo, hi = 0.0, float(np.sqrt(target))
    for _ in range(100):
        e = (lo + hi) / 2
        if np.sum(np.maximum(e, own) ** 2) > target:
            hi = e
        else:
            lo = e
    steps = ranges.copy()
    steps[active] = np.maximum(lo, own) / rms[active]
    return steps


def _quantise_rows(
    values: np.ndarray, min_steps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit codes of a 2D array, affine per row: ``(codes, offset, step)``.

    Each row gets its own range: a basis (the mean pattern's range is far
    larger than a high-order component's) or a neuron's input weights. The
    value ``offset + code * step`` is at most half a step from the original.
    ``min_steps`` (one per row) coarsens rows' steps beyond what 256 codes
    over their range need (:func:`_balanced_basis_steps`).
    """
    values = np.asarray(values, np.float32)
    lo = values.min(axis=1)
    step = (values.max(axis=1) - lo) / 255.0
    if min_steps is not None:
        step = np.maximum(step, np.asarray(min_steps, np.float64))
    step = np.where(step > 0, step, 1.0).astype("<f4")
    codes = np.rint((values - lo[:, None]) / step[:, None])
    return np.clip(codes, 0, 255).astype(np.uint8), lo.astype("<f4"), step


def _quantise_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A weight matrix's 8-bit codes with an offset and step per row
    (:func:`_quantise_rows`), those of rows shorter than
    :data:`_OWN_STEP_MIN_ROW` the matrix's own, repeated."""
    if values.shape[1] >= _OWN_STEP_MIN_ROW:
        return _quantise_rows(values)
    codes, lo, step = _quantise_rows(values.reshape(1, -1))
    rows = len(values)
    return codes.reshape(values.shape), np.repeat(lo, rows), np.repeat(step, rows)


def _dequantise_rows(codes, offset, step) -> np.ndarray:
    return offset[:, None] + codes.astype(np.float32) * step[:, None]


def _difference_2d(codes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Second differences modulo 256 of uint8 codes ``(R, h * w)``, each row
    an image of ``shape``; :func:`_integrate_2d` inverts it exactly."""
    images = codes.reshape(len(codes), *shape)
    # uint8 arithmetic wraps, which is the modulo.
    d = np.diff(images, axis=1, prepend=np.zeros_like(images[:, :1]))
    d = np.diff(d, axis=2, prepend=np.zeros_like(d[:, :, :1]))
    return d.reshape(codes.shape)


def _smaller_of_codes_or_differences(
    codes: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """``codes`` or their :func:`_difference_2d`, whichever the file's codec
    (:func:`array_codec.encode`) packs smaller, and whether it is the
    differences."""
    diffs = _difference_2d(codes, shape)
    differenced = len(array_codec.encode(diffs)[1]) < len(array_codec.encode(codes)[1])
    return (diffs if differenced else codes), bool(differenced)


def _integrate_2d(diffs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The codes whose :func:`_difference_2d` is ``diffs``."""
    images = diffs.reshape(len(diffs), *shape)
    images = np.cumsum(
        np.cumsum(images, axis=2, dtype=np.uint8), axis=1, dtype=np.uint8
    )
    return images.reshape(diffs.shape)


def _encode_detector(detector) -> tuple[dict[str, Any], np.ndarray]:
    pc = np.asarray(detector.pc, np.float64)
    flat = pc.reshape(-1, 3)
    # One PC for the whole scan is the common case: do not store it per point.
    if len(flat) > 1 and np.all(flat == flat[:1]):
        pc = flat[0]
    meta = {
        "shape": [int(v) for v in detector.shape],
        "px_size": float(detector.px_size),
        "binning": int(detector.binning),
        "tilt": float(detector.tilt),
        "azimuthal": float(detector.azimuthal),
        "twist": float(detector.twist),
        "sample_tilt": float(detector.sample_tilt),
        "convention": "bruker",
        "pc_shape": list(pc.shape),
    }
    return meta, np.ascontiguousarray(pc, "<f8")


def _encode_phases(phases) -> list[dict[str, Any]]:
    out = []
    for phase_id, phase in phases:
        entry: dict[str, Any] = {
            "id": int(phase_id),
            "name": str(phase.name),
            "space_group": None
            if phase.space_group is None
            else int(phase.space_group.number),
            "point_group": None
            if phase.point_group is None
            else str(phase.point_group.name),
            "color": str(phase.color),
            "structure": None,
        }
        structure = getattr(phase, "structure", None)
        if structure is not None and len(structure) > 0:
            entry["structure"] = {
                "lattice": [float(v) for v in structure.lattice.abcABG()],
                "atoms": [
                    [
                        # kikuchipy's master patterns name elements by atomic number
                        int(atom.element)
                        if isinstance(atom.element, int | np.integer)
                        else str(atom.element),
                        *(float(v) for v in atom.xyz),
                        float(atom.occupancy),
                        float(atom.Uisoequiv),
                    ]
                    for atom in structure
                ],
            }
        out.append(entry)
    return out


def _plain(obj: Any) -> Any:
    """Convert to JSON types (numpy scalars and arrays, tuples, paths)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [
            _plain(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)
        ]
    if isinstance(obj, os.PathLike | torch.device):
        return str(obj)
    raise TypeError(
        f"Cannot store a value of type {type(obj).__name__} in a model file: {obj!r}"
    )


# Significant digits of the training history's floats by precision (None:
# float32's shortest form). The history of the real crop's rank-3 model (193
# evaluations) is 1.4 kB of its 20 kB int8 file at 4 digits, 0.45 kB less
# at 3.
_HISTORY_DIGITS = {"float32": None, "float16": 4, "int8": 3}


def _rounded(obj: Any, digits: int | None) -> Any:
    """``obj`` with every float written in its shortest form at float32
    (``digits=None``: about 8 significant digits instead of 17; the training
    history's losses are float32 values anyway) or at ``digits``
    significant digits.

    float32 files keep the history at float32, the compact precisions at
    :data:`_HISTORY_DIGITS`: 3 or 4 digits are enough for every plot of a
    history (3: one part in 200 at worst) and save kilobytes, which count in
    the smallest files (a history of 266 evaluations: 6.6 kB compressed at
    float32, 3.8 kB at 4 digits).
    """
    if isinstance(obj, float) and math.isfinite(obj) and abs(obj) <= _FLOAT32_MAX:
        if digits is None:
            return float(str(np.float32(obj)))
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def _history_json(history: dict[str, list], digits: int | None) -> bytes:
    """The training history as format 5 stores it: JSON, its floats
    :func:`_rounded` to ``digits``, its ``step`` column as first differences
    (a fixed evaluation interval then packs to a few bytes, where the steps
    themselves took a sixth of a small file's history);
    :func:`_parse_history` inverts it."""
    history = _rounded(_plain(history), digits)
    steps = history.get("step")
    if _is_int_list(steps):
        history["step"] = [b - a for a, b in zip([0, *steps[:-1]], steps, strict=True)]
    return json.dumps(history, allow_nan=True, separators=(",", ":")).encode("utf-8")


def _parse_history(raw: np.ndarray, path: Path) -> dict[str, list]:
    """The training history of a :func:`_history_json` array."""
    history = _parse_json_object(raw, path, "the training history")
    steps = history.get("step")
    if _is_int_list(steps):
        history["step"] = list(itertools.accumulate(steps))
    return history


def _is_int_list(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        a = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
        digest.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        digest.update(a.tobytes())
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------
# reading


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    trust: bool = False,
):
    """Read a model written by :meth:`NeuralEBSDModel.save`.

    Parameters
    ----------
    path
        The model file.
    device
        Device to put the field on (default CPU).
    trust
        Read a file that declares more than :data:`MAX_EXPANSION` times
        the decoded bytes it stores (an untrained model's zero bases, say).
        Only for files of one's own: such a file can make the reader
        allocate up to the absolute limits (billions of values).

    Returns
    -------
    model
        :class:`~kikuchipy_neural.NeuralEBSDModel` with float32 parameters
        (lower precisions are converted back). ``model.info["model_file"]``
        records the file's path, precision and versions.

    Raises
    ------
    FileNotFoundError
        No such file.
    UnreadableModelFileError
        Not an HDF5 file, or data that HDF5 cannot read (corruption); an
        ``OSError`` and a :class:`ModelFileError`.
    ModelFileError
        Not a model file, an unsupported format version, or content that is
        inconsistent, too large or altered (checksum mismatch); a
        ``ValueError``.
    """
    from kikuchipy_neural.fields import build_field
    from kikuchipy_neural.model import NeuralEBSDModel
    from kikuchipy_neural.training.preprocessing import Spectrum

    content = _read_verified(path, trust)
    header, arrays = content.header, content.arrays
    try:
        field = build_field(header["field"])
        state = {}
        for entry, value in zip(
            header["tensors"], _decode_tensors(header, arrays), strict=True
        ):
            state[entry["name"]] = torch.from_numpy(value)
        field.load_state_dict(state, strict=True)
        spectrum = None
        if header["spectrum"] is not None:
            spectrum = Spectrum.from_dict(
                {**header["spectrum"], "eigenvalues": arrays["spectrum_eigenvalues"]}
            )
        detector = _decode_detector(header["detector"], arrays.get("detector_pc"))
        phases = _decode_phases(header["phases"])
        point_intensity = None
        if "point_intensity" in arrays:
            point_intensity = arrays["point_intensity"].astype(np.float32)
            point_intensity[:, 0] += 1.0
            if not np.all(np.isfinite(point_intensity)):
                raise ModelFileError(
                    f"{path}: the per-point intensities contain NaN or infinite values"
                )
        info = dict(header["info"])
        info["model_file"] = {
            "path": str(Path(path)),
            "precision": content.precision,
            "format_version": content.format_version,
            "package_version": content.package_version,
            "created": header.get("created"),
        }
        model = NeuralEBSDModel(
            field,
            content.geometry,
            tuple(header["intensity_range"]),
            detector=detector,
            history=header["history"],
            spectrum=spectrum,
            options=header["options"],
            info=info,
            phases=phases,
            point_intensity=point_intensity,
        )
    except Exception as err:
        raise _content_error(err, path) from None
    if device is not None:
        model.to(device)
    return model


def _content_error(err: Exception, path: Path) -> Exception:
    """What to raise for ``err``, raised while objects were built from a
    verified file's content: a :class:`ModelFileError` naming it (a
    malformed file must never surface as a KeyError or an AttributeError
    of some library), but a ``MemoryError`` as it is (a resource, not the
    file, ran out)."""
    if isinstance(err, ModelFileError | MemoryError):
        return err
    return ModelFileError(
        f"{path}: the model file's content is inconsistent "
        f"({type(err).__name__}: {err})"
    )


def file_summary(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Sizes, architecture, geometry and training facts of a model file.

    The file is fully verified (as by :func:`load_model`) but no network is
    built. The compression ratio compares the file with the raw patterns of
    the training grid in the training data's dtype (``info["data_dtype"]``,
    uint16 when unknown). ``array_bytes`` gives each array's decoded size,
    ``stored_bytes`` its size in the file (formats 4 on: its LZMA stream;
    formats 1-3: its dataset's storage). ``header_bytes`` is the header's
    JSON, decoded; ``header_stored_bytes`` its size in the file (formats 5
    on: its stream, without the stream's length before it; formats 1-4: its
    dataset's storage).

    ``trust`` as in :func:`load_model`.

    Returns
    -------
    summary
        Plain dict (JSON-able).
    """
    content = _read_verified(path, trust)
    try:
        return _summary(content, path)
    except Exception as err:
        raise _content_error(err, Path(path)) from None


def _summary(content: _Content, path: str | os.PathLike) -> dict[str, Any]:
    """:func:`file_summary` of verified ``content``."""
    header, arrays = content.header, content.arrays
    g = content.geometry
    file_bytes = os.path.getsize(path)
    dtype_name = header["info"].get("data_dtype") or "uint16"
    try:
        itemsize = np.dtype(dtype_name).itemsize
    except TypeError:
        dtype_name, itemsize = "uint16", 2
    raw_bytes = g.n_points * g.n_pixels * itemsize
    n_net = int(arrays["network"].size) + (
        int(arrays[_CODES].size) if _CODES in arrays else 0
    )
    n_bases = int(arrays[_BASES].size) if _BASES in arrays else 0
    history = header["history"] or {}
    val_mae = [
        v for v in history.get("val_mae", []) if v is not None and math.isfinite(v)
    ]
    info = header["info"]
    return {
        "path": str(path),
        "format_version": content.format_version,
        "package_version": content.package_version,
        "created": header.get("created"),
        "precision": content.precision,
        "formulation": header["field"].get("formulation"),
        "rank": header["field"].get("rank"),
        "field": header["field"],
        "n_network_parameters": n_net,
        "n_basis_values": n_bases,
        "file_bytes": int(file_bytes),
        "array_bytes": {k: int(v.nbytes) for k, v in arrays.items() if k != "header"},
        "stored_bytes": content.stored_bytes,
        "header_bytes": int(arrays["header"].nbytes),
        "header_stored_bytes": content.header_stored_bytes,
        "raw_dtype": dtype_name,
        "raw_bytes": int(raw_bytes),
        "compression_ratio": raw_bytes / file_bytes,
        "scan_shape": [g.ny, g.nx],
        "scattered": bool(g.scattered),
        "step": [g.dx, g.dy],
        "origin": [g.x0, g.y0],
        "units": g.units,
        "pattern_shape": list(g.pattern_shape),
        "intensity_range": header["intensity_range"],
        "detector": header["detector"],
        "phases": [p["name"] for p in header["phases"]] if header["phases"] else [],
        "training": {
            "steps": info.get("steps"),
            "seconds": info.get("seconds"),
            "stop_reason": info.get("stop_reason"),
            "best_val_mae": min(val_mae) if val_mae else None,
            "n_train_points": info.get("n_train_points"),
            "n_evaluations": len(history.get("step", [])),
            "refit_bases": info.get("refit_bases"),
            "validation": info.get("validation"),
        },
    }


class _Content:
    """Verified content of a model file."""

    def __init__(
        self,
        header,
        arrays,
        geometry,
        precision,
        format_version,
        package_version,
        stored_bytes,
        header_stored_bytes,
    ):
        self.header = header
        self.stored_bytes = stored_bytes
        self.header_stored_bytes = header_stored_bytes
        self.arrays = arrays
        self.geometry = geometry
        self.precision = precision
        self.format_version = format_version
        self.package_version = package_version


def _read_verified(path: str | os.PathLike, trust: bool = False) -> _Content:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        if zipfile.is_zipfile(path):  # torch.save's container
            raise UnreadableModelFileError(
                f"{path} looks like a training checkpoint, not a model file: "
                "continue the fit with fit_neural(resume=...) or "
                "`kikuchipy-neural fit SCAN --resume CHECKPOINT`"
            ) from None
        raise UnreadableModelFileError(
            f"{path} is not a readable HDF5 file (corrupted or not HDF5): {err}"
        ) from None
    try:
        with f:
            return _read_open(f, path, trust)
    except ModelFileError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, IndexError) as err:
        # h5py reports a corrupted object header (the root group's, whose
        # attributes hold the format, or a compact dataset's) as a KeyError
        # or RuntimeError as often as an OSError.
        raise UnreadableModelFileError(
            f"{path}: HDF5 could not read the file (it is corrupted): "
            f"{type(err).__name__}: {err}"
        ) from None


def _expansion_bound(stored: int, trust: bool) -> int:
    """The most decoded bytes a file storing ``stored`` bytes may declare."""
    if trust:
        return _MAX_HEADER_BYTES + _MAX_PARAMETERS * 8 + _MAX_POINTS * 32
    return _EXPANSION_SLACK + MAX_EXPANSION * stored


def _check_expansion(
    declared: int, stored: int, what: str, path: Path, trust: bool
) -> None:
    """Refuse ``declared`` decoded bytes for ``stored`` bytes in the file
    beyond :func:`_expansion_bound`."""
    if declared > _expansion_bound(stored, trust):
        raise ModelFileError(
            f"{path}: {what} declares {declared} decoded bytes for {stored} bytes in "
            f"the file, more than {MAX_EXPANSION} times as many (plus "
            f"{_EXPANSION_SLACK}); refusing to allocate them. If you wrote this "
            "file yourself, load it with trust=True"
        )


def _read_open(f: h5py.File, path: Path, trust: bool = False) -> _Content:
    attrs = _root_attributes(f, path)
    version = attrs["format_version"]
    members = _check_members(f, path, version)
    if version >= _PACKED_FROM:
        payload = _checked_dataset(f, _PAYLOAD, np.dtype("u1"), path)
        raw_header, start = _read_packed_header(payload, path, trust)
        header_stored_bytes = start - _HEADER_LENGTH_BYTES
        header = _parse_json_object(raw_header, path, "the header")
        attrs.update(_packed_attributes(header, path))
    else:
        raw_header = _read_dataset(f, "header", np.dtype("u1"), None, path)
        header_stored_bytes = int(f["header"].id.get_storage_size())
        if version >= _STREAMS_FROM:
            bound = min(_MAX_HEADER_BYTES, _expansion_bound(raw_header.size, trust))
            try:
                text = array_codec.decompress_text(
                    raw_header.tobytes(), bound, "the header"
                )
            except array_codec.StreamError as err:
                raise ModelFileError(f"{path}: {err}") from None
            raw_header = np.frombuffer(text, np.uint8)
        header = _parse_json_object(raw_header, path, "the header")
    precision = attrs["precision"]
    geometry = _check_header(header, path, version)
    shapes = _architecture_shapes(header["field"], geometry.pattern_shape, path)
    if version >= _PACKED_FROM:
        header["tensors"] = _tensor_layout(shapes, precision)
    expected = _expected_arrays(header, precision, geometry, shapes, version, path)
    # Every byte the arrays will take, against what the file stores for
    # them, before any is read or decoded.
    declared = sum(math.prod(s) * d.itemsize for d, s in expected.values())
    if version >= _STREAMS_FROM:
        stored = int(payload.shape[0]) if version >= _PACKED_FROM else None
        if stored is None and _PAYLOAD in members:
            stored = int(f[_PAYLOAD].id.get_storage_size())
    else:
        stored = sum(
            int(f[name].id.get_storage_size()) for name in expected if name in members
        )
    _check_expansion(declared, stored or 0, "the header", path, trust)
    if version >= _PACKED_FROM:
        storage = _packed_storage(header, expected, path)
        arrays, stored_bytes = _read_streams(payload, storage, expected, start, path)
    elif version >= _STREAMS_FROM:
        if _PAYLOAD not in members:
            raise ModelFileError(
                f"{path}: dataset {_PAYLOAD!r} is missing from the model file"
            )
        payload = _checked_dataset(f, _PAYLOAD, np.dtype("u1"), path)
        storage = _named_storage(header, expected, path)
        arrays, stored_bytes = _read_streams(payload, storage, expected, 0, path)
    else:
        arrays, stored_bytes = _read_datasets(f, expected, members, path)
    arrays["header"] = raw_header
    if _checksum(arrays) != attrs["checksum"]:
        raise ModelFileError(
            f"{path}: checksum mismatch, the file's arrays were altered or corrupted "
            f"after it was written (stored {attrs['checksum']}, computed {_checksum(arrays)})"
        )
    if _HISTORY in arrays:
        header["history"] = _parse_history(arrays[_HISTORY], path)
    if precision == "int8" and _BASES in arrays and version >= _DIFFERENCED_BASES_FROM:
        differenced = header.get(_DIFFERENCED)
        if not isinstance(differenced, bool):
            raise ModelFileError(
                f"{path}: header[{_DIFFERENCED!r}] must be true or false, got "
                f"{differenced!r:.80}"
            )
        if differenced:
            arrays[_BASES] = _integrate_2d(arrays[_BASES], geometry.pattern_shape)
    if "scan_positions" in arrays:
        positions = arrays["scan_positions"]
        if not np.all(np.isfinite(positions)):
            raise ModelFileError(
                f"{path}: the scan positions contain NaN or infinite values"
            )
        geometry = ScanGeometry.from_dict(
            {**geometry.to_dict(), "positions": positions}
        )
    return _Content(
        header,
        arrays,
        geometry,
        precision,
        version,
        attrs["package_version"],
        stored_bytes,
        header_stored_bytes,
    )


def _read_packed_header(
    payload: h5py.Dataset, path: Path, trust: bool = False
) -> tuple[np.ndarray, int]:
    """Format 5 on: the header's JSON bytes, from the start of ``payload``,
    and where the arrays' streams start. The JSON may be at most
    :func:`_expansion_bound` of its stream (1 MiB of JSON becomes some
    20 MB of Python objects)."""
    n = _HEADER_LENGTH_BYTES
    if payload.ndim != 1 or payload.shape[0] < n:
        raise ModelFileError(
            f"{path}: dataset {_PAYLOAD!r} has shape {payload.shape}; expected a byte "
            "string that starts with the header"
        )
    size = int.from_bytes(payload[:n].tobytes(), "little")
    if size > min(payload.shape[0] - n, _MAX_HEADER_BYTES):
        raise ModelFileError(
            f"{path}: dataset {_PAYLOAD!r} declares a header of {size} bytes in "
            f"{payload.shape[0]} bytes (corrupted?)"
        )
    bound = min(_MAX_HEADER_BYTES, _expansion_bound(size, trust))
    try:
        text = array_codec.decompress_header(
            payload[n : n + size].tobytes(), bound, "the header"
        )
    except array_codec.StreamError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return np.frombuffer(text, np.uint8), n + size


def _packed_attributes(header: dict, path: Path) -> dict[str, str]:
    """Format 5 on: the precision and package version, which the header holds."""
    precision = _need(header, "precision", str, path)
    if precision not in PRECISIONS:
        raise ModelFileError(f"{path}: unknown precision {precision!r:.40}")
    return {
        "precision": precision,
        "package_version": _need(header, "package_version", str, path),
    }


def _read_datasets(
    f: h5py.File, expected: dict, members: set[str], path: Path
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Formats 1-3: one HDF5 dataset per array."""
    missing = sorted(set(expected) - members)
    extra = sorted(members - set(expected) - {"header"})
    if missing:
        raise ModelFileError(
            f"{path}: dataset(s) {missing} are missing from the model file"
        )
    if extra:
        raise ModelFileError(
            f"{path}: unexpected dataset(s) {extra} in the model file; refusing to load "
            "a file with content this format does not define"
        )
    arrays = {
        name: _read_dataset(f, name, dtype, shape, path)
        for name, (dtype, shape) in expected.items()
    }
    return arrays, {name: int(f[name].id.get_storage_size()) for name in expected}


def _named_storage(header: dict, expected: dict, path: Path) -> list[dict]:
    """Format 4: the header's ``storage`` list, one ``{"name", "codec",
    "bytes"}`` per expected array, in name order."""
    storage = _need(header, "storage", list, path)
    for entry in storage:
        if not isinstance(entry, dict):
            raise ModelFileError(f"{path}: invalid storage entry {entry!r:.80}")
        _need(entry, "name", str, path, "a storage entry")
        _need(entry, "codec", str, path, "a storage entry")
        _need(entry, "bytes", int, path, "a storage entry")
    names = [e["name"] for e in storage]
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    if missing:
        raise ModelFileError(
            f"{path}: array(s) {missing} are missing from the model file"
        )
    if extra:
        raise ModelFileError(
            f"{path}: unexpected array(s) {extra} in the model file; refusing to load "
            "a file with content this format does not define"
        )
    if names != sorted(expected):
        raise ModelFileError(
            f"{path}: the header's storage list repeats arrays or is out of name order"
        )
    return storage


def _packed_storage(header: dict, expected: dict, path: Path) -> list[dict]:
    """Format 5 on: the header's ``storage`` list, one ``[codec, bytes]``
    per expected array in name order, as :func:`_named_storage` gives it."""
    storage = _need(header, "storage", list, path)
    if len(storage) != len(expected):
        raise ModelFileError(
            f"{path}: the header's storage list has {len(storage)} entries, but the "
            f"header implies {len(expected)} arrays ({', '.join(sorted(expected))})"
        )
    out = []
    for name, entry in zip(sorted(expected), storage, strict=True):
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], int)
            or isinstance(entry[1], bool)
        ):
            raise ModelFileError(
                f"{path}: invalid storage entry {entry!r:.80} for array {name!r}"
            )
        out.append({"name": name, "codec": entry[0], "bytes": entry[1]})
    return out


def _read_streams(
    payload: h5py.Dataset, storage: list[dict], expected: dict, start: int, path: Path
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Format 4 on: every array an :mod:`array_codec` stream in ``payload``
    from byte ``start``, in name order, as ``storage`` declares."""
    for entry in storage:
        dtype, shape = expected[entry["name"]]
        nbytes = math.prod(shape) * dtype.itemsize
        # The writer never stores a stream longer than its array ("none").
        if not 0 <= entry["bytes"] <= nbytes:
            raise ModelFileError(
                f"{path}: array {entry['name']!r} declares a stream of "
                f"{entry['bytes']} bytes for {nbytes} bytes of data"
            )
    total = start + sum(e["bytes"] for e in storage)
    if tuple(payload.shape) != (total,):
        raise ModelFileError(
            f"{path}: dataset {_PAYLOAD!r} has shape {payload.shape}, but the header "
            f"declares {(total,)}"
        )
    data = np.ascontiguousarray(payload[start:]).tobytes()
    arrays, offset = {}, 0
    for entry in storage:
        name = entry["name"]
        dtype, shape = expected[name]
        stream = data[offset : offset + entry["bytes"]]
        offset += entry["bytes"]
        try:
            decoded = array_codec.decode(
                stream,
                entry["codec"],
                math.prod(shape) * dtype.itemsize,
                dtype.itemsize,
                f"array {name!r}",
            )
        except array_codec.StreamError as err:
            raise ModelFileError(f"{path}: {err}") from None
        arrays[name] = np.frombuffer(decoded, dtype).reshape(shape).copy()
    return arrays, {e["name"]: e["bytes"] for e in storage}


def _root_attributes(f: h5py.File, path: Path) -> dict[str, Any]:
    names = set(f.attrs.keys())
    if "format" not in names or _attr_str(f, "format", path) != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is not a kikuchipy-neural model file (no 'format' attribute)"
        )
    if "format_version" not in names:
        raise ModelFileError(f"{path}: the model file has no format version")
    version = f.attrs["format_version"]
    if not isinstance(version, int | np.integer) or isinstance(version, bool):
        raise ModelFileError(
            f"{path}: the format version is not an integer: {version!r}"
        )
    version = int(version)
    if version < OLDEST_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model-file format version {version}, an old format this "
            f"version of kikuchipy-neural (formats {OLDEST_FORMAT_VERSION}-{FORMAT_VERSION}) "
            "no longer reads; load "
            "it with the kikuchipy-neural release that wrote it and save it again, or refit."
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model-file format version {version}, newer than this "
            f"kikuchipy-neural reads (format {FORMAT_VERSION}); upgrade kikuchipy-neural."
        )
    allowed = _PACKED_ROOT_ATTRS if version >= _PACKED_FROM else _ROOT_ATTRS
    extra = sorted(names - allowed)
    if extra:
        raise ModelFileError(
            f"{path}: unexpected attribute(s) {extra} on the model file"
        )
    out = {"format_version": version}
    for name in sorted(allowed - {"format", "format_version"}):
        if name not in names:
            raise ModelFileError(
                f"{path}: attribute {name!r} is missing from the model file"
            )
        out[name] = _attr_str(f, name, path)
    if "precision" in out and out["precision"] not in PRECISIONS:
        raise ModelFileError(f"{path}: unknown precision {out['precision']!r}")
    if not out["checksum"].startswith("sha256:"):
        raise ModelFileError(f"{path}: unknown checksum {out['checksum']!r}")
    return out


def _attr_str(f: h5py.File, name: str, path: Path) -> str:
    value = f.attrs[name]
    if isinstance(value, bytes | np.bytes_):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str):
        raise ModelFileError(
            f"{path}: attribute {name!r} is not a string: {type(value).__name__}"
        )
    return value


def _check_members(f: h5py.File, path: Path, version: int) -> set[str]:
    """The names of the file's datasets, after checking that they are plain
    datasets, no links or groups, and (formats 4 on) no others than the
    format's."""
    names = set()
    for name in f.keys():
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ModelFileError(
                f"{path}: {name!r} is a {type(link).__name__}; model files hold no links"
            )
        try:
            member = f[name]
        except KeyError as err:
            # h5py's error for an object header whose checksum fails (a
            # compact dataset's bytes live there).
            raise OSError(f"{name!r} cannot be opened: {err}") from None
        if not isinstance(member, h5py.Dataset):
            raise ModelFileError(
                f"{path}: {name!r} is not a dataset; model files hold no groups"
            )
        names.add(name)
    required = {_PAYLOAD} if version >= _PACKED_FROM else {"header"}
    for name in sorted(required - names):
        raise ModelFileError(f"{path}: dataset {name!r} is missing from the model file")
    if version >= _STREAMS_FROM:
        allowed = {_PAYLOAD} if version >= _PACKED_FROM else {"header", _PAYLOAD}
        extra = sorted(names - allowed)
        if extra:
            raise ModelFileError(
                f"{path}: unexpected dataset(s) {extra} in the model file; refusing to "
                "load a file with content this format does not define"
            )
    return names


def _read_dataset(
    f: h5py.File, name: str, dtype: np.dtype, shape, path: Path
) -> np.ndarray:
    """The whole of dataset ``name`` (:func:`_checked_dataset`) of ``shape``,
    or, for ``shape=None``, a byte string no longer than a header may be."""
    ds = _checked_dataset(f, name, dtype, path)
    if shape is None:  # the header: a bounded byte string
        if ds.ndim != 1 or ds.shape[0] > _MAX_HEADER_BYTES:
            raise ModelFileError(
                f"{path}: dataset 'header' has shape {ds.shape}; expected a byte string "
                f"of at most {_MAX_HEADER_BYTES} bytes"
            )
    elif tuple(ds.shape) != tuple(shape):
        raise ModelFileError(
            f"{path}: dataset {name!r} has shape {ds.shape}, but the header declares {tuple(shape)}"
        )
    return np.ascontiguousarray(ds[()])


def _checked_dataset(
    f: h5py.File, name: str, dtype: np.dtype, path: Path
) -> h5py.Dataset:
    """Dataset ``name``, unread, after checking that it has ``dtype``, no
    attributes, no data outside the file and no filter that would make
    HDF5 load a plugin."""
    ds = f[name]
    if ds.attrs.keys():
        raise ModelFileError(
            f"{path}: unexpected attribute(s) {list(ds.attrs)} on dataset {name!r}"
        )
    if ds.dtype != dtype:
        raise ModelFileError(
            f"{path}: dataset {name!r} has dtype {ds.dtype}, expected {dtype} (a crafted "
            "or corrupted file; object, string and reference dtypes are never read)"
        )
    if ds.is_virtual or ds.external:
        raise ModelFileError(
            f"{path}: dataset {name!r} refers to data outside the file"
        )
    plist = ds.id.get_create_plist()
    for k in range(plist.get_nfilters()):
        code = plist.get_filter(k)[0]
        if code not in _ALLOWED_FILTERS:
            raise ModelFileError(
                f"{path}: dataset {name!r} uses HDF5 filter {code}, which would need a plugin; "
                "model files use gzip and shuffle only"
            )
    return ds


def _parse_json_object(raw: np.ndarray, path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the UTF-8 bytes ``raw`` (``what``: for messages)."""
    try:
        value = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ModelFileError(
            f"{path}: {what} is not valid JSON (corrupted?): {err}"
        ) from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path}: {what} is not a JSON object")
    return value


def _need(d: dict, key: str, types, path: Path, where: str = "header"):
    if key not in d:
        raise ModelFileError(f"{path}: {where} has no {key!r}")
    value = d[key]
    if not isinstance(value, types) or (
        isinstance(value, bool) and bool not in _as_tuple(types)
    ):
        raise ModelFileError(
            f"{path}: {where}[{key!r}] has the wrong type: {value!r:.80}"
        )
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _check_header(header: dict, path: Path, version: int) -> ScanGeometry:
    """Validate the header's structure and the sizes it declares (format
    ``version``)."""
    field_cfg = _need(header, "field", dict, path)
    _need(field_cfg, "formulation", str, path, "header['field']")
    g = _need(header, "geometry", dict, path)
    for key in ("nx", "ny"):
        n = _need(g, key, int, path, "header['geometry']")
        if not 1 <= n <= _MAX_POINTS:
            raise ModelFileError(
                f"{path}: the geometry declares {key}={n}, outside [1, {_MAX_POINTS}]"
            )
    if g["nx"] * g["ny"] > _MAX_POINTS:
        raise ModelFileError(
            f"{path}: the geometry declares {g['nx'] * g['ny']} scan points"
        )
    for key in ("x0", "y0", "dx", "dy"):
        v = _need(g, key, int | float, path, "header['geometry']")
        if not math.isfinite(v) or (key in ("dx", "dy") and v == 0):
            raise ModelFileError(f"{path}: the geometry has an invalid {key}={v}")
    _need(g, "units", str, path, "header['geometry']")
    shape = _need(g, "pattern_shape", list, path, "header['geometry']")
    if (
        len(shape) != 2
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape
        )
        or shape[0] * shape[1] > _MAX_PATTERN_PIXELS
    ):
        raise ModelFileError(
            f"{path}: the geometry declares an invalid pattern shape {shape}"
        )
    unknown = set(g) - {"nx", "ny", "x0", "y0", "dx", "dy", "units", "pattern_shape"}
    if unknown:
        raise ModelFileError(f"{path}: unknown geometry field(s) {sorted(unknown)}")
    scattered = _need(header, "scan_positions", bool, path)
    if scattered and g["ny"] != 1:
        raise ModelFileError(
            f"{path}: explicit scan positions need ny = 1, got {g['ny']}"
        )
    lo_hi = _need(header, "intensity_range", list, path)
    if len(lo_hi) != 2 or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in lo_hi
    ):
        raise ModelFileError(f"{path}: invalid intensity range {lo_hi!r:.80}")
    # Format 5 on: derived from the architecture (_tensor_layout).
    tensors = [] if version >= _PACKED_FROM else _need(header, "tensors", list, path)
    for entry in tensors:
        if not isinstance(entry, dict):
            raise ModelFileError(f"{path}: invalid tensor entry {entry!r:.80}")
        _need(entry, "name", str, path, "a tensor entry")
        dims = _need(entry, "shape", list, path, "a tensor entry")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v for v in dims
        ):
            raise ModelFileError(
                f"{path}: tensor {entry['name']!r} has an invalid shape {dims!r:.80}"
            )
        where = _need(entry, "dataset", str, path, "a tensor entry")
        if where not in ("network", _CODES, _BASES):
            raise ModelFileError(
                f"{path}: tensor {entry['name']!r} is stored in unknown {where!r}"
            )
        if where != _BASES:
            _need(entry, "offset", int, path, "a tensor entry")
        if where == _CODES:
            _need(entry, "row", int, path, "a tensor entry")
    if _need(header, "network_dtype", str, path) not in ("<f4", "<f2"):
        raise ModelFileError(
            f"{path}: unknown network dtype {header['network_dtype']!r}"
        )
    if version >= _PACKED_FROM:
        n = _need(header, "history_bytes", int, path)
        if not 0 <= n <= _MAX_HEADER_BYTES:
            raise ModelFileError(f"{path}: the header declares a history of {n} bytes")
    else:
        _need(header, "history", dict, path)
    for key in ("options", "info"):
        _need(header, key, dict, path)
    for key in ("detector", "spectrum"):
        _need(header, key, dict | type(None), path)
    _check_phases(_need(header, "phases", list | type(None), path), path)
    geometry_dict = {**g, "pattern_shape": tuple(shape)}
    try:
        return ScanGeometry.from_dict(geometry_dict)
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: invalid scan geometry: {err}") from None


def _check_phases(phases: list | None, path: Path) -> None:
    """Bound the phases and their atoms (each becomes Python objects) and
    check the entries' structure, before any is built."""
    if phases is None:
        return
    if len(phases) > _MAX_PHASES:
        raise ModelFileError(
            f"{path}: the header declares {len(phases)} phases, more than {_MAX_PHASES}"
        )
    n_atoms = 0
    for entry in phases:
        if not isinstance(entry, dict):
            raise ModelFileError(f"{path}: invalid phase entry {entry!r:.80}")
        _need(entry, "id", int, path, "a phase entry")
        _need(entry, "name", str, path, "a phase entry")
        structure = entry.get("structure")
        if structure is None:
            continue
        if not isinstance(structure, dict):
            raise ModelFileError(f"{path}: invalid phase structure {structure!r:.80}")
        atoms = _need(structure, "atoms", list, path, "a phase structure")
        lattice = _need(structure, "lattice", list, path, "a phase structure")
        if len(lattice) != 6:
            raise ModelFileError(f"{path}: invalid lattice {lattice!r:.80}")
        n_atoms += len(atoms)
        if any(not isinstance(a, list) or len(a) != 6 for a in atoms):
            raise ModelFileError(
                f"{path}: invalid atoms in phase {entry['name']!r:.40}"
            )
    if n_atoms > _MAX_ATOMS:
        raise ModelFileError(
            f"{path}: the phases declare {n_atoms} atoms, more than {_MAX_ATOMS}"
        )


def _check_architecture(config: dict, path: Path) -> None:
    """Bound the sizes in the field's ``config`` (:data:`_MAX_ARCHITECTURE`)
    before anything is built: even on ``meta`` every layer is a Python
    object."""
    from kikuchipy_neural.fields import FIELDS

    if config.get("formulation") not in FIELDS:
        raise ModelFileError(
            f"{path}: unknown formulation {config.get('formulation')!r:.40}; "
            f"expected one of {sorted(FIELDS)}"
        )
    for key, value in config.items():
        if key in _MAX_ARCHITECTURE:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ModelFileError(
                    f"{path}: the field's {key} is not an integer: {value!r:.40}"
                )
            if not 0 <= value <= _MAX_ARCHITECTURE[key]:
                raise ModelFileError(
                    f"{path}: the field declares {key}={value}, outside [0, "
                    f"{_MAX_ARCHITECTURE[key]}]; refusing to build it"
                )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ModelFileError(f"{path}: the field declares {key}={value}")


def _architecture_shapes(
    config: dict, pattern_shape: tuple[int, int], path: Path
) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the architecture in ``config``, its sizes
    bounded (:func:`_check_architecture`), built without memory."""
    from kikuchipy_neural.fields import build_field

    _check_architecture(config, path)
    field_shape = config.get("pattern_shape")
    if field_shape is not None and field_shape != list(pattern_shape):
        # Before building: the field's detector-sized buffers follow it.
        raise ModelFileError(
            f"{path}: the field's pattern shape {field_shape!r:.40} differs from the "
            f"scan's {tuple(pattern_shape)}"
        )
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            field = build_field(config)
    except Exception as err:
        raise ModelFileError(
            f"{path}: the field configuration cannot be built: "
            f"{type(err).__name__}: {err}"
        ) from None
    shapes = {k: tuple(v.shape) for k, v in field.state_dict().items()}
    total = sum(math.prod(s) for s in shapes.values())
    if total > _MAX_PARAMETERS:
        raise ModelFileError(
            f"{path}: the field configuration declares {total:.3g} parameters, more than "
            f"the limit of {_MAX_PARAMETERS:.3g}; refusing to allocate it"
        )
    return shapes


def _expected_arrays(
    header: dict,
    precision: str,
    geometry: ScanGeometry,
    shapes: dict[str, tuple[int, ...]],
    version: int,
    path: Path,
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``{array: (dtype, shape)}`` that the header of a format-``version``
    file implies, for the architecture's parameter ``shapes``
    (:func:`_architecture_shapes`), sizes checked."""
    declared = {e["name"]: tuple(e["shape"]) for e in header["tensors"]}
    if declared != shapes:
        raise ModelFileError(
            f"{path}: the stored tensors do not match the architecture in the header "
            f"(stored {sorted(declared.items())[:4]}..., architecture "
            f"{sorted(shapes.items())[:4]}...)"
        )
    net_dtype = np.dtype(header["network_dtype"])
    if (net_dtype == np.dtype("<f4")) != (precision == "float32"):
        raise ModelFileError(
            f"{path}: network dtype {net_dtype} does not match precision {precision}"
        )
    n_net, n_codes, n_rows = 0, 0, 0
    expected: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    for entry in header["tensors"]:
        size = math.prod(entry["shape"])
        if entry["dataset"] == "network":
            if entry["offset"] != n_net:
                raise ModelFileError(
                    f"{path}: tensor {entry['name']!r} has offset {entry['offset']}, expected {n_net}"
                )
            n_net += size
        elif entry["dataset"] == _CODES:
            if precision != "int8" or len(entry["shape"]) != 2:
                raise ModelFileError(
                    f"{path}: tensor {entry['name']!r} is stored as 8-bit codes, which "
                    f"only 2D tensors of int8 files are (precision {precision}, shape "
                    f"{entry['shape']})"
                )
            if (entry["offset"], entry["row"]) != (n_codes, n_rows):
                raise ModelFileError(
                    f"{path}: tensor {entry['name']!r} has offset {entry['offset']} and "
                    f"row {entry['row']}, expected {n_codes} and {n_rows}"
                )
            n_codes += size
            n_rows += entry["shape"][0]
        else:
            if len(entry["shape"]) != 2:
                raise ModelFileError(
                    f"{path}: the bases must be 2D, got {entry['shape']}"
                )
            rank = entry["shape"][0]
            dtype = {"float32": "<f4", "float16": "<f2", "int8": "u1"}[precision]
            expected[_BASES] = (np.dtype(dtype), tuple(entry["shape"]))
            if precision == "int8":
                expected["bases_offset"] = (np.dtype("<f4"), (rank,))
                expected["bases_step"] = (np.dtype("<f4"), (rank,))
    expected["network"] = (net_dtype, (n_net,))
    if n_codes:
        expected[_CODES] = (np.dtype("u1"), (n_codes,))
        expected[f"{_CODES}_offset"] = (np.dtype("<f4"), (n_rows,))
        expected[f"{_CODES}_step"] = (np.dtype("<f4"), (n_rows,))
    if header["scan_positions"]:
        expected["scan_positions"] = (np.dtype("<f8"), (geometry.nx, 2))
    # Optional: files written before per-point intensities existed lack it.
    if header.get("point_intensity", False) is True:
        expected["point_intensity"] = (net_dtype, (geometry.n_points, 2))
    elif header.get("point_intensity", False) is not False:
        raise ModelFileError(f"{path}: header['point_intensity'] must be true or false")
    det = header["detector"]
    if det is not None:
        _check_detector(det, path)
        pc_shape = _need(det, "pc_shape", list, path, "header['detector']")
        if (
            not 1 <= len(pc_shape) <= 3
            or pc_shape[-1:] != [3]
            or not all(isinstance(v, int) and v >= 1 for v in pc_shape)
            or math.prod(pc_shape) > 3 * geometry.n_points
        ):
            raise ModelFileError(f"{path}: invalid detector PC shape {pc_shape!r:.80}")
        expected["detector_pc"] = (np.dtype("<f8"), tuple(pc_shape))
    spec = header["spectrum"]
    if spec is not None:
        n = _need(spec, "n_eigenvalues", int, path, "header['spectrum']")
        if not 0 <= n <= min(geometry.n_pixels, _MAX_EIGENVALUES):
            raise ModelFileError(f"{path}: the spectrum declares {n} eigenvalues")
        expected["spectrum_eigenvalues"] = (np.dtype("<f8"), (n,))
    if version >= _PACKED_FROM:
        expected[_HISTORY] = (np.dtype("u1"), (header["history_bytes"],))
    return expected


def _check_detector(meta: dict, path: Path) -> None:
    """The detector's description: what :func:`_decode_detector` needs."""
    where = "header['detector']"
    shape = _need(meta, "shape", list, path, where)
    if (
        len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        or not all(1 <= v <= _MAX_PATTERN_PIXELS for v in shape)
        or shape[0] * shape[1] > _MAX_PATTERN_PIXELS
    ):
        raise ModelFileError(f"{path}: invalid detector shape {shape!r:.80}")
    for key in ("px_size", "tilt", "azimuthal", "twist", "sample_tilt"):
        value = _need(meta, key, int | float, path, where)
        if not math.isfinite(value):
            raise ModelFileError(f"{path}: the detector's {key} is {value}")
    binning = _need(meta, "binning", int, path, where)
    if not 1 <= binning <= 2**16:
        raise ModelFileError(f"{path}: invalid detector binning {binning}")


def _decode_tensors(header: dict, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    network = arrays["network"].astype(np.float32)
    out = []
    for entry in header["tensors"]:
        shape = tuple(entry["shape"])
        size = math.prod(shape)
        if entry["dataset"] == "network":
            out.append(
                network[entry["offset"] : entry["offset"] + size].reshape(shape).copy()
            )
        elif entry["dataset"] == _CODES:
            start, row = entry["offset"], entry["row"]
            out.append(
                _dequantise_rows(
                    arrays[_CODES][start : start + size].reshape(shape),
                    arrays[f"{_CODES}_offset"][row : row + shape[0]],
                    arrays[f"{_CODES}_step"][row : row + shape[0]],
                )
            )
        elif arrays[_BASES].dtype == np.uint8:
            out.append(
                _dequantise_rows(
                    arrays[_BASES], arrays["bases_offset"], arrays["bases_step"]
                )
            )
        else:
            out.append(arrays[_BASES].astype(np.float32))
    return out


def _decode_detector(meta: dict | None, pc: np.ndarray | None):
    if meta is None:
        return None
    from kikuchipy.detectors import EBSDDetector

    return EBSDDetector(
        shape=tuple(int(v) for v in meta["shape"]),
        px_size=float(meta["px_size"]),
        binning=int(meta["binning"]),
        tilt=float(meta["tilt"]),
        azimuthal=float(meta["azimuthal"]),
        twist=float(meta["twist"]),
        sample_tilt=float(meta["sample_tilt"]),
        pc=pc,
        convention="bruker",
    )


def _decode_phases(entries: list | None):
    if not entries:
        return None
    from diffpy.structure import Atom, Lattice, Structure
    from orix.crystal_map import Phase, PhaseList

    # Sizes bounded by _check_phases.
    phases, ids = [], []
    for e in entries:
        structure = None
        if e.get("structure"):
            atoms = [
                Atom(a[0], xyz=a[1:4], occupancy=a[4], Uisoequiv=a[5])
                for a in e["structure"]["atoms"]
            ]
            structure = Structure(
                atoms=atoms, lattice=Lattice(*e["structure"]["lattice"])
            )
        phases.append(
            Phase(
                name=e["name"],
                space_group=e.get("space_group"),
                point_group=None if e.get("space_group") else e.get("point_group"),
                structure=structure,
                color=e.get("color"),
            )
        )
        ids.append(int(e["id"]))
    return PhaseList(phases=phases, ids=ids)
