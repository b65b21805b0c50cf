"""Exponential moving average of a model's weights, the copy diffusion models sample with (Ho et al. 2020)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy `module` of `model` whose parameters track the model's after every `update`:

        theta_ema <- d theta_ema + (1 - d) theta,    d = min(decay, (1 + k) / (10 + k)) at update k (with warm-up),

    the warm-up of TensorFlow's ExponentialMovingAverage, so early averages are not dominated by the random
    initialisation. Buffers (e.g. normalisation statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1); got {decay}")
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        k = self.num_updates
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
