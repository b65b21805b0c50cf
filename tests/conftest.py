import pytest
import torch

import sde_diffusion as sd


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


SDE_FACTORIES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "ou": lambda: sd.OUSDE(),
    "user": lambda: sd.LinearSDE.from_beta(lambda t: 0.1 + 19.9 * t),
}
"""Fresh instances of the SDEs the order tests sweep over (a user-built one included)."""


def all_linear_sdes():
    """One instance of every built-in linear SDE, plus one built from its coefficient functions."""
    return {
        "vp": sd.VPSDE(),
        "subvp": sd.SubVPSDE(),
        "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0),
        "ou": sd.OUSDE(),
        "cosine": sd.CosineVPSDE(),
        "edm": sd.EDMSDE(),
        "user": sd.LinearSDE.from_beta(lambda t: 0.1 + 19.9 * t),
    }
