"""Rate-distortion and decoding throughput of model files on real data.

Data: the real 200 x 200 crop of 120 x 120 px patterns (uint16 counts) in
``../shared/data/real/rx_ni_superalloy_calvat`` (see ``_real_data.py``).

The steps, each a subcommand (``--help`` for options):

``fit``
    Fit neural models over ranks and network widths, save each as a
    float32 model file. Runs on CPU or CUDA (``--device``); where HyperSpy
    and kikuchipy are not installed (a bare GPU machine), the scan is
    passed to :func:`kikuchipy_neural.training.fit` as a minimal stand-in
    signal with the same axes.
``refit-bases``
    For models fitted before ``fit`` refitted the bases after training (fit
    option ``refit_bases``, added 2026-12-02): the same function on the
    loaded model, saved as a new float32 file. Model files do not keep the
    fit's validation points: as many are drawn anew (``--seed``), held out
    of the solve and used to accept it (a weaker check than the fit's: the
    network was trained on them).
``evaluate``
    In one run: every fitted model re-saved at every precision (file bytes,
    with ``--point-intensity`` also with a gain and offset per scan point as
    ``fit_neural(point_intensity=True)`` adds them,
    map MAE inside the circular aperture, % of the map's maximum); PCA at
    the same ranks storing float16 scores and components; PCA with scores
    quantised to 4, 6 or 8 bits per component (min/max range) and compressed
    by a general codec (the best of zlib and lzma, with and without a delta
    filter); PCA with int8 components and all scores quantised with one
    step (``--steps``, counts per pixel; the stronger baseline, see
    ``_uniform_step_points``) through the same codec, the components also
    tried as the second differences that int8 model files store their
    bases as (format 3); lossless codecs
    (zlib, lzma, zstd/blosc when installed, each with and without byte
    shuffling) on the raw uint16 patterns. Writes a JSON of every point, a
    Markdown table and the rate-distortion figure, and extrapolates every
    method to the paper's full map (900 x 1000 points of 120 x 120 px):

    - neural: the file does not grow with the map (network bytes constant,
      bases = rank x pixels), so full-map bytes = crop bytes, except for
      per-point intensities (2 values per point), scaled with the points;
    - PCA: components (rank x pixels) constant, scores scale with points,
      ``bytes_full = bytes_components + bytes_scores * 900000 / 40000``;
    - lossless: the crop's compression ratio.

    Accuracies are assumed to carry over from the crop unchanged (the same
    rank and network suffice for the whole map): an assumption, stated with
    the numbers.
``throughput``
    Patterns per second decoded from a model file on a given number of CPU
    threads (directly, and through ``kikuchipy_neural.load`` + dask) versus
    reading the same raw patterns from a kikuchipy h5ebsd file.
``replot``
    Table and figure again from the saved results.

Outputs: ``results/compression.json`` (every point), ``results/compression.md``
(tables), ``figures/compression_rate_distortion.png``,
``results/compression_throughput.json``; model files under
``_out/compression/`` (not committed). The exact commands and machines of
the reported run are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _real_data  # noqa: E402

OUT = HERE / "_out" / "compression"  # model files (large, not committed)
RESULTS = HERE / "results" / "compression.json"
TABLE = HERE / "results" / "compression.md"
FIGURE = HERE / "figures" / "compression_rate_distortion.png"
THROUGHPUT = HERE / "results" / "compression_throughput.json"
FULL_MAP_POINTS = 900 * 1000
PAPER_MAE_PERCENT = 0.6  # the paper's accuracy, % of full scale
TARGET_MAE_COUNTS = 350.0
TARGET_RATIO_CROP = 250.0
TARGET_RATIO_FULL = 2500.0
DEFAULT_CONFIGS = "16:64,16:128,24:128,32:128,32:256,48:256,64:256,32:512"
DEFAULT_PCA_RANKS = "4,6,8,12,16,24,32,48,64,96,128"
DEFAULT_STEPS = "8,16,32,64,128,256,512"
_BLOCK = 2000  # patterns per decoding block (bounded memory)


# ------------------------------------------------------------------- data


def _decode_crop() -> np.ndarray:
    """The crop's counts, uint16 ``(200, 200, 120, 120)``.

    ``KIKUCHIPY_NEURAL_CALVAT`` may point to the data folder elsewhere (a
    GPU machine). Without kikuchipy, the tiles are decoded here with
    ``_real_data``'s own tile reader and constants (same recipe).
    """
    if os.environ.get("KIKUCHIPY_NEURAL_CALVAT"):
        _real_data.CALVAT_DIR = Path(os.environ["KIKUCHIPY_NEURAL_CALVAT"])
    try:
        import kikuchipy  # noqa: F401
    except ImportError:
        size, tile, px = _real_data._SIZE, _real_data._TILE, _real_data._PX
        out = np.empty((size, size, px, px), np.uint16)
        for ty in range(size // tile):
            for tx in range(size // tile):
                gray, ranges = _real_data._tile(ty, tx)
                g = (
                    gray.reshape(tile, px, tile, px)
                    .transpose(0, 2, 1, 3)
                    .astype(np.float64)
                )
                lo, hi = ranges[..., :1, None], ranges[..., 1:, None]
                # (hi - lo) in float32, as _real_data computes it: identical counts
                v = lo.astype(np.float64) + g / 255.0 * (hi - lo).astype(np.float64)
                counts = (v - _real_data._BIAS) / _real_data._SCALE
                out[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile] = np.clip(
                    np.rint(counts), 0, 65535
                )
        return out
    return np.asarray(_real_data.load_calvat_crop().data)


def _load_data(cache: str | None) -> np.ndarray:
    """The crop as uint16 ``(200, 200, 120, 120)``, optionally cached as .npy."""
    if cache and Path(cache).exists():
        return np.load(cache, mmap_mode="r")
    t = time.perf_counter()
    data = _decode_crop()
    print(
        f"decoded the crop {data.shape} in {time.perf_counter() - t:.0f} s", flush=True
    )
    if cache:
        np.save(cache, data)
    return data


def _scan(data: np.ndarray):
    """A kikuchipy NeuralEBSD signal of ``data``, or, where HyperSpy is not
    installed, a stand-in with the same axes (all that ``fit`` reads)."""
    try:
        import kikuchipy as kp
    except ImportError:
        ny, nx, h, w = data.shape

        def axis(size, name, units):
            return SimpleNamespace(
                size=size, scale=1.0, offset=0.0, units=units, name=name
            )

        axes = SimpleNamespace(
            navigation_axes=[axis(nx, "x", "px"), axis(ny, "y", "px")],
            signal_axes=[axis(w, "dx", "px"), axis(h, "dy", "px")],
        )
        return SimpleNamespace(data=data, axes_manager=axes, detector=None, xmap=None)
    s = kp.signals.EBSD(np.asarray(data))
    s.detector = kp.detectors.EBSDDetector(shape=data.shape[2:])
    s.set_signal_type("NeuralEBSD")
    return s


# -------------------------------------------------------------------- fit


def _parse_configs(text: str) -> list[tuple[int, int, int]]:
    configs = []
    for item in text.split(","):
        parts = [int(v) for v in item.split(":")]
        rank, width = parts[:2]
        layers = parts[2] if len(parts) > 2 else 5
        configs.append((rank, width, layers))
    return configs


def cmd_fit(args) -> None:
    import torch

    from kikuchipy_neural.training.fit import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    data = np.ascontiguousarray(_load_data(args.cache))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = json.loads(args.options) if args.options else {}
    for rank, width, layers in _parse_configs(args.configs):
        name = f"neural_r{rank}_w{width}_l{layers}{args.tag}"
        if (out / f"{name}.h5").exists() and not args.overwrite:
            print(f"{name}: exists, skipped", flush=True)
            continue
        t = time.perf_counter()
        model = fit(
            _scan(data),
            rank=rank,
            max_steps=args.max_steps,
            time_budget=args.time_budget,
            device=args.device,
            seed=args.seed,
            show_progressbar=not args.quiet,
            siren_width=width,
            siren_layers=layers,
            **options,
        )
        model.info["benchmark_device"] = str(model.device)
        model.to("cpu").save(out / f"{name}.h5", precision="float32")
        mae = [v for v in model.history["val_mae"] if v == v]  # NaN without validation
        best = (
            f"best validation MAE {min(mae):.1f} counts"
            if mae
            else "no validation points"
        )
        print(
            f"{name}: {model.info['steps']} steps, {time.perf_counter() - t:.0f} s "
            f"({model.info['stop_reason']}), {best}",
            flush=True,
        )


def cmd_refit_bases(args) -> None:
    import torch

    from kikuchipy_neural.io.model_file import load_model
    from kikuchipy_neural.training.data import PatternSource
    from kikuchipy_neural.training.refit_bases import refit_bases

    if args.threads:
        torch.set_num_threads(args.threads)
    data = np.ascontiguousarray(_load_data(args.cache))
    source = PatternSource(data)
    flat = data.reshape(data.shape[0] * data.shape[1], -1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for path in sorted(Path(args.models).glob("neural_*.h5")):
        model = load_model(path)
        if "refit_bases" in model.info:
            print(f"{path.name}: bases refitted by its fit, skipped", flush=True)
            continue
        n = model.geometry.n_points
        val = np.sort(rng.choice(n, int(model.info["n_val_points"]), replace=False))
        train = np.setdiff1d(np.arange(n), val)
        summary = refit_bases(model, source, train, val, flat[val])
        # Marked: not the fit's own refit (other validation points).
        model.info["refit_bases"] = {**summary, "by": "compression.py refit-bases"}
        model.save(out / path.name, precision="float32")
        print(
            f"{path.name}: {'kept' if summary['applied'] else 'rejected'}, "
            f"validation MAE {summary['validation_mae_before']:.1f} -> "
            f"{summary['validation_mae_after']:.1f} counts "
            f"({summary['seconds']:.0f} s)",
            flush=True,
        )


# --------------------------------------------------------------- metrics


def _aperture(shape) -> np.ndarray:
    from kikuchipy_neural.analysis.metrics import aperture_mask

    return aperture_mask(shape).ravel()


def _point_mae(
    patterns: np.ndarray, measured: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """MAE inside the aperture of each pattern (counts), float64 ``(n,)``."""
    diff = patterns[:, mask] - measured[:, mask].astype(np.float32)
    return np.abs(diff, out=diff).mean(axis=1, dtype=np.float64)


def _point_maes(reconstruct, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-point MAE inside the aperture over the whole map (counts).

    ``reconstruct(start, stop)`` returns float32 ``(stop - start, n_pixels)``
    for flat scan indices ``start:stop``; decoded block by block.
    """
    flat = data.reshape(data.shape[0] * data.shape[1], -1)
    out = np.empty(len(flat))
    for start in range(0, len(flat), _BLOCK):
        stop = min(start + _BLOCK, len(flat))
        out[start:stop] = _point_mae(reconstruct(start, stop), flat[start:stop], mask)
    return out


