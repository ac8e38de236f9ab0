"""Everything a fit computes from the data before the first training step.

- the intensity scale (patterns are normalised to [0, 1] for training);
- checks that fail before any training: non-finite or constant data;
- the validation split (points held out from training);
- PCA of a random subsample of tiles (mean pattern, components, spectrum);
- the noise variance, from pairs of neighbouring scan points;
- the rank: given, from a target explained variance, or automatic;
- the PCA scores of every training point (the warm start's targets) and the
  validation patterns, in one pass over the data; that pass also keeps the
  training patterns of a lazy map that fits the memory budget, so that the
  training buffer and the passes after training need not read it again.

Automatic rank: a component is kept when its eigenvalue exceeds the upper
edge of the Marchenko-Pastur law that pure noise of the measured variance
would produce, ``sigma^2 (1 + sqrt(p / n))^2`` for ``n`` patterns of ``p``
pixels. The noise variance comes from the data itself: neighbouring scan
points inside a grain differ by noise only, so the median over neighbour pairs
of half their mean squared difference estimates sigma^2, and the median
ignores the pairs that straddle a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kikuchipy_neural.training.data import PatternSource, Tile, buffer_fits

__all__ = ["Preprocessed", "Spectrum", "preprocess"]

# Components computed at first when the rank is not given; doubled as needed.
_FIRST_COMPONENTS = 32
_MIN_VALIDATION_POINTS = 16


@dataclass
class Spectrum:
    """PCA eigenvalue spectrum with the noise level that decides the rank.

    Eigenvalues are variances of the normalised (``[0, 1]``) intensities.
    """

    eigenvalues: np.ndarray
    total_variance: float
    noise_variance: float | None
    n_samples: int
    n_pixels: int

    @property
    def noise_edge(self) -> float | None:
        """Largest eigenvalue that pure noise would reach (Marchenko-Pastur)."""
        if self.noise_variance is None:
            return None
        return self.noise_variance * (1 + np.sqrt(self.n_pixels / self.n_samples)) ** 2

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return np.cumsum(self.eigenvalues) / self.total_variance

    def auto_rank(self) -> int | None:
        """Mean pattern + every component above the noise edge; None if the
        computed components do not yet reach below the edge."""
        edge = self.noise_edge
        if edge is None:
            raise ValueError(
                "rank='auto' needs neighbouring training points to estimate the "
                "noise; pass an integer rank or variance= instead."
            )
        above = self.eigenvalues > edge
        if above.all():
            return None
        return 1 + int(np.argmin(above))

    def rank_for_variance(self, variance: float) -> int | None:
        """Smallest rank (mean + components) explaining ``variance``; None if
        the computed components do not reach it yet."""
        reached = np.flatnonzero(self.explained_variance_ratio >= variance)
        if reached.size == 0:
            return None
        n_components = int(reached[0]) + 1
        return 1 + n_components

    def to_dict(self) -> dict:
        return {
            "eigenvalues": np.asarray(self.eigenvalues, np.float64),
            "total_variance": float(self.total_variance),
            "noise_variance": (
                float("nan")
                if self.noise_variance is None
                else float(self.noise_variance)
            ),
            "n_samples": int(self.n_samples),
            "n_pixels": int(self.n_pixels),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Spectrum:
        noise = float(d["noise_variance"])
        return cls(
            eigenvalues=np.asarray(d["eigenvalues"], np.float64),
            total_variance=float(d["total_variance"]),
            noise_variance=None if np.isnan(noise) else noise,
            n_samples=int(d["n_samples"]),
            n_pixels=int(d["n_pixels"]),
        )

    def plot(self, rank: int | None = None, ax=None):
        """Scree plot with the noise edge and the chosen rank."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        k = np.arange(1, len(self.eigenvalues) + 1)
        ax.semilogy(k, self.eigenvalues, ".-", label="PCA eigenvalues")
        if self.noise_edge is not None:
            ax.axhline(self.noise_edge, color="C3", ls="--", label="noise edge (MP)")
        if rank is not None:
            ax.axvline(rank - 1 + 0.5, color="k", ls=":", label=f"rank {rank}")
        ax.set_xlabel("component")
        ax.set_ylabel("variance (normalised intensity$^2$)")
        ax.legend(frameon=False)
        return ax


