"""How well can anything place a boundary between super-resolution's training points?

Companion of ``super_resolution.py`` (issue 5): on the 6-grain synthetic maps
(``matched``, map seed 1, and a second realisation, map seed 2) the field
leaves 55-87 held-out points within one step of a boundary >= 4 deg from the
truth, all on the wrong side of the boundary. This script measures what other
rules achieve on the same points, with the same training points (every other
point in x and y):

Grain assignment from the truth at the training points (an oracle: no
pattern is decoded; a point is wrong when the rule picks another grain than
the one under the beam centre)

``nearest``
    The grain of the nearest training point (ties count as wrong).
``svm_labels``
    A linear SVM on the grain labels of the training points within 5 steps:
    the boundary's shape alone.
``fractions_true`` / ``fractions_estimated``
    Local linear regression (Gaussian weights, 3 steps) of each grain's beam
    fraction at the training points, then the largest: the boundary's shape
    plus what the mixed patterns near it say. Fractions from the truth, or
    estimated from the noisy training patterns by non-negative least squares
    on the pure patterns of the grains around each point.

``field, unmixed`` (matched map)
    The benchmark's four fits (``_out/super_resolution/matched_model_seed*``):
    their decoded patterns unmixed the same way.

Patterns, Hough-indexed as in the benchmark (>= 4 deg from the truth)

``truth``
    The noise-free patterns themselves (beam mixtures near boundaries).
``oracle mixtures``
    The truth, except at the near-boundary held-out points: the pure
    patterns mixed with ``fractions_estimated``'s fractions (the oracle's
    placement decoded as mixtures; its ramps are broader than the beam's).
``thin_plate``
    Thin-plate-spline interpolation of the training patterns' PCA scores
    (rank 40; smoothing 0 and 3): the smoothest interpolant, what a curvature
    prior on the field would aim at.

Run by hand, after ``super_resolution.py fit --maps matched`` (for the
field's row): ``python benchmarks/super_resolution_limits.py`` (about 8 min on
2 cores); writes ``results/super_resolution_limits.json`` and prints a table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import super_resolution as sr  # noqa: E402

RESULTS = HERE / "results" / "super_resolution_limits.json"
MAP_SEEDS = {"matched": 1, "matched, map seed 2": 2}
DISTANCE_BINS = ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0 + 1e-9))


def _map(seed: int):
    from kikuchipy_neural.data import synthetic_polycrystal

    return synthetic_polycrystal((65, 65), (60, 60), seed=seed, twins=True, n_grains=6)


def _local_linear(fractions, ky, kx, i, j, radius=3.0) -> np.ndarray:
    """Weighted linear fit of the fractions around (i, j): the fractions at
    (i, j), clipped to [0, 1] and summing to 1."""
    d2 = (ky - i) ** 2 + (kx - j) ** 2
    m = d2 <= radius**2
    design = np.c_[np.ones(m.sum()), kx[m] - j, ky[m] - i]
    w = np.sqrt(np.exp(-d2[m] / radius**2))[:, None]
    coef, *_ = np.linalg.lstsq(design * w, fractions[m] * w, rcond=None)
    value = np.clip(coef[0], 0, 1)
    return value / value.sum()


def _unmix(truth, pattern, i, j) -> np.ndarray:
    """Beam fractions of ``pattern`` at point (i, j): non-negative least
    squares on the pure patterns of the grains within 2 steps."""
    from scipy.optimize import nnls

    gid = truth.grain_id
    out = np.zeros(truth.n_grain_ids)
    grains = np.unique(gid[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3])
    if len(grains) == 1:
        out[grains[0]] = 1.0
        return out
    xy = np.repeat(truth.xy[i, j][None], len(grains), 0)
    pure = truth.grain_patterns(grains, xy).reshape(len(grains), -1)
    w, _ = nnls(pure.T.astype(np.float64), np.ravel(pattern).astype(np.float64))
    out[grains] = w / w.sum()
    return out


def _svm_labels(labels, ky, kx, i, j, radius=5.0):
    from sklearn.svm import SVC

    m = (ky - i) ** 2 + (kx - j) ** 2 <= radius**2
    if len(np.unique(labels[m])) == 1:
        return int(labels[m][0])
    xy = np.c_[kx[m] - j, ky[m] - i].astype(float)
    return int(SVC(C=10.0, kernel="linear").fit(xy, labels[m]).predict([[0, 0]])[0])


def _nearest(labels, ky, kx, i, j):
    d2 = (ky - i) ** 2 + (kx - j) ** 2
    grains, counts = np.unique(labels[d2 == d2.min()], return_counts=True)
    best = np.flatnonzero(counts == counts.max())
    return int(grains[best[0]]) if len(best) == 1 else -1


def _estimated_fractions(s, ky, kx) -> np.ndarray:
    """Beam fractions of the noisy training patterns, unmixed."""
    data = np.asarray(s.data)
    return np.array(
        [_unmix(s.truth, data[i, j], i, j) for i, j in zip(ky, kx, strict=True)]
    )


def _mixtures(truth, fractions, points) -> np.ndarray:
    """Noise-free patterns mixed from the pure ones with the given fractions."""
    out = []
    for f, (i, j) in zip(fractions, points, strict=True):
        grains = np.flatnonzero(f)
        xy = np.repeat(truth.xy[i, j][None], len(grains), 0)
        pure = truth.grain_patterns(grains, xy)
        out.append(np.tensordot(f[grains], pure, axes=1))
    return np.array(out, dtype=np.float32)


def _field_unmixed_wrong(s, near) -> list[int]:
    """Wrong grains in the unmixed patterns of the benchmark's matched fits."""
    from kikuchipy_neural.geometry import ScanGeometry

    geometry = ScanGeometry.from_signal(s)
    gid = s.truth.grain_id
    points = list(zip(*np.nonzero(near), strict=True))
    xy = np.array([s.truth.xy[p] for p in points])
    wrong = []
    for seed in range(4):
        if not sr._model_path("matched", seed).exists():
            break
        model, _ = sr._load_model("matched", seed, geometry)
        decoded = model.query(xy)
        labels = [
            np.argmax(_unmix(s.truth, pattern, i, j))
            for pattern, (i, j) in zip(decoded, points, strict=True)
        ]
        wrong.append(int(sum(g != gid[p] for g, p in zip(labels, points, strict=True))))
    return wrong