def _map_mae(reconstruct, data: np.ndarray, mask: np.ndarray) -> float:
    """Mean over patterns of the MAE inside the aperture (counts)."""
    return float(_point_maes(reconstruct, data, mask).mean())


# ---------------------------------------------------------------- neural


def _neural_points(
    models_dir: Path,
    files_dir: Path,
    data,
    mask,
    precisions,
    point_intensity: bool = False,
) -> list[dict]:
    from kikuchipy_neural.io.model_file import file_summary, load_model
    from kikuchipy_neural.training.data import PatternSource
    from kikuchipy_neural.training.point_intensity import fit_point_intensity

    files_dir.mkdir(parents=True, exist_ok=True)
    ny, nx = data.shape[:2]
    rows = []
    for source, with_pi in (
        (source, with_pi)
        for source in sorted(models_dir.glob("neural_*.h5"))
        for with_pi in ((False, True) if point_intensity else (False,))
    ):
        model = load_model(source)
        if model.geometry.nav_shape != (ny, nx):
            print(f"{source.name}: fitted on another scan, skipped")
            continue
        # Each model is evaluated as fitted and, with --point-intensity, with
        # intensities fitted here, whether or not its file brought its own.
        model.point_intensity = None
        if with_pi:
            # What fit_neural(point_intensity=True) adds after training.
            model.point_intensity = fit_point_intensity(
                model, PatternSource(data), np.ones(ny * nx, bool)
            )
        xy = model.geometry.grid_xy().reshape(-1, 2)
        tag = "_pi" if with_pi else ""
        for precision_name in precisions:
            # "int8-balanced": int8 with the bases' steps balanced by their
            # coefficients (save(balanced_bases=True)).
            balanced = precision_name == "int8-balanced"
            precision = "int8" if balanced else precision_name
            suffix = "int8b" if balanced else precision
            path = model.save(
                files_dir / f"{source.stem}{tag}_{suffix}.h5",
                precision=precision,
                balanced_bases=balanced,
            )
            m = load_model(path)
            t = time.perf_counter()
            mae = _map_mae(
                lambda a, b, m=m, xy=xy: m.query(xy[a:b]).reshape(b - a, -1), data, mask
            )
            summary = file_summary(path)
            cfg = summary["field"]
            row = {
                "method": "neural",
                "label": f"neural{' + point intensity' if with_pi else ''} "
                f"{precision}{' balanced' if balanced else ''}",
                "balanced_bases": balanced,
                "point_intensity": with_pi,
                "point_intensity_bytes": summary["array_bytes"].get(
                    "point_intensity", 0
                ),
                "name": path.stem,
                "rank": cfg["rank"],
                "width": cfg["width"],
                "layers": cfg["layers"],
                "precision": precision,
                "bytes": summary["file_bytes"],
                "network_bytes": sum(
                    v
                    for k, v in summary["array_bytes"].items()
                    if k.startswith("network")
                ),
                "bases_bytes": sum(
                    v
                    for k, v in summary["array_bytes"].items()
                    if k.startswith("bases")
                ),
                "payload_bytes": _payload_bytes(path),
                "format_version": summary["format_version"],
                "mae_counts": mae,
                "fit_steps": model.info.get("steps"),
                "fit_seconds": model.info.get("seconds"),
                "fit_device": model.info.get("benchmark_device"),
                "decode_seconds": time.perf_counter() - t,
            }
            rows.append(row)
            print(
                f"{path.name}: {row['bytes'] / 1e6:.3f} MB, MAE {mae:.1f} counts "
                f"(decoded in {row['decode_seconds']:.0f} s)",
                flush=True,
            )
    return rows


