"""A noise-conditional classifier p_t(y | x_t) for classifier guidance: logits = classifier(x_t, t)."""

from __future__ import annotations

import torch
from torch import nn

from .mlp import MLP


class NoiseConditionalClassifier(MLP):
    """`classifier(x, t) -> logits (batch, num_classes)` for noised data of shape `(batch, *event_shape)`,
    `prod(event_shape) = dim`: the residual MLP of `MLP` (input projection, `depth` blocks conditioned on the time
    embedding), then LayerNorm, SiLU and a linear head. Train it with `training.ClassifierLoss` on the SDE it will
    guide (the `Trainer` passes the labels, since it has `num_classes`).
    """

    def __init__(self, dim: int, num_classes: int, width: int = 256, depth: int = 3, time_embedding: str = "fourier",
                 embedding_dim: int = 64, dropout: float = 0.0, T: float = 1.0):
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
        super().__init__(dim, width, depth, time_embedding, embedding_dim, None, dropout, T)
        self.num_classes = num_classes
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # no labels: it predicts them
        return self.output(self.features(x, t))
