"""Worker of ``tests/test_distributed.py``, launched by ``torchrun``.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py MAP OUT
CASES_JSON``. For each case (name -> fit keyword arguments, ``lazy`` and
``chunks`` for how the map is loaded) every rank fits the h5ebsd map ``MAP``
data-parallel (gloo on CPUs) and writes ``OUT/<case>_rank<r>.npz``: the
field's parameters, the history, the fit's info and the tiles its rank read
after preprocessing.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch


def main(map_path: str, out: str, cases_json: str) -> None:
    torch.set_num_threads(1)
    import kikuchipy as kp

    from kikuchipy_neural.training import data as data_module
    from kikuchipy_neural.training.distributed import is_main_process
    from kikuchipy_neural.training.fit import fit

    rank = int(os.environ["RANK"])
    reads: list[tuple[int, int, int, int]] = []
    original = data_module.PatternSource.read_tile

    def logged(self, tile):
        reads.append((tile.r0, tile.r1, tile.c0, tile.c1))
        return original(self, tile)

    data_module.PatternSource.read_tile = logged
    # One process group for every case: a fit owns (and destroys) a group it
    # creates itself, and re-creating groups on torchrun's store, fit after
    # fit, occasionally deadlocked the ranks' first broadcast.
    torch.distributed.init_process_group("gloo")
    for name, spec in json.loads(cases_json).items():
        spec = dict(spec)
        lazy, chunks = spec.pop("lazy", False), spec.pop("chunks", None)
        s = kp.load(map_path, lazy=lazy)
        if chunks is not None:
            s.data = s.data.rechunk((*chunks, -1, -1))
        reads.clear()
        model = fit(s, show_progressbar=False, **spec)
        state = {
            k: v.detach().cpu().numpy() for k, v in model.field.state_dict().items()
        }
        np.savez(
            os.path.join(out, f"{name}_rank{rank}.npz"),
            params=np.concatenate([v.ravel() for v in state.values()]),
            val_mae=np.asarray(model.history["val_mae"], float),
            loss=np.asarray(model.history["loss"], float),
            step=np.asarray(model.history["step"]),
            reads=np.asarray(reads, np.int64).reshape(-1, 4),
            info=json.dumps({**model.info, "main": is_main_process()}),
        )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
