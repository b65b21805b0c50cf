"""Adaptive-step solvers: embedded Runge-Kutta pairs for the probability flow, and the adaptive reverse-SDE solver.

`Bosh3` (Bogacki & Shampine 1989, 3(2)), `Dopri5` (Dormand & Prince 1980, 5(4)) and `Tsit5` (Tsitouras 2011,
5(4)) integrate the probability-flow ODE with the error of their embedded lower-order solution, judged by the shared
`StepController` (mixed rtol/atol, RMS or max norm, one step size for the batch or one per sample).
`AdaptiveSDE` is the solver of Jolicoeur-Martineau et al. (2021), "Gotta Go Fast When Generating Data with
Score-Based Models": Euler-Maruyama against stochastic improved Euler on the same Brownian increment.

Each adaptive solver uses only the first and last entries of the time grid it is given, and reports what it did in
`SampleResult.stats`: accepted and rejected steps, attempts, and the NFE the score model's wrapper counted.

NFE budget (`max_nfe`). A hard cap on the function evaluations of one solve, as an alternative to choosing
tolerances: the solver steps adaptively while the evaluations it needs to finish (extrapolating its step sizes at
their current growth rate, plus one spare attempt for a rejection) fit in what is left; once they do not, it
covers the rest of the interval with as many equal fixed steps as the remaining budget pays for, without error
control, and records `budget_exhausted=True` and `fixed_steps` in the stats. The NFE spent never exceeds
`max_nfe`; a budget too small to start and take one step raises a ValueError before any evaluation. A budget
that is not binding changes nothing. Without `max_nfe`, a run that needs more than `max_steps` attempts, or
whose step size underflows, raises `StepSizeError` naming the time where it stalled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..reverse import ReverseSDE
from ..tensors import append_dims
from .base import SampleResult, Solver, check_finite, gaussian_noise
from .control import StepController
from .edm import denoiser, linear_sde


class StepSizeError(RuntimeError):
    """An adaptive solver could not make progress: its step size underflowed or it ran out of attempts."""


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
    b_full = tuple(b) + (0.0,)
    return Tableau(tuple(c), tuple(map(tuple, a)), tuple(b), tuple(x - y for x, y in zip(b_full, b_hat)), order, error_order)


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


class ProbabilityFlow:
    """The probability-flow ODE as `dy/ds = F(y, s)` in one of two variables, for any LinearSDE.

    - "t": y = x, s = t, F = f(t) x - g(t)^2 score(x, t) / 2 (Song et al. 2021), integrated downwards in t.
    - "log_snr": s = lambda = log_snr(t), integrated upwards, and y = x / sqrt(alpha^2 + sigma^2), the state of the
      variance-preserving process with the same log-SNR (x itself for VP). With x_tilde = x / alpha, whose flow is
      d x_tilde / d lambda = D(x_tilde) - x_tilde (Karras et al. 2022, eq. 4 with sigma_tilde = exp(-lambda)),
      and y = c x_tilde, c(lambda) = alpha / sqrt(alpha^2 + sigma^2) = sqrt(sigmoid(2 lambda)):

          dy / d lambda = c D(y / c) - c^2 y.

      For unit-scale data y stays O(1) at every noise level (x_tilde grows like exp(-lambda)), and steps uniform
      in lambda resolve the data's scales alike; near t_min the flow in t changes on the scale sigma(t), and a
      step-size controller in t spends its rejections there.
    """

    def __init__(self, score, variable: str, t_start: float, t_end: float, solver: Solver):
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; choose one of {VARIABLES}")
        self.score, self.variable, self.t_start, self.t_end = score, variable, t_start, t_end
        if variable == "t":
            self.term = ReverseSDE(score.sde, score, probability_flow=True)
            self.s_start, self.s_end = t_start, t_end
        else:
            self.sde = linear_sde(score, solver)
            lam = self.sde.log_snr(torch.tensor([t_start, t_end], dtype=torch.float64))
            self.s_start, self.s_end = float(lam[0]), float(lam[1])

    def time(self, s: torch.Tensor) -> torch.Tensor:
        """t at variable value(s) s."""
        if self.variable == "t":
            return s
        return self.sde.t_of_log_snr(s).to(s.dtype).clamp(min(self.t_start, self.t_end), max(self.t_start, self.t_end))

    def __call__(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t = self.time(s.to(y.dtype))
        if self.variable == "t":
            return self.term.drift(y, t)
        c2 = append_dims(torch.sigmoid(2 * s.to(y.dtype)), y.ndim)
        c = c2.sqrt()
        return c * denoiser(self.score, y / c, t) - c2 * y

    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        return (self.sde.alpha(t) ** 2 + self.sde.sigma(t) ** 2).sqrt()

    def y_of_x(self, x: torch.Tensor, t: float) -> torch.Tensor:
        if self.variable == "t":
            return x
        return x / self._scale(torch.tensor(t, dtype=x.dtype, device=x.device))

    def x_of_y(self, y: torch.Tensor, s: torch.Tensor, at_end: bool = False) -> torch.Tensor:
        if self.variable == "t":
            return y
        t = torch.full_like(s, self.t_end) if at_end else self.time(s)
        return append_dims(self._scale(t.to(y.dtype)), y.ndim) * y


def _check_budget_options(max_nfe, max_steps) -> None:
    if max_nfe is not None and not (isinstance(max_nfe, int) and max_nfe > 0):
        raise ValueError(f"max_nfe must be a positive integer or None; got {max_nfe!r}")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")


def _fraction(h_init, name="h_init") -> float | None:
    if h_init is None:
        return None
    if not (isinstance(h_init, (int, float)) and 0 < h_init <= 1):
        raise ValueError(f"{name} is a fraction of the integration interval, in (0, 1]; got {h_init!r}")
    return float(h_init)


def _steps_to_finish(remaining: torch.Tensor, h: torch.Tensor, growth: torch.Tensor) -> int:
    """Steps to cover `remaining` if step sizes keep growing by `growth` per step from h (the current trend; 1 after
    a rejection): ceil(log(1 + remaining (g - 1) / h) / log g), or ceil(remaining / h) for g = 1. Largest over samples."""
    g = growth.clamp(min=1.0)
    geometric = torch.log1p(remaining * (g - 1) / h) / torch.log(g).clamp(min=1e-12)
    return int(torch.ceil(torch.where(g > 1 + 1e-6, geometric, remaining / h)).max())


def _predictive_step(step, h_prev, ratio, ratio_prev, error_order: int, controller: StepController) -> torch.Tensor:
    """Gustafsson's predictive step size (Gustafsson 1994; Hairer & Wanner, Solving ODEs II, IV.8, as in RADAU5):

        h_next = safety h (h / h_prev) (1 / err)^(1/k) (err_prev / err)^(1/k),   k = q + 1,

    which extrapolates the trend of the error between two accepted steps. Used as min(standard, predictive), it
    holds back the growth of the step when the error grows faster than h^k, as it does on the probability flow
    when the solution approaches the data's finer scales; it saves rejected steps there.
    """
    r = ratio.clamp(min=1e-10)
    h = controller.safety * step * (step / h_prev) * (ratio_prev / r**2) ** (1 / (error_order + 1))
    return torch.minimum(torch.maximum(h, step * controller.factor_min), step * controller.factor_max)


def _check_underflow(solver: Solver, h: torch.Tensor, s: torch.Tensor, s_end: float, time_of, dtype: torch.dtype) -> None:
    """Raise StepSizeError when a step has shrunk below what the integration variable can resolve in `dtype`."""
    small = h < 64 * torch.finfo(dtype).eps * torch.clamp(s.abs(), min=abs(s_end))
    if small.any():
        i = int(small.nonzero()[0, 0])
        raise StepSizeError(
            f"{solver.name}: step size underflow at t = {float(time_of(s[i : i + 1])):.6g} (step {float(h[i]):.3g} in "
            f"the integration variable). The problem is too stiff for the tolerances (rtol={solver.rtol}, "
            f"atol={solver.atol}) or the score is not smooth there: loosen the tolerances, stop earlier (larger "
            "t_min), or check the score network at that time."
        )


class EmbeddedRungeKutta(Solver):
    """Adaptive explicit Runge-Kutta with an embedded error estimate, on the probability flow (see the module
    docstring for the NFE budget).

    Options: rtol, atol (mixed tolerance of the StepController), `norm` ("rms" or "max"), `per_sample` (each
    sample its own step size; only the samples still running are evaluated, one NFE per batched call),
    `variable` ("log_snr", the default, or "t" as scipy's solver; see `ProbabilityFlow`), `h_init` (the first
    step as a fraction of the interval; None selects it by Hairer's rule, one extra NFE), `safety`,
    `factor_min`, `factor_max` (the controller's; 0.2 and 10 as in scipy), `max_nfe`, `max_steps`.
    The tolerances apply to the integrated state y (x itself with variable="t").

    Initial step (Hairer, Norsett & Wanner, Solving ODEs I, II.4, as in scipy): with norms scaled by
    atol + rtol |y0|, h0 = 0.01 ||y0|| / ||f0||, one Euler step to estimate ||f'||,
    h1 = (0.01 / max(||f0||, ||f'||))^(1/(q+1)), h = min(100 h0, h1). After a rejected step the next accepted
    one may not grow (HNW II.4). `predictive` (default) also caps each step by Gustafsson's predictive step size
    (see `_predictive_step`): on the benchmark problems it halves the rejections and lowers the error at a given
    tolerance. A step that would end within the fraction `stretch - 1` (default 1%) of its size short of t_min is
    stretched to reach it, as in Hairer's DOPRI5 code: a sliver of a last step costs a full step's evaluations (on
    the ring of the arena at rtol = atol = 1e-5, 122 -> 116 NFE). With variable="t", predictive=False and
    stretch=1 the run is step for step scipy's RK23 / RK45.
    """

    tableau: Tableau
    probability_flow = True
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
        if not 1.0 <= stretch <= 1.5:
            raise ValueError(f"stretch is the factor by which a last step may grow to reach t_min, in [1, 1.5]; got {stretch!r}")
        _check_budget_options(max_nfe, max_steps)
        StepController(rtol, atol, safety, factor_min, factor_max, norm, per_sample)  # validates the options
        self.rtol, self.atol, self.norm, self.per_sample, self.variable = float(rtol), float(atol), norm, bool(per_sample), variable
        self.h_init, self.safety, self.factor_min, self.factor_max = _fraction(h_init), safety, factor_min, factor_max
        self.max_nfe, self.max_steps, self.predictive, self.stretch = max_nfe, max_steps, bool(predictive), float(stretch)

    def _controller(self) -> StepController:
        return StepController(self.rtol, self.atol, self.safety, self.factor_min, self.factor_max, self.norm, self.per_sample)

    @property
    def _evaluations_per_step(self) -> int:
        return len(self.tableau.c)  # stages 2..s-1 and the FSAL stage

    def _stages(self, flow, y, s, h, k1, need_last: bool = True):
        """One step of size h (per sample) from (y, s) with first stage k1: (y_new, k_last, error).
        Without `need_last` the FSAL stage, which only feeds the error and the next step, is skipped."""
        tab, hx = self.tableau, append_dims(h.to(y.dtype), y.ndim)
        ks = [k1]
        for c_i, a_i in zip(tab.c[1:], tab.a):
            ks.append(flow(y + hx * sum(a * k for a, k in zip(a_i, ks) if a), s + c_i * h))
        y_new = y + hx * sum(b * k for b, k in zip(tab.b, ks) if b)
        if not need_last:
            return y_new, None, None
        ks.append(flow(y_new, s + h))
        return y_new, ks[-1], hx * sum(e * k for e, k in zip(tab.e, ks) if e)

    def _initial_step(self, flow, controller, y0, s0, f0, direction, span):
        """Hairer's starting step size, one function evaluation; one value per sample with per_sample."""
        batch = len(y0)
        d0 = controller.error_ratio(y0, y0, y0).to(torch.float64).expand(batch)
        d1 = controller.error_ratio(f0, y0, y0).to(torch.float64).expand(batch)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).clamp(max=span)
        f1 = flow(y0 + direction * append_dims(h0.to(y0.dtype), y0.ndim) * f0, s0 + direction * h0)
        d2 = controller.error_ratio(f1 - f0, y0, y0).to(torch.float64).expand(batch) / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax) ** (1 / (self.tableau.error_order + 1)))
        return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))

    def solve(self, score, x_T, times, generator=None, *, keep_trajectory=False, progress=False):
        t_start, t_end = float(times[0]), float(times[-1])
        flow = ProbabilityFlow(score, self.variable, t_start, t_end, self)
        controller, tab, per_step = self._controller(), self.tableau, self._evaluations_per_step
        direction = 1.0 if flow.s_end > flow.s_start else -1.0
        span, batch, device, nfe_start = abs(flow.s_end - flow.s_start), len(x_T), x_T.device, score.nfe
        start_cost = 1 if self.h_init is not None else 2
        if self.max_nfe is not None and self.max_nfe < start_cost + per_step:
            raise ValueError(
                f"max_nfe={self.max_nfe} is too small for {self.name}: starting takes {start_cost} evaluation(s) and "
                f"one step {per_step}; give at least {start_cost + per_step}"
            )
        spent = lambda: score.nfe - nfe_start  # noqa: E731
        end = torch.full((batch,), flow.s_end, dtype=torch.float64, device=device)
        s = torch.full((batch,), flow.s_start, dtype=torch.float64, device=device)
        y = flow.y_of_x(x_T, t_start).clone()
        k1 = flow(y, s)
        if self.h_init is None:
            h = self._initial_step(flow, controller, y, s, k1, direction, span)
        else:
            h = torch.full((batch,), self.h_init * span, dtype=torch.float64, device=device)
        initial_step = float(h.mean())
        accepted, rejected = torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(batch, dtype=torch.long, device=device)
        sample_evaluations = torch.full_like(accepted, spent())
        just_rejected = torch.zeros(batch, dtype=torch.bool, device=device)
        h_prev, ratio_prev = torch.zeros_like(h), torch.ones_like(h)  # the last accepted step and its error ratio
        growth = torch.full((batch,), float(self.factor_max), dtype=torch.float64, device=device)
        keep_steps = keep_trajectory and not self.per_sample
        trajectory, visited = [x_T], [t_start]
        attempts, fixed_steps, bar = 0, 0, _progress_bar(progress, self.name)
        while (active := s != end).any():
            idx = active.nonzero()[:, 0]
            remaining = (end[idx] - s[idx]).abs()
            if self.max_nfe is not None and spent() + (_steps_to_finish(remaining, h[idx], growth[idx]) + 1) * per_step > self.max_nfe:
                fixed_steps = (self.max_nfe - spent() + 1) // per_step
                y[idx] = self._finish_fixed(flow, y[idx], s[idx], end[idx], k1[idx], fixed_steps, attempts)
                sample_evaluations[idx] += fixed_steps * per_step - 1
                s[idx] = end[idx]
                break
            if attempts >= self.max_steps:
                raise StepSizeError(
                    f"{self.name}: no finish after max_steps={self.max_steps} attempts (stalled near t = "
                    f"{float(flow.time(s[idx[:1]])):.6g}); loosen rtol/atol, raise max_steps, or give max_nfe"
                )
            last = self.stretch * h[idx] >= remaining
            step = torch.where(last, remaining, h[idx])
            y_old = y[idx]
            y_new, k_new, error = self._stages(flow, y_old, s[idx], direction * step, k1[idx])
            attempts += 1
            sample_evaluations[idx] += per_step
            check_finite(y_new, self, attempts - 1, "an adaptive run", *_times(flow, s[idx], direction * step))
            ratio = controller.error_ratio(error, y_new, y_old).to(torch.float64).expand(len(idx))
            ok, h_next = controller.propose(step, ratio, tab.error_order)
            if self.predictive:
                predicted = _predictive_step(step, h_prev[idx], ratio, ratio_prev[idx], tab.error_order, controller)
                h_next = torch.where(ok & (h_prev[idx] > 0), torch.minimum(h_next, predicted), h_next)
                h_prev[idx[ok]], ratio_prev[idx[ok]] = step[ok], ratio[ok].clamp(min=1e-2)
            # Hairer, Norsett & Wanner (II.4): no growth on the step right after a rejection.
            h[idx] = torch.where(ok & just_rejected[idx], torch.minimum(h_next, step), h_next)
            just_rejected[idx] = ~ok
            growth[idx] = h[idx] / step
            good = idx[ok]
            y[good], k1[good] = y_new[ok], k_new[ok]
            s[good] = torch.where(last[ok], end[good], s[good] + direction * step[ok])
            accepted[good] += 1
            rejected[idx[~ok]] += 1
            _check_underflow(self, h[idx[~ok]], s[idx[~ok]], flow.s_end, flow.time, x_T.dtype)
            if keep_steps and ok.all():
                trajectory.append(flow.x_of_y(y, s).clone())
                visited.append(float(flow.time(s[:1])))
            bar(1 - float((end - s).abs().max()) / span)
        bar(None)
        x = flow.x_of_y(y, end, at_end=True)
        if keep_steps and not fixed_steps:  # the last accepted step landed on t_end: keep its exact value
            trajectory.pop()
            visited.pop()
        trajectory.append(x)
        visited.append(t_end)
        stats = _stats(accepted, rejected, attempts, spent(), sample_evaluations, self.per_sample, fixed_steps)
        stats.update(initial_step=initial_step, variable=self.variable)
        return SampleResult(x, spent(), torch.tensor(visited, dtype=torch.float64), trajectory if keep_trajectory else None, stats)

    def _finish_fixed(self, flow, y, s, end, k1, n_steps, attempts):
        """`n_steps` equal steps of the higher-order method from s to end, no error control (budget mode)."""
        h = (end - s) / n_steps
        for i in range(n_steps):
            y, k1, _ = self._stages(flow, y, s + i * h, h, k1, need_last=i < n_steps - 1)
            check_finite(y, self, attempts + i, "an adaptive run", *_times(flow, s + i * h, h))
        return y


