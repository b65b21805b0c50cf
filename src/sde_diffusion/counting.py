"""Counting the work done by a network in sample-evaluations: one row of a batch through the network once.

`ScoreModel.nfe` counts batched calls, which is what sampling costs per sample; a calibration or a tuning run is
priced in rows x calls instead, so that a pilot batch of 128 and one of 2048 are told apart. A backward pass
through the network (a gradient with respect to its input) costs about two forward passes, and counts as two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .score import ScoreModel


class SampleEvaluationCounter:
    """Wraps `network(x, t)` and counts `forward` (rows of x over every call) and `backward` (rows over every
    backward pass that reaches an output, seen by a hook on it); `total = forward + 2 backward`."""

    def __init__(self, network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        if not callable(network):
            raise TypeError(f"network must be callable as network(x, t); got {type(network).__name__}")
        self.network = network
        self.forward = 0
        self.backward = 0

    @property
    def total(self) -> int:
        return self.forward + 2 * self.backward

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.network(x, t)
        rows = len(x)
        self.forward += rows
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad: self._count_backward(rows))
        return out

    def _count_backward(self, rows: int) -> None:
        self.backward += rows

    def __repr__(self):
        return f"SampleEvaluationCounter({self.network!r}, forward={self.forward}, backward={self.backward})"


def counted(model: ScoreModel) -> tuple[ScoreModel, SampleEvaluationCounter]:
    """A second wrapper of `model`'s network (same SDE, prediction and time check) whose work is counted in
    sample-evaluations; `model`'s own NFE counter is left as it was."""
    counter = SampleEvaluationCounter(model.network)
    return ScoreModel(counter, model.sde, model.prediction, check_time=model.check_time), counter
