"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), as 1 x 8 x 8 images in [-1, 1]."""

from __future__ import annotations

import torch

from .dataset import ArrayDataset

SPLITS = ("train", "test", "all")


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """The digits of `sklearn.datasets.load_digits`, pixels 0..16 mapped to [-1, 1] by x / 8 - 1, with labels 0-9.

    `split` "train" or "test" is a stratified split (`train_test_split`, `test_fraction` held out, `seed`); the two
    are disjoint and together make "all". The same arguments always give the same split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    index = torch.arange(len(labels))
    if split != "all":
        train, test = train_test_split(index.numpy(), test_size=test_fraction, random_state=seed, stratify=labels.numpy())
        index = torch.as_tensor(train if split == "train" else test)
    return ArrayDataset(images[index], labels[index], num_classes=10, name=f"digits-{split}")
