"""Exponential integrators in log-SNR: DDIM, DPM-Solver, DPM-Solver++, SDE-DPM-Solver++ and adaptive DPM-Solver.

For any linear SDE, x_t = alpha_t x_0 + sigma_t eps, write lambda = log(alpha / sigma) (half the log-SNR). The
probability-flow ODE then has the exact variation-of-constants solution from s to t < s, h = lambda_t - lambda_s > 0
(Lu et al. 2022, eq. 3.4; Lu et al. 2022b, eq. 8):

    x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(x_lambda) dlambda     (noise prediction)
    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{ lambda} x0(x_lambda)  dlambda     (data prediction)

The linear part is integrated exactly; the solvers differ only in how they approximate eps or x0 along the step.
Taylor-expanding the prediction in lambda about lambda_s gives the phi-functions

    phi_1(z) = (e^z - 1) / z,   phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z,   phi_k(0) = 1 / k!,

    x_t = (alpha_t / alpha_s) x_s - sigma_t sum_k h^{k+1} phi_{k+1}( h) eps^(k)(lambda_s)
    x_t = (sigma_t / sigma_s) x_s + alpha_t sum_k h^{k+1} phi_{k+1}(-h) x0^(k)(lambda_s),

where ^(k) is the k-th lambda-derivative. Every coefficient comes from `LinearSDE.alpha`, `sigma`, `log_snr` and
`t_of_log_snr`, so the same code runs on VP, sub-VP, VE, OU, cosine, EDM and user-built SDEs.

Conventions shared by every solver in this module (and `unipc`):

- default grid `log_snr` (uniform steps in lambda, as DPM-Solver's analysis assumes) and 20 steps (DDIM and
  SDE-DPM-Solver++: 50). DPM-Solver++(2M), (3M) and UniPC default to measured rules by step count that stay near
  it (`DPM_SOLVER_PP_2M_GRID`, `DPM_SOLVER_PP_3M_GRID`, `UNIPC_GRIDS`). In benchmarks/exponential_orders.py the
  log-SNR grid beats the EDM (rho = 7) grid on the 2-D ring under both the EDM and VP SDEs (by up to 3x at 20-50
  NFE), the EDM grid wins on the 32-D mixture (by 1.2-1.6x at 50 NFE), and uniform-in-t loses everywhere (by
  orders of magnitude under the EDM SDE);
- one network evaluation per multistep step, `order` per singlestep step, all counted by the `ScoreModel` wrapper;
- `lower_order_final` (multistep solvers, default True): when the grid has fewer than 15 steps, the last steps
  drop to order `min(order, steps left)`, so the final step is first order. This is the threshold of diffusers and
  of the DPM-Solver++ docstring (its code uses 10); it stabilises very short runs, and leaving longer runs alone
  keeps the asymptotic order of 3M/UniPC (a first-order last step has local error O(h^2)).
- `count_denoise` (multistep solvers, default False): under `sample(..., denoise=True)`, let `lower_order_final`
  count the denoising evaluation as the final first-order step (Tweedie's x0 is the first-order data-prediction
  update from t_min to t = 0), so the steps on the grid keep one order more: step i of N runs at order
  min(order, N + 1 - i). This is what diffusers' schedulers do (their final step to sigma = 0 is the denoising
  one): UniPC with it on the EDM grid reproduces diffusers' UniPC on Karras sigmas. It is not the default because
  it is not better across problems: on the arena's held-out draws it lowers every multistep solver's geometric-mean
  error at some budgets under 15 steps and raises it at others (benchmarks/README.md, "Default grids against
  diffusers"). Where the denoising evaluation is not taken it changes nothing.
- the last step: the grid always ends at t_min > 0, where lambda is finite; `sample(..., denoise=True)` then returns
  Tweedie's E[x_0 | x_{t_min}] = x0(x, t_min), one more evaluation, counted (Lu et al.'s `denoise_to_zero`).
  k-diffusion and diffusers (`final_sigmas_type="zero"`) instead make the last step jump to sigma = 0, which
  returns the data prediction at the previous grid time and costs no extra evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch

from ..score import ScoreModel, eps_and_x0
from ..sde import LinearSDE
from .base import GridState, Solver, SolverState, check_bool, gaussian_noise
from .control import AdaptiveController
from .grids import PiecewiseGrid, PowerGrid, TimeGrid
from .problems import DiffusionProblem, LogSNRChart

LOWER_ORDER_FINAL_BELOW = 15
"""`lower_order_final` acts only on grids with fewer steps than this (diffusers' convention)."""

# The default grids of the multistep solvers by step count (`PiecewiseGrid`, pieces by first step count), from
# `benchmarks/default_grids.py --phase select` (the 15 arena cases x 11 budgets from 5 to 50 NFE, 2 seeds x 512
# draws): per solver, the rule of at most two pieces, each over at least two of the budgets, with the least geometric
# mean over cases and budgets of the RMS trajectory error relative to the best diffusers scheduler, among grids with
# kappa >= 0 (`PowerGrid`: log-SNR at 0, Karras at 1/7). Denser steps at low noise (kappa < 0) won on the arena's
# draws but lost on both learned models. A rule is kept only where it also won on the held-out draws and the learned
# models: for (2M) and UniPC-2 the selected rules (kappa 0.05 from 29 and from 19 steps) tied log-SNR on the held-out
# draws and lost on the digits U-Net, so they keep log-SNR. benchmarks/README.md ("Default grids against diffusers").
DPM_SOLVER_PP_2M_GRID: str | TimeGrid = "log_snr"
DPM_SOLVER_PP_3M_GRID = PiecewiseGrid([(1, "log_snr"), (19, PowerGrid(0.05))])
UNIPC_GRIDS: dict[int, str | TimeGrid] = {
    1: "log_snr",
    2: "log_snr",
    3: PiecewiseGrid([(1, PowerGrid(1 / 7)), (9, "log_snr")]),
}
"""UniPC's default grid by its predictor order (order 1 was not measured and keeps the log-SNR grid)."""

_FACTORIALS = [math.factorial(k) for k in range(20)]


def phi(k: int, z: torch.Tensor) -> torch.Tensor:
    """phi_k(z) = sum_{j>=0} z^j / (j + k)!, k >= 1: phi_1 = expm1(z) / z, phi_{k+1} = (phi_k - 1/k!) / z.

    The recurrence loses digits to cancellation for small |z| (phi_3 at z = 1e-2 keeps about 12 digits in float64,
    3 in float32), so |z| < 1 uses the Taylor series (16 terms, truncation below 1e-14 relative) and larger |z|
    the recurrence from expm1, which is stable there.
    """
    if k < 1:
        raise ValueError(f"phi_k is defined for k >= 1; got k={k}")
    z = torch.as_tensor(z)
    small = z.abs() < 1
    zs = torch.where(small, z, torch.zeros_like(z))
    series = torch.zeros_like(z)
    for j in reversed(range(16)):
        series = series * zs + 1.0 / _FACTORIALS[j + k]
    zl = torch.where(small, torch.ones_like(z), z)
    large = torch.expm1(zl) / zl
    for j in range(1, k):
        large = (large - 1.0 / _FACTORIALS[j]) / zl
    return torch.where(small, series, large)


class Point(NamedTuple):
    """A time with its coefficients: t, lambda = log(alpha / sigma), alpha, sigma (0-dim tensors)."""

    t: torch.Tensor
    lam: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor


def point(sde: LinearSDE, t: torch.Tensor) -> Point:
    """The coefficients of `sde` at time t."""
    return Point(t, sde.log_snr(t), sde.alpha(t), sde.sigma(t))


def point_at_log_snr(sde: LinearSDE, lam: torch.Tensor) -> Point:
    """The point whose log-SNR is `lam` (the intermediate times of singlestep solvers)."""
    t = sde.t_of_log_snr(lam).to(lam.dtype)
    return Point(t, lam, sde.alpha(t), sde.sigma(t))


def predict_both(model: ScoreModel, x: torch.Tensor, p: Point) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) at (x, p.t) from one network evaluation, whatever the network's own parameterisation."""
    return eps_and_x0(model(x, p.t), model.prediction, x, p.alpha, p.sigma)


