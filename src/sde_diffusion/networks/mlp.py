"""A residual MLP for low-dimensional data (2-D toys, Gaussian mixtures, flattened small vectors)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .embeddings import Conditioning


class ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(LayerNorm(h)) + E c): a pre-norm residual block with the conditioning c added inside."""

    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width)
        self.cond = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = self.linear1(nn.functional.silu(self.norm(h))) + self.cond(c)
        return h + self.linear2(self.dropout(nn.functional.silu(r)))


class MLP(nn.Module):
    """`network(x, t, labels=None)` for data of shape `(batch, *event_shape)` with `prod(event_shape) = dim`.

    Input projection, `depth` residual blocks of `width` units conditioned on the time embedding
    ("fourier" or "sinusoidal") and, with `num_classes`, on a class label (`NULL_LABEL` = unconditional),
    then a zero-initialised linear read-out of the residual stream (the untrained network predicts 0, the mean
    of eps). The read-out has no final normalisation on purpose: the stream carries a linear image of x, so the
    output can grow linearly off the data (eps ~ x_t at high noise), and PF-ODE paths starting in the prior's tail
    are not pushed outwards by a saturated prediction.
    `T` is the SDE's horizon; times are divided by it before embedding.
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 256,
        depth: int = 4,
        time_embedding: str = "fourier",
        embedding_dim: int = 64,
        num_classes: int | None = None,
        dropout: float = 0.0,
        T: float = 1.0,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("width", width), ("depth", depth)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        self.dim, self.num_classes = dim, num_classes
        self.conditioning = Conditioning(width, T, time_embedding, num_classes, embedding_dim)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(depth))
        output = nn.Linear(width, dim)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        self.output: nn.Module = output

    def features(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream after the last block, `(batch, width)`."""
        if math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"this {type(self).__name__} takes {self.dim} values per example; got x of shape {tuple(x.shape)}")
        c = self.conditioning(t, labels, len(x))
        h = self.input(x.reshape(len(x), self.dim))
        for block in self.blocks:
            h = block(h, c)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.features(x, t, labels)).reshape(x.shape)
