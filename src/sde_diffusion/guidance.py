"""Steering the reverse process: classifier-free guidance (with a guidance interval and a schedule in time) and
classifier guidance. Each is a change to the score, not to the solver, so each works with every solver and SDE.

Classifier-free guidance (Ho & Salimans 2022) combines a conditional network's outputs for the label y and for the
null label,

    out_w(x, t) = (1 + w(t)) net(x, t, y) - w(t) net(x, t, NULL),

which for the score is grad log p_t(x | y) + w grad log [p_t(x | y) / p_t(x)], the score of p(x | y)^(1+w) p(x)^(-w)
when both are exact. The four parameterisations are affine in each other with coefficients that depend only on
(x, t), so the same combination means the same thing for eps, x0, v, score and flow networks. With a guidance
interval (Kynkaanniemi et al. 2024) w(t) is zero unless the noise level sigma(t) / alpha(t) lies in [lo, hi].

Classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, eq. 49) adds the gradient of a noise-conditional
classifier: score(x, t) + s(t) grad_x log p_t(y | x).

NFE: a `ScoreModel` counts one evaluation per call of its network. `ClassifierFreeGuidance` makes exactly one
network call per evaluation, on a batch holding the conditional rows and, for the samples where the weight is
positive, the unconditional rows too (a doubled batch when every sample is guided); it counts the calls in
`network_calls` and the rows in `rows_evaluated`, so the cost of guidance is the row count, not the NFE.
`ClassifierGuidance` counts its classifier's forward and backward passes in `classifier_evaluations` and
`classifier_backward_passes`, apart from the score's `nfe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .networks.embeddings import NULL_LABEL
from .score import ScoreModel
from .sde import LinearSDE
from .tensors import append_dims, batch_time

Weight = float | Callable[[torch.Tensor], torch.Tensor]


def check_labels(labels, num_classes: int | None, what: str = "labels") -> int | torch.Tensor:
    """`labels` (an int or a `(batch,)` integer tensor) checked against `num_classes` (None: not known)."""
    if isinstance(labels, bool) or not isinstance(labels, (int, torch.Tensor)):
        raise TypeError(f"{what} must be an int or a (batch,) integer tensor; got {type(labels).__name__}")
    values = torch.as_tensor(labels)
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.ndim > 1:
        raise ValueError(f"{what} must be an int or a (batch,) integer tensor; got dtype {values.dtype}, shape {tuple(values.shape)}")
    if values.numel() and num_classes is not None:
        bad = values[(values != NULL_LABEL) & ((values < 0) | (values >= num_classes))]
        if bad.numel():
            raise ValueError(f"{what} must be classes in [0, {num_classes}) (or NULL_LABEL = {NULL_LABEL} for none); "
                             f"got {int(bad[0])}")
    return labels


def labels_for(labels: int | torch.Tensor, x: torch.Tensor, what: str = "labels") -> torch.Tensor:
    """The `(batch,)` label tensor for a batch x: an int is repeated, a tensor must have x's batch size."""
    if isinstance(labels, int):
        return torch.full((len(x),), labels, dtype=torch.long, device=x.device)
    labels = labels.to(x.device)
    if labels.shape != (len(x),):
        raise ValueError(
            f"{what} must be an int or have shape (batch,) = ({len(x)},); got {tuple(labels.shape)}. (An adaptive "
            "solver with per_sample=True steps a subset of the batch: give one int label, or use per_sample=False.)"
        )
    return labels


def check_weight(weight: Weight, what: str = "the guidance weight") -> Weight:
    """A non-negative finite number, or a callable t -> weight (a schedule, checked when evaluated)."""
    if callable(weight):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"{what} must be a number >= 0 or a callable t -> weight; got {type(weight).__name__}")
    if not (weight >= 0 and weight < float("inf")):
        raise ValueError(f"{what} must be finite and >= 0 (0 = plain conditional sampling); got {weight}")
    return float(weight)


def weight_at(weight: Weight, t: torch.Tensor, what: str = "the guidance weight") -> torch.Tensor:
    """w(t) as a `(batch,)` tensor for the `(batch,)` times t; a schedule's values are checked to be finite and >= 0."""
    if not callable(weight):
        return torch.full_like(t, weight)
    w = torch.as_tensor(weight(t), dtype=t.dtype, device=t.device)
    if w.ndim == 0:
        w = w.expand(t.shape)
    if w.shape != t.shape:
        raise ValueError(f"{what} schedule must return a scalar or a (batch,) = {tuple(t.shape)} tensor; got {tuple(w.shape)}")
    if not (torch.isfinite(w) & (w >= 0)).all():
        raise ValueError(f"{what} schedule returned a negative or non-finite value at t = {float(t[0]):.6g}: {w.min().item():g}")
    return w


