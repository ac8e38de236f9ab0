"""Pattern access for training: tiles, an in-memory buffer, a shuffle buffer.

A :class:`PatternSource` reads a scan (numpy or dask) in tiles of scan points
without loading it whole. A buffer holds the patterns of training points in
memory for sampling: :class:`InMemoryBuffer` when everything fits (or the data
already is a numpy array), :class:`ShuffleBuffer` otherwise. The shuffle
buffer streams dask chunks through a bounded number of slots, loading the next
chunk in a background thread while the current ones are being sampled, and
retires a chunk once its training points have been drawn as often as they
would be by uniform sampling.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch

from kikuchipy_neural.training.losses import band_mask, pack_mask, unpack_mask

__all__ = ["InMemoryBuffer", "PatternSource", "ShuffleBuffer", "Tile", "make_buffer"]

# Size of the float32 work arrays that tiles of in-memory data are cut to.
_TILE_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Tile:
    """A rectangle of scan points: rows ``r0:r1``, columns ``c0:c1``."""

    r0: int
    r1: int
    c0: int
    c1: int

    def flat_indices(self, nx: int) -> np.ndarray:
        rows, cols = np.mgrid[self.r0 : self.r1, self.c0 : self.c1]
        return (rows * nx + cols).ravel()

    @property
    def n_points(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)


class PatternSource:
    """Tile-wise read access to a scan's patterns.

    Parameters
    ----------
    data
        numpy or dask array ``(ny, nx, rows, columns)`` or, for a line scan,
        ``(n, rows, columns)``.
    """

    def __init__(self, data: np.ndarray | da.Array) -> None:
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4:
            raise ValueError(
                f"Expected scan data of 3 or 4 dimensions, got {data.shape}"
            )
        self.is_lazy = isinstance(data, da.Array)
        if self.is_lazy:
            # Whole patterns per chunk: sampling reads full patterns.
            data = data.rechunk({2: -1, 3: -1})
        self.data = data
        self.ny, self.nx = data.shape[:2]
        self.pattern_shape = tuple(int(v) for v in data.shape[2:])
        self.n_pixels = self.pattern_shape[0] * self.pattern_shape[1]
        self.tiles = self._make_tiles()

    def _make_tiles(self) -> list[Tile]:
        if self.is_lazy:
            rows = np.cumsum((0,) + self.data.chunks[0])
            cols = np.cumsum((0,) + self.data.chunks[1])
        else:
            per_tile = max(1, _TILE_BYTES // (4 * self.n_pixels))
            rows_per = max(1, per_tile // self.nx)
            rows = np.append(np.arange(0, self.ny, rows_per), self.ny)
            cols = np.array([0, self.nx])
        return [
            Tile(int(r0), int(r1), int(c0), int(c1))
            for r0, r1 in zip(rows[:-1], rows[1:], strict=True)
            for c0, c1 in zip(cols[:-1], cols[1:], strict=True)
        ]

    @property
    def itemsize(self) -> int:
        return self.data.dtype.itemsize

    def read_tile(self, tile: Tile) -> np.ndarray:
        """Patterns of a tile, ``(rows, cols, n_pixels)``, original dtype."""
        block = self.data[tile.r0 : tile.r1, tile.c0 : tile.c1]
        if self.is_lazy:
            block = block.compute(scheduler="threads")
        return np.asarray(block).reshape(tile.r1 - tile.r0, tile.c1 - tile.c0, -1)

    def iter_tiles(
        self, tiles: list[Tile] | None = None
    ) -> Iterator[tuple[Tile, np.ndarray]]:
        for tile in self.tiles if tiles is None else tiles:
            yield tile, self.read_tile(tile)

    def flat_view(self) -> np.ndarray:
        """In-memory data as ``(n_points, n_pixels)`` without a copy."""
        if self.is_lazy:
            raise TypeError("flat_view needs in-memory data")
        return self.data.reshape(self.ny * self.nx, self.n_pixels)


def _band_bits(
    raw: np.ndarray, pattern_shape: tuple[int, int], top_fraction: float
) -> np.ndarray:
    """Packed band masks of ``(n, n_pixels)`` raw patterns, in chunks."""
    out = []
    for start in range(0, len(raw), 1024):
        chunk = torch.from_numpy(
            np.asarray(raw[start : start + 1024], dtype=np.float32)
        )
        out.append(pack_mask(band_mask(chunk, pattern_shape, top_fraction)))
    n_bytes = -(-int(np.prod(pattern_shape)) // 8)
    return np.concatenate(out) if out else np.zeros((0, n_bytes), np.uint8)


class _Sampling:
    """Sampling shared by the buffers: rows of one flat array of patterns."""

    n_pixels: int
    points: np.ndarray  # flat scan index of every buffered row
    patterns: np.ndarray  # (rows, n_pixels), original dtype
    band_bits: np.ndarray  # (rows, bytes)

    def _draw_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        n_rows = len(self.points)
        if n >= n_rows:  # small scans: every buffered point, a full batch
            return np.arange(n_rows)
        return rng.choice(n_rows, size=n, replace=False)

    def sample(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` distinct training points (all buffered points if fewer).

        Returns flat indices ``(n,)``, raw patterns ``(n, n_pixels)`` and band
        masks ``(n, n_pixels)``.
        """
        rows = np.sort(self._draw_rows(n, rng))
        self._consumed(rows, 1.0)
        return (
            self.points[rows],
            self.patterns[rows],
            unpack_mask(self.band_bits[rows], self.n_pixels),
        )

    def sample_pairs(
        self, n: int, band_share: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``n`` random (point, pixel) pairs, ``band_share`` of them band pixels.

        Candidates are drawn uniformly (4 per wanted pair) and split into band
        and background pixels, so the share holds without listing every
        pattern's band pixels.
        """
        m = 4 * n
        rows = rng.integers(0, len(self.points), size=m)
        pixels = rng.integers(0, self.n_pixels, size=m)
        byte = self.band_bits[rows, pixels // 8]
        is_band = ((byte >> (7 - pixels % 8)) & 1).astype(bool)
        n_band = min(int(round(band_share * n)), int(is_band.sum()))
        band_idx = np.flatnonzero(is_band)[:n_band]
        rest_idx = np.flatnonzero(~is_band)[: n - n_band]
        chosen = np.concatenate([band_idx, rest_idx])
        rows, pixels, is_band = rows[chosen], pixels[chosen], is_band[chosen]
        values = self.patterns[rows, pixels]
        # A pixel is 1/n_pixels of a pattern's worth of draws.
        self._consumed(rows, 1.0 / self.n_pixels)
        return self.points[rows], pixels, values, is_band

    def _consumed(self, rows: np.ndarray, weight: float) -> None:
        """Hook for buffers that retire data once it has been drawn."""

    def close(self) -> None:
        """Release background resources."""


class InMemoryBuffer(_Sampling):
    """All training points at once (numpy data, or lazy data within budget)."""

    def __init__(
        self,
        source: PatternSource,
        train_points: np.ndarray,
        top_fraction: float,
    ) -> None:
        self.n_pixels = source.n_pixels
        self.points = np.asarray(train_points)
        if source.is_lazy:
            points, patterns = [], []
            for tile, raw in source.iter_tiles():
                flat = tile.flat_indices(source.nx)
                keep = np.isin(flat, self.points)
                points.append(flat[keep])
                patterns.append(raw.reshape(-1, source.n_pixels)[keep])
            self.points, self.patterns = (
                np.concatenate(points),
                np.concatenate(patterns),
            )
        else:
            # Index rows of the caller's array on demand instead of copying it.
            self.patterns = _RowView(source.flat_view(), self.points)
        self.band_bits = _band_bits(self.patterns, source.pattern_shape, top_fraction)


class _RowView:
    """``view[rows]`` reads ``base[index[rows]]``: training rows without a copy."""

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base, self.index = base, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, cols = key
            return self.base[self.index[rows], cols]
        return self.base[self.index[key]]


class ShuffleBuffer(_Sampling):
    """Bounded buffer of dask chunks, refilled in the background.

    Chunks (tiles) enter in a random order that is reshuffled every epoch.
    Each chunk stays until as many positions have been drawn from it as it
    holds training points, i.e. until its points have been sampled once in
    expectation, so every training point is visited with the same frequency
    as under uniform sampling. The next chunk is read by a background thread
    while the buffered ones are being sampled.

    Parameters
    ----------
    source
        The lazy scan.
    train_points
        Flat indices of the training points.
    top_fraction
        Band-pixel share for the band masks.
    max_bytes
        Budget for the buffered patterns (raw dtype) and their band masks.
    rng
        Generator for the chunk order.
    """

    def __init__(
        self,
        source: PatternSource,
        train_points: np.ndarray,
        top_fraction: float,
        max_bytes: int,
        rng: np.random.Generator,
    ) -> None:
        self.source = source
        self.n_pixels = source.n_pixels
        self.top_fraction = top_fraction
        train = np.zeros(source.ny * source.nx, bool)
        train[train_points] = True
        self._train = train
        self.tiles = [t for t in source.tiles if train[t.flat_indices(source.nx)].any()]
        row_bytes = source.n_pixels * source.itemsize + -(-source.n_pixels // 8)
        largest = max(t.n_points for t in self.tiles) * row_bytes
        if len(self.tiles) < 2:
            raise ValueError(
                "A shuffle buffer needs at least two chunks; use InMemoryBuffer"
            )
        # One more chunk is always being loaded in the background, and a chunk
        # must never sit in two slots at once.
        self.n_slots = int(max(1, min(len(self.tiles) - 1, max_bytes // largest - 1)))
        self.peak_bytes_estimate = (self.n_slots + 1) * largest
        self._rng = rng
        self._order: list[Tile] = []
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kpn-prefetch"
        )
        self._lock = threading.Lock()
        self._slots: list[dict] = []
        self._pending: Future | None = None
        for _ in range(self.n_slots):
            self._slots.append(self._load(self._next_tile()))
        self._rebuild()
        self._prefetch()

    def _next_tile(self) -> Tile:
        if not self._order:
            self._order = [
                self.tiles[i] for i in self._rng.permutation(len(self.tiles))
            ]
        return self._order.pop()

    def _load(self, tile: Tile) -> dict:
        raw = self.source.read_tile(tile).reshape(-1, self.n_pixels)
        flat = tile.flat_indices(self.source.nx)
        keep = self._train[flat]
        raw, flat = raw[keep], flat[keep]
        bits = _band_bits(raw, self.source.pattern_shape, self.top_fraction)
        return {"points": flat, "patterns": raw, "bits": bits, "drawn": 0.0}

    def _prefetch(self) -> None:
        self._pending = self._pool.submit(self._load, self._next_tile())

    def _rebuild(self) -> None:
        # Sampling works on flat arrays; rebuilt only when a chunk is swapped.
        self.points = np.concatenate([s["points"] for s in self._slots])
        self.patterns = np.concatenate([s["patterns"] for s in self._slots])
        self.band_bits = np.concatenate([s["bits"] for s in self._slots])
        self._slot_of_row = np.repeat(
            np.arange(len(self._slots)), [len(s["points"]) for s in self._slots]
        )

    def _consumed(self, rows: np.ndarray, weight: float) -> None:
        counts = np.bincount(self._slot_of_row[rows], minlength=len(self._slots))
        for slot, count in zip(self._slots, counts, strict=True):
            slot["drawn"] += weight * count
        done = [i for i, s in enumerate(self._slots) if s["drawn"] >= len(s["points"])]
        if not done:
            return
        for i in done:
            self._slots[i] = self._pending.result()
            self._prefetch()
        self._rebuild()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_buffer(
    source: PatternSource,
    train_points: np.ndarray,
    top_fraction: float,
    memory_budget: int,
    rng: np.random.Generator,
) -> _Sampling:
    """An in-memory buffer if the training patterns fit the budget (or are
    already in memory), else a :class:`ShuffleBuffer`."""
    row_bytes = source.n_pixels * source.itemsize + -(-source.n_pixels // 8)
    fits = len(train_points) * row_bytes <= memory_budget
    if not source.is_lazy or fits or len(source.tiles) < 2:
        return InMemoryBuffer(source, train_points, top_fraction)
    return ShuffleBuffer(source, train_points, top_fraction, memory_budget, rng)
