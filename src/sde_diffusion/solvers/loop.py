"""The one integration loop: a solver's steps over the times a controller chooses (diffrax's `diffeqsolve`).

It owns what every solve shares: the change to the solver's variable and back (the problem's chart), accepting or
rejecting each attempt as the controller says (continuing from the state passed in after a rejection), stepping
only the samples still running when the controller gives each sample its own step, the finiteness check that names
the step and the time, the trajectory, the progress bar, the statistics (one set of keys for every adaptive solve)
and the NFE, read off the problem's counter (the score model's wrapper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..noise import SeededNoise, select_noise
from .control import StepSizeController
from .problems import chart_of

if TYPE_CHECKING:
    from .base import Solver


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the state while sampling."""


@dataclass
class SampleResult:
    """What a solve returns: the sample, the NFE the wrapper counted, the times visited, optional trajectory."""

    x: torch.Tensor
    nfe: int
    times: torch.Tensor
    trajectory: list[torch.Tensor] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def check_finite(x: torch.Tensor, solver: Solver, step: int, of: int | str, t, t_next, what: str = "state") -> None:
    """Raise NonFiniteError naming the step and times when x holds NaN or inf (`what`: "state" or "error estimate",
    the latter raised whatever x holds)."""
    if what != "state" or not torch.isfinite(x).all():
        raise NonFiniteError(
            f"{solver.name or type(solver).__name__}: NaN or inf {'in the error estimate ' if what != 'state' else ''}after step {step} of {of} "
            f"(t = {float(t):.6g} -> {float(t_next):.6g}). Check the score network's output at that time, "
            "use more steps, or stop earlier (a larger t_min)."
        )


def integrate(
    solver: Solver,
    problem,
    x: torch.Tensor,
    controller: StepSizeController,
    generator: torch.Generator | SeededNoise | None = None,
    *,
    keep_trajectory: bool = False,
    progress: bool = False,
) -> SampleResult:
    """Integrate `problem` (what `solver.problem` built, or any term for a solver of terms) from x at
    `controller.t_start` to `controller.t_end`. `result.nfe` is what `problem.nfe` counted (0 if it counts nothing)."""
    chart, counter = chart_of(problem), (lambda: getattr(problem, "nfe", 0))
    nfe_start, t_start, t_end = counter(), controller.t_start, controller.t_end
    times = chart.variable(controller.times)
    y = chart.state(x, t_start)
    state = solver.init(problem, y, times)
    control = controller.start(solver, problem, state, y, times)
    per_sample = controller.per_sample
    trajectory, visited = ([x] if keep_trajectory else None), [times[0]]
    sample_evaluations = torch.full((len(x),), counter() - nfe_start, dtype=torch.long, device=x.device)
    bar = _progress_bar(progress, solver.name or type(solver).__name__, controller.steps_label)
    while (proposal := controller.propose(control, solver, state, counter() - nfe_start)) is not None:
        idx, s, s_next = proposal
        if not torch.isfinite(s_next).all():  # the controller's step came from a NaN error or first-step probe
            raise NonFiniteError(
                f"{solver.name or type(solver).__name__}: the step size is NaN before step {control.attempts + 1} "
                f"(from t = {float(chart.time(s if s.ndim == 0 else s[0])):.6g}): the score network gave NaN or inf "
                "where the step-size controller probed it; check its output near t_min, or stop earlier (a larger t_min)")
        y_part, state_part = (y, state) if idx is None else (y[idx], state.select(idx))
        before = counter()
        y_next, error, state_next = solver.step(problem, y_part, s, s_next, state_part, select_noise(generator, idx))
        if not torch.isfinite(y_next).all() or (error is not None and not torch.isfinite(error).all()):
            t, t_next = (chart.time(v if v.ndim == 0 else v[0]) for v in (s, s_next))
            # a NaN error estimate (an embedded pair's last stage) would otherwise turn into a NaN step size
            check_finite(y_next, solver, control.attempts + 1,
                         controller.steps_label, t, t_next, what="state" if not torch.isfinite(y_next).all() else "error estimate")
        accepted = controller.adapt(control, proposal, error, *solver.error_scale(y_part, y_next, state_part, state_next))
        if idx is None:
            if bool(accepted):
                y, state = y_next, state_next
                visited.append(s_next)
                if trajectory is not None:
                    trajectory.append(chart.sample(y, s_next))
            else:
                state = state_part
        else:
            sample_evaluations[idx] += counter() - before
            y = y.clone()
            y[idx[accepted]] = y_next[accepted]
            state = state.merge(idx, state_next.where(accepted, state_part))
        if progress:
            bar(controller.progress(control))
    bar(None)
    x = chart.sample(y, times[-1], t_end)
    nfe = counter() - nfe_start
    stats = {**controller.stats(control, nfe), **(state.stats() if hasattr(state, "stats") else {})}
    if per_sample:  # the samples visited different times: only the ends are common
        out_times = controller.times
        stats["evaluations_per_sample"] = float(sample_evaluations.double().mean())
    else:
        out_times = chart.time(torch.stack([v.to(times.dtype) for v in visited]))
        out_times[0], out_times[-1] = t_start, t_end
    if trajectory is not None:  # its last entry is exactly the result
        trajectory[len(trajectory) - 1 if len(trajectory) > 1 else 1:] = [x]
    return SampleResult(x, nfe, out_times, trajectory, stats)


def _progress_bar(enabled: bool, name: str, steps: int | str):
    """A callable taking the fraction done (None closes it); a no-op unless enabled. It counts the steps of a fixed
    grid, and per mille of the interval for an adaptive solve."""
    if not enabled:
        return lambda fraction: None
    from ..progress import progress_bar

    total = steps if isinstance(steps, int) else 1000
    bar = progress_bar(total, name, "step" if isinstance(steps, int) else "‰", leave=False)

    def update(fraction):
        if fraction is None:
            bar.close()
        else:
            bar.update(max(0, round(total * fraction) - bar.n))

    return update
