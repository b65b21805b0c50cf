"""Adaptive steps: embedded Runge-Kutta pairs for any ODE term, and the adaptive reverse-SDE step.

`Bosh3` (Bogacki & Shampine 1989, 3(2)), `Dopri5` (Dormand & Prince 1980, 5(4)) and `Tsit5` (Tsitouras 2011,
5(4)) step any ODE term (the probability flow, in log-SNR or in t, or the likelihood's augmented ODE) and return the
difference of their embedded lower-order solution as the error estimate. `AdaptiveSDE` is the step of
Jolicoeur-Martineau et al. (2021), "Gotta Go Fast When Generating Data with Score-Based Models": Euler-Maruyama
against stochastic improved Euler on the same Brownian increment.

Each is a step; the choice of step sizes is `control.AdaptiveController`, built from the solver's options (mixed
rtol/atol, RMS or max norm, one step size for the batch or one per sample, the NFE budget `max_nfe` with the one
meaning described there), and the loop is `loop.integrate`. They use only the first and last times of a grid, and
report in `SampleResult.stats` the controller's counts: accepted, rejected and budget-limited steps, attempts, the
first step, and the NFE the score model's wrapper counted. A run that needs more than `max_steps` attempts, or whose
step size underflows, raises `StepSizeError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..reverse import ReverseSDE
from ..tensors import append_dims
from .base import Solver, SolverState, gaussian_noise, per_sample
from .control import AdaptiveController
from .edm import denoiser
from .problems import DiffusionProblem, LogSNRChart


@dataclass(frozen=True)
class Tableau:
    """An explicit embedded Runge-Kutta pair with the FSAL property ("first same as last"): stages 1..s-1 have
    nodes c and matrix rows a; the new point is y + h sum b_i k_i, and the last stage k_s = f(y_new, s + h) serves
    both the error estimate h sum e_i k_i (e = b - b_hat over all s stages) and, once accepted, as the next k_1."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    order: int
    error_order: int


def _embedded(c, a, b, b_hat, order, error_order) -> Tableau:
    b_full = (*tuple(b), 0.0)
    return Tableau(tuple(c), tuple(map(tuple, a)), tuple(b), tuple(x - y for x, y in zip(b_full, b_hat, strict=True)), order, error_order)


# Bogacki & Shampine (1989): third order, embedded second order (scipy's RK23).
BOSH3 = _embedded(
    c=(0, 1 / 2, 3 / 4),
    a=((1 / 2,), (0, 3 / 4)),
    b=(2 / 9, 1 / 3, 4 / 9),
    b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    order=3, error_order=2,
)