def _hough_misses(s, patterns, near, held):
    _, xmap = sr._index(
        patterns,
        s.detector,
        np.asarray(s.static_background),
        sr._phase_list(),
        near.shape,
    )
    off = s.truth.orientation_error(xmap) >= sr.THRESHOLD
    return dict(near=int(off[near].sum()), all_within=1 - float(off[held].mean()))


def evaluate(label: str, seed: int) -> dict:
    from scipy.interpolate import RBFInterpolator

    from kikuchipy_neural.analysis.interpolation import sparse_grid_mask

    s = _map(seed)
    truth = s.truth
    gid = truth.grain_id
    known = sparse_grid_mask(gid.shape, sr.EVERY)
    held = ~known
    near = (truth.boundary_distance_grid <= truth.step + 1e-9) & held
    distance = truth.boundary_distance_grid / truth.step
    ky, kx = np.nonzero(known)
    labels = gid[known]
    points = list(zip(*np.nonzero(near), strict=True))
    # Each oracle's fractions at the near-boundary held-out points.
    extended = {
        name: [_local_linear(f, ky, kx, i, j) for i, j in points]
        for name, f in (
            ("fractions_true", truth.beam_fractions(truth.xy[known])),
            ("fractions_estimated", _estimated_fractions(s, ky, kx)),
        )
    }
    predictions = {
        "nearest": [_nearest(labels, ky, kx, i, j) for i, j in points],
        "svm_labels": [_svm_labels(labels, ky, kx, i, j) for i, j in points],
        **{k: [np.argmax(f) for f in v] for k, v in extended.items()},
    }
    result = dict(map=label, map_seed=seed, n_near=len(points), rules={})
    d = np.array([distance[p] for p in points])
    true_grain = np.array([gid[p] for p in points])
    for name, predicted in predictions.items():
        wrong = np.array(predicted) != true_grain
        result["rules"][name] = dict(
            wrong=int(wrong.sum()),
            wrong_share_by_distance=[
                round(float(wrong[(d >= a) & (d < b)].mean()), 3)
                for a, b in DISTANCE_BINS
            ],
        )
        print(label, name, result["rules"][name], flush=True)

    if seed == MAP_SEEDS["matched"]:
        result["field_unmixed_wrong"] = _field_unmixed_wrong(s, near)
        print(label, "field, unmixed:", result["field_unmixed_wrong"], flush=True)

    result["patterns"] = {"truth": _hough_misses(s, truth.clean, near, held)}
    # The oracle's patterns: the truth everywhere but at the near-boundary
    # held-out points, where the pure patterns are mixed with the fractions
    # the oracle extends from the unmixed training patterns.
    oracle = np.array(truth.clean, dtype=np.float32)
    oracle[tuple(np.array(points).T)] = _mixtures(
        truth, extended["fractions_estimated"], points
    )
    result["patterns"]["oracle mixtures"] = _hough_misses(s, oracle, near, held)
    measured = np.asarray(s.data, dtype=np.float32)
    train = measured[known].reshape(known.sum(), -1)
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    vt = vt[:40]
    scores = (train - mean) @ vt.T
    hy, hx = np.nonzero(held)
    for smoothing in (0.0, 3.0):
        spline = RBFInterpolator(
            np.c_[kx, ky].astype(float),
            scores,
            kernel="thin_plate_spline",
            smoothing=smoothing,
            neighbors=80,
        )
        patterns = measured.copy()
        values = spline(np.c_[hx, hy].astype(float)) @ vt + mean
        patterns[hy, hx] = values.reshape(-1, *measured.shape[2:])
        key = f"thin_plate, smoothing {smoothing:g}"
        result["patterns"][key] = _hough_misses(s, patterns, near, held)
        result["patterns"][key]["mae_vs_truth"] = float(
            np.abs(patterns[held] - truth.clean[held]).mean()
        )
    print(label, result["patterns"], flush=True)
    return result


def main() -> None:
    results = [evaluate(label, seed) for label, seed in MAP_SEEDS.items()]
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| rule | " + " | ".join(r["map"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in results[0]["rules"]:
        cells = [
            f"{r['rules'][name]['wrong']} of {r['n_near']} wrong grain" for r in results
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"| field, unmixed | {results[0]['field_unmixed_wrong']} | |")
    for name in results[0]["patterns"]:
        cells = [
            f"{r['patterns'][name]['near']} >= 4 deg "
            f"({100 * r['patterns'][name]['all_within']:.1f} % within)"
            for r in results
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
