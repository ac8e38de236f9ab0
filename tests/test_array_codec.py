"""Tests of the model file's array streams (kikuchipy_neural.io.array_codec)."""

from __future__ import annotations

import hashlib
import lzma

import numpy as np
import pytest

from kikuchipy_neural.io import array_codec
from kikuchipy_neural.io.array_codec import StreamError
from kikuchipy_neural.io.header_dictionary import HEADER_DICTIONARY


def _round_trip(array):
    codec, stream = array_codec.encode(array)
    data = array_codec.decode(stream, codec, array.nbytes, array.itemsize, "a")
    np.testing.assert_array_equal(
        np.frombuffer(data, array.dtype).reshape(array.shape), array
    )
    return codec, stream


def test_each_array_gets_its_smallest_stream():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :60]
    smooth = np.sin(xx / 9.0) * np.cos(yy / 7.0)
    # Smooth float images: the shuffled bytes pack tighter (exponents and
    # high mantissa bytes together), as HDF5's shuffle filter does for gzip.
    for dtype in ("<f2", "<f4"):
        codec, stream = _round_trip(smooth.astype(dtype))
        assert codec == "shuffle-lzma", dtype
        plain = lzma.compress(
            smooth.astype(dtype).tobytes(),
            format=lzma.FORMAT_RAW,
            filters=array_codec._lzma_filters(smooth.astype(dtype).nbytes, True),
        )
        assert len(stream) < len(plain)
    # 8-bit codes: no shuffle to try; LZMA.
    codec, stream = _round_trip(np.rint(127 + 100 * smooth).astype(np.uint8))
    assert codec == "lzma" and len(stream) < 0.5 * smooth.size
    # Noise and tiny arrays: stored as they are, never longer.
    noise = rng.integers(0, 256, 5000, dtype=np.uint8)
    assert _round_trip(noise) == ("none", noise.tobytes())
    assert _round_trip(np.array([0.25], "<f8"))[0] == "none"
    assert _round_trip(np.zeros(0, "<f4")) == ("none", b"")


def test_the_dictionary_grows_with_the_array_only():
    assert array_codec._dict_size(10) == 4096
    assert array_codec._dict_size(10**6) == 10**6
    assert array_codec._dict_size(10**10) == 64 * 1024**2


def _stream_of(data: bytes, nbytes_declared: int) -> bytes:
    return lzma.compress(
        data,
        format=lzma.FORMAT_RAW,
        filters=array_codec._lzma_filters(nbytes_declared, encode=True),
    )


def test_streams_decode_to_exactly_their_declared_bytes():
    data = bytes(range(256)) * 40
    stream = _stream_of(data, len(data))
    assert array_codec.decode(stream, "lzma", len(data), 1, "x") == data
    # An LZMA "bomb" (10 MB of zeros in 1.5 kB) declared as 1000 bytes
    # decodes no further than 1000 (+1) bytes.
    bomb = _stream_of(bytes(10**7), 1000)
    assert len(bomb) < 2000
    with pytest.raises(StreamError, match="x decodes to more than the 1000 bytes"):
        array_codec.decode(bomb, "lzma", 1000, 1, "x")
    with pytest.raises(StreamError, match="decodes to 10240 bytes.*need 20000"):
        array_codec.decode(stream, "lzma", 20000, 1, "x")
    with pytest.raises(StreamError, match="corrupted"):
        array_codec.decode(stream[: len(stream) // 2], "lzma", len(data), 1, "x")
    with pytest.raises(StreamError, match="trailing data"):
        array_codec.decode(stream + b"\0\0", "lzma", len(data), 1, "x")
    flipped = bytearray(stream)
    flipped[len(stream) // 2] ^= 0xFF
    with pytest.raises(StreamError):
        array_codec.decode(bytes(flipped), "lzma", len(data), 1, "x")
    with pytest.raises(StreamError, match="holds 3 bytes, but .* need 4"):
        array_codec.decode(b"abc", "none", 4, 1, "x")
    with pytest.raises(StreamError, match="unknown codec 'zstd'"):
        array_codec.decode(stream, "zstd", len(data), 1, "x")
    with pytest.raises(StreamError, match="whole 4-byte values"):
        array_codec.decode(_stream_of(bytes(6), 6), "shuffle-lzma", 6, 4, "x")


def _format_4_header_stream(text: bytes) -> bytes:
    """How format 4 wrote its headers."""
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 2**20}]
    return lzma.compress(text, format=lzma.FORMAT_RAW, filters=filters)


@pytest.mark.parametrize(
    ("compress", "decompress", "garbage", "not_a_stream"),
    [
        (
            array_codec.compress_header,
            array_codec.decompress_header,
            b"\xff\xff\xff\xff",
            "deflate",
        ),
        (
            _format_4_header_stream,
            array_codec.decompress_text,
            b"\x80\x04K\x01.",
            "LZMA",
        ),
    ],
)
def test_header_streams_are_bounded(compress, decompress, garbage, not_a_stream):
    text = b'{"a": 1}' * 1000
    stream = compress(text)
    assert decompress(stream, 10**6, "h") == text
    with pytest.raises(StreamError, match="h decodes to more than 100 bytes"):
        decompress(stream, 100, "h")
    with pytest.raises(StreamError, match=f"not an? {not_a_stream} stream"):
        decompress(garbage, 10**6, "h")
    with pytest.raises(StreamError, match="truncated"):
        decompress(stream[:-4], 10**6, "h")
    with pytest.raises(StreamError, match="trailing data"):
        decompress(stream + b"x", 10**6, "h")


def test_the_header_dictionary_never_changes():
    """Format-5 headers decode only with these exact bytes (see
    kikuchipy_neural.io.header_dictionary): a new dictionary needs a new
    format version."""
    digest = hashlib.sha256(HEADER_DICTIONARY).hexdigest()
    assert digest == "f9cac711da18057b6a4da816041f0e0c667be38e7a069f0ccec2baeb58fa7ebd"