def _times(flow, s, step):
    """(t, t_next) of the first sample, for error messages."""
    return float(flow.time(s[:1])), float(flow.time((s + step)[:1]))


def _stats(accepted, rejected, attempts, nfe, sample_evaluations, per_sample, fixed_steps) -> dict:
    stats = dict(
        accepted_steps=int(accepted.max()) if not per_sample else float(accepted.double().mean()),
        rejected_steps=int(rejected.max()) if not per_sample else float(rejected.double().mean()),
        attempts=attempts,
        nfe=nfe,
        budget_exhausted=fixed_steps > 0,
        fixed_steps=fixed_steps,
    )
    if per_sample:
        stats.update(
            accepted_per_sample=accepted.cpu(),
            rejected_per_sample=rejected.cpu(),
            evaluations_per_sample=float(sample_evaluations.double().mean()),
        )
    return stats


def _progress_bar(enabled: bool, name: str):
    """A callable taking the fraction done (None closes it); a no-op unless enabled."""
    if not enabled:
        return lambda fraction: None
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=name, leave=False)

    def update(fraction):
        if fraction is None:
            bar.close()
        else:
            bar.update(max(0, int(1000 * fraction) - bar.n))

    return update


class Bosh3(EmbeddedRungeKutta):
    """Bogacki-Shampine 3(2) with FSAL: 3 new function evaluations per attempted step (scipy's RK23)."""

    name = "bosh3"
    order = 3
    tableau = BOSH3


