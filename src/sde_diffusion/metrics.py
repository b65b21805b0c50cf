"""Distances between two samples, and the floor two samples of the true law reach.

A sample-based distance is never zero between finite samples; each is reported beside `two_sample_floor`,
the same distance between two independent draws of the reference law at the same sample size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1).to(torch.float64)


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y flattened to (n, d) float64, checked: tensors, non-empty, the same d."""
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, torch.Tensor) or v.ndim < 1 or len(v) == 0 or v[0].numel() == 0:
            raise ValueError(f"{name} must be a non-empty sample of shape (n, ...); got {getattr(v, 'shape', type(v).__name__)}")
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must hold samples of the same dimension; got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def random_projections(dim: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` directions drawn uniformly on the unit sphere of R^dim, shape (dim, n)."""
    p = torch.randn(dim, n, generator=generator, dtype=torch.float64)
    return p / p.norm(dim=0, keepdim=True)


def _quantiles(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    # Values of the empirical quantile function at the n mid-point levels (k + 1/2) / n, columnwise.
    m = len(sorted_values)
    if m == n:
        return sorted_values
    pos = (torch.arange(n, dtype=torch.float64) + 0.5) / n * m - 0.5
    lo = pos.floor().clamp(0, m - 1).long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo).clamp(0, 1)[:, None]
    return (1 - w) * sorted_values[lo] + w * sorted_values[hi]


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    projections: int | torch.Tensor = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance: sqrt(mean over directions theta of W2^2(theta . x, theta . y)).

    In one dimension W2 is the L2 distance between quantile functions, computed by sorting.
    Pass a fixed `projections` tensor (dim, n) or a seeded generator to compare runs on the same directions.
    """
    x, y = _pair(x, y)
    if isinstance(projections, int):
        projections = random_projections(x.shape[1], projections, generator)
    px, py = (x @ projections).sort(dim=0).values, (y @ projections).sort(dim=0).values
    n = max(len(px), len(py))
    return float(((_quantiles(px, n) - _quantiles(py, n)) ** 2).mean().sqrt())


def _pairwise_mean(a: torch.Tensor, b: torch.Tensor, kernel: Callable, exclude_diagonal: bool, chunk: int = 2048) -> float:
    total = 0.0
    for i in range(0, len(a), chunk):
        total += kernel(torch.cdist(a[i : i + chunk], b)).sum().item()
    n_pairs = len(a) * len(b)
    if exclude_diagonal:
        total -= len(a) * kernel(torch.zeros((), dtype=a.dtype)).item()
        n_pairs -= len(a)
    return total / n_pairs


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo), unbiased within-sample terms."""
    x, y = _pair(x, y)
    dist = lambda d: d  # noqa: E731
    return 2 * _pairwise_mean(x, y, dist, False) - _pairwise_mean(x, x, dist, True) - _pairwise_mean(y, y, dist, True)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] | None = None) -> float:
    """Unbiased squared MMD with a sum of Gaussian kernels exp(-d^2 / (2 h^2)).

    Default bandwidths: the median pairwise distance of y times (0.5, 1, 2).
    """
    x, y = _pair(x, y)
    if bandwidths is None:
        sub = y[: min(len(y), 1000)]
        median = torch.cdist(sub, sub).flatten().median().item()
        bandwidths = tuple(median * s for s in (0.5, 1.0, 2.0))
    kernel = lambda d: sum(torch.exp(-(d**2) / (2 * h**2)) for h in bandwidths)  # noqa: E731
    return _pairwise_mean(x, x, kernel, True) + _pairwise_mean(y, y, kernel, True) - 2 * _pairwise_mean(x, y, kernel, False)


def distance_and_floor(
    x: torch.Tensor,
    draw: Callable[[int, torch.Generator | None], torch.Tensor],
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    repeats: int,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """`metric` from x to the reference law, and the floor an exact sampler reaches at the same sample size.

    x is cut into `repeats` chunks of n = len(x) // repeats. Chunk i is compared with a fresh reference draw Y_i,
    and so is a second fresh draw X_i of the same size: distance = mean_i metric(chunk_i, Y_i),
    floor = mean_i metric(X_i, Y_i). Sharing Y_i cancels its fluctuation from the comparison, and averaging over
    chunks is needed because one sample distance fluctuates by 20-30% of its mean whatever n is.
    """
    n = len(x) // repeats
    if n < 2:
        raise ValueError(f"{len(x)} samples cannot be split into {repeats} chunks of at least 2")
    distance = floor = 0.0
    for chunk in x[: n * repeats].split(n):
        reference = draw(n, generator)
        distance += metric(chunk, reference) / repeats
        floor += metric(draw(n, generator), reference) / repeats
    return distance, floor


def two_sample_floor(
    draw: Callable[[int, torch.Generator | None], torch.Tensor],
    n: int,
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    repeats: int = 5,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Mean and standard error over `repeats` of `metric` between two independent samples of size n from `draw`."""
    values = torch.tensor([metric(draw(n, generator), draw(n, generator)) for _ in range(repeats)], dtype=torch.float64)
    return float(values.mean()), float(values.std() / repeats**0.5) if repeats > 1 else 0.0


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """||x - x_ref|| / ||x_ref|| over the whole batch (the relative RMS distance)."""
    return float((x.to(reference.dtype) - reference).norm() / reference.norm())


def median_relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """median_i ||x_i - x_ref,i|| / sqrt(mean_i ||x_ref,i||^2): the same scale as `relative_error`, but a few samples
    that end in another mixture component (near a decision boundary, a small error sends one there) do not set it."""
    per_sample = (x.to(reference.dtype) - reference).reshape(len(x), -1).norm(dim=1)
    return float(per_sample.median() / reference.reshape(len(x), -1).pow(2).sum(1).mean().sqrt())


def moment_errors(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors of the sample mean and sample covariance of `x` (n, d) against a Gaussian N(mean, cov), in standard
    errors of n draws from it: Var[mean_i] = C_ii / n, Var[cov_ij] = (C_ii C_jj + C_ij^2) / n."""
    x, mean, cov = _flat(x).to(cov.dtype), mean.to(cov.dtype), cov
    var, n = torch.diag(cov), len(x)
    mean_z = (x.mean(0) - mean) / (var / n).sqrt()
    cov_z = (torch.cov(x.T).reshape(cov.shape) - cov) / ((var[:, None] * var[None] + cov**2) / n).sqrt()
    return mean_z, cov_z