@dataclass
class Preprocessed:
    """What a fit knows about the data before training (see module doc)."""

    intensity_range: tuple[float, float]
    train_points: np.ndarray
    val_points: np.ndarray
    val_patterns: np.ndarray  # raw, (n_val, n_pixels)
    rank: int | None
    mean: np.ndarray | None  # normalised, (n_pixels,)
    components: np.ndarray | None  # (rank - 1, n_pixels)
    spectrum: Spectrum | None
    scores: np.ndarray | None  # (n_train, rank - 1), aligned with train_points
    # Raw (n_train, n_pixels), aligned with train_points: a lazy map's training
    # patterns when they fit the memory budget (see ``preprocess``), else None.
    train_patterns: np.ndarray | None = None

    def normalize(self, raw, out: torch.Tensor | None = None) -> torch.Tensor:
        """Raw intensities (any dtype) -> float32 tensor in [0, 1] units,
        written into ``out`` (a float32 CPU tensor of ``raw``'s shape) if
        given."""
        lo, hi = self.intensity_range
        if out is None:
            out = torch.empty(np.shape(raw), dtype=torch.float32)
        np.copyto(out.numpy(), raw, casting="unsafe")
        # In place: no further arrays of the batch's size.
        return out.sub_(lo).div_(hi - lo)


def _check_finite(raw: np.ndarray, policy: str) -> np.ndarray:
    """Per-pattern finiteness of ``(n, p)`` raw patterns."""
    if raw.dtype.kind in "iu":
        return np.ones(len(raw), bool)
    finite = np.isfinite(raw).all(axis=1)
    if policy == "raise" and not finite.all():
        raise ValueError(
            f"{int((~finite).sum())} pattern(s) contain NaN or infinite values. "
            "Exclude them with mask=..., or pass nonfinite='mask' to leave them "
            "out of training automatically."
        )
    return finite


def _neighbour_noise(
    tiles: list[tuple[Tile, np.ndarray, np.ndarray]], lo, hi
) -> float | None:
    """Median over neighbouring training pairs of half their mean squared
    difference (normalised units). Neighbours are consecutive training points
    along a row or a column of a tile, so sparse masks still give pairs."""
    values = []
    for _, raw, use in tiles:
        for grid, ok in ((raw, use), (raw.transpose(1, 0, 2), use.T)):
            for line, line_ok in zip(grid, ok, strict=True):
                idx = np.flatnonzero(line_ok)
                if len(idx) < 2:
                    continue
                pts = (line[idx].astype(np.float32) - lo) / (hi - lo)
                values.append(0.5 * ((pts[1:] - pts[:-1]) ** 2).mean(axis=1))
    if not values:
        return None
    return float(np.median(np.concatenate(values)))


def _sample_tiles(
    source: PatternSource,
    use: np.ndarray,
    max_points: int,
    rng: np.random.Generator,
    progressbar=None,
) -> list[tuple[Tile, np.ndarray, np.ndarray]]:
    """Random whole tiles (so neighbours stay together) until ``max_points``
    usable points are collected; the last tile is cropped to its rows.
    ``progressbar`` (tqdm, optional) advances by the points read."""
    picked, total = [], 0
    for i in rng.permutation(len(source.tiles)):
        tile = source.tiles[i]
        tile_use = use[tile.flat_indices(source.nx)].reshape(
            tile.r1 - tile.r0, tile.c1 - tile.c0
        )
        if not tile_use.any():
            continue
        room = max_points - total
        if tile_use.sum() > room:
            per_row = tile_use.sum(axis=1).cumsum()
            n_rows = max(1, int(np.searchsorted(per_row, room, side="right")))
            tile = Tile(tile.r0, tile.r0 + n_rows, tile.c0, tile.c1)
            tile_use = tile_use[:n_rows]
        picked.append((tile, source.read_tile(tile), tile_use))
        total += int(tile_use.sum())
        if progressbar is not None:
            progressbar.update(int(tile_use.sum()))
        if total >= max_points:
            break
    return picked


def _sum_of_squares(x: torch.Tensor, rows: int = 256) -> float:
    """Sum of the squares of ``x``'s values, in blocks of ``rows`` rows.

    ``(x**2).sum()`` makes a temporary as large as ``x`` (the PCA sample:
    0.9 GB for 15 000 patterns of 120 x 120 px); torch's float32 norm and
    dot product avoid it but drift at this size (off by 0.7 % and 0.09 % on
    4000 x 14 400 values), block sums by < 1e-7.
    """
    return sum(float((x[i : i + rows] ** 2).sum()) for i in range(0, len(x), rows))


