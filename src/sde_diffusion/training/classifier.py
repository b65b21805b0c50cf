"""Training a noise-conditional classifier for classifier guidance with the framework's `Trainer`."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..sde import LinearSDE
from ..tensors import append_dims
from .losses import DSMLoss


class ClassifierLoss(DSMLoss):
    """Cross-entropy of a classifier on noised data, for any `LinearSDE` (Song et al. 2021, appendix I.1):

        E_t E_{x_0, y} E_eps [ -log softmax(classifier(alpha(t) x_0 + sigma(t) eps, t))[y] ],

    t uniform on [t_min, T], or uniform in log-SNR with `importance_sampling` (more weight on the noise levels where
    the label is still recognisable; the objective is then the log-SNR average, not reweighted). It is a `DSMLoss`
    for the `Trainer`'s sake (same time sampling, same call `loss(network, x0, generator, labels)`); the network is
    `classifier(x_t, t) -> logits` and must have `num_classes`, so the trainer passes the labels.
    """

    def __init__(self, sde: LinearSDE, importance_sampling: bool = False, t_min: float | None = None, label_smoothing: float = 0.0):
        super().__init__(sde, "eps", "target", importance_sampling=importance_sampling, t_min=t_min)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1); got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def per_example(self, network, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(y | x_t) per example, for given t (batch,) and eps."""
        if labels is None:
            raise ValueError("ClassifierLoss needs labels: train on a labelled dataset, with a classifier that has num_classes")
        x_t = append_dims(self.sde.alpha(t), x0.ndim) * x0 + append_dims(self.sde.sigma(t), x0.ndim) * eps
        logits = network(x_t, t)
        if logits.ndim != 2 or logits.shape[0] != len(x0):
            raise ValueError(f"the classifier must return logits of shape (batch, classes) = ({len(x0)}, K); got {tuple(logits.shape)}")
        return F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing)

    def options(self) -> dict:
        return dict(importance_sampling=self.importance_sampling, t_min=self.t_min, label_smoothing=self.label_smoothing)

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"ClassifierLoss({self.sde!r}, {opts})"
