"""Datasets by name: `names()` lists them, `get(name, **options)` builds one (an `ArrayDataset`).

| name                                     | what                                                   | options                      |
|------------------------------------------|--------------------------------------------------------|------------------------------|
| checkerboard, swiss_roll, two_moons,     | 2-D toys (`toys.py`), a training set of n points plus  | n, seed                      |
| rings, pinwheel, eight_gaussians         | `.sample(n, generator)` for fresh draws                |                              |
| gaussian_mixture                         | a (random or given) `GaussianMixture`; `.mixture`      | mixture, dim, n_components,  |
|                                          | gives exact scores                                     | condition, n, seed           |
| digits                                   | scikit-learn's 8x8 digits in [-1, 1], labels 0-9       | split, test_fraction, seed   |
| mnist, cifar10                           | from a local torchvision-layout root, never downloaded | root, train                  |
| image_folder                             | PNG/JPEG files, class subfolders optional              | root, image_size, channels   |
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..registry import build
from .dataset import ArrayDataset
from .digits import digits
from .images import cifar10, image_folder, mnist, read_idx
from .toys import (
    TOYS,
    checkerboard,
    concentric_rings,
    eight_gaussians,
    gaussian_mixture,
    pinwheel,
    swiss_roll,
    toy,
    two_moons,
)

DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    **{name: functools.partial(toy, name) for name in TOYS},
    "gaussian_mixture": gaussian_mixture,
    "digits": digits,
    "mnist": mnist,
    "cifar10": cifar10,
    "image_folder": image_folder,
}


def names() -> list[str]:
    """Every dataset name `get` accepts."""
    return sorted(DATASETS)


def get(name: str, **options) -> ArrayDataset:
    """The dataset `name` built with `options`; an unknown name or option fails with the valid choices."""
    return build("dataset", DATASETS, name, options)


__all__ = [
    "ArrayDataset", "DATASETS", "TOYS", "checkerboard", "cifar10", "concentric_rings", "digits", "eight_gaussians",
    "gaussian_mixture", "get", "image_folder", "mnist", "names", "pinwheel", "read_idx", "swiss_roll", "toy", "two_moons",
]
