"""Embeddings of the diffusion time and of class labels, shared by the MLP and the U-Net.

Times arrive as a `(batch,)` tensor in `[0, T]`; each embedding first divides by `T`, so a network built for one
SDE horizon sees inputs in `[0, 1]`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NULL_LABEL = -1
"""The class label meaning "no class" (classifier-free guidance): conditional networks map it to a learned
unconditional embedding, so a label tensor may mix real classes and `NULL_LABEL`."""

TIME_EMBEDDINGS: tuple[str, ...] = ("sinusoidal", "fourier")


class SinusoidalTimeEmbedding(nn.Module):
    """The transformer position encoding used by DDPM (Vaswani et al. 2017; Ho et al. 2020):

        emb(t) = [sin(s t' w_k), cos(s t' w_k)]_k,   w_k = max_period^(-k / (dim/2)),   t' = t / T,  s = `scale`,

    with `scale = 1000` mapping [0, 1] onto DDPM's integer steps.
    """

    freqs: torch.Tensor  # a buffer

    def __init__(self, dim: int, T: float = 1.0, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"the time-embedding dimension must be even and >= 2; got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", (scale / T * freqs).float(), persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


class FourierTimeEmbedding(nn.Module):
    """Gaussian random Fourier features (Tancik et al. 2020), the time embedding of Song et al. (2021):

        emb(t) = [sin(2 pi W t'), cos(2 pi W t')],   W ~ N(0, scale^2) fixed,   t' = t / T.

    W is drawn from a generator seeded by `seed` and stored in the state dict, so it survives a checkpoint.
    """

    W: torch.Tensor  # a buffer

    def __init__(self, dim: int, T: float = 1.0, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"the time-embedding dimension must be even and >= 2; got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale * 2 * math.pi / T)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].to(self.W.dtype) * self.W[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


def time_embedding(kind: str, dim: int, T: float = 1.0) -> nn.Module:
    """The time embedding `kind` ("sinusoidal" or "fourier") of width `dim`."""
    if kind == "sinusoidal":
        return SinusoidalTimeEmbedding(dim, T)
    if kind == "fourier":
        return FourierTimeEmbedding(dim, T)
    raise ValueError(f"unknown time embedding {kind!r}; choose one of {TIME_EMBEDDINGS}")


class LabelEmbedding(nn.Module):
    """A learned vector per class plus one for `NULL_LABEL` (row `num_classes`)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.table.weight.device)
        if labels.dtype.is_floating_point or labels.ndim != 1:
            raise ValueError(f"labels must be a (batch,) integer tensor; got dtype {labels.dtype}, shape {tuple(labels.shape)}")
        return self.table(torch.where(labels == NULL_LABEL, self.num_classes, labels))


class Conditioning(nn.Module):
    """The conditioning vector of a network: MLP(time embedding) (+ label embedding when class-conditional).

    A conditional network called without labels is conditioned on `NULL_LABEL` (unconditional); an
    unconditional one refuses labels, so a wrong config fails loudly instead of silently ignoring them.
    """

    def __init__(self, dim: int, T: float, time_embedding_kind: str, num_classes: int | None, embedding_dim: int | None = None):
        super().__init__()
        embedding_dim = embedding_dim or dim
        self.time = nn.Sequential(time_embedding(time_embedding_kind, embedding_dim, T), nn.Linear(embedding_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.labels = LabelEmbedding(num_classes, dim) if num_classes else None

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape (batch,) = ({batch},); got {tuple(t.shape)}")
        c = self.time(t)
        if self.labels is None:
            if labels is not None:
                raise ValueError("labels were given to an unconditional network; build it with num_classes=...")
            return c
        if labels is None:
            labels = torch.full((batch,), NULL_LABEL, dtype=torch.long, device=c.device)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape (batch,) = ({batch},); got {tuple(labels.shape)}")
        return c + self.labels(labels)
