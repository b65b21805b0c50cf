"""The in-memory dataset every loader returns: examples `(N, *shape)` and optional integer labels."""

from __future__ import annotations

from collections.abc import Callable

import torch


class ArrayDataset(torch.utils.data.Dataset):
    """Examples held as one tensor, indexed a batch at a time (`batch(indices)`), which is what the trainer uses.

    `data` is floating point, or uint8 pixels in [0, 255] that `batch` maps to [-1, 1] on the fly (images stay
    four times smaller in memory). `labels` is an optional `(N,)` integer tensor with `num_classes` classes.
    `sampler`, when the data come from a known law (toys, Gaussian mixtures), draws fresh examples:
    `sample(n, generator)`, the reference for sample-quality metrics and their two-sample floor.
    `mixture`, for data drawn from a `GaussianMixture`, gives exact scores: `dataset.mixture.score_model(sde)`.
    """

    def __init__(
        self,
        data: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_classes: int | None = None,
        name: str = "",
        sampler: Callable[[int, torch.Generator | None], torch.Tensor] | None = None,
        mixture=None,
    ):
        if not isinstance(data, torch.Tensor) or data.ndim < 2 or len(data) == 0:
            raise ValueError(f"data must be a non-empty tensor of shape (N, ...); got {getattr(data, 'shape', type(data))}")
        if not (data.is_floating_point() or data.dtype == torch.uint8):
            raise ValueError(f"data must be floating point or uint8 pixels; got {data.dtype}")
        if data.is_floating_point():
            finite = torch.isfinite(data.reshape(len(data), -1)).all(1)
            if not finite.all():
                bad = (~finite).nonzero()[:, 0]
                raise ValueError(f"data holds NaN or inf in {len(bad)} example(s), indices {bad[:8].tolist()}"
                                 f"{' ...' if len(bad) > 8 else ''}: drop or repair them before training")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (len(data),):
                raise ValueError(f"labels must have shape (N,) = ({len(data)},); got {tuple(labels.shape)}")
            if num_classes is None:
                num_classes = int(labels.max()) + 1
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes})")
        self.data, self.labels, self.num_classes, self.name = data, labels, num_classes, name
        self.sampler, self.mixture = sampler, mixture

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, labels) for a tensor of indices; labels is None for an unlabelled dataset."""
        x = self.data[indices]
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        return x, (self.labels[indices] if self.labels is not None else None)

    def __getitem__(self, index: int):
        x, y = self.batch(torch.as_tensor([index]))
        return (x[0], y[0]) if y is not None else x[0]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every example as floats, and the labels."""
        return self.batch(torch.arange(len(self)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n fresh draws from the data law (only for datasets defined by a sampler)."""
        if self.sampler is None:
            raise ValueError(f"dataset {self.name!r} is a fixed set of examples; it cannot draw fresh ones")
        return self.sampler(n, generator)

    def __repr__(self):
        labels = f", num_classes={self.num_classes}" if self.labels is not None else ""
        return f"ArrayDataset({self.name!r}, n={len(self)}, shape={self.shape}{labels})"
