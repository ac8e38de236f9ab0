"""The training loop: stages, evaluation, early stopping, checkpoints.

A fit runs one or two stages, each with its own sampler, optimiser and early
stopping, and shares one validation set and one history:

- ``warm_start`` (factorized field, positions sampler): the SIREN alone is
  regressed on the whitened PCA scores, which reaches PCA-level patterns in
  seconds because no pattern is read and the bases are already right;
- ``fit``: the paper's objective (band-weighted MSE on patterns plus the basis
  penalty) on every parameter, with ReduceLROnPlateau after the warm-up steps
  (factorized), or with the learning rate halved every ``lr_halving_steps``,
  gradient-norm clipping and a per-step hook that sets the detector-coordinate
  curriculum (joint).

Every stage keeps the parameters of its lowest validation loss and ends with
them, so a stage can only improve the held-out error.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kikuchipy_neural.fields.base import NeuralField
from kikuchipy_neural.safe_files import check_destination
from kikuchipy_neural.training import accelerate
from kikuchipy_neural.training.checkpoints import write_checkpoint
from kikuchipy_neural.training.losses import LOSS_FUNCTIONS, band_mask, weighted_mse
from kikuchipy_neural.training.options import FitOptions
from kikuchipy_neural.training.preprocessing import Preprocessed
from kikuchipy_neural.training.samplers import Batch

__all__ = ["StageSpec", "Trainer", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ("step", "seconds", "stage", "loss", "val_loss", "val_mae", "lr")

CHECKPOINT_FORMAT = "kikuchipy-neural-checkpoint/1"

# Validation patterns per block when evaluating (and when computing their band
# masks): a block's prediction, difference and squares are the evaluation's
# work arrays, 15 MB each at 120 x 120 px.
_VALIDATION_BLOCK = 256


@dataclass
class StageSpec:
    """One stage: what it trains, how batches are drawn, when it stops.

    ``lr`` is the stage's learning rate (None: the fit's ``lr`` option).
    With ``use_plateau`` the learning rate is halved (``plateau_factor``)
    once the validation loss has not improved for ``plateau_patience``
    evaluations (None: the fit's ``plateau_patience`` option), counted
    from the stage's step ``plateau_warmup`` on.
    ``lr_halving_steps`` (halve the learning rate every that many steps of
    the stage) replaces the plateau schedule when set; ``grad_clip`` caps the
    gradient norm of the stage's parameters; ``on_step(step)`` is called
    with the stage's step count before each step and before the stage's first
    evaluation (e.g. to set a curriculum).
    """

    name: str
    sampler: object  # callable rng -> Batch
    parameters: list[torch.nn.Parameter]
    patience: int
    min_delta: float
    use_plateau: bool
    plateau_patience: int | None = None
    plateau_warmup: int = 0
    lr_ramp_steps: int = 0  # linear learning-rate warm-up from 0
    lr_halving_steps: int | None = None
    grad_clip: float | None = None
    on_step: Callable[[int], None] | None = None
    lr: float | None = None


@dataclass
class _StageState:
    step: int = 0
    best_loss: float = math.inf  # lowest validation loss (for restoring)
    patience_ref: float = math.inf  # level to beat by min_delta
    bad_evals: int = 0
    best_state: dict | None = None
    done: bool = False


@dataclass
class _Progress:
    step: int = 0
    stage_index: int = 0
    history: dict = field(default_factory=lambda: {c: [] for c in HISTORY_COLUMNS})
    stop_reason: str = ""


class Trainer:
    """Runs the stages of a fit on a field.

    Parameters
    ----------
    field
        The field to train (already initialised, on ``device``).
    prep
        Preprocessing results (validation set, intensity scale).
    xy_all
        Network coordinates of every scan point, ``(n_points, 2)`` tensor.
    stages
        The stages, in order.
    options
        Fit options.
    device
        Torch device of the field.
    rng
        Generator for sampling.
    checkpoint_extra
        Everything else a checkpoint must hold to rebuild the fit.
    sync
        A :class:`~kikuchipy_neural.training.distributed.DistributedContext`
        for data-parallel training (gradients reduced over ranks, evaluation
        on rank 0 broadcast, checkpoints by rank 0), or None.
    """

    def __init__(
        self,
        field: NeuralField,
        prep: Preprocessed,
        xy_all: torch.Tensor,
        stages: list[StageSpec],
        options: FitOptions,
        device: torch.device,
        rng: np.random.Generator,
        checkpoint_extra: dict | None = None,
        sync=None,
    ) -> None:
        self.field, self.prep, self.opts = field, prep, options
        self.sync = sync
        self.precision = getattr(options, "precision", "float32")
        # Everything else a checkpoint must hold to rebuild the fit.
        self.checkpoint_extra = checkpoint_extra or {}
        self.device, self.rng = device, rng
        self.xy_all = xy_all.to(device)
        self.stages = stages
        self.progress = _Progress()
        self.stage_states = [_StageState() for _ in stages]
        self.optimizers = [
            torch.optim.Adam(s.parameters, lr=self._stage_lr(s)) for s in stages
        ]
        self.schedulers = [
            torch.optim.lr_scheduler.StepLR(opt, s.lr_halving_steps, gamma=0.5)
            if s.lr_halving_steps
            else torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                factor=options.plateau_factor,
                patience=options.plateau_patience
                if s.plateau_patience is None
                else s.plateau_patience,
                min_lr=options.min_lr,
            )
            for s, opt in zip(stages, self.optimizers, strict=True)
        ]
        self._running_loss: list[float] = []
        self._elapsed_before = 0.0  # seconds of earlier sessions (resume)
        self._prepare_validation()

    def _stage_lr(self, stage: StageSpec) -> float:
        return self.opts.lr if stage.lr is None else stage.lr

    # ------------------------------------------------------------ validation

    def _prepare_validation(self) -> None:
        val = self.prep.val_points
        self.val_xy = self.xy_all[torch.from_numpy(val)] if len(val) else None
        self.val_target = None
        if not len(val):
            return
        # Band flags, not weights (a byte per value, not four). Targets: on
        # CPUs normalised a block at a time from the raw patterns, which
        # preprocessing keeps anyway (a float32 copy would add 4 bytes per
        # value); a GPU keeps them on the device. Both in blocks, as
        # band_mask's filters make temporaries the size of their input.
        bands, targets = [], []
        for start in range(0, len(val), _VALIDATION_BLOCK):
            target = self._val_block_target(slice(start, start + _VALIDATION_BLOCK))
            bands.append(
                band_mask(
                    target, self.field.pattern_shape, self.opts.band_top_fraction
                ).to(self.device)
            )
            if self.device.type != "cpu":
                targets.append(target.to(self.device))
        self.val_band = torch.cat(bands)
        if targets:
            self.val_target = torch.cat(targets)

    def _val_block_target(self, rows: slice) -> torch.Tensor:
        """Normalised validation patterns ``rows``."""
        if self.val_target is not None:
            return self.val_target[rows]
        return self.prep.normalize(self.prep.val_patterns[rows])

    def evaluate(self) -> tuple[float, float]:
        """Validation loss (the training loss, band-weighted, normalised) and
        MAE (counts).

        Without validation points, the running training loss stands in and
        the MAE is NaN. Distributed: rank 0's result on every rank.
        """
        if self.sync is not None:
            return self.sync.from_main(self._evaluate, 2)
        return self._evaluate()

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        if self.val_xy is None:
            loss = (
                float(np.mean(self._running_loss)) if self._running_loss else math.inf
            )
            return loss, math.nan
        weighted, ab, n = 0.0, 0.0, 0
        mae = self.opts.loss == "mae"
        for start in range(0, len(self.val_xy), _VALIDATION_BLOCK):
            sl = slice(start, start + _VALIDATION_BLOCK)
            diff = self.field.pattern_values(self.val_xy[sl]).sub_(
                self._val_block_target(sl)
            )
            weight = 1.0 + (self.opts.band_weight - 1.0) * self.val_band[sl].float()
            error = diff.abs_()
            ab += float(error.sum())
            weighted += float((weight * (error if mae else error.square_())).sum())
            n += diff.numel()
        lo, hi = self.prep.intensity_range
        return weighted / n, ab / n * (hi - lo)

    # ------------------------------------------------------------------ step

    def _loss(self, batch: Batch) -> torch.Tensor:
        target = batch.target.to(self.device, non_blocking=True)
        weight = batch.weight.to(self.device, non_blocking=True)
        xy = self.xy_all[torch.from_numpy(batch.points).to(self.device)]
        if batch.kind == "scores":
            # The warm start fits the coefficients (without the constant 1).
            return weighted_mse(self.field.coefficients(xy)[:, 1:], target, weight)
        pixels = None if batch.pixels is None else batch.pixels.to(self.device)
        if batch.kind == "coordinates":
            prediction = self.field.values_at(xy, pixels)
        else:
            prediction = accelerate.pattern_values(
                self.field, xy, pixels, self.precision
            )
        loss = LOSS_FUNCTIONS[self.opts.loss](prediction, target, weight)
        if self.opts.basis_l2:
            loss = loss + self.opts.basis_l2 * self.field.penalty()
        return loss

    def _train_step(
        self, stage: StageSpec, optimizer: torch.optim.Optimizer, stage_step: int
    ) -> float:
        if stage_step < stage.lr_ramp_steps:
            # A fresh Adam moves every parameter by about lr on its first
            # steps; ramping lr protects parameters an earlier stage tuned.
            for group in optimizer.param_groups:
                group["lr"] = (
                    self._stage_lr(stage) * (stage_step + 1) / stage.lr_ramp_steps
                )
        while True:
            batch = stage.sampler(self.rng)
            try:
                loss = self._loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                break
            except accelerate.OUT_OF_MEMORY:
                del batch
                optimizer.zero_grad(set_to_none=True)
                if not accelerate.out_of_memory_backoff(stage.name, stage.sampler):
                    raise
        if self.sync is not None:
            value = self.sync.reduce_gradients(stage.parameters, loss)
        else:
            value = float(loss.detach())
        if stage.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(stage.parameters, stage.grad_clip)
        optimizer.step()
        return value

    # ------------------------------------------------------------------- run

    def run(
        self,
        max_steps: int,
        time_budget: float | None,
        started: float,
        checkpoint: str | None = None,
        progressbar=None,
    ) -> str:
        """Train until every stage has stopped or a limit is hit.

        Returns the reason training stopped. A ``KeyboardInterrupt`` stops
        training gracefully: the best parameters so far are kept, the
        checkpoint (if any) is written, and the reason says "interrupted".
        """
        self._started = started
        if checkpoint and (self.sync is None or self.sync.is_main):
            # Before the first step, not at the first checkpoint (which
            # crashed there with a traceback and saved nothing).
            check_destination(checkpoint, "checkpoint")
        p = self.progress
        try:
            while p.stage_index < len(self.stages):
                i = p.stage_index
                stage, state = self.stages[i], self.stage_states[i]
                opt, sched = self.optimizers[i], self.schedulers[i]
                if state.best_state is None:
                    self._start_stage(i)
                while not state.done:
                    if p.step >= max_steps:
                        return self._finish("max_steps", checkpoint)
                    if time_budget is not None and self._out_of_time(time_budget):
                        return self._finish("time_budget", checkpoint)
                    if stage.on_step is not None:
                        stage.on_step(state.step)
                    self._running_loss.append(self._train_step(stage, opt, state.step))
                    if stage.lr_halving_steps:
                        sched.step()
                    p.step += 1
                    state.step += 1
                    if progressbar is not None:
                        progressbar.update(1)
                    if state.step % self.opts.eval_every == 0:
                        self._evaluate_stage(i, sched, progressbar)
                        if checkpoint:
                            self.save_checkpoint(checkpoint)
                self._restore_best(i)
                p.stage_index += 1
            return self._finish("converged")
        except KeyboardInterrupt:
            warnings.warn(
                "Training interrupted: keeping the best parameters so far"
                + (f"; resume with resume={checkpoint!r}" if checkpoint else ""),
                stacklevel=3,
            )
            return self._finish("interrupted", checkpoint)

    @property
    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def _out_of_time(self, time_budget: float) -> bool:
        over = self.elapsed >= time_budget
        # Ranks must agree, or one would wait forever for the others' step.
        return over if self.sync is None else self.sync.any(over)

    def _start_stage(self, i: int) -> None:
        # The parameters a stage starts from are its first candidate, so a
        # stage never ends worse on the validation set than it began.
        state = self.stage_states[i]
        if self.stages[i].on_step is not None:
            self.stages[i].on_step(state.step)
        self.field.eval()
        val_loss, _ = self._record(self.stages[i], self.optimizers[i], math.nan)
        self.field.train()
        state.best_loss = state.patience_ref = val_loss
        state.best_state = copy.deepcopy(self.field.state_dict())
        scheduler = self.schedulers[i]
        if (
            isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            and self.stages[i].plateau_warmup <= state.step
        ):
            # The plateau counts from the stage's start, as its patience
            # does. Else the first evaluation always counted as an
            # improvement (on the scheduler's initial best, infinity): a loss
            # that rose at once, then crept down while still above where the
            # stage began, never halved the rate while the patience ran out.
            scheduler.best = val_loss

    def _evaluate_stage(self, i: int, scheduler, progressbar) -> None:
        stage, state = self.stages[i], self.stage_states[i]
        self.field.eval()
        val_loss, val_mae = self._record(stage, self.optimizers[i], None)
        self.field.train()
        if val_loss < state.best_loss:
            state.best_loss = val_loss
            state.best_state = copy.deepcopy(self.field.state_dict())
        if val_loss < state.patience_ref - stage.min_delta:
            state.patience_ref = val_loss
            state.bad_evals = 0
        else:
            state.bad_evals += 1
        if state.bad_evals >= stage.patience:
            state.done = True
        if stage.use_plateau and state.step >= stage.plateau_warmup:
            scheduler.step(val_loss)
        if progressbar is not None:
            # Early stopping decides the end: show how close it is.
            progressbar.set_postfix(
                stage=stage.name,
                loss=f"{self.progress.history['loss'][-1]:.3g}",
                val_mae=f"{val_mae:.4g}",
                no_gain=f"{state.bad_evals}/{stage.patience}",
                refresh=False,
            )

    def _record(self, stage: StageSpec, optimizer, train_loss) -> tuple[float, float]:
        val_loss, val_mae = self.evaluate()
        if train_loss is None:
            train_loss = (
                float(np.mean(self._running_loss)) if self._running_loss else math.nan
            )
        self._running_loss = []
        h = self.progress.history
        for key, value in zip(
            HISTORY_COLUMNS,
            (
                self.progress.step,
                self.elapsed,
                stage.name,
                train_loss,
                val_loss,
                val_mae,
                optimizer.param_groups[0]["lr"],
            ),
            strict=True,
        ):
            h[key].append(value)
        return val_loss, val_mae

    def _restore_best(self, i: int) -> None:
        best = self.stage_states[i].best_state
        if best is not None:
            self.field.load_state_dict(best)

    def _finish(self, reason: str, checkpoint: str | None = None) -> str:
        p = self.progress
        if p.stage_index < len(self.stages):
            i = p.stage_index
            # After an interrupt other ranks may be gone: no collective then.
            alone = self.sync is None or reason != "interrupted"
            if self.stage_states[i].step % self.opts.eval_every and alone:
                # Evaluate the last steps too, so nothing trained is unseen.
                self._evaluate_stage(i, self.schedulers[i], None)
            if checkpoint:
                self.save_checkpoint(checkpoint)
            self._restore_best(i)
        p.stop_reason = reason
        return reason

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        p = self.progress
        return {
            "field": self.field.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "stages": [vars(s).copy() for s in self.stage_states],
            "step": p.step,
            "stage_index": p.stage_index,
            "history": {k: list(v) for k, v in p.history.items()},
            "rng": self.rng.bit_generator.state,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(s)
        for st, s in zip(self.stage_states, state["stages"], strict=True):
            for key, value in s.items():
                setattr(st, key, value)
        self.progress.step = int(state["step"])
        self.progress.stage_index = int(state["stage_index"])
        self.progress.history = {k: list(v) for k, v in state["history"].items()}
        self.rng.bit_generator.state = state["rng"]
        self._elapsed_before = float(state["elapsed"])

    def save_checkpoint(self, path: str) -> None:
        """Write atomically: a crash while writing keeps the previous file.
        Distributed: rank 0 writes, the others return."""
        if self.sync is not None and not self.sync.is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "trainer": self.state_dict(),
            **self.checkpoint_extra,
        }
        write_checkpoint(payload, path)
