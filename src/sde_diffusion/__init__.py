"""sde_diffusion: continuous-time score-based diffusion models in PyTorch.

Forward SDEs (`VPSDE`, `SubVPSDE`, `VESDE`, `OUSDE`, `CosineVPSDE`, `EDMSDE`, or any `LinearSDE` built from
its coefficients), the reverse SDE and probability flow, score models in any parameterisation, exact
Gaussian-mixture ground truth, every solver behind one `sample` call, and exact likelihoods (`likelihood`).
"""

from . import analytic, metrics, solvers
from .analytic import GaussianMixture
from .reverse import ReverseSDE
from .sampling import sample
from .score import PREDICTIONS, ScoreModel
from .sde import SDE, CosineVPSDE, EDMSDE, LinearSDE, OUSDE, SubVPSDE, TabulatedLinearSDE, VESDE, VPSDE
from .solvers import NonFiniteError, SampleResult
from . import likelihood

__version__ = "0.1.0"

__all__ = [
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "OUSDE", "CosineVPSDE", "EDMSDE", "TabulatedLinearSDE",
    "ReverseSDE", "ScoreModel", "PREDICTIONS", "GaussianMixture", "sample", "SampleResult", "NonFiniteError",
    "analytic", "likelihood", "metrics", "solvers",
]
