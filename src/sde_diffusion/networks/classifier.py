"""A noise-conditional classifier p_t(y | x_t) for classifier guidance: logits = classifier(x_t, t)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .embeddings import Conditioning
from .mlp import ResidualBlock


class NoiseConditionalClassifier(nn.Module):
    """`classifier(x, t) -> logits (batch, num_classes)` for noised data of shape `(batch, *event_shape)`,
    `prod(event_shape) = dim`: the residual MLP of `MLP` (input projection, `depth` blocks conditioned on the time
    embedding), then LayerNorm and a linear head. Train it with `training.ClassifierLoss` on the SDE it will guide.
    """

    def __init__(self, dim: int, num_classes: int, width: int = 256, depth: int = 3, time_embedding: str = "fourier",
                 embedding_dim: int = 64, dropout: float = 0.0, T: float = 1.0):
        super().__init__()
        for name, value in (("dim", dim), ("num_classes", num_classes), ("width", width), ("depth", depth)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        self.dim, self.num_classes = dim, num_classes
        self.conditioning = Conditioning(width, T, time_embedding, None, embedding_dim)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"this classifier takes {self.dim} values per example; got x of shape {tuple(x.shape)}")
        c = self.conditioning(t, None, len(x))
        h = self.input(x.reshape(len(x), self.dim))
        for block in self.blocks:
            h = block(h, c)
        return self.head(h)