def predict(model: ScoreModel, x: torch.Tensor, p: Point, kind: str) -> torch.Tensor:
    """The noise ("noise") or data ("data") prediction at (x, p.t): one network evaluation."""
    eps, x0 = predict_both(model, x, p)
    return eps if kind == "noise" else x0


# -- first-order updates (exact for a constant prediction) ----------------------------------------------------


def noise_first_order(x: torch.Tensor, eps: torch.Tensor, s: Point, t: Point) -> torch.Tensor:
    """DPM-Solver-1: x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s (= DDIM with eta = 0)."""
    h = t.lam - s.lam
    return (t.alpha / s.alpha) * x - t.sigma * torch.expm1(h) * eps


def data_first_order(x: torch.Tensor, x0: torch.Tensor, s: Point, t: Point) -> torch.Tensor:
    """DPM-Solver++(1): x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) x0_s."""
    h = t.lam - s.lam
    return (t.sigma / s.sigma) * x - t.alpha * torch.expm1(-h) * x0


# -- singlestep updates (Lu et al. 2022, Algorithms 1 and 2, the "dpmsolver" form of the reference code) ---------


def dpm_solver_2_update(model, x, eps_s, s: Point, t: Point, r1: float = 0.5, s1: Point | None = None):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1), intermediate point lambda_s + r1 h:

        u    = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
        x_t  = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_s - sigma_t / (2 r1) (e^h - 1) (eps(u, s1) - eps_s).

    Returns (x_t, eps_s1). One evaluation (eps_s is given). `s1` may be passed if already known.
    """
    h = t.lam - s.lam
    s1 = point_at_log_snr(model.sde, s.lam + r1 * h) if s1 is None else s1
    u = noise_first_order(x, eps_s, s, s1)
    eps_s1 = predict(model, u, s1, "noise")
    x_t = noise_first_order(x, eps_s, s, t) - t.sigma / (2 * r1) * torch.expm1(h) * (eps_s1 - eps_s)
    return x_t, eps_s1


def dpm_solver_3_update(
    model, x, eps_s, s: Point, t: Point, r1: float = 1 / 3, r2: float = 2 / 3, eps_s1=None, stages: list[Point] | None = None
):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2), intermediate points lambda_s + r1 h and lambda_s + r2 h:

        u1  = (alpha_s1 / alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
        D1  = eps(u1, s1) - eps_s
        u2  = (alpha_s2 / alpha_s) x - sigma_s2 (e^{r2 h} - 1) eps_s - sigma_s2 (r2 / r1) r2 h phi_2(r2 h) D1
        x_t = (alpha_t / alpha_s) x - sigma_t (e^h - 1) eps_s - sigma_t / r2 h phi_2(h) (eps(u2, s2) - eps_s).

    Two evaluations, or one when `eps_s1` (the model at u1, as computed by DPM-Solver-2 with the same r1) is given.
    `stages` = [s1, s2] may be passed if already known.
    """
    h = t.lam - s.lam
    if stages is None:
        stages = [point_at_log_snr(model.sde, s.lam + r * h) for r in (r1, r2)]
    s1, s2 = stages
    if eps_s1 is None:
        eps_s1 = predict(model, noise_first_order(x, eps_s, s, s1), s1, "noise")
    u2 = noise_first_order(x, eps_s, s, s2) - s2.sigma * (r2 / r1) * (r2 * h) * phi(2, r2 * h) * (eps_s1 - eps_s)
    eps_s2 = predict(model, u2, s2, "noise")
    return noise_first_order(x, eps_s, s, t) - t.sigma / r2 * h * phi(2, h) * (eps_s2 - eps_s)


