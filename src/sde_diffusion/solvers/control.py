"""Step-size controllers: they choose the times, the loop walks them, the solver steps (as in diffrax).

Both controllers work in the solver's variable s (t, or the log-SNR for the solvers that step in it) and answer
the loop through two methods on a per-solve record (`Control`):

    proposal = controller.propose(control, solver, state, spent)   # (idx, s, s_next), or None when done
    accepted = controller.adapt(control, proposal, error, y_next, y)

`FixedGrid` walks given times (any `TimeGrid`, or a user's) and accepts every step. `AdaptiveController` judges the
solver's error estimate against a mixed tolerance,

    ratio = || error / scale ||,   scale = atol + rtol max(|y_next|, |reference|)   (or max(atol, rtol max(...))),

the norm an RMS or a max over each sample's values, then either per sample (each sample its own step; only the
samples still running are stepped) or over the batch (the RMS over all values, or the worst sample). A step is
accepted when ratio <= 1, and the next size is h clip(safety ratio^(-1/(q+1)), factor_min, factor_max), q the
order of the error estimate (Hairer, Norsett & Wanner, Solving ODEs I, II.4). Options: Gustafsson's predictive rule
(`predictive`), no growth on the step after a rejection (`hold_after_reject`), Hairer's starting step
(`h_init=None`), stretching a last step that would fall just short of the end (`stretch`).

NFE budget (`max_nfe`), one meaning for every adaptive solver: a hard cap on the evaluations of the solve. Before
each attempt the controller counts the attempts the budget still pays for, k (the next attempt's cost from the
solver's state, each later one `solver.evaluations_per_step`), and floors the step at (distance left) / k; an
attempt at that floor is accepted whatever its error (`budget_limited_steps` counts those). So the solve always
ends within `max_nfe` evaluations, and a budget that the tolerances never reach changes nothing. The budget is read
off the problem's counter (`problem.nfe`, the score model's wrapper), never computed by formula.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tensors import append_dims
from .problems import chart_of


class StepSizeError(RuntimeError):
    """An adaptive solve could not make progress: its step size underflowed or it ran out of attempts."""


class StepSizeController:
    """Base class: the times of a solve from `t_start` to `t_end` (0-dim tensors of the sampling time)."""

    t_start: torch.Tensor
    t_end: torch.Tensor
    per_sample: bool = False  # True: each sample its own steps, and the loop steps only the samples still running
    steps_label: int | str = "an adaptive run"  # how error messages count the steps ("step 3 of 10")

    @property
    def times(self) -> torch.Tensor:
        """The times the solver's `init` is told about: the grid, or the two end points."""
        return torch.stack([self.t_start, self.t_end])

    def start(self, solver, problem, state, y: torch.Tensor, times: torch.Tensor) -> Control:
        """The record of a new solve from y at times[0] (`times` in the solver's variable)."""
        raise NotImplementedError

    def propose(self, control: Control, solver, state, spent: int):
        """The next attempt, (idx, s, s_next) with idx the samples to step (None: all), or None when the solve is
        done. `spent`: the evaluations the solve has made so far, as the problem's counter read them."""
        raise NotImplementedError

    def adapt(self, control: Control, proposal, error, y_next, y):
        """Judge an attempt: True (or a per-sample mask) where it is accepted. `y_next` and `y` scale the tolerance."""
        raise NotImplementedError

    def progress(self, control: Control) -> float:
        """The fraction of the interval done (for the progress bar)."""
        raise NotImplementedError

    def stats(self, control: Control, nfe: int) -> dict[str, Any]:
        """What the solve reports in `SampleResult.stats`."""
        raise NotImplementedError


