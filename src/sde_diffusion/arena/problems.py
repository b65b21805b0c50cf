"""The arena's problems: data laws with exact scores, and the forward SDEs they are diffused by.

Every problem is a `GaussianMixture`, so the score of its marginal under any linear SDE is exact at every time
(`GaussianMixture.score`), and a solver's error is measured against truth, not against another model:

- ``ring-2d``: 8 isotropic Gaussians of std 0.05 evenly spaced on a circle of radius 2 (std 40x under the radius);
- ``gmm-32d``: 6 anisotropic Gaussians in 32 dimensions, random orientations, each of condition number 50, means
  spread with std 3 (`GaussianMixture.random`, seed 0);
- ``gauss-8d``: one anisotropic Gaussian in 8 dimensions (condition number 10, seed 0): the probability-flow ODE
  is linear, so it isolates a solver's handling of the SDE's coefficients from nonlinearity in the score.

Data are used at the scale given (no normalisation); the arena reports each problem's std beside its floors.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..analytic import GaussianMixture
from ..sde import EDMSDE, OUSDE, VESDE, VPSDE, LinearSDE, SubVPSDE


@dataclass(frozen=True)
class Problem:
    """A named data law with an exact score."""

    name: str
    data: GaussianMixture
    description: str = ""

    @property
    def dim(self) -> int:
        return self.data.dim

    @property
    def data_std(self) -> float:
        """sqrt(trace(Cov) / d): the per-coordinate std of the data, the scale its errors are read against."""
        return float((self.data.covariance().trace() / self.dim).sqrt())


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "ring-2d": lambda: Problem(
        "ring-2d", GaussianMixture.ring(8, radius=2.0, std=0.05), "8 Gaussians of std 0.05 on a circle of radius 2"
    ),
    "gmm-32d": lambda: Problem(
        "gmm-32d",
        GaussianMixture.random(32, 6, condition=50.0, spread=3.0, generator=_seed(0)),
        "6 anisotropic Gaussians in 32-D, condition number 50",
    ),
    "gauss-8d": lambda: Problem(
        "gauss-8d",
        GaussianMixture.random(8, 1, condition=10.0, spread=1.0, generator=_seed(0)),
        "one anisotropic Gaussian in 8-D, condition number 10",
    ),
}

SDES: dict[str, Callable[[], LinearSDE]] = {
    "vp": lambda: VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": lambda: VESDE(sigma_min=0.01, sigma_max=50.0),
    "ou": lambda: OUSDE(rate=0.5, T=10.0),
    "edm": lambda: EDMSDE(sigma_min=0.002, sigma_max=80.0),
}
"""The forward SDEs, each with its own default end time `default_t_min` (EDM: sigma from 80 down to 0.002)."""


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        hint = difflib.get_close_matches(name, table, n=1)
        raise ValueError(f"unknown {what} {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Known: {sorted(table)}")
    return table[name]()


def get_problem(name: str) -> Problem:
    """The problem called `name` (one of `PROBLEMS`)."""
    return _lookup(PROBLEMS, name, "problem")


def get_sde(name: str) -> LinearSDE:
    """The arena's forward SDE called `name` (one of `SDES`)."""
    return _lookup(SDES, name, "SDE")