# -- the solvers ------------------------------------------------------------------------------------------------


@dataclass
class ExponentialState(GridState):
    """The grid, the step index, and the intermediate points of a singlestep solver on every step of the grid."""

    stages: tuple[torch.Tensor, ...] | None = None  # (t, lambda, alpha, sigma), each (steps, len(fractions))


class ExponentialSolver(Solver):
    """Shared behaviour: the diffusion problem (a LinearSDE), the log-SNR grid by default.

    Subclasses write `step(problem, x, t, t_next, state, generator)` with `problem.sde` and `problem.score`; a
    singlestep solver lists the fractions r of its intermediate points lambda_s + r h in `fractions`.
    """

    needs = DiffusionProblem
    default_grid: ClassVar[str | TimeGrid] = "log_snr"
    default_steps: ClassVar[int] = 20
    fractions: ClassVar[tuple[float, ...]] = ()

    def init(self, problem, x, times):
        return ExponentialState(times, stages=self.stage_grid(problem.sde, times) if self.fractions else None)

    def stage_grid(self, sde: LinearSDE, times: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The intermediate points lambda_s + r h (r in `fractions`) of every step, in one vectorised `t_of_log_snr`
        call: for an SDE whose inverse is numerical (a user-built one, by bisection) one inversion per solve."""
        lam = sde.log_snr(times)
        r = torch.tensor(self.fractions, dtype=lam.dtype, device=lam.device)
        stage_lam = lam[:-1, None] + (lam[1:] - lam[:-1])[:, None] * r
        stage_t = sde.t_of_log_snr(stage_lam).to(lam.dtype)
        return stage_t, stage_lam, sde.alpha(stage_t), sde.sigma(stage_t)

    @staticmethod
    def points(problem, t, t_next) -> tuple[Point, Point]:
        return point(problem.sde, t), point(problem.sde, t_next)

    @staticmethod
    def stage_points(state: ExponentialState) -> list[Point]:
        """The intermediate points of the current step."""
        assert state.stages is not None, "stage_points is for solvers with stage fractions"
        t, lam, alpha, sigma = (v[state.index] for v in state.stages)
        return [Point(*(v[k] for v in (t, lam, alpha, sigma))) for k in range(len(t))]


class DDIM(ExponentialSolver):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) for any linear SDE, in log-SNR:

        x_t = alpha_t x0_s + sqrt(sigma_t^2 - c^2) eps_s + c z,   c^2 = eta^2 sigma_t^2 (1 - e^{-2h}),

    with (eps_s, x0_s) from one evaluation at x_s. c^2 at eta = 1 is the variance of the posterior
    q(x_t | x_s, x_0) (for VP: (1 - abar_{t}) / (1 - abar_s) (1 - abar_s / abar_t) of the paper), and the update is
    then exactly ancestral sampling: posterior mean plus posterior noise. eta = 0 is the deterministic DDIM,
    identical to DPM-Solver-1. 0 <= eta <= 1.
    """

    name = "ddim"
    order = 1
    default_steps = 50

    def __init__(self, eta: float = 0.0):
        if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: ancestral sampling); got {eta!r}")
        self.eta = float(eta)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.eta > 0

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        eps, x0 = predict_both(problem.score, x, s)
        if self.eta == 0:
            return t.alpha * x0 + t.sigma * eps, None, state
        var = self.eta**2 * t.sigma**2 * -torch.expm1(-2 * (t.lam - s.lam))
        return t.alpha * x0 + (t.sigma**2 - var).sqrt() * eps + var.sqrt() * gaussian_noise(x, generator), None, state


