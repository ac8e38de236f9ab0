"""Data-parallel fits with ``torch.distributed``, launched by ``torchrun``.

One process per GPU (or per CPU socket), all running the same script::

    torchrun --nproc_per_node 4 my_fit.py          # one node, 4 GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint host:29500 my_fit.py       # two nodes

where ``my_fit.py`` calls ``s.fit_neural(...)`` as usual. :func:`fit` sees
the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables that ``torchrun`` sets
and trains data-parallel (``distributed=None``, the default; ``True``
requires it, ``False`` ignores it):

- NCCL between GPUs (rank ``r`` uses ``cuda:LOCAL_RANK``), gloo on CPUs;
- rank 0 preprocesses (intensity scale, PCA, validation split, scores) and
  sends the result to the others; every rank starts from rank 0's parameters;
- the training points are split into one shard per rank: whole dask chunks
  for lazy data (a rank reads only its own chunks from disk), a random split
  of the points otherwise. Rank ``r`` draws its share of each batch,
  ``positions_per_batch * |shard_r| / |train|`` positions, from its own shard
  with its own generator (seeded by ``(seed, r)``);
- after each backward pass the gradients are summed over ranks with weights
  ``|shard_r| / |train|`` (one flat all-reduce, :meth:`DistributedContext.
  reduce_gradients`), so every rank takes the same optimiser step, whose
  gradient is the stratified estimate of the single-process batch gradient:
  equal to it in expectation, and equal to it exactly when each rank's batch
  is its whole shard;
- rank 0 evaluates the validation set and broadcasts the result, so learning
  rate schedules, keep-best and early stopping decide identically on every
  rank and all ranks stop together; a time budget is agreed on as well;
- rank 0 alone writes checkpoints and shows the progress bar;
- after training, the refit of the bases (:mod:`.refit_bases`) reads each
  rank's own shard, sums the normal equations over ranks (one all-reduce),
  and every rank ends with rank 0's bases.

Every rank returns the same model; save it from rank 0 only (see
:func:`is_main_process`). ``memory_budget`` applies per process. A fit
creates the process group when none exists and destroys it at its end; a
script that fits several times should call
``torch.distributed.init_process_group()`` once itself (the fits then use that
group): re-creating groups fit after fit on ``torchrun``'s store occasionally
deadlocked the ranks' first broadcast here.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from kikuchipy_neural._device import resolve_device

__all__ = [
    "DistributedContext",
    "is_main_process",
    "launched_by_torchrun",
    "setup",
    "shard_points",
    "split_batch",
]

# Collectives wait this long; rank 0's preprocessing of a large map (one
# pass over the data) happens while the other ranks wait in a broadcast.
_TIMEOUT = datetime.timedelta(minutes=60)


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True on rank 0 of a distributed run, and in a single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class DistributedContext:
    """One rank's view of a data-parallel fit (see the module docstring).

    Attributes
    ----------
    rank, world_size, local_rank
        From the process group (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    device
        This rank's torch device.
    backend
        ``"nccl"`` or ``"gloo"``.
    owns_group
        Whether :func:`setup` created the process group (and :meth:`close`
        destroys it).
    weight
        This rank's share of the training points, ``|shard| / |train|``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool
    weight: float = 1.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        # NCCL moves CUDA tensors only.
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------ broadcast

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (pickled). An exception raised on
        rank 0 and passed here is raised on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    @torch.no_grad()
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's."""
        for tensor in module.state_dict().values():
            if self.backend == "nccl":
                dist.broadcast(tensor, src=0)
            else:
                host = tensor.detach().cpu()
                dist.broadcast(host, src=0)
                tensor.copy_(host)

    def from_main(self, compute: Callable[[], tuple[float, ...]], n: int) -> tuple:
        """``compute()`` on rank 0 (``n`` floats), broadcast to every rank."""
        values = compute() if self.is_main else (math.nan,) * n
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.broadcast(t, src=0)
        return tuple(float(v) for v in t.tolist())

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        t = torch.tensor([float(flag)], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    # ------------------------------------------------------------- gradients

    @torch.no_grad()
    def reduce_gradients(
        self, parameters: list[torch.nn.Parameter], loss: torch.Tensor
    ) -> float:
        """Replace each gradient by the shard-weighted sum over ranks.

        One flat all-reduce carries every gradient and the loss; returns the
        weighted loss over ranks (the same number on every rank). Parameters
        without a gradient have none on any rank (same code path).
        """
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat(
            [g.reshape(-1) for g in grads]
            + [loss.detach().reshape(1).to(grads[0].dtype)]
        )
        flat.mul_(self.weight)
        if flat.device != self._comm_device:
            flat = flat.to(self._comm_device)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-1])

    @torch.no_grad()
    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, a new tensor on ``tensor``'s device."""
        t = tensor.to(self._comm_device).clone()
        dist.all_reduce(t)
        return t.to(tensor.device)

    # ----------------------------------------------------------------- shards

    def shard(self, source, train_points: np.ndarray, options, seed: int):
        """This rank's training points and its share of each batch.

        Returns ``(points, options)``: the sorted flat indices of the shard
        and a copy of ``options`` with ``positions_per_batch`` and
        ``batch_size`` cut to this rank's share. Sets :attr:`weight`.
        """
        shards = shard_points(source, train_points, self.world_size, seed)
        sizes = np.array([len(s) for s in shards])
        self.weight = float(sizes[self.rank] / sizes.sum())
        options = dataclasses.replace(
            options,
            positions_per_batch=split_batch(options.positions_per_batch, sizes)[
                self.rank
            ],
            batch_size=split_batch(options.batch_size, sizes)[self.rank],
        )
        return shards[self.rank], options

    def reseed(self, rng: np.random.Generator, seed: int, step: int) -> None:
        """Give ``rng`` (in place: buffers share it) this rank's stream for a
        fit resumed at ``step`` (a checkpoint holds rank 0's generator)."""
        fresh = np.random.default_rng([seed, self.rank, step])
        rng.bit_generator.state = fresh.bit_generator.state

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def split_batch(total: int, sizes: np.ndarray) -> list[int]:
    """``total`` split in proportion to shard ``sizes`` (each >= 1)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return [max(1, int(round(total * s / sizes.sum()))) for s in sizes]


def shard_points(
    source, train_points: np.ndarray, world_size: int, seed: int
) -> list[np.ndarray]:
    """Split the training points into ``world_size`` disjoint shards.

    Lazy data with at least two chunks (tiles) per rank is split by whole
    chunks, balanced by their number of training points (largest first, each
    to the least loaded rank; chunks of equal size in a seeded random order),
    so that a rank reads only its own chunks. Otherwise the points are split
    at random. Every rank computes the same split.

    Parameters
    ----------
    source
        The :class:`~kikuchipy_neural.training.data.PatternSource`.
    train_points
        Flat indices of the training points.
    world_size
        Number of ranks.
    seed
        The fit's seed.

    Returns
    -------
    shards
        One sorted array of flat indices per rank.
    """
    rng = np.random.default_rng([seed, world_size, 5])
    train_points = np.asarray(train_points)
    if len(train_points) < world_size:
        raise ValueError(
            f"{len(train_points)} training points cannot be shared by "
            f"{world_size} processes"
        )
    train = np.zeros(source.ny * source.nx, bool)
    train[train_points] = True
    per_tile = [t.flat_indices(source.nx) for t in source.tiles]
    per_tile = [flat[train[flat]] for flat in per_tile]
    per_tile = [p for p in per_tile if len(p)]
    if source.is_lazy and len(per_tile) >= 2 * world_size:
        order = rng.permutation(len(per_tile))
        order = order[np.argsort([-len(per_tile[i]) for i in order], kind="stable")]
        loads = np.zeros(world_size, np.int64)
        parts: list[list[np.ndarray]] = [[] for _ in range(world_size)]
        for i in order:
            r = int(np.argmin(loads))
            parts[r].append(per_tile[i])
            loads[r] += len(per_tile[i])
        return [np.sort(np.concatenate(p)) for p in parts]
    shuffled = rng.permutation(train_points)
    return [np.sort(shuffled[r::world_size]) for r in range(world_size)]


def setup(
    distributed: bool | None, device: str | torch.device | None
) -> DistributedContext | None:
    """The distributed context of this process, or None for a single process.

    Parameters
    ----------
    distributed
        None: distributed when launched with more than one process (or when
        a process group exists already); True: required (``torchrun`` with
        one process included); False: single process whatever the launcher.
    device
        The ``device`` given to the fit: None picks ``cuda:LOCAL_RANK`` when
        CUDA is available, else the CPU; ``"cuda"`` means this rank's GPU.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
    if distributed is False:
        return None
    initialized = dist.is_available() and dist.is_initialized()
    world = (
        dist.get_world_size() if initialized else int(os.environ.get("WORLD_SIZE", "1"))
    )
    if distributed is None and world <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    if not initialized and not all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        raise ValueError(
            "distributed=True needs the environment of a distributed launch: run "
            "the script with `torchrun --nproc_per_node N script.py` (it sets "
            "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)."
        )
    rank = dist.get_rank() if initialized else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _rank_device(device, local_rank)
    if initialized:
        backend = str(dist.get_backend())
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("the process group uses NCCL, which needs device='cuda'")
    else:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method="env://", timeout=_TIMEOUT)
    return DistributedContext(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
        owns_group=not initialized,
    )


def _rank_device(device, local_rank: int) -> torch.device:
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device
