"""Experiment tracking, the `logger` config group: TensorBoard (offline event files through
`torch.utils.tensorboard`), a CSV file, or nothing. Rank 0 only: on other ranks every logger is `NoLogger`.

During training the trainer hands each logged record (loss, lr, grad_norm, steps_per_s) to `log_scalars`; the
evaluation hook (`logger.eval_every` steps) adds its metrics and, on TensorBoard, a plot of the samples.

    python -m sde_diffusion logger=tensorboard logger.eval_every=500     # then: tensorboard --logdir outputs/
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ..training.distributed import DistributedContext

KINDS = ("tensorboard", "csv", "none")


class NoLogger:
    """Logs nothing (`logger=none`, and every rank but 0)."""

    def log_scalars(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        pass

    def log_figure(self, step: int, tag: str, figure) -> None:
        pass

    def close(self) -> None:
        pass


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class TensorBoardLogger(NoLogger):
    """Scalars under `prefix/name` and figures as images, in event files under `folder` (read with tensorboard)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"logger=tensorboard needs the tensorboard package ({e}): pip install -e \".[tracking]\", "
                              "or choose logger=csv") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log_scalars(self, step, values, prefix="train"):
        for name, value in _scalars(values).items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def log_figure(self, step, tag, figure):
        self.writer.add_figure(tag, figure, step, close=True)
        self.writer.flush()

    def close(self):
        self.writer.close()


class CSVLogger(NoLogger):
    """One row per record in `path` (step, prefix, then each value), appended and flushed as it comes."""

    FIELDS = ("step", "prefix", "name", "value")

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", newline="")  # noqa: SIM115 (open for the logger's life; close() closes it)
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(self.FIELDS)

    def log_scalars(self, step, values, prefix="train"):
        for name, value in _scalars(values).items():
            self.writer.writerow((step, prefix, name, repr(value)))
        self.file.flush()

    def close(self):
        self.file.close()


def make_logger(node: dict | None, folder: Path, ctx: DistributedContext) -> NoLogger:
    """The logger the `logger` node names (`kind`: tensorboard, csv or none), writing under `folder`; NoLogger on
    ranks other than 0."""
    kind = (node or {}).get("kind", "none")
    if kind not in KINDS:
        from .config import ConfigError

        raise ConfigError(f"logger.kind must be one of {KINDS}; got {kind!r} (choose logger=tensorboard, csv or none)")
    if kind == "none" or not ctx.is_main:
        return NoLogger()
    if kind == "tensorboard":
        return TensorBoardLogger(folder / "tensorboard")
    return CSVLogger(folder / "log.csv")
