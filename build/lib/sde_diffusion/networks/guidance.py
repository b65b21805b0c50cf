"""Sampling from a class-conditional network: fix the labels, optionally with classifier-free guidance."""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import NULL_LABEL


class ClassConditional(nn.Module):
    """Turns `network(x, t, labels)` into the `(x, t)` callable `ScoreModel` expects.

    With guidance weight w > 0 (Ho & Salimans 2022), the output is

        (1 + w) net(x, t, y) - w net(x, t, NULL_LABEL),

    both halves in one batched call. The four parameterisations are affine in each other with coefficients that
    depend only on (x, t), so this combination means the same thing whether the network predicts eps, x0, v or
    the score. `ScoreModel` counts one function evaluation per call (the batch is doubled instead).

    `labels` is one class for every sample (an int) or a `(batch,)` tensor matching x.
    """

    def __init__(self, network: nn.Module, labels: int | torch.Tensor, guidance: float = 0.0):
        super().__init__()
        if guidance < 0:
            raise ValueError(f"the guidance weight must be >= 0 (0 = plain conditional sampling); got {guidance}")
        self.network, self.guidance = network, float(guidance)
        self.labels = labels

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.labels, int):
            return torch.full((len(x),), self.labels, dtype=torch.long, device=x.device)
        labels = torch.as_tensor(self.labels, device=x.device)
        if labels.shape != (len(x),):
            raise ValueError(f"labels must be an int or have shape (batch,) = ({len(x)},); got {tuple(labels.shape)}")
        return labels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = self._labels(x)
        if self.guidance == 0:
            return self.network(x, t, labels)
        both = self.network(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, NULL_LABEL)]))
        conditional, unconditional = both.chunk(2)
        return conditional + self.guidance * (conditional - unconditional)