@dataclass
class Control:
    """The controller's record of one solve: where each sample is, its next step, and the counts."""

    s: torch.Tensor
    end: torch.Tensor
    h: torch.Tensor | None = None
    attempts: int = 0
    index: int = 0
    step: torch.Tensor | None = None
    forced: torch.Tensor | bool = False
    accepted: torch.Tensor | int = 0
    rejected: torch.Tensor | int = 0
    budget_limited: torch.Tensor | int = 0
    h_prev: torch.Tensor | None = None
    ratio_prev: torch.Tensor | None = None
    just_rejected: torch.Tensor | bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _write(control: Control, name: str, idx: torch.Tensor | None, value: torch.Tensor) -> None:
    """control.name = value for the whole batch (idx None), else control.name[idx] = value."""
    if idx is None:
        setattr(control, name, value)
    else:
        getattr(control, name)[idx] = value


class FixedGrid(StepSizeController):
    """Walks the given times (in the sampling time t, strictly monotone), one step per interval, every step
    accepted; an error estimate, if the solver returns one, is ignored."""

    def __init__(self, times: torch.Tensor):
        times = torch.as_tensor(times)
        if times.ndim != 1 or len(times) < 2:
            raise ValueError(f"a fixed grid needs a 1-D tensor of at least two times; got shape {tuple(times.shape)}")
        diffs = times[1:] - times[:-1]
        if not ((diffs < 0).all() or (diffs > 0).all()):
            raise ValueError("a fixed grid's times must be strictly monotone")
        self.grid = times
        self.t_start, self.t_end = times[0], times[-1]

    @property
    def times(self):
        return self.grid

    @property
    def n_steps(self) -> int:
        return len(self.grid) - 1

    steps_label = n_steps

    def start(self, solver, problem, state, y, times):
        return Control(s=times[0], end=times[-1], extra={"times": times})

    def propose(self, control, solver, state, spent):
        i = control.index
        if i == self.n_steps:
            return None
        times = control.extra["times"]
        return None, times[i], times[i + 1]

    def adapt(self, control, proposal, error, y_next, y):
        control.index += 1
        control.attempts += 1
        control.accepted += 1
        control.s = proposal[2]
        return True

    def progress(self, control) -> float:
        return control.index / self.n_steps

    def stats(self, control, nfe: int) -> dict[str, Any]:
        return {}


NORMS = ("rms", "max")
SCALES = ("sum", "max")


