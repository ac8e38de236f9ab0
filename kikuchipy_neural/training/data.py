"""Pattern access for training: tiles, an in-memory buffer, a shuffle buffer.

A :class:`PatternSource` reads a scan (numpy or dask) in tiles of scan points
without loading it whole; :func:`iter_patterns` gives the patterns of chosen
points, from memory where they are held already (:class:`HeldPatterns`), so
that a lazy map is read as few times as possible. A buffer holds the
patterns of training points in memory for sampling: :class:`InMemoryBuffer`
when everything fits (or the data already is a numpy array),
:class:`ShuffleBuffer` otherwise. The shuffle buffer streams dask chunks
through a bounded number of slots, loading the next chunk in a background
thread while the current ones are being sampled, and retires a chunk once its
training points have been drawn as often as they would be by uniform
sampling.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch

from kikuchipy_neural.training.losses import band_mask, pack_mask, unpack_mask

__all__ = [
    "HeldPatterns",
    "InMemoryBuffer",
    "PatternSource",
    "ShuffleBuffer",
    "Tile",
    "buffer_fits",
    "iter_patterns",
    "make_buffer",
]

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
        if data.dtype.kind not in "uif":
            # Complex patterns would lose their imaginary part (with only a
            # warning from numpy), booleans and objects are not intensities.
            raise TypeError(
                f"Patterns must be real numbers (integer or float), got dtype "
                f"{data.dtype}"
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


@dataclass(frozen=True)
class HeldPatterns:
    """Raw patterns already in memory: ``patterns[i]`` is scan point
    ``points[i]`` (flat, row-major), ``patterns`` is ``(n, n_pixels)``."""

    points: np.ndarray
    patterns: np.ndarray


def iter_patterns(
    source: PatternSource,
    selected: np.ndarray,
    held: Sequence[HeldPatterns] = (),
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Flat indices and raw patterns ``(n, n_pixels)`` of the selected points,
    in pieces of at most a tile's size.

    ``selected`` is a flat boolean mask over the scan. Points in ``held`` come
    from memory (each once); only tiles holding the other selected points are
    read.
    """
    todo = np.array(selected, bool)
    piece = max(1, _TILE_BYTES // (4 * source.n_pixels))
    for h in held:
        rows = np.flatnonzero(todo[h.points])
        todo[h.points[rows]] = False
        for start in range(0, len(rows), piece):
            r = rows[start : start + piece]
            yield h.points[r], np.asarray(h.patterns[r])
    tiles = [t for t in source.tiles if todo[t.flat_indices(source.nx)].any()]
    for tile, raw in source.iter_tiles(tiles):
        index = tile.flat_indices(source.nx)
        use = todo[index]
        yield index[use], raw.reshape(len(index), -1)[use]


# Patterns per piece when computing band masks: the float32 work arrays of a
# piece (a few copies of 256 x n_pixels) count against no budget, so keep
# them small; masks are per pattern, so the piece size does not change them.
_BAND_PIECE = 256


def _band_bits(
    raw: np.ndarray,
    pattern_shape: tuple[int, int],
    top_fraction: float,
    device: torch.device | None = None,
) -> np.ndarray:
    """Packed band masks of ``(n, n_pixels)`` raw patterns, in pieces
    (computed on ``device``, e.g. a GPU, when given)."""
    n_bytes = -(-int(np.prod(pattern_shape)) // 8)
    out = np.empty((len(raw), n_bytes), np.uint8)
    for start in range(0, len(raw), _BAND_PIECE):
        piece = torch.from_numpy(
            np.asarray(raw[start : start + _BAND_PIECE], dtype=np.float32)
        )
        if device is not None:
            piece = piece.to(device)
        out[start : start + len(piece)] = pack_mask(
            band_mask(piece, pattern_shape, top_fraction)
        )
    return out


class _Sampling:
    """Sampling shared by the buffers: rows of one flat array of patterns."""

    n_pixels: int
    points: np.ndarray  # flat scan index of every buffered row
    patterns: np.ndarray  # (rows, n_pixels), original dtype
    band_bits: np.ndarray  # (rows, bytes)
    # Rows of the arrays that hold data (None: all of them); a buffer with
    # fixed storage fills only part of it.
    _row_ids: np.ndarray | None = None

    def _n_rows(self) -> int:
        return len(self.points) if self._row_ids is None else len(self._row_ids)

    def _rows_of(self, drawn: np.ndarray) -> np.ndarray:
        return drawn if self._row_ids is None else self._row_ids[drawn]

    def _draw_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        n_rows = self._n_rows()
        if n >= n_rows:  # small scans: every buffered point, a full batch
            return self._rows_of(np.arange(n_rows))
        return self._rows_of(rng.choice(n_rows, size=n, replace=False))

    def sample(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` distinct training points (all buffered points if fewer).

        Returns flat indices ``(n,)``, raw patterns ``(n, n_pixels)`` and band
        masks ``(n, n_pixels)``.
        """
        rows = np.sort(self._draw_rows(n, rng))
        batch = (
            self.points[rows],
            self.patterns[rows],
            unpack_mask(self.band_bits[rows], self.n_pixels),
        )
        self._consumed(rows, 1.0)  # may swap chunks: read the batch first
        return batch

    def sample_pairs(
        self, n: int, band_share: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``n`` random (point, pixel) pairs, ``band_share`` of them band pixels.

        Candidates are drawn uniformly (4 per wanted pair) and split into band
        and background pixels, so the share holds without listing every
        pattern's band pixels.
        """
        m = 4 * n
        rows = self._rows_of(rng.integers(0, self._n_rows(), size=m))
        pixels = rng.integers(0, self.n_pixels, size=m)
        byte = self.band_bits[rows, pixels // 8]
        is_band = ((byte >> (7 - pixels % 8)) & 1).astype(bool)
        n_band = min(int(round(band_share * n)), int(is_band.sum()))
        band_idx = np.flatnonzero(is_band)[:n_band]
        rest_idx = np.flatnonzero(~is_band)[: n - n_band]
        chosen = np.concatenate([band_idx, rest_idx])
        rows, pixels, is_band = rows[chosen], pixels[chosen], is_band[chosen]
        batch = (self.points[rows], pixels, self.patterns[rows, pixels], is_band)
        # A pixel is 1/n_pixels of a pattern's worth of draws.
        self._consumed(rows, 1.0 / self.n_pixels)
        return batch

    def _consumed(self, rows: np.ndarray, weight: float) -> None:
        """Hook for buffers that retire data once it has been drawn."""

    def close(self) -> None:
        """Release background resources."""


class InMemoryBuffer(_Sampling):
    """All training points at once (numpy data, or lazy data within budget).

    ``patterns``: the raw patterns of ``train_points``, row for row, when the
    caller has read them already (preprocessing does, for a lazy map within
    the budget); else lazy data is read here and numpy data is not copied.
    """

    def __init__(
        self,
        source: PatternSource,
        train_points: np.ndarray,
        top_fraction: float,
        device: torch.device | None = None,
        patterns: np.ndarray | None = None,
    ) -> None:
        self.n_pixels = source.n_pixels
        self.points = np.asarray(train_points)
        if patterns is not None:
            if patterns.shape != (len(self.points), source.n_pixels):
                raise ValueError(
                    f"patterns of shape {patterns.shape} do not hold "
                    f"{len(self.points)} patterns of {source.n_pixels} pixels"
                )
            self.patterns = patterns
        elif source.is_lazy:
            # Filled tile by tile into arrays allocated once: no second copy.
            train = np.zeros(source.ny * source.nx, bool)
            train[self.points] = True
            self.points = np.empty(len(self.points), np.int64)
            self.patterns = np.empty(
                (len(self.points), source.n_pixels), source.data.dtype
            )
            filled = 0
            tiles = [t for t in source.tiles if train[t.flat_indices(source.nx)].any()]
            for tile, raw in source.iter_tiles(tiles):  # only tiles in use are read
                flat = tile.flat_indices(source.nx)
                keep = train[flat]
                n = int(keep.sum())
                self.points[filled : filled + n] = flat[keep]
                self.patterns[filled : filled + n] = raw.reshape(-1, source.n_pixels)[
                    keep
                ]
                filled += n
        else:
            # Index rows of the caller's array on demand instead of copying it.
            self.patterns = _RowView(source.flat_view(), self.points)
        self.band_bits = _band_bits(
            self.patterns, source.pattern_shape, top_fraction, device
        )


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
    A chunk stays until as many positions have been drawn from it as it
    holds training points, i.e. until its points have been sampled once in
    expectation, so every training point is visited with the same frequency
    as under uniform sampling. The next chunk is read by a background thread
    while the buffered ones are being sampled.

    The slots are allocated once and a new chunk is copied into the slot it
    replaces, so memory stays at the slots plus the chunk being read. The
    chunks of the first fill leave after a growing share of their draws
    (1/n, 2/n, ... of their points), so that chunks leave one at a time
    rather than all at once, and the background read overlaps sampling; the
    draws a chunk missed are owed at its next visit (each chunk's draws are
    counted over the whole fit), so visit frequencies stay uniform.

    Parameters
    ----------
    source
        The lazy scan.
    train_points
        Flat indices of the training points.
    top_fraction
        Band-pixel share for the band masks.
    max_bytes
        Budget for the buffered patterns (raw dtype) and their band masks,
        the chunk being read in the background included.
    rng
        Generator for the chunk order.
    device
        Where band masks are computed (default: CPU).

    Attributes
    ----------
    stall_seconds
        Time the sampling thread waited for a chunk that was not read yet
        (disk slower than compute).
    chunks_loaded
        Chunks read so far, the first fill included.
    """

    def __init__(
        self,
        source: PatternSource,
        train_points: np.ndarray,
        top_fraction: float,
        max_bytes: int,
        rng: np.random.Generator,
        device: torch.device | None = None,
    ) -> None:
        self.source = source
        self.n_pixels = source.n_pixels
        self.top_fraction = top_fraction
        self.device = device
        train = np.zeros(source.ny * source.nx, bool)
        train[train_points] = True
        self._train = train
        self.tiles = [t for t in source.tiles if train[t.flat_indices(source.nx)].any()]
        if len(self.tiles) < 2:
            raise ValueError(
                "A shuffle buffer needs at least two chunks; use InMemoryBuffer"
            )
        n_bytes = -(-source.n_pixels // 8)
        row_bytes = source.n_pixels * source.itemsize + n_bytes
        self.capacity = int(
            max(train[t.flat_indices(source.nx)].sum() for t in self.tiles)
        )
        largest = self.capacity * row_bytes
        # Besides the slots, one chunk is being read in the background and
        # dask may hold its pieces and their concatenation at once; a chunk
        # must never sit in two slots at once.
        self.n_slots = int(max(1, min(len(self.tiles) - 1, max_bytes // largest - 2)))
        if max_bytes < 3 * largest:
            warnings.warn(
                f"The memory budget for buffered patterns ({max_bytes / 2**20:.1f} MB) "
                f"holds fewer than three chunks of {largest / 2**20:.1f} MB (one "
                "buffered, one being read, one being assembled by dask): the buffer "
                f"will use about {3 * largest / 2**20:.1f} MB. Rechunk the data into "
                "smaller chunks or raise memory_budget.",
                stacklevel=3,
            )
        self.peak_bytes_estimate = (self.n_slots + 2) * largest
        rows = self.n_slots * self.capacity
        self.points = np.zeros(rows, np.int64)
        self.patterns = np.zeros((rows, source.n_pixels), source.data.dtype)
        self.band_bits = np.zeros((rows, n_bytes), np.uint8)
        self._count = np.zeros(self.n_slots, np.int64)  # filled rows per slot
        self._slot_tile = np.full(self.n_slots, -1)  # tile index in each slot
        self._leave_at = np.zeros(self.n_slots)  # a slot's tile leaves at this
        self._drawn = np.zeros(len(self.tiles))  # draws per tile, whole fit
        self._owed = np.zeros(len(self.tiles))  # points per tile x its visits
        self.stall_seconds = 0.0
        self.chunks_loaded = 0
        self._rng = rng
        self._order: list[int] = []
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kpn-prefetch"
        )
        self._pending: Future | None = None
        self._pending_tile: int | None = None
        for k in range(self.n_slots):
            i = self._next_tile()
            self._put(k, i, self._load(i), early=(k + 1) / self.n_slots)
        self._update_rows()
        self._prefetch()

    def _next_tile(self) -> int:
        """The next tile of the epoch's order that is not buffered already."""
        busy = set(self._slot_tile[self._slot_tile >= 0].tolist())
        if self._pending_tile is not None:
            busy.add(self._pending_tile)
        while True:
            for j in range(len(self._order) - 1, -1, -1):
                if self._order[j] not in busy:
                    return self._order.pop(j)
            # The rest of this epoch is buffered right now: the next epoch's
            # order goes behind it (the rest is still taken first).
            self._order = list(self._rng.permutation(len(self.tiles))) + self._order

    def _load(self, i: int) -> dict:
        tile = self.tiles[i]
        raw = self.source.read_tile(tile).reshape(-1, self.n_pixels)
        flat = tile.flat_indices(self.source.nx)
        keep = self._train[flat]
        if not keep.all():
            raw, flat = raw[keep], flat[keep]
        bits = _band_bits(
            raw, self.source.pattern_shape, self.top_fraction, self.device
        )
        return {"points": flat, "patterns": raw, "bits": bits}

    def _put(self, k: int, i: int, chunk: dict, early: float = 1.0) -> None:
        """Copy tile ``i``'s chunk into slot ``k``; it leaves once the tile's
        draws reach its points times its visits (less ``1 - early`` of its
        points on a staggered first visit)."""
        n = len(chunk["points"])
        rows = slice(k * self.capacity, k * self.capacity + n)
        self.points[rows] = chunk["points"]
        self.patterns[rows] = chunk["patterns"]
        self.band_bits[rows] = chunk["bits"]
        self._count[k] = n
        self._slot_tile[k] = i
        self._owed[i] += n
        self._leave_at[k] = self._owed[i] - (1.0 - early) * n
        self.chunks_loaded += 1

    def _update_rows(self) -> None:
        self._row_ids = np.concatenate(
            [
                np.arange(k * self.capacity, k * self.capacity + c)
                for k, c in enumerate(self._count)
            ]
        )

    def _prefetch(self) -> None:
        self._pending_tile = self._next_tile()
        self._pending = self._pool.submit(self._load, self._pending_tile)

    def _consumed(self, rows: np.ndarray, weight: float) -> None:
        counts = np.bincount(rows // self.capacity, minlength=self.n_slots)
        self._drawn[self._slot_tile] += weight * counts  # tiles are distinct
        done = np.flatnonzero(self._drawn[self._slot_tile] >= self._leave_at)
        if not len(done):
            return
        for k in done:
            waited = time.perf_counter()
            chunk = self._pending.result()
            self.stall_seconds += time.perf_counter() - waited
            i, self._pending_tile = self._pending_tile, None
            self._put(int(k), i, chunk)
            self._prefetch()
        self._update_rows()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        # A chunk read ahead would otherwise live as long as the buffer.
        self._pending = self._pending_tile = None


def buffer_fits(source: PatternSource, n_points: int, memory_budget: int) -> bool:
    """Whether ``n_points`` training patterns and their band masks fit
    ``memory_budget`` bytes (then a lazy map's buffer holds them all)."""
    row_bytes = source.n_pixels * source.itemsize + -(-source.n_pixels // 8)
    return n_points * row_bytes <= memory_budget


def make_buffer(
    source: PatternSource,
    train_points: np.ndarray,
    top_fraction: float,
    memory_budget: int,
    rng: np.random.Generator,
    device: torch.device | None = None,
    patterns: np.ndarray | None = None,
) -> _Sampling:
    """An in-memory buffer if the training patterns fit the budget (or are
    already in memory: numpy data, or ``patterns`` read by the caller, row
    for row with ``train_points``), else a :class:`ShuffleBuffer`. Band masks
    are computed on ``device`` when given."""
    in_memory = (
        patterns is not None
        or not source.is_lazy
        or buffer_fits(source, len(train_points), memory_budget)
    )
    if not in_memory:
        # A shuffle buffer needs two chunks holding training points.
        train = np.zeros(source.ny * source.nx, bool)
        train[train_points] = True
        tiles = source.tiles
        in_memory = sum(train[t.flat_indices(source.nx)].any() for t in tiles) < 2
    if in_memory:
        return InMemoryBuffer(source, train_points, top_fraction, device, patterns)
    return ShuffleBuffer(source, train_points, top_fraction, memory_budget, rng, device)
