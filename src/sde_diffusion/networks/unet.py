"""A compact U-Net for images, in the layout of DDPM (Ho et al. 2020) and NCSN++ without the extras.

Per resolution level: `num_res_blocks` residual blocks (GroupNorm, SiLU, 3x3 convolutions, the conditioning
vector added between the two convolutions), self-attention at the levels in `attention_levels`, then a
stride-2 convolution down. A middle block (residual, attention, residual) at the lowest resolution, and the mirror
path up with skip connections concatenated. The last convolution of every residual branch and of the output is
zero-initialised, so each block starts as the identity and the untrained network predicts 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .embeddings import Conditioning


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(in_ch, groups), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.cond = nn.Linear(cond_dim, out_ch)
        self.norm2, self.dropout = _group_norm(out_ch, groups), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.cond(c)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions, pre-GroupNorm, residual."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.heads, self.norm = heads, _group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hgt * wid).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, hgt, wid))


class UNet(nn.Module):
    """`network(x, t, labels=None)` for images `(batch, in_channels, H, W)`, H and W divisible by 2^(levels - 1).

    Args:
        in_channels: image channels (1 for digits / MNIST, 3 for CIFAR-10).
        channels: width of the first level; level i has `channels * channel_mults[i]`.
        channel_mults: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of the levels with self-attention (default: the lowest); the middle block always has it.
        heads: attention heads.
        groups: GroupNorm groups.
        dropout: dropout in the residual blocks.
        time_embedding: "sinusoidal" or "fourier"; `T` the SDE's horizon (times are divided by it).
        num_classes: class-conditional with a learned null class (`NULL_LABEL`) when given.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
        heads: int = 4,
        groups: int = 8,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        num_classes: int | None = None,
        T: float = 1.0,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("channels", channels), ("num_res_blocks", num_res_blocks),
                            ("heads", heads), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        channel_mults = tuple(channel_mults)
        if not channel_mults or any(not (isinstance(m, int) and m >= 1) for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers; got {channel_mults!r}")
        levels = len(channel_mults)
        attention_levels = (levels - 1,) if attention_levels is None else tuple(attention_levels)
        if any(not 0 <= i < levels for i in attention_levels):
            raise ValueError(f"attention_levels must index the {levels} levels; got {attention_levels!r}")
        self.in_channels, self.levels, self.num_classes = in_channels, levels, num_classes
        cond_dim = 4 * channels
        self.conditioning = Conditioning(cond_dim, T, time_embedding, num_classes, channels)
        self.input = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for i, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(self._block(ch, channels * mult, cond_dim, groups, dropout, i in attention_levels, heads))
                ch = channels * mult
                skips.append(ch)
            if i < levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.middle = nn.ModuleList([
            ResBlock(ch, ch, cond_dim, groups, dropout), Attention(ch, heads, groups), ResBlock(ch, ch, cond_dim, groups, dropout),
        ])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(self._block(ch + skips.pop(), channels * mult, cond_dim, groups, dropout, i in attention_levels, heads))
                ch = channels * mult
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        self.output = nn.Sequential(_group_norm(ch, groups), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1)))

    @staticmethod
    def _block(in_ch, out_ch, cond_dim, groups, dropout, attention, heads) -> nn.ModuleList:
        block: list[nn.Module] = [ResBlock(in_ch, out_ch, cond_dim, groups, dropout)]
        if attention:
            block.append(Attention(out_ch, heads, groups))
        return nn.ModuleList(block)

    @staticmethod
    def _run(block: nn.Module, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if isinstance(block, nn.ModuleList):  # a residual block, maybe followed by attention
            h = block[0](h, c)
            return block[1](h) if len(block) > 1 else h
        return block(h)  # a down- or upsampling layer

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"this U-Net takes (batch, {self.in_channels}, H, W) with H and W divisible by {factor}; "
                f"got {tuple(x.shape)}"
            )
        c = self.conditioning(t, labels, len(x))
        h = self.input(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, c)
            skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, c)), c)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, c)
        return self.output(h)