class Dopri5(EmbeddedRungeKutta):
    """Dormand-Prince 5(4) with FSAL: 6 new function evaluations per attempted step (scipy's RK45, ode45)."""

    name = "dopri5"
    order = 5
    tableau = DOPRI5


class Tsit5(EmbeddedRungeKutta):
    """Tsitouras 5(4) with FSAL: 6 new function evaluations per attempted step, as Dopri5, with a more accurate
    fifth-order solution (Tsitouras 2011; DifferentialEquations.jl's default non-stiff solver)."""

    name = "tsit5"
    order = 5
    tableau = TSIT5


class _PaperScaleController(StepController):
    """The tolerance scale of Jolicoeur-Martineau et al. (2021): max(atol, rtol max(|x'|, |x'_prev|)) instead of
    the sum atol + rtol max(...) of the shared controller (the two differ by at most a factor of 2)."""

    def error_ratio(self, error, x_new, x_old):
        scale = torch.clamp(self.rtol * torch.maximum(x_new.abs(), x_old.abs()), min=self.atol)
        scaled = (error / scale).reshape(len(error), -1) if self.per_sample else (error / scale).reshape(1, -1)
        ratio = scaled.pow(2).mean(dim=1).sqrt() if self.norm == "rms" else scaled.abs().amax(dim=1)
        return ratio if self.per_sample else ratio[0]