class DPMSolver1(ExponentialSolver):
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps(x_s, s).
    Order 1, 1 NFE per step; algebraically DDIM with eta = 0."""

    name = "dpm_solver_1"
    order = 1

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        return noise_first_order(x, predict(problem.score, x, s, "noise"), s, t), None, state


class DPMSolver2(ExponentialSolver):
    """Singlestep DPM-Solver-2 (Lu et al. 2022, Alg. 1, r1 = 1/2). Order 2, 2 NFE per step."""

    name = "dpm_solver_2"
    order = 2
    fractions = (0.5,)

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        (s1,) = self.stage_points(state)
        x_t, _ = dpm_solver_2_update(problem.score, x, predict(problem.score, x, s, "noise"), s, t, r1=0.5, s1=s1)
        state.index += 1
        return x_t, None, state


class DPMSolver3(ExponentialSolver):
    """Singlestep DPM-Solver-3 (Lu et al. 2022, Alg. 2, r1 = 1/3, r2 = 2/3). Order 3, 3 NFE per step."""

    name = "dpm_solver_3"
    order = 3
    fractions = (1 / 3, 2 / 3)

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        stages = self.stage_points(state)
        state.index += 1
        return dpm_solver_3_update(problem.score, x, predict(problem.score, x, s, "noise"), s, t, stages=stages), None, state


class DPMSolverPP2S(ExponentialSolver):
    """Singlestep DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1, r = 1/2), data prediction:

        u   = (sigma_s1 / sigma_s) x - alpha_s1 (e^{-r h} - 1) x0_s
        D   = (1 - 1 / (2r)) x0_s + 1 / (2r) x0(u, s1)
        x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) D.

    Order 2, 2 NFE per step.
    """

    name = "dpm_solver_pp_2s"
    order = 2
    r = 0.5
    fractions = (r,)

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        x0_s = predict(problem.score, x, s, "data")
        (s1,) = self.stage_points(state)
        x0_s1 = predict(problem.score, data_first_order(x, x0_s, s, s1), s1, "data")
        state.index += 1
        return data_first_order(x, (1 - 0.5 / self.r) * x0_s + 0.5 / self.r * x0_s1, s, t), None, state


@dataclass
class MultistepState(GridState):
    """The past log-SNRs and model predictions (newest last), UniPC's corrector evaluation at the current point, and
    whether `lower_order_final` counts a denoising evaluation after the last step (`count_denoise`)."""

    then_denoise: bool = False
    lams: list[torch.Tensor] = field(default_factory=list)
    predictions: list[torch.Tensor] = field(default_factory=list)
    corrector_prediction: torch.Tensor | None = None


class MultistepSolver(ExponentialSolver):
    """A multistep solver: one evaluation per step, the previous ones kept in its `MultistepState`.

    The first steps have too little history and run at order 1, 2, ... (Lu et al. 2022b, Alg. 2). With
    `lower_order_final` and a grid of fewer than 15 steps, step i of N runs at order min(order, N - i); with
    `count_denoise` too, and a solve that ends with the denoising evaluation, min(order, N + 1 - i).
    """

    max_order: ClassVar[int] = 3
    order: int  # an integer: it counts the history

    def __init__(self, lower_order_final: bool = True, count_denoise: bool = False):
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.count_denoise = check_bool("count_denoise", count_denoise)

    def init(self, problem, x, times):
        return MultistepState(times, then_denoise=self.count_denoise and problem.denoise)

    def step_order(self, state: MultistepState, available: int) -> int:
        """The order this step can run at: limited by the history and, near the end, by `lower_order_final`."""
        order = min(self.order, available)
        if self.lower_order_final and state.n_steps < LOWER_ORDER_FINAL_BELOW:
            order = min(order, state.n_steps - state.index + int(state.then_denoise))
        return order

    @staticmethod
    def remember(state: MultistepState, lam: torch.Tensor, value: torch.Tensor, keep: int) -> tuple[list, list]:
        """Append (lambda, prediction) to the history, keep the last `keep`, return (lambdas, values), newest last."""
        state.lams.append(lam)
        state.predictions.append(value)
        del state.lams[:-keep], state.predictions[:-keep]
        return state.lams, state.predictions


def data_multistep_update(x: torch.Tensor, lams: list, x0s: list, s: Point, t: Point, order: int) -> torch.Tensor:
    """DPM-Solver++ multistep update of `order` 1, 2 or 3 from the data predictions `x0s` at `lams` (newest last).

    With h = lambda_t - lambda_s, h_0 = lambda_s - lambda_{-1}, h_1 = lambda_{-1} - lambda_{-2}, r_k = h_k / h:

        order 1:  x_t = (sigma_t / sigma_s) x + alpha_t h phi_1(-h) m_0
        order 2:  x_t = ... + (1 / 2) alpha_t h phi_1(-h) D1_0,         D1_0 = (m_0 - m_1) / r_0
                  (Lu et al. 2022b, Alg. 2: m_0 + D1_0 / 2 = (1 + 1/(2 r)) m_0 - 1/(2 r) m_1)
        order 3:  x_t = ... + alpha_t h [phi_2(-h) D1 + phi_3(-h) D2],
                  D1_1 = (m_1 - m_2) / r_1,  D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1) ~ h x0',
                  D2 = 2 (D1_0 - D1_1) / (r_0 + r_1) ~ h^2 x0''.

    The third-order update is the Taylor form above with the coefficients exact to O(h^3). The reference code
    (dpm_solver_pytorch.py, diffusers, k-diffusion's 3M-SDE) uses D2 = (D1_0 - D1_1) / (r_0 + r_1) ~ h^2 x0'' / 2
    against the same phi_3 coefficient, which halves the x0'' term and leaves an O(h^3) local error; its
    observed order is 2 (see tests/test_exponential.py). We keep the factor 2.
    """
    base = data_first_order(x, x0s[-1], s, t)
    if order == 1:
        return base
    h = t.lam - s.lam
    r0 = (lams[-1] - lams[-2]) / h
    d1_0 = (x0s[-1] - x0s[-2]) / r0
    if order == 2:
        return base - 0.5 * t.alpha * torch.expm1(-h) * d1_0
    r1 = (lams[-2] - lams[-3]) / h
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = 2 * (d1_0 - d1_1) / (r0 + r1)
    return base + t.alpha * h * (phi(2, -h) * d1 + phi(3, -h) * d2)


class DPMSolverPP2M(MultistepSolver):
    """Multistep DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), data prediction. Order 2, 1 NFE per step."""

    name = "dpm_solver_pp_2m"
    order = 2
    default_grid = DPM_SOLVER_PP_2M_GRID

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        lams, x0s = self.remember(state, s.lam, predict(problem.score, x, s, "data"), self.order)
        x = data_multistep_update(x, lams, x0s, s, t, self.step_order(state, len(x0s)))
        state.index += 1
        return x, None, state


class DPMSolverPP3M(DPMSolverPP2M):
    """Multistep DPM-Solver++(3M), data prediction: the order-3 update of `data_multistep_update` after one
    first- and one second-order warm-up step. Order 3, 1 NFE per step."""

    name = "dpm_solver_pp_3m"
    order = 3
    default_grid = DPM_SOLVER_PP_3M_GRID


class SDEDPMSolverPP2M(MultistepSolver):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Appendix; the form of k-diffusion's `sample_dpmpp_2m_sde`):

        x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1+eta) h}) m_0 + c D1_0
              + sigma_t sqrt(1 - e^{-2 eta h}) z,
        D1_0 = (m_0 - m_1) / r_0,   c = alpha_t (1 - e^{-(1+eta) h}) / 2                   (midpoint)
                                    c = alpha_t (1 - (1 - e^{-(1+eta) h}) / ((1+eta) h))   (heun).

    Both second-order corrections integrate the linear interpolant of x0 exactly against the weight
    (1+eta) e^{-(1+eta)(lambda_t - lambda)} to leading order (heun: exactly). eta = 1 is the reverse SDE; its first
    step is exactly ancestral sampling (posterior mean and variance); eta = 0 is DPM-Solver++(2M). For any eta >= 0
    the first-order step maps x_s ~ N(alpha_s x_0, sigma_s^2) to x_t ~ N(alpha_t x_0, sigma_t^2). 1 NFE per step.
    """

    name = "sde_dpm_solver_pp_2m"
    order = 2
    default_steps = 50  # whitened covariance bias on Gaussian data (VP): 0.067 at 20 steps, 0.014 at 50, 0.006 at 100
    SOLVER_TYPES = ("midpoint", "heun")

    def __init__(self, eta: float = 1.0, solver_type: str = "midpoint", lower_order_final: bool = True,
                 count_denoise: bool = False):
        super().__init__(lower_order_final, count_denoise)
        if not (isinstance(eta, (int, float)) and eta >= 0 and math.isfinite(eta)):
            raise ValueError(f"eta must be a finite number >= 0 (1: the reverse SDE, 0: the ODE); got {eta!r}")
        if solver_type not in self.SOLVER_TYPES:
            raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {self.SOLVER_TYPES}")
        self.eta, self.solver_type = float(eta), solver_type

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.eta > 0

    def step(self, problem, x, t, t_next, state, generator):
        s, t = self.points(problem, t, t_next)
        lams, x0s = self.remember(state, s.lam, predict(problem.score, x, s, "data"), 2)
        h = t.lam - s.lam
        eta_h = self.eta * h
        weight = -torch.expm1(-h - eta_h)  # 1 - e^{-(1+eta) h}
        x = (t.sigma / s.sigma) * torch.exp(-eta_h) * x + t.alpha * weight * x0s[-1]
        if self.step_order(state, len(x0s)) == 2:
            d1_0 = (x0s[-1] - x0s[-2]) * h / (lams[-1] - lams[-2])
            if self.solver_type == "midpoint":
                x = x + 0.5 * t.alpha * weight * d1_0
            else:
                x = x + t.alpha * (1 - weight / (h + eta_h)) * d1_0
        if self.eta > 0:
            x = x + t.sigma * (-torch.expm1(-2 * eta_h)).sqrt() * gaussian_noise(x, generator)
        state.index += 1
        return x, None, state