def _pca(x: torch.Tensor, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``q`` principal directions and eigenvalues of centred rows ``x``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws a random test matrix
    try:
        _, s, v = torch.svd_lowrank(x, q=min(q + 10, min(x.shape)), niter=4)
    finally:
        torch.random.set_rng_state(generator_state)
    eig = (s[:q] ** 2 / max(1, x.shape[0] - 1)).numpy().astype(np.float64)
    return v[:, :q].T.contiguous().numpy(), eig


def preprocess(
    source: PatternSource,
    train_mask: np.ndarray,
    *,
    rank: int | str | None,
    variance: float | None,
    need_pca: bool,
    validation_fraction: float,
    max_validation_points: int,
    pca_samples: int,
    memory_budget: int,
    nonfinite: str,
    rng: np.random.Generator,
    show_progressbar: bool = False,
    keep_train_patterns: bool = False,
) -> Preprocessed:
    """Run every pre-training step; see the module docstring.

    ``train_mask`` is a flat boolean array over scan points (True: may be
    used). Raises ``ValueError`` for unusable data or rank requests. With
    ``show_progressbar``, its two reads of the data (the sample, then the
    pass over every tile: minutes for a large map on disk) show progress
    bars, removed when done. With ``keep_train_patterns``, the pass keeps
    the training patterns of a lazy map (``train_patterns``) when they, their
    band masks and the PCA scores (with their whitened copy) fit
    ``memory_budget``, for the fit's training buffer to take instead of
    reading the map again.
    """
    from tqdm.auto import tqdm

    usable = train_mask.copy()
    n_pixels = source.n_pixels
    if not usable.any():
        raise ValueError("The mask selects no scan points to train on")

    # --- subsample for the scale, the checks and PCA, bounded by memory. Per
    # value it takes the raw tiles and the float32 sample (itemsize + 4 bytes),
    # budgeted at itemsize + 8: the share of the budget it had when the total
    # variance made a float32 temporary, so fits draw the samples they drew
    # (at 120 x 120 px and the default budget 14 900 patterns: plenty for a
    # PCA of a few hundred components) and peak 40 % lower there.
    value_bytes = source.itemsize + 8
    max_points = int(
        min(pca_samples, max(2, memory_budget // (value_bytes * n_pixels)))
    )
    with tqdm(
        total=min(max_points, int(usable.sum())),
        desc="fit_neural: PCA sample",
        unit="pattern",
        disable=not show_progressbar,
        leave=False,
    ) as bar:
        tiles = _sample_tiles(source, usable, max_points, rng, bar)
    for k, (tile, raw, tile_use) in enumerate(tiles):
        flat = raw.reshape(-1, n_pixels)
        # Only points that may be trained on are checked: masked-out points
        # (e.g. NaN patterns of damaged areas) are never looked at.
        finite = np.ones(len(flat), bool)
        finite[tile_use.ravel()] = _check_finite(flat[tile_use.ravel()], nonfinite)
        ok = tile_use.ravel() & finite
        usable[tile.flat_indices(source.nx)[~finite]] = False
        tiles[k] = (tile, raw, ok.reshape(tile_use.shape))
    # Filled tile by tile: no second copy of the sample.
    sample = np.empty((sum(int(ok.sum()) for _, _, ok in tiles), n_pixels), np.float32)
    filled = 0
    for _, raw, ok in tiles:
        rows = raw.reshape(-1, n_pixels)[ok.ravel()]
        sample[filled : filled + len(rows)] = rows
        filled += len(rows)
    if len(sample) == 0:
        raise ValueError("No finite patterns among the training points")
    lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        raise ValueError(
            f"All sampled patterns are constant (every value is {lo:g}): there is "
            "nothing to fit."
        )

    def normalize(a: np.ndarray) -> np.ndarray:
        # (a - lo) / (hi - lo) as a float32 copy, without more temporaries.
        out = np.array(a, np.float32)
        np.subtract(out, lo, out=out)
        np.divide(out, hi - lo, out=out)
        return out

    # --- rank and PCA
    n_usable = int(usable.sum())
    mean = components = spectrum = None
    n_components = 0
    if need_pca:
        # normalize(sample) in place (the same float32 operations).
        np.subtract(sample, lo, out=sample)
        np.divide(sample, hi - lo, out=sample)
        x = torch.from_numpy(sample)
        mean_t = x.mean(dim=0)
        x -= mean_t
        total_variance = _sum_of_squares(x) / max(1, len(x) - 1)
        noise = _neighbour_noise(tiles, lo, hi)
        max_q = min(len(x) - 1, n_pixels - 1, n_usable - 1)
        if isinstance(rank, int | np.integer):
            limit = min(n_usable, n_pixels, len(x))
            if not 2 <= rank <= limit:
                raise ValueError(
                    f"rank={rank} is not possible here: it must be between 2 and "
                    f"{limit} (training points: {n_usable}, pixels per pattern: "
                    f"{n_pixels}, patterns sampled for PCA: {len(x)})."
                )
            q = rank - 1
        else:
            q = min(_FIRST_COMPONENTS, max_q)
        seed = int(rng.integers(2**31))
        while True:
            comps, eig = _pca(x, q, seed)
            spectrum = Spectrum(eig, total_variance, noise, len(x), n_pixels)
            if isinstance(rank, int | np.integer):
                chosen = int(rank)
            elif variance is not None:
                chosen = spectrum.rank_for_variance(variance)
            else:
                chosen = spectrum.auto_rank()
            if chosen is not None or q >= max_q:
                break
            q = min(2 * q, max_q)
        rank = chosen if chosen is not None else q + 1
        # A map with nothing above the noise (one grain) still needs one
        # component: the factorized field has the mean and at least one basis.
        rank = max(rank, 2)
        n_components = rank - 1
        mean, components = mean_t.numpy(), comps[:n_components]
        del x
    del sample, tiles  # the PCA subsample is not needed any more

    # --- validation split among usable points
    candidates = np.flatnonzero(usable)
    n_val = int(round(validation_fraction * len(candidates)))
    if validation_fraction > 0:
        # Early stopping on a handful of points is noise: small scans hold
        # out at least 16 points (at most a quarter of them).
        n_val = max(n_val, min(_MIN_VALIDATION_POINTS, len(candidates) // 4))
    n_val = min(n_val, max_validation_points, len(candidates) - 1)
    val_points = np.sort(rng.choice(candidates, size=n_val, replace=False))
    is_val = np.zeros_like(usable)
    is_val[val_points] = True

    # --- one pass: finiteness everywhere, scores of training points, validation
    # patterns and, if kept, training patterns
    kept_points = kept = None
    if keep_train_patterns and source.is_lazy:
        kept_points = np.flatnonzero(usable & ~is_val)
        scores_bytes = 2 * len(kept_points) * n_components * 4
        if buffer_fits(source, len(kept_points), memory_budget - scores_bytes):
            kept = np.empty((len(kept_points), n_pixels), source.data.dtype)
    score_rows, val_rows, val_found = [], [], []
    comps_t = None if components is None else torch.from_numpy(components).T
    mean_t = None if mean is None else torch.from_numpy(mean)
    for tile, raw in tqdm(
        source.iter_tiles(),
        total=len(source.tiles),
        desc="fit_neural: reading the scan",
        unit="tile",
        disable=not show_progressbar,
        leave=False,
    ):
        flat_idx = tile.flat_indices(source.nx)
        flat = raw.reshape(-1, n_pixels)
        wanted = usable[flat_idx]
        if not wanted.any():
            continue
        finite = _check_finite(flat[wanted], nonfinite)
        bad = flat_idx[wanted][~finite]
        usable[bad] = False
        is_val[bad] = False
        train_here = usable[flat_idx] & ~is_val[flat_idx]
        if kept is not None and train_here.any():
            kept[np.searchsorted(kept_points, flat_idx[train_here])] = flat[train_here]
        if comps_t is not None and train_here.any():
            x = torch.from_numpy(normalize(flat[train_here])).sub_(mean_t)
            score_rows.append((flat_idx[train_here], (x @ comps_t).numpy()))
        val_here = is_val[flat_idx]
        if val_here.any():
            val_found.append(flat_idx[val_here])
            val_rows.append(np.array(flat[val_here]))
    train_points = np.flatnonzero(usable & ~is_val)
    if len(train_points) == 0:
        raise ValueError("No usable training points remain after the validation split")
    if kept is not None and len(train_points) < len(kept_points):
        # Non-finite patterns left holes: close them in place.
        kept = _drop_rows(kept, np.isin(kept_points, train_points))

    scores = None
    if comps_t is not None:
        # Tiles may visit points out of order: align scores with train_points.
        idx = np.concatenate([i for i, _ in score_rows])
        vals = np.concatenate([v for _, v in score_rows])
        scores = vals[np.argsort(idx)]
    if val_found:
        order = np.argsort(np.concatenate(val_found))
        val_points = np.concatenate(val_found)[order]
        val_patterns = np.concatenate(val_rows)
        del val_rows[:]
        val_patterns = val_patterns[order]
    else:
        val_points = np.zeros(0, np.int64)
        val_patterns = np.zeros((0, n_pixels), source.data.dtype)
    return Preprocessed(
        intensity_range=(lo, hi),
        train_points=train_points,
        val_points=val_points,
        val_patterns=val_patterns,
        rank=rank if need_pca else None,
        mean=mean,
        components=components,
        spectrum=spectrum,
        scores=scores,
        train_patterns=kept,
    )


def _drop_rows(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``a[keep]`` without a copy of ``a``: the kept rows move, in order and in
    pieces, to the top of ``a`` (a row never moves to a higher index, so no
    piece overwrites rows still to be moved); returns a view of the first
    ``keep.sum()`` rows."""
    rows = np.flatnonzero(keep)
    piece = max(1, len(rows) // 64)
    for start in range(0, len(rows), piece):
        r = rows[start : start + piece]
        a[start : start + len(r)] = a[r]
    return a[: len(rows)]