# Dormand & Prince (1980), DOPRI5: fifth order, embedded fourth order (Hairer, Norsett & Wanner I, II.5; scipy's RK45).
DOPRI5 = _embedded(
    c=(0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1),
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    ),
    b=(35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    b_hat=(5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5, error_order=4,
)

# Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying assumption",
# Comput. Math. Appl. 62, 770-775: fifth order, embedded fourth order, 7 stages with FSAL like DOPRI5, but with
# smaller error coefficients of the fifth-order solution (Julia's Tsit5). The coefficients are irrational; these
# are their double-precision values (tests/test_adaptive.py checks the order conditions).
TSIT5 = _embedded(
    c=(0, 0.161, 0.327, 0.9, 0.98002554090450969, 1),
    a=(
        (0.161,),
        (-0.0084806554923569885, 0.33548065549235699),
        (2.8971530571054934, -6.3594484899750748, 4.3622954328695814),
        (5.3258648284392566, -11.748883564062828, 7.4955393428898362, -0.092495066361755249),
        (5.8614554429464200, -12.920969317847109, 8.1593678985761586, -0.071584973281400997, -0.028269050394068383),
    ),
    b=(0.096460766818065230, 0.01, 0.47988965041449957, 1.3790085741037419, -3.2900695154360807, 2.3247105240997740),
    b_hat=(
        0.094680755765839458, 0.0091835655403432531, 0.48777052842476157, 1.2342975669304790, -2.7077123499835255,
        1.8666284181705870, 1 / 66,
    ),
    order=5, error_order=4,
)

VARIABLES = ("log_snr", "t")


class LogSNRFlow:
    """The probability-flow ODE of a diffusion problem as a term in lambda = log_snr(t), integrated upwards, for the
    state y = x / sqrt(alpha^2 + sigma^2) of the variance-preserving process with the same log-SNR (x itself for VP).

    With x_tilde = x / alpha, whose flow is d x_tilde / d lambda = D(x_tilde) - x_tilde (Karras et al. 2022, eq. 4
    with sigma_tilde = exp(-lambda)), and y = c x_tilde, c(lambda) = alpha / sqrt(alpha^2 + sigma^2) =
    sqrt(sigmoid(2 lambda)):

        dy / d lambda = c D(y / c) - c^2 y.

    For unit-scale data y stays O(1) at every noise level (x_tilde grows like exp(-lambda)), and steps uniform in
    lambda resolve the data's scales alike; near t_min the flow in t changes on the scale sigma(t), and a step-size
    controller in t spends its rejections there.
    """

    def __init__(self, problem: DiffusionProblem):
        self.problem, self.chart = problem, LogSNRChart(problem.sde, normalise=True)

    @property
    def nfe(self) -> int:
        return self.problem.nfe

    def drift(self, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.to(y.dtype)
        c2 = append_dims(torch.sigmoid(2 * lam), y.ndim)
        c = c2.sqrt()
        return c * denoiser(self.problem.score, y / c, self.chart.time(lam)) - c2 * y

    def diffusion(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(torch.as_tensor(lam))


@dataclass
class RungeKuttaState(SolverState):
    """The drift at the current point (the first stage of the next step: "first same as last")."""

    derivative: torch.Tensor | None = per_sample(default=None)


class EmbeddedRungeKutta(Solver):
    """An explicit Runge-Kutta step with an embedded error estimate, for any ODE term.

    With the tableau (c, a, b, e) and h = s_next - s, stages k_1 = F(y, s) (kept from the last step),
    k_i = F(y + h sum_j a_ij k_j, s + c_i h), y_next = y + h sum_i b_i k_i, and the last stage F(y_next, s + h) gives
    both the error h sum_i e_i k_i and the next step's k_1.

    On the diffusion problem the term is the probability flow in `variable` "log_snr" (the default; see `LogSNRFlow`)
    or "t" (as scipy's solver); a term given directly (the likelihood's augmented ODE) is integrated in its own time.
    Options of the controller (`control.AdaptiveController`): rtol, atol (on the integrated state y; x itself with
    variable="t"), `norm` ("rms" or "max"), `per_sample` (each sample its own step size; only the samples still
    running are evaluated, one NFE per batched call), `h_init` (the first step as a fraction of the interval; None
    selects it by Hairer's rule, one extra NFE), `safety`, `factor_min`, `factor_max` (0.2 and 10 as in scipy),
    `max_nfe`, `max_steps`, `predictive` (default on: each step is also capped by Gustafsson's predictive step size;
    on the benchmark problems it halves the rejections and lowers the error at a given tolerance), and `stretch`: a
    step that would end within the fraction `stretch - 1` (default 1%) of its size short of the end is stretched to
    reach it, as in Hairer's DOPRI5 code (a sliver of a last step costs a full step's evaluations; on the ring of the
    arena at rtol = atol = 1e-5, 122 -> 116 NFE). After a rejected step the next accepted one may not grow (HNW II.4).
    With variable="t", predictive=False and stretch=1 the run is step for step scipy's RK23 / RK45.
    """

    tableau: Tableau
    adaptive = True
    default_steps = 1

    def __init__(
        self,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        *,
        norm: str = "rms",
        per_sample: bool = False,
        variable: str = "log_snr",
        h_init: float | None = None,
        safety: float = 0.9,
        factor_min: float = 0.2,
        factor_max: float = 10.0,
        max_nfe: int | None = None,
        max_steps: int = 100_000,
        predictive: bool = True,
        stretch: float = 1.01,
    ):
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; choose one of {VARIABLES}")
        self._controller = AdaptiveController(  # checks its options
            rtol, atol, norm=norm, per_sample=per_sample, safety=safety, factor_min=factor_min, factor_max=factor_max,
            predictive=predictive, hold_after_reject=True, h_init=h_init, stretch=stretch, max_nfe=max_nfe,
            max_steps=max_steps,
        )
        start_cost = 1 if h_init is not None else 2
        if max_nfe is not None and max_nfe < start_cost + self.evaluations_per_step:
            raise ValueError(
                f"max_nfe={max_nfe} is too small for {self.name}: starting takes {start_cost} evaluation(s) and one "
                f"step {self.evaluations_per_step}; give at least {start_cost + self.evaluations_per_step}"
            )
        self.rtol, self.atol, self.norm, self.per_sample, self.variable = float(rtol), float(atol), norm, bool(per_sample), variable
        self.h_init, self.safety, self.factor_min, self.factor_max = h_init, safety, factor_min, factor_max
        self.max_nfe, self.max_steps, self.predictive, self.stretch = max_nfe, max_steps, bool(predictive), float(stretch)

    @property
    def order(self) -> int:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.tableau.order

    @property
    def error_order(self) -> int:  # type: ignore[override]  # a read-only flag (see Solver)
        return self.tableau.error_order

    @property
    def evaluations_per_step(self) -> int:  # type: ignore[override]  # a read-only flag (see Solver)
        return len(self.tableau.c)  # stages 2..s-1 and the FSAL stage

    def problem(self, sde, score):
        if self.variable == "log_snr":
            return LogSNRFlow(DiffusionProblem(sde, score, f"{self.name} with variable='log_snr'"))
        return ReverseSDE(sde, score, probability_flow=True)

    def controller(self, times):
        return self._controller.between(times[0], times[-1])

    def init(self, term, y, times):
        return RungeKuttaState(derivative=term.drift(y, times[0].to(y.dtype)))

    def step(self, term, y, s, s_next, state: RungeKuttaState, generator):
        tab, h = self.tableau, s_next - s
        hx = append_dims(h.to(y.dtype), y.ndim)
        assert state.derivative is not None  # init computes it; every step returns the next one
        ks = [state.derivative]
        for c_i, a_i in zip(tab.c[1:], tab.a, strict=True):
            ks.append(term.drift(y + hx * sum(a * k for a, k in zip(a_i, ks, strict=True) if a), (s + c_i * h).to(y.dtype)))
        y_next = y + hx * sum(b * k for b, k in zip(tab.b, ks, strict=True) if b)
        ks.append(term.drift(y_next, s_next.to(y.dtype)))
        return y_next, hx * sum(e * k for e, k in zip(tab.e, ks, strict=True) if e), RungeKuttaState(derivative=ks[-1])


class Bosh3(EmbeddedRungeKutta):
    """Bogacki-Shampine 3(2) with FSAL: 3 new function evaluations per attempted step (scipy's RK23)."""

    name = "bosh3"
    tableau = BOSH3


class Dopri5(EmbeddedRungeKutta):
    """Dormand-Prince 5(4) with FSAL: 6 new function evaluations per attempted step (scipy's RK45, ode45)."""

    name = "dopri5"
    tableau = DOPRI5


class Tsit5(EmbeddedRungeKutta):
    """Tsitouras 5(4) with FSAL: 6 new function evaluations per attempted step, as Dopri5, with a more accurate
    fifth-order solution (Tsitouras 2011; DifferentialEquations.jl's default non-stiff solver)."""

    name = "tsit5"
    tableau = TSIT5


class BrownianMemory:
    """The future Brownian path of each sample, kept across rejected steps: rejection sampling with memory
    (Rackauckas & Nie 2017, RSwM), so that the noise a step is judged on is never thrown away and redrawn.

    A stack of increments (dt, dW) per sample, nearest future on top. `take(h)` consumes the stack from the top,
    splits a segment longer than what is still needed by the Brownian bridge,
    W(u) | W(dt) = dW ~ N(u / dt dW, u (dt - u) / dt I), and draws fresh N(0, h_rest I) beyond the stack;
    `put_back(h, dW)` pushes an increment back on top. The stacks are one padded tensor (batch, depth, ...) with a
    depth per sample; `select`, `where` and `merge` let them follow their samples through the loop.
    """

    def __init__(self, dt: torch.Tensor, dW: torch.Tensor, depth: torch.Tensor):
        self.dt, self.dW, self.depth = dt, dW, depth

    @classmethod
    def empty(cls, like: torch.Tensor) -> BrownianMemory:
        batch = len(like)
        return cls(torch.zeros(batch, 0, dtype=torch.float64, device=like.device),
                   torch.zeros(batch, 0, *like.shape[1:], dtype=like.dtype, device=like.device),
                   torch.zeros(batch, dtype=torch.long, device=like.device))

    def put_back(self, dt: torch.Tensor, dW: torch.Tensor) -> None:
        rows = torch.arange(len(self.depth), device=self.depth.device)
        if int(self.depth.max()) == self.dt.shape[1]:
            self._widen(self.dt.shape[1] + 1)
        self.dt[rows, self.depth], self.dW[rows, self.depth] = dt, dW
        self.depth += 1

    def take(self, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The Brownian increments over the next h (per sample)."""
        rows = torch.arange(len(self.depth), device=self.depth.device)
        need, depth = h.clone(), self.depth.clone()
        total = torch.zeros((len(rows), *self.dW.shape[2:]), dtype=self.dW.dtype, device=self.dW.device)
        while (using := (depth > 0) & (need > 0)).any():
            pos = (depth - 1).clamp(min=0)
            seg_dt = torch.where(using, self.dt[rows, pos], torch.zeros_like(need))
            seg_dW = self.dW[rows, pos]
            use = torch.minimum(seg_dt, need)
            left = torch.where(seg_dt - use > 1e-10 * seg_dt, seg_dt - use, torch.zeros_like(use))
            whole = using & (left == 0)
            safe_dt = torch.where(using, seg_dt, torch.ones_like(seg_dt))
            bridge = append_dims((use / safe_dt).to(seg_dW.dtype), seg_dW.ndim) * seg_dW
            bridge = bridge + append_dims((use * left / safe_dt).sqrt().to(seg_dW.dtype), seg_dW.ndim) * gaussian_noise(seg_dW, generator, rows=using)
            part = torch.where(append_dims(whole, seg_dW.ndim), seg_dW, torch.where(append_dims(using, seg_dW.ndim), bridge, 0))
            total = total + part
            self.dt[rows, pos] = torch.where(using, left, self.dt[rows, pos])
            self.dW[rows, pos] = seg_dW - part
            need = torch.where(whole, (need - seg_dt).clamp(min=0), torch.where(using, torch.zeros_like(need), need))
            depth = depth - whole.long()
        self.depth = depth
        return total + append_dims(need.to(total.dtype).sqrt(), total.ndim) * gaussian_noise(total, generator)

    def popped(self) -> BrownianMemory:
        """The stacks without their top increments (the storage is shared: one of the two is dropped by the loop)."""
        return BrownianMemory(self.dt, self.dW, self.depth - 1)

    def _widen(self, columns: int) -> None:
        extra = columns - self.dt.shape[1]
        if extra > 0:
            self.dt = torch.cat([self.dt, self.dt.new_zeros((len(self.dt), extra))], 1)
            self.dW = torch.cat([self.dW, self.dW.new_zeros((len(self.dW), extra, *self.dW.shape[2:]))], 1)

    def select(self, idx: torch.Tensor) -> BrownianMemory:
        return BrownianMemory(self.dt[idx], self.dW[idx], self.depth[idx])

    def where(self, keep: torch.Tensor, other: BrownianMemory) -> BrownianMemory:
        columns = max(self.dt.shape[1], other.dt.shape[1])
        self._widen(columns)
        other._widen(columns)
        return BrownianMemory(torch.where(keep[:, None], self.dt, other.dt),
                              torch.where(append_dims(keep, self.dW.ndim), self.dW, other.dW),
                              torch.where(keep, self.depth, other.depth))

    def merge(self, idx: torch.Tensor, part: BrownianMemory) -> BrownianMemory:
        merged = BrownianMemory(self.dt.clone(), self.dW.clone(), self.depth.clone())
        columns = max(merged.dt.shape[1], part.dt.shape[1])
        merged._widen(columns)
        part._widen(columns)
        merged.dt[idx], merged.dW[idx], merged.depth[idx] = part.dt, part.dW, part.depth
        return merged


@dataclass
class AdaptiveSDEState(SolverState):
    """The drift F(x, t) at the current point once evaluated (`fresh`), the last accepted Euler point x'_prev, and
    the Brownian path ahead."""

    drift: torch.Tensor = per_sample()
    fresh: torch.Tensor = per_sample()
    x_prev: torch.Tensor = per_sample()
    memory: BrownianMemory | None = per_sample(default=None)


class AdaptiveSDE(Solver):
    """The adaptive reverse-SDE solver of Jolicoeur-Martineau et al. (2021), Algorithm 1, as a step.

    From (x, t) with step h (dt = -h) and one Brownian increment dW ~ N(0, h I):

        K1 = F(x, t) dt + g(t) dW,          x'  = x + K1                             (Euler-Maruyama)
        K2 = F(x', t - h) dt + g(t - h) dW, x'' = x + (K1 + K2) / 2                  (stochastic improved Euler)
        E  = || (x' - x'') / max(atol, rtol max(|x'|, |x'_prev|)) ||_2 / sqrt(dim)   (RMS: the paper's "L2_scaled")

    with F the reverse drift f - g^2 score. If E <= 1 the step is accepted: x <- x'' (extrapolation; x' without
    it) and x'_prev <- x'. Either way h <- theta h E^(-r), and the last step is cut to land on t_end. A rejected
    step reuses F(x, t) at its next attempt (one NFE saved per rejection).

    Defaults follow the paper and its official code (github.com/AlexiaJM/score_sde_fast_sampling, configs):
    rtol (eps_rel) = 0.01 (the paper sweeps 0.01 to 0.1), atol (eps_abs) = 0.0078 (= 2/256, for data in
    [-1, 1]; rescale it with your data), theta = safety = 0.9, r = exponent = 0.9, h_init = 0.01 (a fraction of
    the interval, the paper's T = 1), extrapolation on. Where we differ, and why:

    - `brownian_memory=True`: a rejected increment is kept and bridged (`BrownianMemory`, Rackauckas & Nie 2017)
      instead of redrawn as in the paper. Redrawing makes acceptance select the noise a sample gets; with
      per-sample control in 2-D that inflated a Gaussian's covariance by 50-90% (VP) and 130-190% (VE), at any
      rtol. `brownian_memory=False` is the paper's rule; the bias fades with the dimension (1% at d = 256).
    - `per_sample=False`: one step size for the batch, the norm taken over all of it. The paper controls each
      sample's step (`per_sample=True`), which suits images; on low-dimensional data a sample's own error is
      noisy, about 40% of its steps are rejected, and the slowest sample sets the batched NFE (2.2x on a 2-D VP).
    - The step-size factor is bounded to [factor_min, factor_max] = [0.1, 10]; the paper leaves it unbounded.

    The paper's final denoising step is `sample(..., denoise=True)`. NFE budget `max_nfe`: see `control.py`.
    """

    name = "adaptive_sde"
    adaptive = True
    order = 1.0  # strong order of the accepted stochastic improved Euler step with additive noise
    error_order = 1.0
    evaluations_per_step = 2
    stochastic = True
    default_steps = 1

    def __init__(
        self,
        rtol: float = 1e-2,
        atol: float = 0.0078,
        *,
        per_sample: bool = False,
        norm: str = "rms",
        safety: float = 0.9,
        exponent: float = 0.9,
        h_init: float = 0.01,
        extrapolation: bool = True,
        brownian_memory: bool = True,
        factor_min: float = 0.1,
        factor_max: float = 10.0,
        max_nfe: int | None = None,
        max_steps: int = 100_000,
    ):
        if not exponent > 0:
            raise ValueError(f"exponent (the paper's r) must be positive; got {exponent!r}")
        if h_init is None:
            raise ValueError("h_init (the first step as a fraction of the interval) must be given for adaptive_sde")
        self._controller = AdaptiveController(  # checks its options
            rtol, atol, norm=norm, per_sample=per_sample, scale="max", safety=safety, factor_min=factor_min,
            factor_max=factor_max, exponent=exponent, h_init=h_init, max_nfe=max_nfe, max_steps=max_steps,
        )
        if max_nfe is not None and max_nfe < 2:
            raise ValueError(f"max_nfe={max_nfe} is too small for {self.name}: one step takes 2 evaluations")
        self.rtol, self.atol, self.per_sample, self.norm = float(rtol), float(atol), bool(per_sample), norm
        self.safety, self.exponent, self.h_init = float(safety), float(exponent), float(h_init)
        self.extrapolation, self.brownian_memory = bool(extrapolation), bool(brownian_memory)
        self.factor_min, self.factor_max = factor_min, factor_max
        self.max_nfe, self.max_steps = max_nfe, max_steps

    def controller(self, times):
        return self._controller.between(times[0], times[-1])

    def attempt_cost(self, state: AdaptiveSDEState) -> int:
        return 1 + bool((~state.fresh).any())

    def error_scale(self, y, y_next, state: AdaptiveSDEState, state_next: AdaptiveSDEState):
        return state_next.x_prev, state.x_prev  # x' and x'_prev, as in the paper

    def init(self, term, x, times):
        memory = BrownianMemory.empty(x) if self.brownian_memory else None
        return AdaptiveSDEState(torch.empty_like(x), torch.zeros(len(x), dtype=torch.bool, device=x.device), x.clone(), memory)

    def step(self, term, x, t, t_next, state: AdaptiveSDEState, generator):
        stale = ~state.fresh
        if stale.any():  # filled in the given state: a retry reuses it
            state.drift[stale] = term.drift(x[stale], (t[stale] if t.ndim else t).to(x.dtype))
            state.fresh[stale] = True
        h = t - t_next
        if state.memory is not None:
            dW = state.memory.take(h.expand(len(x)), generator)
            state.memory.put_back(h.expand(len(x)), dW)  # the path ahead, kept for a retry
            memory = state.memory.popped()
        else:
            dW, memory = append_dims(h.to(x.dtype).sqrt(), x.ndim) * gaussian_noise(x, generator), None
        hx, t, t_next = append_dims(h.to(x.dtype), x.ndim), t.to(x.dtype), t_next.to(x.dtype)
        k1 = -hx * state.drift + append_dims(term.diffusion(t), x.ndim) * dW
        x_euler = x + k1
        k2 = -hx * term.drift(x_euler, t_next) + append_dims(term.diffusion(t_next), x.ndim) * dW
        x_heun = x + 0.5 * (k1 + k2)
        accepted = AdaptiveSDEState(state.drift, torch.zeros_like(state.fresh), x_euler, memory)
        return (x_heun if self.extrapolation else x_euler), x_euler - x_heun, accepted
