"""Scale: data-parallel fits (torchrun, gloo), decoding on a dask cluster,
streamed fits of on-disk maps in bounded memory, and the GPU path's
CPU-testable parts (precision option, transfers, out-of-memory backoff).

Tolerances are justified where set.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import FAST_FIT

from kikuchipy_neural.training.data import PatternSource, ShuffleBuffer
from kikuchipy_neural.training.distributed import setup, shard_points, split_batch

HERE = Path(__file__).resolve().parent
FAST = {k: v for k, v in FAST_FIT.items() if k != "show_progressbar"}


def _params(model) -> np.ndarray:
    return np.concatenate(
        [v.detach().cpu().numpy().ravel() for v in model.field.state_dict().values()]
    )


# ------------------------------------------------------------------ shards


def test_shards_are_disjoint_cover_and_follow_chunks():
    data = da.zeros((12, 10, 2, 2), np.uint16, chunks=(2, 10, 2, 2))
    source = PatternSource(data)
    train = np.flatnonzero(np.arange(120) % 5 != 0)  # 96 points, 6 chunks
    shards = shard_points(source, train, 2, seed=0)
    assert np.array_equal(np.sort(np.concatenate(shards)), train)
    assert not set(shards[0]) & set(shards[1])
    # Whole chunks per rank (a rank reads only its own chunks), balanced.
    rows = [set(np.unique(s // 10 // 2)) for s in shards]
    assert not rows[0] & rows[1] and len(rows[0]) == len(rows[1]) == 3
    # Every rank computes the same split; another seed gives another.
    assert all(
        np.array_equal(a, b)
        for a, b in zip(shards, shard_points(source, train, 2, seed=0), strict=True)
    )
    assert not np.array_equal(shards[0], shard_points(source, train, 2, seed=1)[0])
    # In-memory data (or too few chunks): a random split of the points.
    mem = shard_points(PatternSource(np.zeros((12, 10, 2, 2))), train, 3, seed=0)
    assert sorted(map(len, mem)) == [32, 32, 32]
    assert np.array_equal(np.sort(np.concatenate(mem)), train)
    with pytest.raises(ValueError, match="cannot be shared"):
        shard_points(source, train[:1], 2, seed=0)


def test_batches_split_in_proportion_to_shards():
    assert split_batch(1024, np.array([50, 50])) == [512, 512]
    assert split_batch(1024, np.array([30, 10])) == [768, 256]
    assert split_batch(3, np.array([1000, 1])) == [3, 1]  # never empty


def test_distributed_needs_a_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert setup(None, "cpu") is None  # a plain process stays single
    assert setup(False, "cpu") is None
    with pytest.raises(ValueError, match="torchrun"):
        setup(True, "cpu")
    with pytest.raises(TypeError, match="distributed"):
        setup("yes", "cpu")


# ------------------------------------------------ DDP over 2 gloo processes


@pytest.fixture(scope="module")
def ddp_runs(small_map, tmp_path_factory):
    """Every DDP case, fitted by one ``torchrun`` launch of 2 processes."""
    out = tmp_path_factory.mktemp("ddp")
    map_path = out / "map.h5"
    small_map.save(map_path)
    cases = {
        # positions_per_batch (1024) > training points (128): each batch is
        # the whole training set, on one process or split over two.
        "full_batch": dict(FAST, seed=3, max_steps=40, eval_every=5, patience=100),
        # Stochastic batches from a lazy map sharded by chunks (2 rows each),
        # within a memory budget that forces a shuffle buffer per rank; rank
        # 0 alone writes the checkpoint.
        "sharded": dict(
            FAST,
            seed=3,
            max_steps=60,
            eval_every=10,
            positions_per_batch=32,
            lazy=True,
            chunks=(2, 12),
            memory_budget=4 * 24 * 1600 * 2,
            checkpoint=str(out / "sharded.ckpt"),
        ),
        # A time budget ends every rank at the same step. The bases' refit
        # on every point: rank 0 adds the validation points to its shard.
        "budget": dict(
            FAST, seed=5, time_budget=4.0, patience=10**6, refit_bases="all"
        ),
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", "2", str(HERE / "ddp_worker.py"),
        str(map_path), str(out), json.dumps(cases),
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = {
        name: [dict(np.load(out / f"{name}_rank{r}.npz")) for r in range(2)]
        for name in cases
    }
    return map_path, cases, ranks, out


def _single(map_path, spec, **changes):
    import kikuchipy as kp

    from kikuchipy_neural.training.fit import fit

    spec = {**spec, **changes}
    lazy, chunks = spec.pop("lazy", False), spec.pop("chunks", None)
    spec.pop("checkpoint", None)
    s = kp.load(map_path, lazy=lazy)
    if chunks is not None:
        s.data = s.data.rechunk((*chunks, -1, -1))
    return fit(s, show_progressbar=False, **spec)


def test_ddp_ranks_agree_and_stop_together(ddp_runs):
    _, _, ranks, out = ddp_runs
    for name, (r0, r1) in ranks.items():
        # One all-reduced gradient, one broadcast evaluation: both ranks take
        # the same steps to the same parameters and the same decisions.
        assert np.array_equal(r0["params"], r1["params"]), name
        assert np.array_equal(r0["val_mae"], r1["val_mae"], equal_nan=True), name
        info0, info1 = json.loads(str(r0["info"])), json.loads(str(r1["info"]))
        assert info0["world_size"] == 2 and info0["main"] and not info1["main"]
        assert info0["steps"] == info1["steps"]
    budget = json.loads(str(ranks["budget"][0]["info"]))
    assert budget["stop_reason"] == "time_budget"
    # Every point once: the two shards and the validation points.
    assert budget["refit_bases"]["applied"]
    assert budget["refit_bases"]["points"] == 144
    assert budget["n_train_points"] + budget["n_val_points"] == 144
    assert (out / "sharded.ckpt").exists()


def test_ddp_full_batch_equals_the_single_process_fit(ddp_runs):
    map_path, cases, ranks, _ = ddp_runs
    single = _single(map_path, cases["full_batch"])
    r0 = ranks["full_batch"][0]
    # Each rank's batch is its whole shard and the shard-weighted sum of the
    # two gradients is the full-batch gradient: the fits differ only by
    # float32 summation order (measured: 1e-7 of the largest parameter after
    # 40 Adam steps), far below what one step changes (lr = 1e-4).
    ref = _params(single)
    assert np.abs(r0["params"] - ref).max() < 1e-5 * np.abs(ref).max()
    np.testing.assert_allclose(r0["val_mae"], single.history["val_mae"], rtol=1e-4)
    assert list(r0["step"]) == single.history["step"]
    # The bases' refit sums the two shards' normal equations: as many points
    # and the same solve as in one process (the parameters above include it).
    refit = json.loads(str(r0["info"]))["refit_bases"]
    alone = single.info["refit_bases"]
    assert refit["points"] == alone["points"] == single.info["n_train_points"]
    assert refit["applied"] == alone["applied"]
    assert refit["validation_mae_after"] == pytest.approx(
        alone["validation_mae_after"], rel=1e-4
    )


def test_ddp_stochastic_fit_matches_single_process_in_expectation(ddp_runs):
    import kikuchipy as kp

    map_path, cases, ranks, _ = ddp_runs
    spec = cases["sharded"]
    # Seed-to-seed spread of the single-process fit is the yardstick: the
    # 2-process fit is one more draw of the same random process.
    singles = [_single(map_path, spec, seed=s) for s in (3, 4, 5, 6)]
    curves = np.array([m.history["val_mae"] for m in singles])
    ddp = ranks["sharded"][0]["val_mae"]
    spread = curves.std(axis=0, ddof=1)
    assert np.all(np.abs(ddp - curves.mean(axis=0)) < 4 * spread + 0.005 * ddp)
    # And it learnt: the validation error fell as much as in a single process.
    assert ddp[-1] < 0.8 * ddp[0]
    # Rank 1 read only chunks of its own shard (rank 0 also preprocesses).
    s = kp.load(map_path, lazy=True)
    source = PatternSource(s.data.rechunk((*spec["chunks"], -1, -1)))
    train = np.setdiff1d(np.arange(144), singles[0].validation_points)
    own_rows = set(np.unique(shard_points(source, train, 2, seed=3)[1] // 12))
    reads = ranks["sharded"][1]["reads"]
    read_rows = {int(r) for r0, r1, _, _ in reads for r in range(r0, r1)}
    assert read_rows and read_rows <= own_rows
    assert len(own_rows) == 6  # half of the 12 rows


# --------------------------------------------- decoding on a dask cluster


def test_local_cluster_decode_equals_local_decode(fitted_map, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from kikuchipy_neural.analysis import gradient, queries

    model = fitted_map.neural_model
    # Small blocks: one scan row (12 points) per chunk, many chunks per worker.
    monkeypatch.setattr(queries, "_CHUNK_BYTES", 16 * 40 * 40 * 4)
    monkeypatch.setattr(gradient, "_POINTS_PER_BLOCK", 16)
    lazy = {
        "reconstruct": fitted_map.neural_reconstruct(lazy=True).data,
        "upsample": fitted_map.upsample(2, lazy=True).data,
        "gradient": fitted_map.diffraction_gradient(lazy=True).data,
    }
    local = {
        "reconstruct": fitted_map.neural_reconstruct(lazy=False).data,
        "upsample": fitted_map.upsample(2, lazy=False).data,
        "gradient": fitted_map.diffraction_gradient(lazy=False).data,
    }
    for name, arr in lazy.items():
        assert arr.npartitions >= 12, name
        # The model is one node of the graph, which every chunk refers to.
        holders = [
            k for k, v in dict(arr.__dask_graph__()).items()
            if getattr(v, "value", None) is model
        ]  # fmt: skip
        assert len(holders) == 1, name
    model_key = holders[0]
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):

        def counts(dask_worker):
            return len(
                dask_worker.transfer_incoming_log
            ), dask_worker.state.executed_count

        for name, arr in lazy.items():
            before = client.run(counts)
            out = arr.compute()
            # float32 decoding of the same points in other batches.
            np.testing.assert_allclose(out, local[name], rtol=1e-5, atol=1e-3)
            # Both workers worked, and each received the model at most once
            # for this graph, never with each of the (>= 12) chunks. (Usually
            # one worker fetches it from the other; when the scheduler moves
            # the model's key, both may fetch it once: seen once in CI as
            # [1, 1] for the gradient graph.)
            logs = client.run(
                lambda dask_worker: [
                    dict(e["keys"]) for e in dask_worker.transfer_incoming_log
                ]
            )
            fetched = [
                sum(1 for keys in log[before[w][0] :] for k in keys if k == model_key)
                for w, log in logs.items()
            ]
            assert max(fetched) <= 1, (name, fetched)
            after = client.run(counts)
            assert all(after[w][1] > before[w][1] for w in after), name


# ------------------------------------------ streamed fits, bounded memory


def _write_tiled_map(small_map, k: int, path: Path) -> None:
    """A ``(12 k, 12 k)`` map of the small map's patterns, written to h5ebsd
    chunk by chunk (never whole in memory)."""
    from kikuchipy.signals import LazyEBSD

    base = da.from_array(small_map.data, chunks=(12, 12, -1, -1))
    # Chunks of 144 patterns, whole scan rows (a lazy save writes the dask
    # chunks as HDF5 chunks, which a lazy load reads back as dask chunks).
    tiled = da.tile(base, (k, k, 1, 1)).rechunk((12 // k, -1, -1, -1))
    LazyEBSD(tiled).save(path, overwrite=True)


def _peak_traced_bytes(path: Path, budget: int, monkeypatch) -> tuple[int, object]:
    """Peak of traced (numpy) allocations during a streamed fit, and its
    pattern buffer."""
    import kikuchipy as kp

    fit_module = importlib.import_module("kikuchipy_neural.training.fit")
    s = kp.load(path, lazy=True)
    buffers = []
    original = fit_module.make_buffer

    def spy(*args, **kwargs):
        buffers.append(original(*args, **kwargs))
        return buffers[-1]

    monkeypatch.setattr(fit_module, "make_buffer", spy)
    # A first fit imports what a fit needs (dask imports dask.distributed on
    # its first compute: ~10 MB of modules); trace a second one.
    fit_module.fit(s, max_steps=1, rank=6, show_progressbar=False, **FAST)
    tracemalloc.start()
    try:
        # No warm start: every step reads patterns from the buffer.
        fit_module.fit(
            s,
            rank=6,
            memory_budget=budget,
            max_steps=40,
            positions_per_batch=64,
            max_validation_points=64,
            warm_start=False,
            show_progressbar=False,
            **FAST,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, buffers[-1]


def test_streamed_fit_memory_stays_bounded_as_the_map_grows(
    small_map, tmp_path, monkeypatch
):
    budget = 2_500_000  # bytes: 3 slots of 144 patterns of 40 x 40 uint16
    chunk = 144 * 40 * 40 * 2  # 460 kB
    peaks, sizes = [], []
    for k in (3, 6):
        path = tmp_path / f"map{k}.h5"
        _write_tiled_map(small_map, k, path)
        peak, buffer = _peak_traced_bytes(path, budget, monkeypatch)
        assert isinstance(buffer, ShuffleBuffer)
        assert buffer.chunks_loaded > buffer.n_slots  # chunks were streamed
        peaks.append(peak)
        print(k, peak, buffer.n_slots, buffer.chunks_loaded, buffer.stall_seconds)
        sizes.append((12 * k) ** 2 * 40 * 40 * 2)
        path.unlink()
    # The data grow by 12.4 MB (4.1 MB -> 16.6 MB); the peak of numpy
    # allocations (patterns, masks, PCA sample, scores) must not follow:
    # what grows with the map is per point (scores, index arrays: ~100
    # bytes x 3888 more points = 0.4 MB), not per pattern.
    assert peaks[1] - peaks[0] < 0.05 * (sizes[1] - sizes[0])
    # Absolute bound: the budget, plus the chunk in flight and the one dask
    # assembles, plus 1 MB of per-point arrays and small work arrays.
    assert peaks[1] < budget + 2 * chunk + 1_000_000, peaks


# ------------------------------------------------------ GPU path, on the CPU


def test_out_of_memory_halves_the_batch_and_training_goes_on(small_map, monkeypatch):
    from kikuchipy_neural.training import accelerate
    from kikuchipy_neural.training.loop import Trainer

    original = Trainer._loss
    calls = {"n": 0, "sizes": []}

    def flaky(self, batch):
        # The first two batches "do not fit": the sampler must halve twice.
        calls["n"] += 1
        calls["sizes"].append(len(batch.points))
        if calls["n"] <= 2:
            raise accelerate.OUT_OF_MEMORY("CUDA out of memory (simulated)")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_loss", flaky)
    with pytest.warns(UserWarning, match="Out of GPU memory"):
        model = small_map.deepcopy().fit_neural(
            max_steps=5, positions_per_batch=64, **dict(FAST, warm_start=False)
        )
    assert model.info["steps"] == 5
    assert calls["sizes"][:3] == [64, 32, 16]


def test_shrink_batch_stops_at_one():
    from types import SimpleNamespace

    from kikuchipy_neural.training.accelerate import shrink_batch

    sampler = SimpleNamespace(n_positions=3)
    assert shrink_batch(sampler) == 1
    assert shrink_batch(sampler) is None
    assert shrink_batch(SimpleNamespace(batch_size=8)) == 4


def test_bf16_basis_product_is_close_to_float32(small_model):
    import torch

    from kikuchipy_neural.training.accelerate import pattern_values

    field = small_model.field
    xy = torch.zeros(4, 2)
    with torch.no_grad():
        exact = pattern_values(field, xy, None, "float32")
        low = pattern_values(field, xy, None, "bf16")
    assert low.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: products of ~rank terms within 1 %
    # of the pattern's range.
    span = float(exact.max() - exact.min())
    assert float((low - exact).abs().max()) < 0.01 * span

    from kikuchipy_neural.training.options import FitOptions

    with pytest.raises(ValueError, match="precision"):
        FitOptions.from_kwargs(precision="fp8")


def test_uint16_counts_travel_as_int32():
    import torch

    from kikuchipy_neural.training.accelerate import to_device

    counts = np.array([0, 1, 40000, 65535], np.uint16)
    t = to_device(counts, torch.device("cpu"))
    assert t.dtype == torch.int32
    np.testing.assert_array_equal(t.numpy(), counts.astype(np.int32))