def _payload_bytes(path: str | Path, skip_prefix: str | None = None) -> int:
    """The model file's arrays (but those named ``skip_prefix...``) and
    header, each through the baselines' best codec, with no HDF5 structure:
    the file's bytes had it been coded like PCA's components and scores. A
    fairness check on the comparison, not a file anyone can load.

    Files of format 4 on store LZMA streams already (the best of three
    codings per array, like :func:`_compress_best`): their streams' bytes
    (format 5: the history's among them, and the header's deflate stream).
    Older files (gzip, one dataset per array): each dataset through
    :func:`_compress_best`.
    """
    import h5py

    from kikuchipy_neural.io.model_file import file_summary

    summary = file_summary(path)
    if summary["format_version"] >= 4:
        return summary["header_stored_bytes"] + sum(
            n
            for name, n in summary["stored_bytes"].items()
            if skip_prefix is None or not name.startswith(skip_prefix)
        )
    with h5py.File(path, "r") as f:
        total = 0
        for name in f:
            if skip_prefix is None or not name.startswith(skip_prefix):
                array = np.asarray(f[name])
                total += _compress_best(array.tobytes(), array.itemsize)[0]
    return total


# ------------------------------------------------------------------- PCA


def _compress_best(raw: bytes, delta_width: int | None = None) -> tuple[int, str]:
    """Smallest of zlib-9 and lzma (preset 9e), each with and without a
    delta filter of ``delta_width`` bytes; returns (bytes, codec)."""
    best = (len(zlib.compress(raw, 9)), "zlib")
    candidates = {
        "lzma": [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    }
    if delta_width:
        candidates["delta+lzma"] = [
            {"id": lzma.FILTER_DELTA, "dist": delta_width},
            {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME},
        ]
    for name, filters in candidates.items():
        n = len(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters))
        best = min(best, (n, name))
    return best


