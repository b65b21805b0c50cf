"""sde_diffusion: continuous-time score-based diffusion models in PyTorch.

Forward SDEs (`VPSDE`, `SubVPSDE`, `VESDE`, `OUSDE`, `CosineVPSDE`, `EDMSDE`, or any `LinearSDE` built from
its coefficients), the reverse SDE and probability flow, score models in any parameterisation, exact
Gaussian-mixture ground truth, every solver behind one `sample` call, guidance (`guidance`) and inpainting
(`inpaint`), time grids calibrated to a solver and a model (`calibrate_grid`) and a solver tuned to it
(`autotune`), exact likelihoods (`likelihood`), and
denoising score matching with networks and data to train on (`training`, `networks`, `data`).
"""

from . import (
    adapters,
    analytic,
    autotuning,
    calibration,
    data,
    discrete,
    guidance,
    likelihood,
    metrics,
    networks,
    noise,
    schedules,
    solvers,
    training,
)
from .analytic import GaussianMixture
from .autotuning import Autotuned, autotune
from .calibration import Calibration, calibrate_grid
from .inpainting import inpaint
from .noise import SeededNoise
from .reverse import ReverseSDE
from .sampling import sample
from .schedules import DiscreteScheduleSDE, MarginalLinearSDE, RectifiedFlowSDE
from .score import PREDICTIONS, ScoreModel
from .sde import EDMSDE, OUSDE, SDE, VESDE, VPSDE, CosineVPSDE, LinearSDE, SubVPSDE, TabulatedLinearSDE
from .solvers import NonFiniteError, SampleResult

__version__ = "0.1.0"

__all__ = [
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "OUSDE", "CosineVPSDE", "EDMSDE", "TabulatedLinearSDE",
    "DiscreteScheduleSDE", "MarginalLinearSDE", "RectifiedFlowSDE",
    "ReverseSDE", "ScoreModel", "PREDICTIONS", "GaussianMixture", "sample", "SampleResult", "NonFiniteError",
    "calibrate_grid", "Calibration", "autotune", "Autotuned", "SeededNoise", "guidance", "inpaint", "adapters", "analytic", "autotuning", "calibration", "data", "discrete", "likelihood", "metrics", "networks",
    "noise", "schedules", "solvers", "training",
]
