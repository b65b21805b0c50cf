"""Per-sample noise: sample i's randomness comes from its own seed, whatever the batch, process or rank draws it.

`SeededNoise(seeds)` holds one `torch.Generator` per sample, seeded with seeds[i] (the scheme of EDM's
`StackedRandomGenerator`, Karras et al. 2022, `generate.py`). A draw of shape (batch, ...) stacks one draw of
shape (...) from each sample's generator, so row i is a function of seeds[i] and of the draws sample i made before,
and of nothing else. The solvers draw through `gaussian_noise(x, noise)` (solvers/base.py), which takes either this
or a plain `torch.Generator` (one stream for the batch, as before: its outputs are unchanged).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes any int in [0, 2^64); we keep to int64


def check_seeds(seeds) -> list[int]:
    """`seeds` as a list of ints in [0, 2^63), or a ValueError naming what is wrong."""
    if isinstance(seeds, torch.Tensor) and (seeds.is_floating_point() or seeds.ndim != 1):
        raise ValueError(f"seeds must be a 1-D integer tensor or a sequence of ints; got a tensor of dtype "
                         f"{seeds.dtype} and shape {tuple(seeds.shape)}")
    if isinstance(seeds, (str, bytes, int)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a sequence of non-negative ints, one per sample; got {seeds!r}")
    checked = []
    for s in seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds:
        if isinstance(s, bool) or not hasattr(s, "__index__"):
            raise ValueError(f"seeds must be ints, one per sample; got {s!r} ({type(s).__name__})")
        if not 0 <= operator.index(s) < SEED_LIMIT:
            raise ValueError(f"seeds must lie in [0, 2^63); got {s}")
        checked.append(operator.index(s))
    if not checked:
        raise ValueError("seeds is empty: give one seed per sample")
    return checked


class SeededNoise:
    """One generator per sample: `randn((batch, ...))` stacks a draw of shape (...) from each.

    `select(idx)` is the noise of the samples idx (the same generator objects, so their streams go on), for a loop
    that steps only some samples. `rows=` draws only for the samples that use the draw, so that how often one
    sample's batch mates draw (a Brownian bridge splitting only their segments, say) does not move its stream.
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor, device: torch.device | str | None = None):
        self.seeds = check_seeds(seeds)
        self.device = torch.device(device if device is not None else "cpu")
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    @classmethod
    def _of(cls, seeds: list[int], generators: list[torch.Generator], device: torch.device) -> SeededNoise:
        noise = cls.__new__(cls)
        noise.seeds, noise.generators, noise.device = seeds, generators, device
        return noise

    def __len__(self) -> int:
        return len(self.generators)

    def __repr__(self) -> str:
        head = ", ".join(map(str, self.seeds[:4])) + (", ..." if len(self) > 4 else "")
        return f"SeededNoise([{head}] ({len(self)} samples), device={self.device})"

    def _check_batch(self, batch: int) -> None:
        if batch != len(self):
            raise ValueError(f"a draw for {batch} samples from the noise of {len(self)} seeds: give one seed per sample")

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
              rows: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal noise of `shape` = (batch, ...), row i from generator i; with the boolean mask `rows`,
        only the rows where it holds draw (the others are zero)."""
        shape = tuple(shape)
        self._check_batch(shape[0])
        device = self.device if device is None else torch.device(device)
        use = [True] * len(self) if rows is None else rows.tolist()
        zero = torch.zeros(shape[1:], dtype=dtype, device=self.device)
        draws = [torch.randn(shape[1:], generator=g, dtype=dtype, device=self.device) if u else zero
                 for g, u in zip(self.generators, use, strict=True)]
        return torch.stack(draws).to(device)

    def integers(self, high: int = 2**62) -> list[int]:
        """One integer in [0, high) from each sample's generator (to seed another generator, e.g. torchsde's)."""
        return [int(torch.randint(0, high, (), generator=g, device=self.device)) for g in self.generators]

    def select(self, idx: torch.Tensor | Sequence[int]) -> SeededNoise:
        """The noise of the samples idx (indices or a boolean mask), drawing on the same generators."""
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero()[:, 0]
        picked = idx.tolist()
        return SeededNoise._of([self.seeds[i] for i in picked], [self.generators[i] for i in picked], self.device)


def select_noise(generator, idx: torch.Tensor | None):
    """The noise of the samples idx: a SeededNoise restricted to them; a single generator (or None) as it is."""
    if idx is None or not isinstance(generator, SeededNoise):
        return generator
    return generator.select(idx)


def seeded_prior(sde, shape: Sequence[int], noise: SeededNoise, *, dtype: torch.dtype, device) -> torch.Tensor:
    """x_T of `shape` = (batch, ...): row i is `sde.prior_sample((1, ...), generator_i)`, the first draw of sample
    i's generator, so it depends on seeds[i] only (any SDE's prior, drawn with the SDE's own method)."""
    shape = tuple(shape)
    noise._check_batch(shape[0])
    rows = [sde.prior_sample((1, *shape[1:]), g, dtype=dtype, device=noise.device) for g in noise.generators]
    return torch.cat(rows).to(device if device is not None else noise.device)
