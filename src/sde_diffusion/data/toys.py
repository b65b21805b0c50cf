"""2-D toy distributions, drawn from an explicit `torch.Generator`, each spread over about [-2, 2]^2.

The shapes follow the toy set of FFJORD (Grathwohl et al. 2019) and the score-SDE tutorials; scales are
chosen so every coordinate has a standard deviation of order 1, which suits a VP SDE's N(0, I) prior.
`eight_gaussians` is an exact `GaussianMixture`, so its score is known at every t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..analytic import GaussianMixture
from ..validation import integer, real
from .dataset import ArrayDataset

Sampler = Callable[[int, torch.Generator | None], torch.Tensor]


def _rand(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _randn(*shape: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 dark unit squares of a 4 x 4 board covering [-2, 2]^2 (the square whose lower-left corner
    (i, j) has i + j even)."""
    x = 4 * _rand(n, generator) - 2
    row = 2 * torch.randint(0, 2, (n,), generator=generator) - 2  # -2 or 0
    y = _rand(n, generator) + row + (x.floor().long() % 2)
    return torch.stack([x, y], dim=1).float()


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> torch.Tensor:
    """The 2-D swiss roll of scikit-learn, (t cos t, t sin t) / 5 with t ~ U[1.5 pi, 4.5 pi], plus N(0, noise^2)."""
    real("noise", noise, minimum=0)
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    x = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 5
    return (x + noise * _randn(n, 2, g=generator)).float()


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """scikit-learn's two interleaving half circles, centred and scaled by 1.5, plus N(0, noise^2)."""
    real("noise", noise, minimum=0)
    u = math.pi * _rand(n, generator)
    lower = torch.randint(0, 2, (n,), generator=generator).bool()
    x = torch.where(lower, 1 - u.cos(), u.cos())
    y = torch.where(lower, 0.5 - u.sin(), u.sin())
    pts = 1.5 * (torch.stack([x, y], dim=1) - torch.tensor([0.5, 0.25], dtype=torch.float64))
    return (pts + noise * _randn(n, 2, g=generator)).float()


def concentric_rings(n: int, generator: torch.Generator | None = None, radii=(0.5, 1.0, 1.5, 2.0), noise: float = 0.04) -> torch.Tensor:
    """Equal mass on concentric circles of the given radii, plus N(0, noise^2)."""
    real("noise", noise, minimum=0)
    radius = torch.as_tensor(radii, dtype=torch.float64)[torch.randint(0, len(radii), (n,), generator=generator)]
    angle = 2 * math.pi * _rand(n, generator)
    pts = radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (pts + noise * _randn(n, 2, g=generator)).float()


def pinwheel(
    n: int,
    generator: torch.Generator | None = None,
    arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
) -> torch.Tensor:
    """`arms` curved Gaussian arms (Johnson et al. 2016): a point at radius 1 + radial noise is rotated by its arm's
    angle plus `rate * exp(radius)`; scaled by 1.5."""
    arm = torch.randint(0, arms, (n,), generator=generator)
    feat = _randn(n, 2, g=generator) * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    feat[:, 0] += 1
    angle = 2 * math.pi * arm / arms + rate * feat[:, 0].exp()
    cos, sin = angle.cos(), angle.sin()
    pts = torch.stack([cos * feat[:, 0] - sin * feat[:, 1], sin * feat[:, 0] + cos * feat[:, 1]], dim=1)
    return (1.5 * pts).float()


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight equal isotropic Gaussians on a circle: an exact `GaussianMixture`."""
    return GaussianMixture.ring(8, radius=radius, std=std)


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return eight_gaussians_mixture().sample(n, generator).float()


TOYS: dict[str, Sampler] = {
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "two_moons": two_moons,
    "rings": concentric_rings,
    "pinwheel": pinwheel,
    "eight_gaussians": eight_gaussians,
}


def toy(name: str, n: int = 100_000, seed: int = 0) -> ArrayDataset:
    """A training set of `n` points from the toy `name`, drawn with `seed`; `.sample` draws fresh ones."""
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose one of {sorted(TOYS)}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer; got {n!r}")
    sampler = TOYS[name]
    mixture = eight_gaussians_mixture() if name == "eight_gaussians" else None
    return ArrayDataset(sampler(n, torch.Generator().manual_seed(seed)), name=name, sampler=sampler, mixture=mixture)


def gaussian_mixture(
    mixture: GaussianMixture | None = None,
    *,
    dim: int = 2,
    n_components: int = 4,
    condition: float = 10.0,
    n: int = 100_000,
    seed: int = 0,
) -> ArrayDataset:
    """A training set drawn from a Gaussian mixture: the one given, or `GaussianMixture.random(dim, n_components,
    condition=...)` seeded by `seed`. `.mixture` holds it, for exact scores (`mixture.score_model(sde)`)."""
    integer("n", n, minimum=1)
    if mixture is None:
        integer("dim", dim, minimum=1)
        integer("n_components", n_components, minimum=1)
        mixture = GaussianMixture.random(dim, n_components, condition=condition, generator=torch.Generator().manual_seed(seed))
    sampler = lambda k, g: mixture.sample(k, g).float()  # noqa: E731
    data = sampler(n, torch.Generator().manual_seed(seed + 1))
    return ArrayDataset(data, name="gaussian_mixture", sampler=sampler, mixture=mixture)
