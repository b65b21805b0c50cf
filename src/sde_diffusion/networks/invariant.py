"""Batch-invariant evaluation: a network whose output for one sample does not depend on how many samples share
the call, bit for bit.

On CPU a single matrix product rounds a row differently depending on the number of rows in the call (MKL picks its
kernels by the matrix shape: here rows of a 32 x 32 `nn.Linear` differ in the last bit for 1, 2, 3, 7, 9, 21, ...
rows of 64), and so does a convolution by the batch size. Per-sample seeds make every sample's noise independent
of its batch, but its network evaluations must be too for the samples to be bit-identical across batch sizes and
ranks. `batch_invariant(network)` gives a copy whose linear layers always multiply blocks of the same shape (the rows
padded with zeros to a multiple of `ChunkedLinear.chunk` = 32 and multiplied as a batch of 32 x K by K x N products,
`torch.baddbmm` with the weight broadcast over the blocks: every row goes through the same kernel whatever the batch
size or its position in the block, and no row's value enters another's output) and whose convolutions run one sample
at a time; everything else in our networks (normalisations, activations, attention per image) already treats samples
separately. The linear layers cost about 1.35x a plain `nn.Linear` at 2000 rows of width 128 (one 1 x K product per
row, the first form, cost 4x); convolutions more (`benchmarks/scale_out.py`). `tests/test_per_sample_seeds.py`
checks every batch size from 1 to 70 and shuffled positions bit for bit against a batch of one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ChunkedLinear(nn.Module):
    """y = x W^T + b computed on blocks of `chunk` rows (the last block padded with zeros), so that a row's rounding
    never depends on its batch mates or its position (the parameters are those of the given `nn.Linear`)."""

    chunk = 32

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        n = len(rows)
        padded = -(-n // self.chunk) * self.chunk
        blocks = nn.functional.pad(rows, (0, 0, 0, padded - n)).view(-1, self.chunk, rows.shape[-1])
        weight = self.weight.t().expand(len(blocks), -1, -1)
        if self.bias is None:
            out = torch.bmm(blocks, weight)
        else:
            out = torch.baddbmm(self.bias.expand(len(blocks), 1, -1), blocks, weight)
        return out.reshape(padded, -1)[:n].reshape(*x.shape[:-1], self.weight.shape[0])


class PerSampleConv(nn.Module):
    """A convolution applied to one sample at a time (the kernel chosen for a batch of one, for every sample)."""

    def __init__(self, conv: nn.modules.conv._ConvNd):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x[i:i + 1]) for i in range(len(x))])


def batch_invariant(network: nn.Module) -> nn.Module:
    """A copy of `network` with every `nn.Linear` as `ChunkedLinear` and every convolution as `PerSampleConv`: the
    same function, with each sample's output independent of the batch it is evaluated in, bit for bit."""
    network = copy.deepcopy(network)
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in network.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                swaps.append((parent, name, ChunkedLinear(child)))
            elif isinstance(child, nn.modules.conv._ConvNd):
                swaps.append((parent, name, PerSampleConv(child)))
    for parent, name, replacement in swaps:
        setattr(parent, name, replacement)
    if type(network) is nn.Linear:
        return ChunkedLinear(network)
    if isinstance(network, nn.modules.conv._ConvNd):
        return PerSampleConv(network)
    return network