class ClassifierFreeGuidance(nn.Module):
    """`network(x, t, labels)` as the `(x, t)` callable a `ScoreModel` wraps, with classifier-free guidance.

        out(x, t) = net(x, t, y) + w(t) [net(x, t, y) - net(x, t, NULL)],   w(t) = weight(t) 1[lo <= sigma/alpha <= hi]

    Args:
        network: a class-conditional network called `network(x, t, labels)` (ours, or a lambda around an adapted
            model), predicting eps, x0, v, the score or the flow; `null_label` is its "no class" label.
        labels: one class for every sample (an int) or a `(batch,)` integer tensor; `NULL_LABEL` rows are unconditional.
        weight: w >= 0 (0 = conditional sampling, no extra rows), or a schedule: a callable t -> w ((batch,) or scalar).
        interval: (lo, hi) in the noise level sigma / alpha: guidance only where it lies inside (needs `sde`).
        sde: the LinearSDE the network was trained for (reads sigma / alpha for `interval`).
        num_classes: the number of classes, to check `labels` (default: `network.num_classes` when it has one; a
            network whose `num_classes` is None or 0 is unconditional and refused).
    """

    def __init__(
        self,
        network: Callable,
        labels: int | torch.Tensor,
        weight: Weight = 0.0,
        interval: Sequence[float] | None = None,
        *,
        sde: LinearSDE | None = None,
        num_classes: int | None = None,
        null_label: int = NULL_LABEL,
    ):
        super().__init__()
        if not callable(network):
            raise TypeError(f"network must be callable as network(x, t, labels); got {type(network).__name__}")
        if num_classes is None and hasattr(network, "num_classes"):
            num_classes = network.num_classes
            if not num_classes:
                raise ValueError(f"{type(network).__name__} is unconditional (num_classes={num_classes!r}) and cannot take "
                                 "labels: build it with num_classes=K and train it with label_dropout > 0")
        self.network, self.num_classes, self.null_label = network, num_classes, null_label
        self.labels = check_labels(labels, num_classes)
        self.weight = check_weight(weight)
        self.interval = None
        if interval is not None:
            if not isinstance(sde, LinearSDE):
                raise ValueError("a guidance interval is in sigma / alpha: pass sde=<the LinearSDE of the model> with interval")
            lo, hi = (float(v) for v in interval)
            if not 0 <= lo < hi:
                raise ValueError(f"interval must be (lo, hi) with 0 <= lo < hi in sigma / alpha; got {tuple(interval)}")
            self.interval = (lo, hi)
        self.sde = sde
        self.network_calls = self.rows_evaluated = 0

    def guidance_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) for `(batch,)` times: the weight (or schedule), zero outside the interval."""
        w = weight_at(self.weight, t)
        if self.interval is not None:
            assert self.sde is not None  # an interval is refused at construction without the SDE
            level = self.sde.sigma(t) / self.sde.alpha(t)
            w = torch.where((level >= self.interval[0]) & (level <= self.interval[1]), w, torch.zeros_like(w))
        return w

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        labels = labels_for(self.labels, x)
        w = self.guidance_weight(t)
        guided = (w > 0).nonzero()[:, 0]
        self.network_calls += 1
        self.rows_evaluated += len(x) + len(guided)
        if len(guided) == 0:
            return self.network(x, t, labels)
        null = torch.full_like(labels[guided], self.null_label)
        both = self.network(torch.cat([x, x[guided]]), torch.cat([t, t[guided]]), torch.cat([labels, null]))
        conditional, unconditional = both[: len(x)], both[len(x):]
        if len(guided) == len(x):
            return conditional + append_dims(w, x.ndim) * (conditional - unconditional)
        out = conditional.clone()
        out[guided] = conditional[guided] + append_dims(w[guided], x.ndim) * (conditional[guided] - unconditional)
        return out

    def extra_repr(self) -> str:
        return f"labels={self.labels!r}, weight={self.weight!r}, interval={self.interval}"


class ClassifierGuidance(ScoreModel):
    """A `ScoreModel` whose score is `score_model`'s plus the gradient of a noise-conditional classifier:

        score(x, t) + scale(t) grad_x log p_t(y | x),   log p_t(y | x) = log_softmax(classifier(x, t))[y].

    `classifier(x, t) -> logits (batch, K)` is trained on noised data of the same SDE (`training.ClassifierLoss`).
    `nfe` counts score evaluations (one per call, as the wrapped model); the classifier's forward and backward passes
    are counted apart in `classifier_evaluations` and `classifier_backward_passes`. The gradient is taken with
    autograd inside `torch.enable_grad()`, so sampling under `torch.no_grad()` works.
    """

    def __init__(self, score_model: ScoreModel, classifier: Callable, labels: int | torch.Tensor, scale: Weight,
                 *, num_classes: int | None = None):
        if not isinstance(score_model, ScoreModel):
            raise TypeError(f"score_model must be a ScoreModel; got {type(score_model).__name__}")
        if not callable(classifier):
            raise TypeError(f"classifier must be callable as classifier(x, t) -> logits; got {type(classifier).__name__}")
        super().__init__(self._guided_score, score_model.sde, "score", check_time=score_model.check_time)
        self.base, self.classifier = score_model, classifier
        self.num_classes = num_classes if num_classes is not None else getattr(classifier, "num_classes", None)
        self.labels = check_labels(labels, self.num_classes)
        self.scale = check_weight(scale, "the classifier guidance scale")
        self.classifier_evaluations = self.classifier_backward_passes = 0

    def log_likelihood_gradient(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(y | x): one classifier evaluation and one backward pass, counted."""
        labels = labels_for(self.labels, x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = self.classifier(x, t)
            self.classifier_evaluations += 1
            if logits.ndim != 2 or logits.shape[0] != len(x):
                raise ValueError(f"the classifier must return logits of shape (batch, classes) = ({len(x)}, K); got {tuple(logits.shape)}")
            if (labels >= logits.shape[1]).any() or (labels < 0).any():
                raise ValueError(f"classifier guidance needs labels in [0, {logits.shape[1]}); got {labels.tolist()[:8]}")
            log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (gradient,) = torch.autograd.grad(log_p, x)
            self.classifier_backward_passes += 1
        return gradient

    def _guided_score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = weight_at(self.scale, t, "the classifier guidance scale")
        score = self.base.score(x, t)
        if not (scale > 0).any():
            return score
        return score + append_dims(scale, x.ndim).to(score.dtype) * self.log_likelihood_gradient(x, t).to(score.dtype)

    def __repr__(self):
        return f"ClassifierGuidance({self.base!r}, {self.classifier!r}, labels={self.labels!r}, scale={self.scale!r})"
