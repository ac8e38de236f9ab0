"""Tiny models and crafted model files for the hardening tests.

The models are built, not fitted (random bases, so that their arrays pack
as trained ones do, 1.0-1.2-fold), which keeps each test to seconds.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
from pathlib import Path

import h5py
import numpy as np
import torch

from kikuchipy_neural.fields import build_field
from kikuchipy_neural.geometry import ScanGeometry
from kikuchipy_neural.io import array_codec, model_file
from kikuchipy_neural.model import NeuralEBSDModel


def tiny_model(
    shape: tuple[int, int] = (12, 12),
    pattern_shape: tuple[int, int] = (32, 32),
    seed: int = 0,
    point_intensity: bool = True,
) -> NeuralEBSDModel:
    """An untrained factorized model (rank 3, width 16, 2 layers) of a
    ``shape`` scan, its bases random, with a per-point intensity table."""
    torch.manual_seed(seed)
    field = build_field(
        dict(
            formulation="factorized",
            rank=3,
            pattern_shape=list(pattern_shape),
            width=16,
            layers=2,
        )
    )
    with torch.no_grad():
        field.bases.normal_()
    ny, nx = shape
    geometry = ScanGeometry(
        nx=nx,
        ny=ny,
        x0=0.0,
        y0=0.0,
        dx=1.0,
        dy=1.0,
        units="um",
        pattern_shape=tuple(pattern_shape),
    )
    table = None
    if point_intensity:
        rng = np.random.default_rng(seed)
        n = nx * ny
        table = np.stack([1 + 0.01 * rng.standard_normal(n), rng.standard_normal(n)], 1)
    return NeuralEBSDModel(
        field,
        geometry,
        (0.0, 255.0),
        history={"step": [10, 20], "loss": [1.0, 0.5]},
        point_intensity=table,
    )


def read_payload(path: Path) -> tuple[dict, list[bytes]]:
    """The header (dict) and the arrays' streams, in name order, of a
    format-5 file, read with no checks."""
    with h5py.File(path) as f:
        payload = f["payload"][()].tobytes()
    n = int.from_bytes(payload[:4], "little")
    header = json.loads(array_codec.decompress_header(payload[4 : 4 + n], 2**26, ""))
    streams, offset = [], 4 + n
    for _, nbytes in header["storage"]:
        streams.append(payload[offset : offset + nbytes])
        offset += nbytes
    return header, streams


def _zeros_stream(nbytes: int) -> bytes:
    """A raw LZMA2 stream of ``nbytes`` zeros that the model file's decoder
    reads (its dictionary), compressed in pieces to keep memory small."""
    coder = lzma.LZMACompressor(
        format=lzma.FORMAT_RAW,
        filters=[
            {"id": lzma.FILTER_LZMA2, "dict_size": array_codec._dict_size(nbytes)}
        ],
    )
    piece, out, left = bytes(16 * 1024**2), [], nbytes
    while left:
        out.append(coder.compress(piece[: min(left, len(piece))]))
        left -= min(left, len(piece))
    out.append(coder.flush())
    return b"".join(out)


def write_crafted(path: Path, header: dict, arrays: dict) -> None:
    """Write a format-5 file of ``header`` and ``arrays`` (name -> ``(codec,
    stream, decoded)``, ``decoded`` the bytes or ``("zeros", nbytes,
    dtype, shape)``) with a valid checksum: a crafted file, not a damaged
    one."""
    digest = hashlib.sha256()
    header = {
        **header,
        "storage": [[arrays[k][0], len(arrays[k][1])] for k in sorted(arrays)],
    }
    header_json = json.dumps(header).encode()
    named = {**arrays, "header": (None, None, (header_json, "|u1", [len(header_json)]))}
    for name in sorted(named):
        data, dtype, shape = named[name][2]
        digest.update(f"{name}\0{dtype}\0{list(shape)}\0".encode())
        if isinstance(data, int):  # that many zero bytes
            piece = bytes(min(data, 16 * 1024**2))
            for start in range(0, data, len(piece)):
                digest.update(piece[: min(len(piece), data - start)])
        else:
            digest.update(data)
    stream = array_codec.compress_header(header_json)
    body = b"".join(arrays[k][1] for k in sorted(arrays))
    with h5py.File(path, "w") as f:
        model_file._set_string_attr(f, "format", model_file.FORMAT_NAME)
        f.attrs["format_version"] = np.int64(5)
        model_file._set_string_attr(f, "checksum", "sha256:" + digest.hexdigest())
        f["payload"] = np.frombuffer(
            len(stream).to_bytes(4, "little") + stream + body, np.uint8
        )


def stored_arrays(path: Path) -> tuple[dict, dict]:
    """The header and ``{name: (codec, stream, (bytes, dtype, shape))}`` of
    a saved format-5 file, for :func:`write_crafted`."""
    header, streams = read_payload(path)
    geometry = model_file._check_header(header, path, 5)
    shapes = model_file._architecture_shapes(
        header["field"], geometry.pattern_shape, path
    )
    expected = model_file._expected_arrays(
        {**header, "tensors": model_file._tensor_layout(shapes, header["precision"])},
        header["precision"],
        geometry,
        shapes,
        5,
        path,
    )
    arrays = {}
    for name, (codec, _), stream in zip(
        sorted(expected), header["storage"], streams, strict=True
    ):
        dtype, shape = expected[name]
        raw = array_codec.decode(
            stream, codec, math.prod(shape) * dtype.itemsize, dtype.itemsize, ""
        )
        arrays[name] = (codec, stream, (raw, dtype.str, list(shape)))
    return header, arrays


def point_bomb(path: Path, n_side: int, precision: str = "float16") -> Path:
    """Case 1 of issue 32: a tiny model's file whose header declares an
    ``n_side`` x ``n_side`` scan with per-point intensities, stored as an
    LZMA stream of zeros; the checksum is valid."""
    source = path.with_name("bomb_source.h5")
    model_file.save_model(tiny_model(), source, precision=precision)
    header, arrays = stored_arrays(source)
    header["geometry"].update(nx=n_side, ny=n_side)
    n = n_side * n_side
    itemsize = 4 if precision == "float32" else 2
    nbytes = 2 * n * itemsize
    arrays["point_intensity"] = (
        "lzma",
        _zeros_stream(nbytes),
        (nbytes, f"<f{itemsize}", [n, 2]),
    )
    write_crafted(path, header, arrays)
    return path


def layers_bomb(path: Path, layers: int) -> Path:
    """Case 2 of issue 32: a tiny model's file whose header declares
    ``layers`` SIREN layers (the checksum valid)."""
    model_file.save_model(tiny_model(), path, precision="float16")
    header, arrays = stored_arrays(path)
    header["field"]["layers"] = layers
    write_crafted(path, header, arrays)
    return path