def _quantise(
    scores: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine quantisation per component (column): codes, offsets, steps."""
    lo = scores.min(axis=0)
    levels = 2**bits - 1
    step = (scores.max(axis=0) - lo) / levels
    step = np.where(step > 0, step, 1.0).astype(np.float32)
    codes = np.clip(np.rint((scores - lo) / step), 0, levels).astype(np.uint8)
    return codes, lo.astype(np.float32), step


def _pca(data, n_components: int, seed: int = 0):
    """PCA of the map's patterns (randomised SVD): mean ``(p,)``, components
    ``(n_components, p)`` and scores ``(n_points, n_components)``."""
    import torch

    n = data.shape[0] * data.shape[1]
    x = torch.from_numpy(np.asarray(data.reshape(n, -1), np.float32))
    mean = x.mean(dim=0)
    x -= mean
    t = time.perf_counter()
    torch.manual_seed(seed)
    _, _, v = torch.svd_lowrank(x, q=n_components + 10, niter=4)
    v = v[:, :n_components].contiguous()
    scores = (x @ v).numpy()
    print(
        f"PCA of {n} patterns to {n_components} components in "
        f"{time.perf_counter() - t:.0f} s",
        flush=True,
    )
    return mean.numpy(), v.T.numpy(), scores


def _components_bytes(mean: np.ndarray, components: np.ndarray) -> tuple[int, str]:
    """Mean and components as float16 through the best codec."""
    return _compress_best(
        np.concatenate([mean[None], components]).astype("<f2").tobytes(),
        delta_width=2,
    )


def _score_maps_bytes(codes: np.ndarray, shape: tuple[int, int]) -> tuple[int, str]:
    """Quantised scores ``(n_points, k)`` as component-major maps (each an
    image the codec sees whole) through the best codec."""
    maps = np.ascontiguousarray(codes.T.reshape(codes.shape[1], *shape))
    return _compress_best(maps.tobytes(), delta_width=codes.itemsize)


def _int8_components(
    mean: np.ndarray,
    components: np.ndarray,
    pattern_shape: tuple[int, int],
    mean_bits: int = 8,
    score_rms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Components as 8-bit codes with one offset and step each (as int8
    model files store their bases), the mean likewise (``mean_bits=8``, as
    the files store their first basis, which plays the mean's part) or as
    float16 (``mean_bits=16``), through the best codec, with and without
    the model file's second differences over each 8-bit image
    (``model_file._difference_2d``): dequantised mean and components, bytes
    and codec.

    The 8-bit mean is 8.3 kB smaller on the crop at every rank; it costs
    about 1 count at ranks 2-8 and 2 counts at ranks 24-206, where the
    float16 mean is the better choice from about 300 kB up. (Until
    2026-12-02 only the float16 mean was tried.)

    ``score_rms`` (one per component): balance the 8-bit images' steps by
    the RMS of their weights (the mean's is 1), as int8 model files do with
    ``save(balanced_bases=True)`` (``model_file._balanced_basis_steps``).
    """
    from kikuchipy_neural.io.model_file import (
        _balanced_basis_steps,
        _dequantise_rows,
        _difference_2d,
        _quantise_rows,
    )

    if mean_bits not in (8, 16):
        raise ValueError(f"mean_bits must be 8 or 16, got {mean_bits!r}")
    images = np.concatenate([mean[None], components]) if mean_bits == 8 else components
    min_steps = None
    if score_rms is not None:
        weights = np.concatenate([[1.0], score_rms]) if mean_bits == 8 else score_rms
        min_steps = _balanced_basis_steps(images, weights)
    # The model files' own quantiser: the same codes as their bases get.
    maps, lo, step = _quantise_rows(images, min_steps)
    head = b"" if mean_bits == 8 else mean.astype("<f2").tobytes()
    nbytes, codec = _compress_best(head + maps.tobytes(), delta_width=1)
    d_bytes, d_codec = _compress_best(
        head + _difference_2d(maps, pattern_shape).tobytes(), delta_width=1
    )
    if d_bytes < nbytes:
        nbytes, codec = d_bytes, f"diff2d+{d_codec}"
    deq = _dequantise_rows(maps, lo, step)
    nbytes += 8 * len(deq)
    if mean_bits == 8:
        return deq[0], deq[1:], nbytes, codec
    return mean.astype(np.float16).astype(np.float32), deq, nbytes, codec


def _one_step(values: np.ndarray, step: float, shape) -> tuple[np.ndarray, int, str]:
    """``values`` ``(n_points, k)`` quantised with one step for all columns:
    the dequantised values, and the codes (shifted to start at 0 per column;
    uint8 where they fit, else uint16) as maps through the best codec (bytes,
    codec). A decoder needs the step and one integer offset per column."""
    levels = np.rint(values / step)
    codes = levels - levels.min(axis=0)
    dtype = np.uint8 if codes.max() < 256 else np.uint16
    nbytes, codec = _score_maps_bytes(codes.astype(dtype), shape)
    return (levels * step).astype(np.float32), nbytes, codec


def _uniform_step_points(
    data,
    mask,
    rank: int,
    mean,
    comps,
    scores,
    steps_per_pixel,
    mean_bits=(8, 16),
    balanced=(False, True),
) -> list[dict]:
    """PCA with int8 components and every score quantised with one step.

    The components are orthonormal, so a score's quantisation error adds the
    same error to a pattern whichever component it belongs to: one step for
    all of them is the rate-distortion choice (a per-component min/max range
    at a fixed bit depth gives the leading components coarse steps and the
    trailing ones needlessly fine ones). The step is ``steps_per_pixel``
    times the square root of the pattern's pixel count (a step of ``s``
    counts per pixel spread over the pattern); codes as ``_one_step``. The
    mean at each of ``mean_bits`` (8 and 16: see ``_int8_components``), the
    components' steps by their ranges and (``balanced``) balanced by the
    scores' RMS, as ``save(balanced_bases=True)`` balances a model's bases.
    """
    ny, nx = data.shape[:2]
    k = rank - 1
    rms = np.sqrt(np.mean(np.square(scores[:, :k], dtype=np.float64), axis=0))
    # The components' codes are the same at every step: coded once per mean.
    coded = {
        (bits, b): _int8_components(
            mean, comps[:k], data.shape[2:], bits, rms if b else None
        )
        for bits in mean_bits
        for b in balanced
    }
    rows = []
    for (bits, b), per_pixel in ((c, s) for c in coded for s in steps_per_pixel):
        mean_q, comps_q, comp_bytes, comp_codec = coded[bits, b]
        tag = ("" if bits == 8 else "_m16") + ("_b" if b else "")
        step = per_pixel * math.sqrt(comps.shape[1])
        deq, score_bytes, codec = _one_step(scores[:, :k], step, (ny, nx))
        mae = _map_mae(
            lambda a, b, m=mean_q, d=deq, c=comps_q: m + d[a:b] @ c, data, mask
        )
        # the step and one integer offset per component
        nbytes = comp_bytes + score_bytes + 4 + 4 * k
        rows.append(
            dict(method="pca_u", label="PCA, int8 components, one-step scores + codec",
                 name=f"pca_u_r{rank}_s{per_pixel:g}{tag}", rank=rank, step_per_pixel=per_pixel,
                 mean_bits=bits, balanced_components=b,
                 bytes=nbytes, components_bytes=comp_bytes + 4 + 4 * k, scores_bytes=score_bytes,
                 codec=f"{codec} / {comp_codec}", mae_counts=mae)
        )  # fmt: skip
        print(
            f"PCA int8 ({bits}-bit mean{', balanced' if b else ''}), "
            f"step {per_pixel:g}/px, rank {rank}: "
            f"{nbytes / 1e6:.3f} MB "
            f"({codec}), MAE {mae:.1f}",
            flush=True,
        )
    return rows


def _pca_points(
    data,
    mask,
    ranks,
    bits_list,
    steps_per_pixel=(),
    mean_bits=(8, 16),
    balanced=(False, True),
    seed: int = 0,
) -> list[dict]:
    ny, nx = data.shape[:2]
    mean, comps, scores = _pca(data, max(ranks) - 1, seed)

    rows = []
    for rank in ranks:
        k = rank - 1
        # float16 scores and components (the paper-style PCA baseline)
        # Scores reach millions of counts: each component's scores are stored
        # as float16 divided by a float32 scale (4 bytes a component), which
        # float16 alone would overflow.
        scale = np.abs(scores[:, :k]).max(axis=0) / 1024 + 1e-12
        m16, c16 = (a.astype(np.float16).astype(np.float32) for a in (mean, comps[:k]))
        s16 = (scores[:, :k] / scale).astype(np.float16).astype(np.float32) * scale
        mae = _map_mae(lambda a, b, m=m16, s=s16, c=c16: m + s[a:b] @ c, data, mask)
        nbytes = 2 * (mean.size + c16.size + s16.size) + 4 * k
        rows.append(
            dict(method="pca_f16", label="PCA, float16 scores", rank=rank, bytes=nbytes,
                 components_bytes=2 * (mean.size + c16.size), scores_bytes=2 * s16.size, mae_counts=mae)
        )  # fmt: skip
        print(
            f"PCA float16 rank {rank}: {nbytes / 1e6:.3f} MB, MAE {mae:.1f}", flush=True
        )
        # quantised score maps through a general codec
        comp_bytes, comp_codec = _components_bytes(mean, comps[:k])
        for bits in bits_list:
            codes, lo, step = _quantise(scores[:, :k], bits)
            deq = lo + codes.astype(np.float32) * step
            mae = _map_mae(lambda a, b, m=m16, d=deq, c=c16: m + d[a:b] @ c, data, mask)
            score_bytes, codec = _score_maps_bytes(codes, (ny, nx))
            nbytes = comp_bytes + score_bytes + 8 * k
            rows.append(
                dict(method=f"pca_q{bits}", label=f"PCA, {bits}-bit scores + codec", rank=rank,
                     bits=bits, bytes=nbytes, components_bytes=comp_bytes + 8 * k,
                     scores_bytes=score_bytes, codec=f"{codec} / {comp_codec}", mae_counts=mae)
            )  # fmt: skip
            print(
                f"PCA {bits}-bit rank {rank}: {nbytes / 1e6:.3f} MB ({codec}), MAE {mae:.1f}",
                flush=True,
            )
        rows += _uniform_step_points(
            data, mask, rank, mean, comps, scores, steps_per_pixel, mean_bits, balanced
        )
    return rows


# -------------------------------------------------------------- lossless


def _codecs() -> dict:
    codecs = {
        "zlib-9": lambda b: zlib.compress(b, 9),
        "lzma-6": lambda b: lzma.compress(b, preset=6),
    }
    try:
        import zstandard

        codecs["zstd-19"] = zstandard.ZstdCompressor(level=19).compress
    except ImportError:
        pass
    try:
        import blosc2

        codecs["blosc2-zstd-9"] = lambda b: blosc2.compress(
            b,
            typesize=2,
            clevel=9,
            codec=blosc2.Codec.ZSTD,
            filter=blosc2.Filter.SHUFFLE,
        )
    except ImportError:
        pass
    return codecs


def _lossless_points(data, fraction: float) -> list[dict]:
    """Codecs on whole scan rows (200 patterns, 5.8 MB, as an HDF5 chunk
    would hold), on ``fraction`` of the rows spread over the map."""
    ny = data.shape[0]
    take = np.unique(
        np.linspace(0, ny - 1, max(1, round(ny * fraction))).round().astype(int)
    )
    rows = []
    for name, compress in _codecs().items():
        for shuffle in (False, True):
            t = time.perf_counter()
            raw_total = comp_total = 0
            for r in take:
                row = np.ascontiguousarray(data[r], "<u2")
                raw = (
                    row.view(np.uint8).reshape(-1, 2).T.tobytes()
                    if shuffle
                    else row.tobytes()
                )
                raw_total += len(raw)
                comp_total += len(compress(raw))
            ratio = raw_total / comp_total
            label = name + ("+shuffle" if shuffle else "")
            rows.append(
                dict(method="lossless", label=label, bytes=int(data.nbytes / ratio), ratio=ratio,
                     mae_counts=0.0, rows_measured=len(take), seconds=time.perf_counter() - t)
            )  # fmt: skip
            print(
                f"{label}: {ratio:.2f}x on {len(take)} rows ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
            if "blosc" in name:
                break  # blosc shuffles itself
    return rows


# -------------------------------------------------------------- analysis


def _extrapolate(row: dict, n_crop: int) -> int:
    scale = FULL_MAP_POINTS / n_crop
    if row["method"] == "neural":
        # The network and bases do not grow with the map; per-point
        # intensities (2 values per point) do.
        return int(row["bytes"] + row.get("point_intensity_bytes", 0) * (scale - 1))
    if row["method"] == "lossless":
        return int(row["bytes"] * scale)
    return int(row["components_bytes"] + row["scores_bytes"] * scale)


def _front(rows: list[dict], key: str) -> list[dict]:
    """Pareto front (fewer bytes, lower MAE) of ``rows``."""
    front, best = [], math.inf
    for r in sorted(rows, key=lambda r: (r[key], r["mae_counts"])):
        if r["mae_counts"] < best:
            front.append(r)
            best = r["mae_counts"]
    return front


def _best_at(rows, key, mae_max):
    ok = [r for r in rows if r["mae_counts"] <= mae_max]
    return min(ok, key=lambda r: r[key]) if ok else None


def _budget_segments(rows: list[dict], key: str, upto: float) -> list[tuple]:
    """Who holds the best file within each budget: ``(start, end, neural?)``
    ranges of byte budgets, from the smallest file of ``rows`` to ``upto``.

    The best file within a budget is the lowest MAE among the files no
    larger; it changes only at a file's size, so the ranges start at the
    sizes of the files on the Pareto front.
    """
    segments: list[list] = []
    for r in _front(rows, key):
        if r[key] > upto:
            break
        neural = r["method"] == "neural"
        if segments and segments[-1][2] == neural:
            continue
        if segments:
            segments[-1][1] = r[key]
        segments.append([r[key], upto, neural])
    return [tuple(s) for s in segments]


def _kb(n: float) -> str:
    """A size in bytes below 1 MB (two files' sizes may be a few bytes
    apart), in MB above."""
    return f"{n:,.0f} B" if n < 1e6 else f"{n / 1e6:,.2f} MB"


def _point_name(row: dict) -> str:
    """A baseline point in words: its family, rank and quantisation."""
    name = f"{row['label']} rank {row.get('rank', '-')}"
    if "step_per_pixel" in row:
        name += f", step {row['step_per_pixel']:g}/px"
    return name


def _summarise(result: dict) -> str:
    rows, raw, raw_full, vmax = (
        result["rows"], result["raw_bytes"], result["raw_bytes_full_map"], result["max_count"],
    )  # fmt: skip
    paper_counts = PAPER_MAE_PERCENT / 100 * vmax
    lines = [
        f"Map: {result['scan_shape'][0]} x {result['scan_shape'][1]} points of "
        f"{result['pattern_shape'][0]} x {result['pattern_shape'][1]} px, raw uint16 "
        f"{raw / 1e9:.3f} GB; max count {vmax}; MAE inside the aperture, % of the max.",
        f"Full-map extrapolation: {FULL_MAP_POINTS} points, raw {raw_full / 1e9:.2f} GB.",
        "",
        "| method | model | rank | width | precision | bytes (crop) | ratio (crop) | MAE counts | MAE % | ratio (full map) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        rows,
        key=lambda r: (
            r["method"],
            r.get("rank") or 0,
            r.get("width") or 0,
            r["bytes"],
        ),
    ):
        # The fitted model a neural row re-saves (several fits share a shape).
        model = (
            r["name"].removesuffix(f"_{r['precision']}") if "precision" in r else "-"
        )
        # PCA's quantisation goes in the precision column.
        precision = r.get("precision", "-")
        if "step_per_pixel" in r:
            precision = f"int8, step {r['step_per_pixel']:g}/px"
        lines.append(
            f"| {r['label']} | {model} | {r.get('rank', '-')} | {r.get('width', '-')} | "
            f"{precision} | {r['bytes']:,} | {raw / r['bytes']:.0f} | "
            f"{r['mae_counts']:.1f} | {100 * r['mae_counts'] / vmax:.3f} | "
            f"{raw_full / r['bytes_full_map']:.0f} |"
        )
    lines += ["", "Best ratio per method family within an accuracy:", ""]
    lines += [
        "| family | MAE limit | ratio (crop) | ratio (full map) | point (crop; full map where another) |",
        "|---|---|---|---|---|",
    ]
    families = {
        "neural": [r for r in rows if r["method"] == "neural"],
        "PCA float16": [r for r in rows if r["method"] == "pca_f16"],
        "PCA quantised + codec": [r for r in rows if r["method"].startswith("pca_q")],
        "PCA int8 + one-step scores": [r for r in rows if r["method"] == "pca_u"],
        "lossless": [r for r in rows if r["method"] == "lossless"],
    }
    for limit_name, limit in (
        (f"{TARGET_MAE_COUNTS:.0f} counts", TARGET_MAE_COUNTS),
        (f"{PAPER_MAE_PERCENT} % = {paper_counts:.0f} counts", paper_counts),
    ):
        for family, sel in families.items():
            crop = _best_at(sel, "bytes", limit)
            full = _best_at(sel, "bytes_full_map", limit)
            if crop is None:
                lines.append(f"| {family} | {limit_name} | - | - | none reaches it |")
                continue
            point = f"{crop.get('name', crop['label'])} rank {crop.get('rank', '-')}"
            if full is not crop:  # e.g. per-point intensities grow with the map
                point += f"; full map: {full.get('name', full['label'])} rank {full.get('rank', '-')}"
            lines.append(
                f"| {family} | {limit_name} | {raw / crop['bytes']:.0f} | "
                f"{raw_full / full['bytes_full_map']:.0f} | {point} |"
            )
    # Is the neural curve ahead of every baseline at equal bytes? Also asked
    # with the neural files' arrays through the baselines' codec
    # ("payload_bytes", crop only): the comparison with the codecs made equal.
    baselines = [r for r in rows if r["method"] != "neural" and r["mae_counts"] > 0]
    payload = [
        dict(n, bytes=n["payload_bytes"])
        for n in families["neural"]
        if "payload_bytes" in n and not n.get("point_intensity")
    ]
    checks = [
        ("bytes", "crop", families["neural"]),
        ("bytes_full_map", "full map", families["neural"]),
    ]
    if payload:
        checks.append(("bytes", "crop, neural arrays through the same codec", payload))
    lines.append("")
    for key, scale_name, neural in checks:
        in_range = [b for b in baselines if b[key] >= min(n[key] for n in neural)]
        # A baseline point beats the neural curve if no neural point is at
        # most as large and at most as wrong.
        behind = [
            b
            for b in in_range
            if not any(
                n[key] <= b[key] and n["mae_counts"] <= b["mae_counts"] for n in neural
            )
        ]
        line = (
            f"Baseline points ({scale_name}) not dominated by a neural point (within the "
            f"neural byte range): {len(behind)} of {len(in_range)}"
        )
        if behind:
            first = min(behind, key=lambda b: b[key])
            line += (
                f"; the smallest: {_point_name(first)}, {first['mae_counts']:.1f} counts "
                f"in {first[key]:,} B"
            )
        lines.append(line)
    # The same question per budget: who has the best file within it.
    lines.append("")
    for key, scale_name, neural in checks:
        upto = max(n[key] for n in neural)
        segments = _budget_segments(baselines + neural, key, upto)
        for who, flag in (("a neural file", True), ("a baseline file", False)):
            ranges = [f"{_kb(a)} to {_kb(b)}" for a, b, n in segments if n is flag]
            lines.append(
                f"Budgets ({scale_name}, up to the largest neural file, {_kb(upto)}) "
                f"whose best file is {who}: {', '.join(ranges) or 'none'}"
            )
    return "\n".join(lines)


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, vmax = result["rows"], result["max_count"]
    raw, raw_full = result["raw_bytes"], result["raw_bytes_full_map"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    styles = {
        "pca_f16": dict(color="0.3", marker="s", ls="-"),
        "pca_q8": dict(color="C1", marker="^", ls="-"),
        "pca_q6": dict(color="C2", marker="v", ls="-"),
        "pca_q4": dict(color="C4", marker="<", ls="-"),
    }
    prec_colors = {"float32": "C0", "float16": "C3", "int8": "C9"}
    for ax, key, raw_bytes, target, title in (
        (axes[0], "bytes", raw, TARGET_RATIO_CROP, "200 x 200 crop (measured)"),
        (
            axes[1],
            "bytes_full_map",
            raw_full,
            TARGET_RATIO_FULL,
            "900 x 1000 map (extrapolated)",
        ),
    ):
        for method, style in styles.items():
            sel = sorted(
                (r for r in rows if r["method"] == method), key=lambda r: r[key]
            )
            if sel:
                ax.plot([r[key] for r in sel], [100 * r["mae_counts"] / vmax for r in sel],
                        label=sel[0]["label"], ms=5, **style)  # fmt: skip
        # One-step PCA: many points per rank (a step sweep); its front.
        one_step = [r for r in rows if r["method"] == "pca_u"]
        if one_step:
            ax.scatter([r[key] for r in one_step], [100 * r["mae_counts"] / vmax for r in one_step],
                       color="C5", s=8, alpha=0.5)  # fmt: skip
            front = _front(one_step, key)
            ax.plot([r[key] for r in front], [100 * r["mae_counts"] / vmax for r in front],
                    color="C5", lw=1.5, label=one_step[0]["label"] + " (front)")  # fmt: skip
        for (precision, color), with_pi in (
            (pc, pi) for pc in prec_colors.items() for pi in (False, True)
        ):
            sel = [
                r
                for r in rows
                if r["method"] == "neural"
                and r["precision"] == precision
                and r.get("point_intensity", False) == with_pi
            ]
            label = f"neural{' + point intensity' if with_pi else ''}, {precision}"
            if sel:
                ax.scatter([r[key] for r in sel], [100 * r["mae_counts"] / vmax for r in sel],
                           color=color, s=40, zorder=3, label=label, edgecolor="k", lw=0.5,
                           marker="D" if with_pi else "o")  # fmt: skip
        front = _front([r for r in rows if r["method"] == "neural"], key)
        ax.plot([r[key] for r in front], [100 * r["mae_counts"] / vmax for r in front], "k--", lw=1,
                label="neural front")  # fmt: skip
        for r in (r for r in rows if r["method"] == "lossless"):
            ax.axvline(r[key], color="0.75", lw=0.8, ls=":")
        lossless = min(
            (r for r in rows if r["method"] == "lossless"),
            key=lambda r: r[key],
            default=None,
        )
        if lossless is not None:
            ax.text(lossless[key], 0.02, f" best lossless\n {lossless['label']}\n "
                    f"{raw_bytes / lossless[key]:.1f}x (MAE 0)", transform=ax.get_xaxis_transform(),
                    fontsize=7, va="bottom")  # fmt: skip
        ax.axhline(
            PAPER_MAE_PERCENT,
            color="C3",
            lw=0.8,
            ls="-.",
            label=f"paper accuracy {PAPER_MAE_PERCENT} %",
        )
        ax.axhline(100 * TARGET_MAE_COUNTS / vmax, color="C1", lw=0.8, ls="-.",
                   label=f"{TARGET_MAE_COUNTS:.0f} counts")  # fmt: skip
        ax.axvline(
            raw_bytes / target,
            color="k",
            lw=0.8,
            label=f"{target:.0f}x smaller than raw",
        )
        ax.set_xscale("log")
        ax.set_xlabel("stored bytes")
        ax.set_title(title)
        sec = ax.secondary_xaxis("top", functions=(lambda b, r=raw_bytes: r / np.maximum(b, 1),
                                                   lambda c, r=raw_bytes: r / np.maximum(c, 1e-9)))  # fmt: skip
        sec.set_xlabel("compression ratio vs raw uint16")
    axes[0].set_ylabel("map MAE inside the aperture (% of max)")
    neural_and_pca = [r for r in rows if r["method"] != "lossless"]
    if neural_and_pca:
        worst = max(100 * r["mae_counts"] / vmax for r in neural_and_pca)
        axes[0].set_ylim(0.45, min(worst * 1.05, 1.2))
    axes[1].legend(fontsize=7, loc="upper right", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def cmd_evaluate(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _load_data(args.cache)
    mask = _aperture(data.shape[2:])
    n = data.shape[0] * data.shape[1]
    rows = []
    t = time.perf_counter()
    if args.models:
        rows += _neural_points(
            Path(args.models),
            out / "files",
            data,
            mask,
            args.precisions.split(","),
            args.point_intensity,
        )
    if not args.skip_pca:
        ranks = [int(v) for v in args.pca_ranks.split(",")]
        bits = [int(b) for b in args.bits.split(",")]
        steps = [float(v) for v in args.steps.split(",") if v]
        mean_bits = [int(v) for v in args.pca_mean_bits.split(",")]
        balanced = [v == "balanced" for v in args.pca_component_steps.split(",")]
        rows += _pca_points(data, mask, ranks, bits, steps, mean_bits, balanced)
    if not args.skip_lossless:
        rows += _lossless_points(data, args.lossless_fraction)
    for r in rows:
        r["bytes_full_map"] = _extrapolate(r, n)
    if args.update and RESULTS.exists():
        # Keep the earlier rows this run did not redo (e.g. the baselines
        # with --skip-pca/--skip-lossless, other models' rows).
        redone = {_row_key(r) for r in rows}
        earlier = json.loads(RESULTS.read_text())["rows"]
        rows = [r for r in earlier if _row_key(r) not in redone] + rows
    result = {
        "scan_shape": list(data.shape[:2]),
        "pattern_shape": list(data.shape[2:]),
        "raw_bytes": int(data.nbytes),
        "raw_bytes_full_map": int(FULL_MAP_POINTS * np.prod(data.shape[2:]) * 2),
        "max_count": int(data.max()),
        "seconds": time.perf_counter() - t,
        "rows": rows,
    }
    _write_report(result)


def _row_key(row: dict) -> tuple:
    return row["method"], row.get("name", row["label"]), row.get("rank")


def cmd_replot(args) -> None:
    _write_report(json.loads(RESULTS.read_text()))


def _write_report(result: dict) -> None:
    for path in (RESULTS, TABLE, FIGURE):
        path.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    table = _summarise(result)
    TABLE.write_text(table + "\n")
    _figure(result, FIGURE)
    print(table)
    print(f"\nwrote {RESULTS}, {TABLE}, {FIGURE}")


# ------------------------------------------------------------ throughput


def cmd_throughput(args) -> None:
    import dask
    import torch

    import kikuchipy_neural as kn

    torch.set_num_threads(args.threads)
    data = _load_data(args.cache)
    model = kn.load_model(args.model)
    rows = args.rows
    n = rows * data.shape[1]
    xy = model.geometry.grid_xy()[:rows]
    model.query(xy[:1, :50])  # warm-up
    results = {}

    def timed(name, fn, repeat=3):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        best = min(times)
        results[name] = {"seconds": best, "patterns_per_s": n / best}
        print(
            f"{name}: {n / best:,.0f} patterns/s (best of {repeat}: {best:.2f} s)",
            flush=True,
        )

    timed(f"model.query, torch {args.threads} threads", lambda: model.query(xy))
    s = kn.load(args.model)
    torch.set_num_threads(1)
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        timed(
            f"kikuchipy_neural.load + dask ({args.threads} workers x 1 torch thread)",
            lambda: s.inav[:, :rows].data.compute(),
        )
    torch.set_num_threads(args.threads)

    import kikuchipy as kp

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "raw.h5"
        kp.signals.EBSD(np.ascontiguousarray(data[:rows])).save(path)
        size = path.stat().st_size
        timed("kikuchipy.load h5ebsd (eager)", lambda: kp.load(path))
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            timed(
                "kikuchipy.load h5ebsd (lazy, computed)",
                lambda: kp.load(path, lazy=True).data.compute(),
            )
        import h5py

        def h5_read():
            with h5py.File(path, "r") as f:
                name = next(k for k in f if k not in ("manufacturer", "version"))
                f[name]["EBSD/Data/patterns"][()]

        timed("h5py read of the h5ebsd dataset", h5_read)
    model_bytes = os.path.getsize(args.model)
    results["_meta"] = {
        "patterns": n,
        "model": str(args.model),
        "model_bytes": model_bytes,
        "h5ebsd_bytes": size,
        "threads": args.threads,
        "note": "h5ebsd file just written: read from the page cache",
    }
    THROUGHPUT.parent.mkdir(parents=True, exist_ok=True)
    THROUGHPUT.write_text(json.dumps(results, indent=1))
    print(
        f"{n} patterns; model file {model_bytes:,} B, h5ebsd file {size:,} B; wrote {THROUGHPUT}"
    )


# ------------------------------------------------------------------ main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache", default=None, help="cache the decoded crop in this .npy file"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit neural models, save float32 model files")
    p.add_argument("--out", default=str(OUT / "models"))
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="rank:width[:layers],...")
    p.add_argument("--device", default=None)
    p.add_argument("--time-budget", type=float, default=None, help="seconds per fit")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", default=None, help="JSON dict of further fit options")
    p.add_argument("--tag", default="", help="suffix of the model files' names")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser(
        "refit-bases", help="refit the bases of models fitted without the refit"
    )
    p.add_argument("--models", required=True, help="folder of float32 model files")
    p.add_argument("--out", required=True, help="folder for the refitted files")
    p.add_argument("--seed", type=int, default=0, help="draws the validation points")
    p.set_defaults(run=cmd_refit_bases)

    p = sub.add_parser("evaluate", help="rate-distortion of models and baselines")
    p.add_argument(
        "--models",
        default=str(OUT / "models"),
        help="folder of fitted model files ('' for none)",
    )
    p.add_argument(
        "--out", default=str(OUT), help="the re-saved model files go to OUT/files"
    )
    p.add_argument(
        "--precisions",
        default="float32,float16,int8,int8-balanced",
        help="model-file precisions; int8-balanced: int8 with "
        "save(balanced_bases=True)",
    )
    p.add_argument("--pca-ranks", default=DEFAULT_PCA_RANKS)
    p.add_argument("--bits", default="4,6,8", help="bit depths of quantised PCA scores")
    p.add_argument(
        "--steps",
        default=DEFAULT_STEPS,
        help="one-step PCA scores (int8 components): steps in counts per pixel",
    )
    p.add_argument(
        "--pca-mean-bits",
        default="8,16",
        help="one-step PCA: the mean's bits, 8 (codes) and/or 16 (float16)",
    )
    p.add_argument(
        "--pca-component-steps",
        default="range,balanced",
        choices=["range", "balanced", "range,balanced", "balanced,range"],
        help="one-step PCA: the 8-bit images' steps by their ranges and/or "
        "balanced by the scores' RMS (as save(balanced_bases=True))",
    )
    p.add_argument("--lossless-fraction", type=float, default=0.1)
    p.add_argument(
        "--point-intensity",
        action="store_true",
        help="also evaluate every model with a gain and offset per point",
    )
    p.add_argument("--skip-pca", action="store_true")
    p.add_argument("--skip-lossless", action="store_true")
    p.add_argument(
        "--update",
        action="store_true",
        help="keep the earlier results' rows that this run does not redo",
    )
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("replot", help="table and figure again from the saved JSON")
    p.set_defaults(run=cmd_replot)

    p = sub.add_parser("throughput", help="decoding vs h5ebsd reading speed")
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=50, help="scan rows to decode/read")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tmp", default=None, help="folder for the temporary h5ebsd file")
    p.set_defaults(run=cmd_throughput)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