class BrownianMemory:
    """The future Brownian path of each sample, kept across rejected steps: rejection sampling with memory
    (Rackauckas & Nie 2017, RSwM), so that the noise a step is judged on is never thrown away and redrawn.

    A rejected increment (dt, dW) is pushed back on its sample's stack; `take(h)` consumes the stack from the top
    (the nearest future first), splits a segment longer than what is still needed by the Brownian bridge,
    W(u) | W(dt) = dW ~ N(u / dt dW, u (dt - u) / dt I), and draws fresh N(0, h_rest I) beyond the stack.
    The stacks are one padded tensor (batch, depth, ...) with a depth per sample.
    """

    def __init__(self, like: torch.Tensor):
        batch = len(like)
        self.dt = torch.zeros(batch, 0, dtype=torch.float64, device=like.device)
        self.dW = torch.zeros(batch, 0, *like.shape[1:], dtype=like.dtype, device=like.device)
        self.depth = torch.zeros(batch, dtype=torch.long, device=like.device)

    def put_back(self, idx: torch.Tensor, dt: torch.Tensor, dW: torch.Tensor) -> None:
        if int(self.depth[idx].max()) == self.dt.shape[1]:
            self.dt = torch.cat([self.dt, self.dt.new_zeros((len(self.dt), 1))], 1)
            self.dW = torch.cat([self.dW, self.dW.new_zeros((len(self.dW), 1) + self.dW.shape[2:])], 1)
        pos = self.depth[idx]
        self.dt[idx, pos], self.dW[idx, pos] = dt, dW
        self.depth[idx] += 1

    def take(self, idx: torch.Tensor, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The Brownian increments over the next h (per sample) of the samples idx."""
        need, depth = h.clone(), self.depth[idx]
        total = torch.zeros((len(idx),) + self.dW.shape[2:], dtype=self.dW.dtype, device=self.dW.device)
        while (using := (depth > 0) & (need > 0)).any():
            pos = (depth - 1).clamp(min=0)
            seg_dt = torch.where(using, self.dt[idx, pos], torch.zeros_like(need))
            seg_dW = self.dW[idx, pos]
            use = torch.minimum(seg_dt, need)
            left = torch.where(seg_dt - use > 1e-10 * seg_dt, seg_dt - use, torch.zeros_like(use))
            whole = using & (left == 0)
            safe_dt = torch.where(using, seg_dt, torch.ones_like(seg_dt))
            bridge = append_dims((use / safe_dt).to(seg_dW.dtype), seg_dW.ndim) * seg_dW
            bridge = bridge + append_dims((use * left / safe_dt).sqrt().to(seg_dW.dtype), seg_dW.ndim) * gaussian_noise(seg_dW, generator)
            part = torch.where(append_dims(whole, seg_dW.ndim), seg_dW, torch.where(append_dims(using, seg_dW.ndim), bridge, 0))
            total = total + part
            self.dt[idx, pos] = torch.where(using, left, self.dt[idx, pos])
            self.dW[idx, pos] = seg_dW - part
            need = torch.where(whole, (need - seg_dt).clamp(min=0), torch.where(using, torch.zeros_like(need), need))
            depth = depth - whole.long()
        self.depth[idx] = depth
        return total + append_dims(need.to(total.dtype).sqrt(), total.ndim) * gaussian_noise(total, generator)


class AdaptiveSDE(Solver):
    """The adaptive reverse-SDE solver of Jolicoeur-Martineau et al. (2021), Algorithm 1.

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

    `denoise=True` adds the paper's final denoising step at t_end, Tweedie's E[x_0 | x_t] = (x - sigma eps) / alpha
    (x + sigma^2 score for VE), one more NFE; it is what `sample(..., denoise=True)` does, so use one or the other.
    NFE budget: see the module docstring (its fixed steps are the stochastic improved Euler step above).
    """

    name = "adaptive_sde"
    adaptive = True
    order = 1.0  # strong order of the accepted stochastic improved Euler step with additive noise
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
        denoise: bool = False,
        max_nfe: int | None = None,
        max_steps: int = 100_000,
    ):
        _check_budget_options(max_nfe, max_steps)
        if not exponent > 0:
            raise ValueError(f"exponent (the paper's r) must be positive; got {exponent!r}")
        _PaperScaleController(rtol, atol, safety, factor_min, factor_max, norm, per_sample, exponent)  # validates
        self.rtol, self.atol, self.per_sample, self.norm = float(rtol), float(atol), bool(per_sample), norm
        self.safety, self.exponent, self.h_init = float(safety), float(exponent), _fraction(h_init)
        self.extrapolation, self.brownian_memory = bool(extrapolation), bool(brownian_memory)
        self.factor_min, self.factor_max = factor_min, factor_max
        self.denoise, self.max_nfe, self.max_steps = bool(denoise), max_nfe, max_steps

    def _improved_euler(self, term, x, t, h, drift, dW):
        """(x', x''): the Euler-Maruyama and stochastic improved Euler points of one step on the same increment dW."""
        hx, t = append_dims(h.to(x.dtype), x.ndim), t.to(x.dtype)
        k1 = -hx * drift + append_dims(term.diffusion(t), x.ndim) * dW
        x_euler = x + k1
        t_next = t - h.to(x.dtype)
        k2 = -hx * term.drift(x_euler, t_next) + append_dims(term.diffusion(t_next), x.ndim) * dW
        return x_euler, x + 0.5 * (k1 + k2)

    def solve(self, score, x_T, times, generator=None, *, keep_trajectory=False, progress=False):
        t_start, t_end = float(times[0]), float(times[-1])
        term = ReverseSDE(score.sde, score)
        controller = _PaperScaleController(
            self.rtol, self.atol, self.safety, self.factor_min, self.factor_max, self.norm, self.per_sample, self.exponent
        )
        batch, device, nfe_start, span = len(x_T), x_T.device, score.nfe, t_start - t_end
        reserve = 1 if self.denoise else 0
        if self.max_nfe is not None and self.max_nfe < 2 + reserve:
            raise ValueError(f"max_nfe={self.max_nfe} is too small for {self.name}: one step takes 2 evaluations" + (" and denoising 1" if reserve else ""))
        t = torch.full((batch,), t_start, dtype=torch.float64, device=device)
        h = torch.full_like(t, self.h_init * span)
        x, x_prev = x_T.clone(), x_T.clone()
        memory = BrownianMemory(x_T) if self.brownian_memory else None
        increments = lambda i, h: memory.take(i, h, generator) if memory else (  # noqa: E731
            append_dims(h.to(x.dtype).sqrt(), x.ndim) * gaussian_noise(x[i], generator))
        drift = torch.empty_like(x_T)
        fresh = torch.zeros(batch, dtype=torch.bool, device=device)  # drift[i] holds F(x_i, t_i)
        accepted = torch.zeros(batch, dtype=torch.long, device=device)
        rejected = torch.zeros_like(accepted)
        sample_evaluations = torch.zeros_like(accepted)
        growth = torch.full_like(t, float(self.factor_max))
        attempts, fixed_steps, bar = 0, 0, _progress_bar(progress, self.name)
        while (active := t != t_end).any():
            idx = active.nonzero()[:, 0]
            remaining = t[idx] - t_end
            if self.max_nfe is not None:
                steps_left = _steps_to_finish(remaining, h[idx], growth[idx])
                if score.nfe - nfe_start + 2 * (steps_left + 1) + reserve > self.max_nfe:
                    fixed_steps = (self.max_nfe - reserve - (score.nfe - nfe_start)) // 2
                    x[idx] = self._finish_fixed(term, x[idx], t[idx], remaining, fixed_steps, lambda h: increments(idx, h), attempts)
                    sample_evaluations[idx] += 2 * fixed_steps
                    t[idx] = t_end
                    break
            if attempts >= self.max_steps:
                raise StepSizeError(
                    f"{self.name}: no finish after max_steps={self.max_steps} attempts (stalled near t = "
                    f"{float(t[idx[0]]):.6g}); loosen rtol/atol, raise max_steps, or give max_nfe"
                )
            stale = idx[~fresh[idx]]
            if len(stale):
                drift[stale] = term.drift(x[stale], t[stale].to(x.dtype))
                fresh[stale] = True
                sample_evaluations[stale] += 1
            last = h[idx] >= remaining
            step = torch.where(last, remaining, h[idx])
            x_old = x[idx]
            dW = increments(idx, step)
            x_euler, x_heun = self._improved_euler(term, x_old, t[idx], step, drift[idx], dW)
            attempts += 1
            sample_evaluations[idx] += 1
            check_finite(x_heun, self, attempts - 1, "an adaptive run", float(t[idx[0]]), float(t[idx[0]] - step[0]))
            ratio = controller.error_ratio(x_euler - x_heun, x_euler, x_prev[idx]).to(torch.float64).expand(len(idx))
            ok, h_next = controller.propose(step, ratio, 1.0)
            if memory is not None and not ok.all():
                memory.put_back(idx[~ok], step[~ok], dW[~ok])
            good = idx[ok]
            x[good] = (x_heun if self.extrapolation else x_euler)[ok]
            x_prev[good] = x_euler[ok]
            t[good] = torch.where(last[ok], torch.full_like(step[ok], t_end), t[good] - step[ok])
            fresh[good] = False
            accepted[good] += 1
            rejected[idx[~ok]] += 1
            h[idx], growth[idx] = h_next, h_next / step
            _check_underflow(self, h_next[~ok], t[idx[~ok]], t_end, lambda s: s, x_T.dtype)
            bar(1 - float((t - t_end).max()) / span)
        bar(None)
        if self.denoise:
            x = score.x0(x, torch.tensor(t_end, dtype=x.dtype, device=device))
        nfe = score.nfe - nfe_start
        stats = _stats(accepted, rejected, attempts, nfe, sample_evaluations, self.per_sample, fixed_steps)
        return SampleResult(x, nfe, torch.tensor([t_start, t_end], dtype=torch.float64), [x_T, x] if keep_trajectory else None, stats)

    def _finish_fixed(self, term, x, t, remaining, n_steps, increments, attempts):
        """`n_steps` equal stochastic improved Euler steps to t_end, no error control (budget mode)."""
        h = remaining / n_steps
        for i in range(n_steps):
            drift = term.drift(x, t.to(x.dtype))
            x_euler, x_heun = self._improved_euler(term, x, t, h, drift, increments(h))
            x = x_heun if self.extrapolation else x_euler
            check_finite(x, self, attempts + i, "an adaptive run", float(t[0]), float(t[0] - h[0]))
            t = t - h
        return x
