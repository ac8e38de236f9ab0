"""Bounded streams for the model file's arrays and header.

HDF5 offers gzip as its only built-in general codec (any other filter would
make HDF5 load a plugin, which :mod:`~kikuchipy_neural.io.model_file` refuses
for safety), and each HDF5 dataset costs a few hundred bytes of structure.
Both count in the smallest model files (20-100 kB on the real crop): LZMA
packs the int8 bases of the real crop's models 6-10 % tighter than gzip, the
ten datasets of format 3 took 4-6 kB of structure where format 4's two took
1.1 kB (format 5's one: 0.65 kB), and the compression baselines of
``benchmarks/compression.py`` use LZMA too. So since format 4 a model file
stores every array as a raw LZMA2 stream, all concatenated in one byte
dataset, and this module is the one place that writes and reads those
streams.

Each stream is coded with one of :data:`CODECS`, the smallest for its array:
``"none"`` (the bytes as they are: tiny arrays, noise), ``"lzma"`` (LZMA2,
preset 9e) or ``"shuffle-lzma"`` (bytes grouped by their position within
each value first, as HDF5's shuffle filter does: float arrays pack tighter
so). The streams are raw LZMA2 (no .xz headers, no check: the model file's
SHA-256 covers the decoded arrays); the dictionary size is derived from the
decoded size, which the reader knows from the header before it decodes, so
a stream can never make the reader allocate or produce more than declared.

The header (format 5 on, :func:`compress_header`) is a raw deflate stream
with a preset dictionary: a header's JSON (1-2 kB packed) repeats the keys,
option names and default values of every other header, which LZMA has to
spell out once per file, while deflate can point into
:data:`~kikuchipy_neural.io.header_dictionary.HEADER_DICTIONARY` from the
first byte: the real crop's rank-2 and rank-3 models' headers (their
histories apart) pack to 0.35 kB instead of 1.2 kB.
"""

from __future__ import annotations

import lzma
import zlib

import numpy as np

from kikuchipy_neural.io.header_dictionary import HEADER_DICTIONARY

__all__ = [
    "CODECS",
    "StreamError",
    "compress_header",
    "decode",
    "decompress_header",
    "decompress_text",
    "encode",
]

#: How an array's bytes can be stored.
CODECS = ("none", "lzma", "shuffle-lzma")

_PRESET = 9 | lzma.PRESET_EXTREME
_MIN_DICT = 4096  # liblzma's smallest dictionary
_MAX_DICT = 64 * 1024**2  # preset 9's
# Format-4 headers: decoded before any size is known, with a fixed dictionary.
_TEXT_DICT = 1024**2


class StreamError(ValueError):
    """A stream that does not decode to exactly its declared bytes."""


def _dict_size(nbytes: int) -> int:
    """The LZMA2 dictionary for ``nbytes`` decoded bytes: no larger than the
    data needs (a match never reaches further back than the data's start),
    so that reading a small array allocates little."""
    return int(min(max(nbytes, _MIN_DICT), _MAX_DICT))


def _lzma_filters(nbytes: int, encode: bool) -> list[dict]:
    lzma2 = {"id": lzma.FILTER_LZMA2, "dict_size": _dict_size(nbytes)}
    if encode:
        lzma2["preset"] = _PRESET
    return [lzma2]


def _shuffled(raw: bytes, itemsize: int) -> bytes:
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffled(raw: bytes, itemsize: int) -> bytes:
    return np.frombuffer(raw, np.uint8).reshape(itemsize, -1).T.tobytes()


def encode(array: np.ndarray) -> tuple[str, bytes]:
    """The smallest stream of ``array``'s bytes: ``(codec, stream)``.

    ``"none"`` is always a candidate, so a stream is never longer than the
    array's bytes (the reader relies on it to bound what it reads).
    """
    array = np.ascontiguousarray(array)
    raw = array.tobytes()
    candidates = {"none": raw}
    if raw:
        filters = _lzma_filters(len(raw), encode=True)
        candidates["lzma"] = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)
        if array.itemsize > 1:
            candidates["shuffle-lzma"] = lzma.compress(
                _shuffled(raw, array.itemsize),
                format=lzma.FORMAT_RAW,
                filters=filters,
            )
    codec = min(candidates, key=lambda k: len(candidates[k]))
    return codec, candidates[codec]