@dataclass
class AdaptiveDPMState(SolverState):
    """The current point's coefficients and, once made, its noise prediction: a rejected try reuses both."""

    point: Point | None = None
    eps: torch.Tensor | None = None


class AdaptiveDPMSolver(Solver):
    """Adaptive-step DPM-Solver (Lu et al. 2022, Alg. 4 / Appendix: DPM-Solver-12 and DPM-Solver-23), as a step with
    an error estimate in the log-SNR lambda.

    From lambda_s, a step of size h in lambda is taken by a pair of singlestep solvers sharing evaluations:
    order 2 pairs DPM-Solver-1 with DPM-Solver-2 (r1 = 1/2; 2 NFE per try), order 3 pairs DPM-Solver-2 (r1 = 1/3)
    with DPM-Solver-3 (r1 = 1/3, r2 = 2/3; 3 NFE per try). Their difference is the error estimate; the controller
    scales it by atol + rtol max(|x_high|, |x_s|), takes the RMS per sample and the worst sample, accepts the step
    when that is <= 1 (keeping the higher-order result), and proposes h_next = h * clip(safety * ratio^(-1/order),
    0.2, 5), capped at the distance to lambda_end. After a rejected try the evaluation at x_s is reused (the
    reference recomputes it). Defaults are the paper's: h_init = 0.05 (the first step in lambda), atol = 0.0078,
    rtol = 0.05, safety (theta) = 0.9 (atol is sized for images in [-1, 1]: tighten it for others).

    `max_nfe`: the NFE budget of every adaptive solver (`control.py`): a step is never shorter than (lambda left) /
    (tries the budget still pays for), and a step of that floor length is accepted whatever its error estimate.
    `result.stats`: see `control.AdaptiveController.stats`. `result.times`: the accepted times.
    """

    name = "adaptive_dpm_solver"
    order: int
    adaptive = True
    separable = False  # one error norm for the batch; under seeds each sample is solved alone
    needs = DiffusionProblem
    default_grid = "log_snr"
    default_steps = 20

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        safety: float = 0.9,
        max_nfe: int | None = None,
    ):
        if order not in (2, 3):
            raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23); got {order!r}")
        if not (isinstance(h_init, (int, float)) and h_init > 0):
            raise ValueError(f"h_init (the first step in log-SNR) must be positive; got {h_init!r}")
        if max_nfe is not None and not (isinstance(max_nfe, int) and max_nfe >= order):
            raise ValueError(f"max_nfe must be an integer >= order ({order}), the cost of one step; got {max_nfe!r}")
        self.order, self.rtol, self.atol, self.safety = order, float(rtol), float(atol), float(safety)
        self.h_init, self.max_nfe = float(h_init), max_nfe
        self._controller = AdaptiveController(rtol, atol, batch_norm="max", safety=safety, factor_max=5.0,
                                              first_step=self.h_init, max_nfe=max_nfe)

    @property
    def error_order(self) -> int:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.order - 1

    @property
    def evaluations_per_step(self) -> int:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.order

    def attempt_cost(self, state: AdaptiveDPMState) -> int:
        return self.order - (state.eps is not None)

    def problem(self, sde, score):
        problem = super().problem(sde, score)
        problem.chart = LogSNRChart(problem.sde)
        return problem

    def controller(self, times):
        return self._controller.between(times[0], times[-1])

    def init(self, problem, x, times):
        return AdaptiveDPMState()

    def pair(self, model, x, eps_s, s: Point, t: Point):
        """(x_low, x_high) of orders (order - 1, order), sharing evaluations."""
        if self.order == 2:
            return noise_first_order(x, eps_s, s, t), dpm_solver_2_update(model, x, eps_s, s, t, r1=0.5)[0]
        x_low, eps_s1 = dpm_solver_2_update(model, x, eps_s, s, t, r1=1 / 3)
        return x_low, dpm_solver_3_update(model, x, eps_s, s, t, 1 / 3, 2 / 3, eps_s1=eps_s1)

    def step(self, problem, x, lam, lam_next, state: AdaptiveDPMState, generator):
        if state.point is None:
            state.point = point_at_log_snr(problem.sde, lam)
        s, t = state.point, point_at_log_snr(problem.sde, lam_next)
        if state.eps is None:
            state.eps = predict(problem.score, x, s, "noise")  # kept in the given state: a retry reuses it
        x_low, x_high = self.pair(problem.score, x, state.eps, s, t)
        return x_high, x_high - x_low, AdaptiveDPMState(point=t)
