"""The training loop: denoising score matching with AdamW, warm-up, clipping, EMA, checkpoints and DDP.

One step: take the next batch of this rank's data shard, evaluate the `DSMLoss` (t and eps from this rank's
generator), back-propagate (DDP averages the gradients over ranks), clip the gradient norm, take an AdamW step
at the warmed-up learning rate, update the EMA. Nothing in the loop synchronises with the host except at
logging, evaluation and checkpoint steps, so the loop costs what a hand-written one does.

Reproducibility: the data order of epoch e is a permutation drawn from (seed, e) and split into disjoint
per-rank shards; t, eps and label dropout come from a per-rank generator seeded from (seed, rank); the global
torch RNG (dropout) is seeded from (seed, rank) too. A checkpoint stores the model, EMA, optimiser, step, data
position and every rank's RNG states, so resuming at step k reproduces an uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import validation as check
from ..score import ScoreModel
from . import distributed
from .checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_module_state,
    prepare_directory,
    prune_checkpoints,
    save_checkpoint,
)
from .ema import EMA
from .guard import NonFiniteGuard, grad_norm
from .interrupt import StopSignals, TrainingInterrupted
from .losses import DSMLoss

PRECISIONS = ("fp32", "bf16")


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy's SeedSequence), e.g. (seed, rank) or (seed, epoch)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


class ShardedBatches:
    """Endless batches of one rank's shard: epoch e shuffles the whole dataset with a permutation drawn from
    (seed, e), rank r takes every world_size-th index starting at r (disjoint shards of equal size), and cuts its
    shard into full batches (a last partial batch is dropped). State: (epoch, position)."""

    def __init__(self, dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.dataset, self.batch_size, self.seed, self.rank, self.world_size = dataset, batch_size, seed, rank, world_size
        self.shard_size = len(dataset) // world_size
        self.batches_per_epoch = self.shard_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(dataset)} examples: {self.shard_size} per rank for {world_size} rank(s), "
                f"fewer than one batch of {batch_size}; lower batch_size"
            )
        self.epoch, self.position = 0, 0
        self._shard_epoch: int | None = None
        self._shard: torch.Tensor | None = None

    def shard(self, epoch: int) -> torch.Tensor:
        """The indices rank `rank` visits in `epoch`, in order."""
        if self._shard is None or self._shard_epoch != epoch:
            perm = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
            self._shard, self._shard_epoch = perm[self.rank :: self.world_size][: self.shard_size], epoch
        return self._shard

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.batch_size
        indices = self.shard(self.epoch)[start : start + self.batch_size]
        self.last = {"epoch": self.epoch, "position": self.position, "indices": indices}  # named if the step fails
        self.position += 1
        if hasattr(self.dataset, "batch"):
            return self.dataset.batch(indices)
        items = [self.dataset[int(i)] for i in indices]  # any map-style torch Dataset of x or (x, label)
        if isinstance(items[0], (tuple, list)):
            return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])
        return torch.stack(items), None

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class Trainer:
    """Trains `model` to minimise `loss` (a `DSMLoss`) on `data`.

    Args:
        model: the network, called `model(x, t)` or `model(x, t, labels)` (class-conditional models have
            `num_classes`; labels are used when the data has them).
        loss: the objective, which also fixes the SDE and the prediction the model is trained for.
        data: an `ArrayDataset` (fast path) or any map-style dataset of `x` or `(x, label)`.
        batch_size: examples per step per process.
        lr: AdamW's learning rate (Loshchilov & Hutter 2019).
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's moment decay rates.
        warmup_steps: the learning rate ramps linearly from lr / warmup_steps to lr over these steps.
        lr_decay_steps: with N > 0, after the warm-up the rate follows a cosine from lr down to 0 at step N
            (Loshchilov & Hutter 2017), and stays 0 after; 0 keeps it constant.
        grad_clip: maximum global gradient norm (None or 0: no clipping).
        on_nonfinite: what a step whose loss or gradient norm is NaN or inf does; it is never applied. "skip": it
            is recorded in `skipped_steps` and the run goes on; "stop": the run stops at the first (see `guard.py`).
        max_nonfinite_steps: with "skip", stop after this many non-finite steps in a row.
        ema_decay: decay of the EMA of the weights used for sampling (`EMA`).
        ema_warmup: the EMA's warm-up (`EMA`).
        seed: all randomness derives from it (and the rank).
        device: default cuda:LOCAL_RANK when CUDA is available, else CPU.
        precision: "fp32", or "bf16" autocast (for GPUs; works but is slow on most CPUs).
        compile: wrap the model in `torch.compile` (GPU; off by default).
        checkpoint_dir: where checkpoints go (None: none are written). Only rank 0 writes.
        checkpoint_every: steps between checkpoints (0 = only at the end of `train`).
        keep_checkpoints: how many checkpoints to keep.
        resume: continue from the newest checkpoint in `checkpoint_dir`. Without it, a directory that already
            holds checkpoints is refused, so another run's files are never overwritten. The directory is checked
            (created, writable, not a file) and cleared of stale temporary files before any training.
        eval_every: steps between calls of `eval_fn`.
        eval_fn: `eval_fn(trainer) -> dict of metrics`, called every `eval_every` steps on rank 0.
        log_every: steps between logged records (mean loss, lr, gradient norm, steps/s) in `history`.
        on_log: called with each record of `history` as it is made, on rank 0 (an experiment tracker).
        progress: show a progress bar (rank 0) with the loss and steps/s.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: DSMLoss,
        data: Any,
        *,
        batch_size: int = 256,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_decay_steps: int = 0,
        grad_clip: float | None = 1.0,
        on_nonfinite: str = "skip",
        max_nonfinite_steps: int = 10,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        compile: bool = False,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        keep_checkpoints: int = 2,
        resume: bool = False,
        eval_every: int = 0,
        eval_fn: Callable[[Trainer], dict[str, float]] | None = None,
        log_every: int = 100,
        progress: bool = True,
        on_log: Callable[[dict], None] | None = None,
    ):
        if not isinstance(loss, DSMLoss):
            raise TypeError(f"loss must be a DSMLoss; got {type(loss).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        lr, weight_decay = check.real("lr", lr, positive=True), check.real("weight_decay", weight_decay, minimum=0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        betas = (check.real("betas[0]", betas[0], minimum=0, below=1), check.real("betas[1]", betas[1], minimum=0, below=1))
        if grad_clip is not None:
            grad_clip = check.real("grad_clip", grad_clip, minimum=0)  # < 0 would train backwards
        for name, value in (("warmup_steps", warmup_steps), ("checkpoint_every", checkpoint_every),
                            ("eval_every", eval_every), ("seed", seed)):
            check.integer(name, value, minimum=0)
        check.integer("lr_decay_steps", lr_decay_steps, minimum=0)
        check.integer("keep_checkpoints", keep_checkpoints, minimum=1)
        check.integer("log_every", log_every, minimum=1)
        check.integer("batch_size", batch_size, minimum=1)
        for name, value in (("ema_warmup", ema_warmup), ("resume", resume), ("compile", compile)):
            check.flag(name, value)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if eval_every and eval_fn is None:
            raise ValueError("eval_every is set but no eval_fn was given")
        self.ctx = distributed.context()
        self.device = torch.device(device) if device is not None else self.ctx.device
        self.model = model.to(self.device)
        self.loss, self.data = loss, data
        if len(betas) != 2:
            raise ValueError(f"betas must be AdamW's (beta1, beta2); got {betas!r}")
        self.batch_size, self.lr, self.weight_decay = batch_size, float(lr), float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.warmup_steps, self.grad_clip, self.seed = int(warmup_steps), grad_clip, int(seed)
        self.lr_decay_steps = lr_decay_steps
        self.precision, self.compile = precision, bool(compile)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.keep_checkpoints = int(checkpoint_every), int(keep_checkpoints)
        self.eval_every, self.eval_fn, self.log_every, self.progress = int(eval_every), eval_fn, max(1, int(log_every)), progress
        self.on_log = on_log
        self.conditional = bool(getattr(model, "num_classes", None)) and getattr(data, "labels", None) is not None

        self.train_model: Callable[..., Any] = self.model  # the model, wrapped for DDP and compiled as asked
        if self.ctx.distributed:  # wrapping broadcasts rank 0's weights, so it comes before the EMA copy
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.compile:
            self.train_model = torch.compile(self.train_model)
        self.ema = EMA(self.model, ema_decay, ema_warmup)
        fused = self.device.type in ("cpu", "cuda")  # one kernel per step instead of several per parameter
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, fused=fused)
        self.batches = ShardedBatches(data, batch_size, self.seed, self.ctx.rank, self.ctx.world_size)
        self.generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, self.ctx.rank, 1))
        torch.manual_seed(derive_seed(self.seed, self.ctx.rank, 2))  # dropout draws from the global RNG
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._saved_step: int | None = None
        self.guard = NonFiniteGuard(on_nonfinite, max_nonfinite_steps)

        if self.checkpoint_dir is not None and self.ctx.is_main:
            prepare_directory(self.checkpoint_dir)
        if self.checkpoint_dir is not None and list_checkpoints(self.checkpoint_dir):
            if not resume:
                raise CheckpointError(
                    f"{self.checkpoint_dir} already holds checkpoints ({list_checkpoints(self.checkpoint_dir)[-1].name}, ...) "
                    "from an earlier run; pass resume=True to continue it, or choose an empty checkpoint_dir"
                )
            self.resume_from(list_checkpoints(self.checkpoint_dir)[-1])

    # -- one step ------------------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr` over `warmup_steps`; then constant, or with `lr_decay_steps` = N the cosine
        lr (1 + cos(pi (step - warmup) / (N - warmup))) / 2 down to 0 at step N."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay_steps <= self.warmup_steps:
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / (self.lr_decay_steps - self.warmup_steps))
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def skipped_steps(self) -> list[dict]:
        """The steps the non-finite guard did not apply: step, loss, grad_norm, epoch, batch, nonfinite_examples."""
        return self.guard.skipped

    def train_step(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One optimisation step; returns the loss and the gradient norm before clipping (device tensors). A step
        whose loss or gradient norm is not finite is not applied (see `on_nonfinite`); it returns (None, None)."""
        x0, labels = next(self.batches)
        x0 = x0.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True) if self.conditional and labels is not None else None
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        with self._autocast():
            loss = self.loss(self.train_model, x0, self.generator, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(self.model.parameters(), self.grad_clip)
        self.step += 1
        if not self.guard.finite(loss, norm):
            self.guard.reject(self.step, loss, norm, self.batches.last, x0)
            self.optimizer.zero_grad(set_to_none=True)
            return None, None
        self.guard.accept()
        self.optimizer.step()
        self.ema.update(self.model)
        return loss.detach(), norm if self.grad_clip else None

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self, steps: int) -> list[dict[str, Any]]:
        """Train until `self.step == steps` (a total, so a resumed run stops where an uninterrupted one does);
        returns the logged history. A final checkpoint is written when `checkpoint_dir` is set. SIGINT / SIGTERM
        stop the run after the current step with a checkpoint and raise `TrainingInterrupted`."""
        check.integer("steps", steps, minimum=0)
        if steps < self.step:
            raise ValueError(f"asked to train to step {steps}, but the trainer is already at step {self.step}")
        self.model.train()
        bar = None
        if self.progress and self.ctx.is_main:
            from ..progress import progress_bar

            bar = progress_bar(steps, "train", initial=self.step)
        signals = StopSignals(enabled=not self.ctx.distributed)
        try:
            with signals:
                self._loop(steps, signals, bar)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _loop(self, steps: int, signals: StopSignals, bar) -> None:
        """Steps until `steps`, logging the mean of the finite steps' losses, evaluating and checkpointing."""
        loss_sum, grad_sum, since, finite, clock = None, None, 0, 0, time.perf_counter()
        while self.step < steps:
            if signals.received is not None:
                raise TrainingInterrupted(signals.received, self.step, self._checkpoint_now())
            loss, grad_norm = self.train_step()
            if loss is not None:  # None: a non-finite step the guard skipped
                loss_sum, finite = (loss if loss_sum is None else loss_sum + loss), finite + 1
            if grad_norm is not None:
                grad_sum = grad_norm if grad_sum is None else grad_sum + grad_norm
            since += 1
            if bar is not None:
                bar.update(1)
            if (self.step % self.log_every == 0 or self.step == steps) and finite and loss_sum is not None:
                now = time.perf_counter()
                record = self._log(loss_sum / finite, None if grad_sum is None else grad_sum / finite, since / (now - clock))
                record["skipped_steps"] = len(self.guard.skipped)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4g}", steps_per_s=f"{record['steps_per_s']:.1f}")
                loss_sum, grad_sum, since, finite, clock = None, None, 0, 0, time.perf_counter()
            if self.eval_every and self.step % self.eval_every == 0:
                self.evaluate()
            if self.checkpoint_dir is not None and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save_checkpoint()
        self._checkpoint_now()

    def _checkpoint_now(self) -> Path | None:
        """Save unless the current step is already saved (or there is no checkpoint_dir); the newest file or None."""
        if self.checkpoint_dir is None:
            return None
        if self._saved_step != self.step:
            self.save_checkpoint()
        return checkpoint_path(self.checkpoint_dir, self.step)

    def _log(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, steps_per_s: float) -> dict:
        mean_loss = distributed.mean_over_ranks(loss.float(), self.ctx).item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"the training loss is {mean_loss} at step {self.step}; lower lr, enable grad_clip, or check the data "
                "(it should be finite and of order 1) and t_min (sigma(t_min) must not underflow)"
            )
        record = {"step": self.step, "loss": mean_loss, "lr": self.lr_at(self.step - 1), "steps_per_s": steps_per_s}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm.item()
        self.history.append(record)
        if self.on_log is not None and self.ctx.is_main:
            self.on_log(record)
        return record

    def evaluate(self) -> dict[str, float] | None:
        """Run `eval_fn(self)` on rank 0 (EMA weights are in `self.ema.module`); record and return its metrics."""
        if self.eval_fn is None or not self.ctx.is_main:
            return None
        metrics = dict(self.eval_fn(self))
        self.history.append({"step": self.step, **metrics})
        if self.on_log is not None:
            self.on_log(self.history[-1])
        self.model.train()
        return metrics

    def score_model(self, ema: bool = True) -> ScoreModel:
        """The trained network (EMA weights by default) as a `ScoreModel` for the loss's SDE and prediction."""
        network = self.ema.module if ema else self.model
        return ScoreModel(network, self.loss.sde, self.loss.prediction)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed exactly."""
        return {
            "model": type(self.model).__qualname__,
            "loss": repr(self.loss),
            "data": {"name": str(getattr(self.data, "name", type(self.data).__name__)), "size": len(self.data)},
            "trainer": {
                "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas),
                "warmup_steps": self.warmup_steps, "lr_decay_steps": self.lr_decay_steps, "grad_clip": self.grad_clip, "ema_decay": self.ema.decay,
                "ema_warmup": self.ema.warmup, "seed": self.seed, "precision": self.precision,
            },
        }

    def _rng_state(self) -> dict:
        np_state = np.random.get_state()
        assert isinstance(np_state, tuple)  # the legacy tuple of numpy's global MT19937
        state = {
            "torch": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self) -> dict:
        """Everything a resume needs; collective in DDP (every rank must call it), rank 0's copy is complete."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": distributed.all_gather_object(self._rng_state(), self.ctx),
            "world_size": self.ctx.world_size,
            "config": self.config(),
            "history": self.history,
            "nonfinite_guard": self.guard.state_dict(),
        }

    def save_checkpoint(self) -> Path | None:
        """Write `step_<step>.pt` atomically to `checkpoint_dir` (rank 0) and prune old ones. Every rank must call it."""
        if self.checkpoint_dir is None:
            raise ValueError("no checkpoint_dir was given to the Trainer")
        for what, module in (("model", self.model), ("EMA model", self.ema.module)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                newest = list_checkpoints(self.checkpoint_dir)
                raise CheckpointError(f"not writing the checkpoint of step {self.step}: the {what}'s weights hold NaN or "
                                      f"inf; the last finite checkpoint ({newest[-1] if newest else 'none'}) is kept")
        state = self.state_dict()
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(state, checkpoint_path(self.checkpoint_dir, self.step))
            prune_checkpoints(self.checkpoint_dir, self.keep_checkpoints)
        distributed.barrier(self.ctx)
        self._saved_step = self.step
        return path

    def resume_from(self, path: str | Path) -> None:
        """Load a checkpoint into this trainer; a corrupt file, another architecture or another config raises
        CheckpointError and leaves the trainer and the files untouched."""
        state = load_checkpoint(path, map_location=self.device)
        ours, theirs = self.config(), state.get("config", {})
        if ours["model"] != theirs.get("model"):
            raise CheckpointError(f"{path} holds a {theirs.get('model')!r} model, but this trainer trains a {ours['model']!r}")
        differences = [
            f"{section}.{key}: checkpoint {theirs.get(section, {}).get(key)!r} vs now {value!r}"
            for section in ("data", "trainer")
            for key, value in ours[section].items()
            if theirs.get(section, {}).get(key) != value
        ]
        if ours["loss"] != theirs.get("loss"):
            differences.append(f"loss: checkpoint {theirs.get('loss')} vs now {ours['loss']}")
        if differences:
            raise CheckpointError(f"{path} was written with a different configuration, so it cannot be resumed exactly: " + "; ".join(differences))
        load_module_state(self.model, state["model"], "model", path)  # checks every key and shape before loading
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        rng = state["rng"]
        if state["world_size"] != self.ctx.world_size:
            warnings.warn(
                f"{path} was written by {state['world_size']} process(es), resumed with {self.ctx.world_size}: "
                "the data shards and random streams change, so the run continues but not bit for bit", stacklevel=2
            )
        if self.ctx.rank < len(rng):
            self._set_rng_state(rng[self.ctx.rank])
        self.step, self.history = int(state["step"]), list(state.get("history", []))
        if "nonfinite_guard" in state:
            self.guard.load_state_dict(state["nonfinite_guard"])
        self._saved_step = self.step