def decode(stream: bytes, codec: str, nbytes: int, itemsize: int, what: str) -> bytes:
    """The ``nbytes`` bytes that ``stream`` encodes with ``codec``.

    Raises
    ------
    StreamError
        Unknown codec, or a stream that is corrupted or decodes to more or
        fewer bytes than declared (decoding stops at ``nbytes``: a crafted
        stream cannot exhaust memory). ``what`` names the array in the message.
    """
    if codec not in CODECS:
        raise StreamError(f"{what} is stored with unknown codec {codec!r:.40}")
    if codec == "none":
        if len(stream) != nbytes:
            raise StreamError(
                f"{what} holds {len(stream)} bytes, but its shape and dtype need {nbytes}"
            )
        return bytes(stream)
    decoder = lzma.LZMADecompressor(
        format=lzma.FORMAT_RAW, filters=_lzma_filters(nbytes, encode=False)
    )
    try:
        out = decoder.decompress(stream, max_length=nbytes)
        # At exactly nbytes the end marker may still be pending: one more
        # byte of output means the stream is longer than declared.
        if not decoder.eof and len(out) == nbytes:
            extra = decoder.decompress(b"", max_length=1)
            if extra:
                raise StreamError(
                    f"{what} decodes to more than the {nbytes} bytes its shape "
                    "and dtype need"
                )
    except lzma.LZMAError as err:
        raise StreamError(f"{what}: its LZMA stream is corrupted ({err})") from None
    if len(out) != nbytes or not decoder.eof or decoder.unused_data:
        raise StreamError(
            f"{what} decodes to {len(out)}{'' if decoder.eof else '+'} bytes"
            f"{' with trailing data' if decoder.unused_data else ''}, but its shape "
            f"and dtype need {nbytes} (corrupted or crafted)"
        )
    if codec == "shuffle-lzma":
        if nbytes % itemsize:
            raise StreamError(
                f"{what}: {nbytes} bytes are not whole {itemsize}-byte values"
            )
        out = _unshuffled(out, itemsize)
    return out


def compress_header(raw: bytes) -> bytes:
    """A raw deflate stream of ``raw`` (the header's JSON, format 5) with
    the preset dictionary :data:`HEADER_DICTIONARY`."""
    coder = zlib.compressobj(
        9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=HEADER_DICTIONARY
    )
    return coder.compress(raw) + coder.flush()


def decompress_header(stream: bytes, max_bytes: int, what: str) -> bytes:
    """The bytes of a :func:`compress_header` stream, at most ``max_bytes``.

    Raises
    ------
    StreamError
        A corrupted stream, one with trailing data, or one that decodes to
        more than ``max_bytes``.
    """
    decoder = zlib.decompressobj(-15, zdict=HEADER_DICTIONARY)
    try:
        out = decoder.decompress(stream, max_bytes + 1)
    except zlib.error as err:
        raise StreamError(
            f"{what} is not a deflate stream (corrupted?): {err}"
        ) from None
    if len(out) > max_bytes:
        raise StreamError(f"{what} decodes to more than {max_bytes} bytes")
    if not decoder.eof or decoder.unused_data:
        raise StreamError(f"{what} is truncated or has trailing data (corrupted?)")
    return out


def decompress_text(stream: bytes, max_bytes: int, what: str) -> bytes:
    """The bytes of a format-4 header: a raw LZMA2 stream (preset 9e, 1 MiB
    dictionary), at most ``max_bytes``.

    Raises
    ------
    StreamError
        A corrupted stream, or one that decodes to more than ``max_bytes``.
    """
    decoder = lzma.LZMADecompressor(
        format=lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA2, "dict_size": _TEXT_DICT}],
    )
    try:
        out = decoder.decompress(stream, max_length=max_bytes + 1)
    except lzma.LZMAError as err:
        raise StreamError(f"{what} is not an LZMA stream (corrupted?): {err}") from None
    if len(out) > max_bytes:
        raise StreamError(f"{what} decodes to more than {max_bytes} bytes")
    if not decoder.eof or decoder.unused_data:
        raise StreamError(f"{what} is truncated or has trailing data (corrupted?)")
    return out
