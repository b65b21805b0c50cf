"""Sampling from a class-conditional network: fix the labels, optionally with classifier-free guidance.

`ClassConditional(network, labels, guidance=w)` is the earlier name of `sde_diffusion.guidance.ClassifierFreeGuidance`
(without an interval or a schedule), kept so existing code and checkpoints' scripts keep working.
"""

from __future__ import annotations

import torch
from torch import nn

from ..guidance import ClassifierFreeGuidance


class ClassConditional(ClassifierFreeGuidance):
    """`ClassifierFreeGuidance(network, labels, weight=guidance)`: (1 + w) net(x, t, y) - w net(x, t, NULL_LABEL)."""

    def __init__(self, network: nn.Module, labels: int | torch.Tensor, guidance: float = 0.0):
        super().__init__(network, labels, guidance)
