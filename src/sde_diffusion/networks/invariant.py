"""Batch-invariant evaluation: a network whose output for one sample does not depend on how many samples share
the call, bit for bit.

On CPU a single matrix product rounds a row differently depending on the number of rows in the call (MKL picks its
kernels by the matrix shape: here rows of a 32 x 32 `nn.Linear` differ in the last bit for 1, 2, 3, 7, 9, 21, ...
rows of 64), and so does a convolution by the batch size. Per-sample seeds make every sample's noise independent
of its batch, but its network evaluations must be too for the samples to be bit-identical across batch sizes and
ranks. `batch_invariant(network)` gives a copy whose linear layers compute each row as its own product (one
batched 1 x K by K x N product per row: `torch.baddbmm` with the weight broadcast over the rows) and whose
convolutions run one sample at a time; everything else in our networks (normalisations, activations, attention per
image) already treats samples separately. It costs about 2x on the linear layers, more on convolutions
(`benchmarks/scale_out.py`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class RowwiseLinear(nn.Module):
    """y = x W^T + b with each row of x its own 1 x K product, so that a row's rounding never depends on its batch
    mates (the parameters are those of the given `nn.Linear`)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 1, x.shape[-1])
        weight = self.weight.t().expand(len(rows), -1, -1)
        if self.bias is None:
            out = torch.bmm(rows, weight)
        else:
            out = torch.baddbmm(self.bias.expand(len(rows), 1, -1), rows, weight)
        return out.reshape(*x.shape[:-1], self.weight.shape[0])


class PerSampleConv(nn.Module):
    """A convolution applied to one sample at a time (the kernel chosen for a batch of one, for every sample)."""

    def __init__(self, conv: nn.modules.conv._ConvNd):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x[i:i + 1]) for i in range(len(x))])


def batch_invariant(network: nn.Module) -> nn.Module:
    """A copy of `network` with every `nn.Linear` as `RowwiseLinear` and every convolution as `PerSampleConv`: the
    same function, with each sample's output independent of the batch it is evaluated in, bit for bit."""
    network = copy.deepcopy(network)
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in network.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                swaps.append((parent, name, RowwiseLinear(child)))
            elif isinstance(child, nn.modules.conv._ConvNd):
                swaps.append((parent, name, PerSampleConv(child)))
    for parent, name, replacement in swaps:
        setattr(parent, name, replacement)
    if type(network) is nn.Linear:
        return RowwiseLinear(network)
    if isinstance(network, nn.modules.conv._ConvNd):
        return PerSampleConv(network)
    return network