class AdaptiveController(StepSizeController):
    """Error control with a mixed tolerance (see the module docstring). The first step: `first_step` in the solver's
    variable (capped at the interval), else `h_init` as a fraction of the interval, else (both None) Hairer's rule,
    which needs a solver whose state holds the drift at the start as `derivative`, and costs one evaluation."""

    def __init__(
        self,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        *,
        norm: str = "rms",
        per_sample: bool = False,
        batch_norm: str = "rms",
        scale: str = "sum",
        safety: float = 0.9,
        factor_min: float = 0.2,
        factor_max: float = 10.0,
        exponent: float | None = None,
        predictive: bool = False,
        hold_after_reject: bool = False,
        h_init: float | None = None,
        first_step: float | None = None,
        stretch: float = 1.0,
        max_nfe: int | None = None,
        max_steps: int = 100_000,
    ):
        if not (rtol >= 0 and atol >= 0 and (rtol > 0 or atol > 0)):
            raise ValueError(f"tolerances must be non-negative and not both zero; got rtol={rtol}, atol={atol}")
        for key, value, choices in (("norm", norm, NORMS), ("batch_norm", batch_norm, NORMS), ("scale", scale, SCALES)):
            if value not in choices:
                raise ValueError(f"{key} must be one of {choices}; got {value!r}")
        if not 0 < factor_min <= 1 <= factor_max:
            raise ValueError(f"need 0 < factor_min <= 1 <= factor_max; got {factor_min}, {factor_max}")
        if not 0 < safety <= 1:
            raise ValueError(f"safety must lie in (0, 1]; got {safety!r}")
        if exponent is not None and not exponent > 0:
            raise ValueError(f"exponent must be positive; got {exponent!r}")
        if h_init is not None and not (isinstance(h_init, (int, float)) and 0 < h_init <= 1):
            raise ValueError(f"h_init is a fraction of the integration interval, in (0, 1]; got {h_init!r}")
        if first_step is not None and not (isinstance(first_step, (int, float)) and first_step > 0):
            raise ValueError(f"first_step (the first step in the solver's variable) must be positive; got {first_step!r}")
        if not 1.0 <= stretch <= 1.5:
            raise ValueError(f"stretch is the factor by which a last step may grow to reach the end, in [1, 1.5]; got {stretch!r}")
        if max_nfe is not None and not (isinstance(max_nfe, int) and not isinstance(max_nfe, bool) and max_nfe > 0):
            raise ValueError(f"max_nfe must be a positive integer or None; got {max_nfe!r}")
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
        self.rtol, self.atol, self.norm, self.per_sample = float(rtol), float(atol), norm, bool(per_sample)
        self.batch_norm, self.scale, self.safety = batch_norm, scale, float(safety)
        self.factor_min, self.factor_max, self.exponent = float(factor_min), float(factor_max), exponent
        self.predictive, self.hold_after_reject = bool(predictive), bool(hold_after_reject)
        self.h_init, self.first_step, self.stretch = h_init, first_step, float(stretch)
        self.max_nfe, self.max_steps = max_nfe, max_steps  # t_start and t_end: set by between()

    def between(self, t_start: torch.Tensor, t_end: torch.Tensor) -> AdaptiveController:
        """A copy of this controller set to run from t_start to t_end."""
        controller = copy.copy(self)
        controller.t_start, controller.t_end = t_start, t_end
        return controller

    # -- the error norm ------------------------------------------------------------------------------------------

    def error_ratio(self, error: torch.Tensor, y_new: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The scaled error norm: one value per sample with `per_sample`, else one for the batch (0-dim)."""
        size = torch.maximum(y_new.abs(), reference.abs())
        scale = self.atol + self.rtol * size if self.scale == "sum" else torch.clamp(self.rtol * size, min=self.atol)
        scaled = (error / scale).reshape(len(error), -1)
        if self.norm == "max":
            per = scaled.abs().amax(dim=1)
            return per if self.per_sample else per.max()
        mean_square = scaled.pow(2).mean(dim=1)
        if self.per_sample:
            return mean_square.sqrt()
        return mean_square.mean().sqrt() if self.batch_norm == "rms" else mean_square.max().sqrt()

    # -- the loop's interface ------------------------------------------------------------------------------------

    def start(self, solver, problem, state, y, times):
        s0, s1 = times[0].to(torch.float64), times[-1].to(torch.float64)
        shape = (len(y),) if self.per_sample else ()
        span = float((s1 - s0).abs())
        control = Control(s=torch.full(shape, float(s0), dtype=torch.float64, device=y.device), end=s1.to(y.device))
        control.extra.update(direction=1.0 if float(s1) > float(s0) else -1.0, span=span, error_order=solver.error_order,
                             time=chart_of(problem).time, name=solver.name or type(solver).__name__)
        if self.first_step is not None:
            h = torch.full(shape, min(self.first_step, span), dtype=torch.float64, device=y.device)
        elif self.h_init is None:
            h = self.hairer_initial_step(problem, state, y, control, solver.error_order)
        else:
            h = torch.full(shape, self.h_init * span, dtype=torch.float64, device=y.device)
        control.h, control.h_prev, control.ratio_prev = h, torch.zeros_like(h), torch.ones_like(h)
        if self.per_sample:
            zeros = torch.zeros(shape, dtype=torch.long, device=y.device)
            control.accepted, control.rejected, control.budget_limited = zeros, zeros.clone(), zeros.clone()
        control.just_rejected = torch.zeros(shape, dtype=torch.bool, device=y.device)
        control.extra["initial_step"] = float(h.mean())
        return control

    def propose(self, control, solver, state, spent):
        active = control.s != control.end
        if not active.any():
            return None
        idx = active.nonzero()[:, 0] if self.per_sample else None
        if control.attempts >= self.max_steps:
            stalled = control.s if idx is None else control.s[idx[0]]
            raise StepSizeError(
                f"{control.extra['name']}: no finish after max_steps={self.max_steps} attempts (stalled near t = "
                f"{self._time(control, stalled):.6g}); loosen rtol/atol, raise max_steps, or give max_nfe"
            )
        s, h = (control.s, control.h) if idx is None else (control.s[idx], control.h[idx])
        remaining = (control.end - s).abs()
        forced = False
        if self.max_nfe is not None:
            cost = solver.attempt_cost(state if idx is None else state.select(idx))
            left = self.max_nfe - spent
            tries = (left - cost) // solver.evaluations_per_step + 1 if left >= cost else 0
            if tries < 1:
                raise StepSizeError(f"{control.extra['name']}: the NFE budget max_nfe={self.max_nfe} is spent before the end")
            floor = remaining / tries
            h = torch.maximum(h, floor)
            forced = h <= floor * (1 + 1e-12)
        last = self.stretch * h >= remaining
        step = torch.where(last, remaining, h)
        s_next = torch.where(last, control.end, s + control.extra["direction"] * step)
        control.step, control.forced = step, forced
        return idx, s, s_next

    def adapt(self, control, proposal, error, y_next, reference):
        idx, s, s_next = proposal
        if error is None:
            raise ValueError("an adaptive controller needs a solver that returns an error estimate")
        step, forced = control.step, control.forced
        ratio = self.error_ratio(error, y_next, reference).to(torch.float64)
        control.attempts += 1
        ok = ratio <= 1.0
        error_order = control.extra["error_order"]
        exponent = self.exponent if self.exponent is not None else 1.0 / (error_order + 1)
        h_next = step * (self.safety * ratio.clamp(min=1e-10) ** (-exponent)).clamp(self.factor_min, self.factor_max)
        rows = ... if idx is None else idx
        if self.predictive:
            h_prev, ratio_prev = control.h_prev[rows], control.ratio_prev[rows]
            predicted = self.predictive_step(step, h_prev, ratio, ratio_prev, error_order)
            h_next = torch.where(ok & (h_prev > 0), torch.minimum(h_next, predicted), h_next)
            _write(control, "h_prev", idx, torch.where(ok, step, h_prev))
            _write(control, "ratio_prev", idx, torch.where(ok, ratio.clamp(min=1e-2), ratio_prev))
        if self.hold_after_reject:
            h_next = torch.where(ok & control.just_rejected[rows], torch.minimum(h_next, step), h_next)
            _write(control, "just_rejected", idx, ~ok)
        accept = ok | forced
        _write(control, "h", idx, h_next)
        if idx is None:  # one step for the batch: the bookkeeping in plain numbers
            accepted = bool(accept)
            control.s = (s_next if accepted else s).to(torch.float64)
            control.accepted += accepted
            control.rejected += not accepted
            control.budget_limited += accepted and not bool(ok)
            if not accepted:
                self.check_underflow(h_next, s, control)
            return accepted
        control.s[idx] = torch.where(accept, s_next.to(torch.float64), s.to(torch.float64))
        control.accepted[idx] += accept.long()
        control.rejected[idx] += (~accept).long()
        control.budget_limited[idx] += (accept & ~ok).long()
        if not accept.all():
            self.check_underflow(h_next[~accept], s[~accept], control)
        return accept

    def progress(self, control) -> float:
        return 1 - float((control.end - control.s).abs().max()) / max(control.extra["span"], 1e-300)

    def stats(self, control, nfe: int) -> dict[str, Any]:
        summary = (lambda v: float(v.double().mean())) if self.per_sample else int
        stats = dict(
            accepted_steps=summary(control.accepted), rejected_steps=summary(control.rejected),
            attempts=control.attempts, nfe=nfe, budget_limited_steps=summary(control.budget_limited),
            initial_step=control.extra["initial_step"],
        )
        if self.per_sample:
            stats.update(accepted_per_sample=control.accepted.cpu(), rejected_per_sample=control.rejected.cpu())
        return stats

    # -- the rules -----------------------------------------------------------------------------------------------

    def predictive_step(self, step, h_prev, ratio, ratio_prev, error_order: float) -> torch.Tensor:
        """Gustafsson's predictive step size (Gustafsson 1994; Hairer & Wanner, Solving ODEs II, IV.8, as in RADAU5):

            h_next = safety h (h / h_prev) (1 / err)^(1/k) (err_prev / err)^(1/k),   k = q + 1,

        which extrapolates the trend of the error between two accepted steps. Used as min(standard, predictive), it
        holds back the growth of the step when the error grows faster than h^k, as it does on the probability flow
        when the solution approaches the data's finer scales; it saves rejected steps there.
        """
        r = ratio.clamp(min=1e-10)
        h = self.safety * step * (step / h_prev) * (ratio_prev / r**2) ** (1 / (error_order + 1))
        return torch.minimum(torch.maximum(h, step * self.factor_min), step * self.factor_max)

    def hairer_initial_step(self, problem, state, y0, control, error_order) -> torch.Tensor:
        """Hairer's starting step (Hairer, Norsett & Wanner, Solving ODEs I, II.4, as in scipy), one evaluation:
        with norms scaled by atol + rtol |y0|, h0 = 0.01 ||y0|| / ||f0||, one Euler step to estimate ||f'||,
        h1 = (0.01 / max(||f0||, ||f'||))^(1/(q+1)), h = min(100 h0, h1, the interval)."""
        f0 = getattr(state, "derivative", None)
        if f0 is None:
            raise ValueError("h_init=None (Hairer's starting step) needs a solver that keeps the drift at the start")
        s0, direction, span = control.s, control.extra["direction"], control.extra["span"]
        shape = s0.shape
        d0 = self.error_ratio(y0, y0, y0).to(torch.float64).expand(shape)
        d1 = self.error_ratio(f0, y0, y0).to(torch.float64).expand(shape)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).clamp(max=span)
        f1 = problem.drift(y0 + direction * append_dims(h0.to(y0.dtype), y0.ndim) * f0, (s0 + direction * h0).to(y0.dtype))
        d2 = self.error_ratio(f1 - f0, y0, y0).to(torch.float64).expand(shape) / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax) ** (1 / (error_order + 1)))
        return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))

    @staticmethod
    def _time(control, s: torch.Tensor) -> float:
        return float(control.extra["time"](s.reshape(-1)[:1].to(torch.float64)).reshape(-1)[0])

    def check_underflow(self, h: torch.Tensor, s: torch.Tensor, control) -> None:
        """Raise StepSizeError when a rejected step has shrunk below what float64 can resolve in the variable."""
        small = h < 64 * torch.finfo(torch.float64).eps * torch.clamp(s.abs().to(torch.float64), min=abs(float(control.end)))
        if small.any():
            i = int(small.reshape(-1).nonzero()[0, 0])
            raise StepSizeError(
                f"{control.extra['name']}: step size underflow at t = {self._time(control, s.reshape(-1)[i:i + 1]):.6g} "
                f"(step {float(h.reshape(-1)[i]):.3g} in the integration variable). The problem is too stiff for the "
                f"tolerances (rtol={self.rtol}, atol={self.atol}) or the score is not smooth there: loosen the "
                "tolerances, stop earlier (larger t_min), or check the score network at that time."
            )

    def __repr__(self):
        return (f"AdaptiveController(rtol={self.rtol}, atol={self.atol}, norm={self.norm!r}, "
                f"per_sample={self.per_sample}, max_nfe={self.max_nfe})")
