"""`autotune`: the deterministic solver, its options and a calibrated grid that do best on one model at one NFE
budget, with what the search cost, cached on disk.

Every candidate (a solver and its options) gets the most steps whose solve plus the final Tweedie step fits in `nfe`
(measured: a probe solve of one draw through the counting wrapper, not a formula per solver). One teacher solve
(`calibration.teacher_solve`) serves all candidates, on a pilot batch and a held-out validation batch. Then two
rounds of `calibration.fit_grid_by_gradient` (successive halving): every candidate gets an equal share of a quarter
of the budget, descending from the best of `calibration.GRADIENT_STARTS`; the `FINALISTS` with the least pilot
error, less those more than `FINALIST_MARGIN` times the best's, share the rest, each from where it stopped; the one
of them with the least pilot error wins. The validation error of the winner on its grid is the one reported. Work
is counted in sample-evaluations (rows x calls, a backward pass counting twice) by a `SampleEvaluationCounter`.

The result is stored as JSON under `cache_dir` (default `$SDE_DIFFUSION_CACHE`, else ~/.cache/sde_diffusion/autotune),
keyed by a fingerprint of the network's weights (an `nn.Module`'s state dict, bytes and all), the SDE (alpha and
sigma at fixed times, and its class), the budget and every setting of the search, so a second call costs nothing
and a changed weight misses the cache. A network that is not an `nn.Module` has no weights to fingerprint: give
`cache_key` (a string that names it) or it is not cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .calibration import GRADIENT_STARTS, check_calibratable, fit_grid_by_gradient, grid_label, teacher_solve
from .counting import counted
from .metrics import relative_error
from .sampling import as_score_model, sample
from .score import ScoreModel
from .sde import SDE, LinearSDE
from .solvers import Solver, get
from .solvers.grids import get_grid

CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3}),
    ("dpm_solver_pp_2m", {}),
    ("dpm_solver_pp_3m", {}),
)
"""The default candidates: the multistep exponential integrators that led the arena at 5-50 NFE."""

FIRST_ROUND = 1 / 4
"""The share of the budget (after the teacher) that the first round splits among the candidates."""
FINALISTS = 2
"""How many candidates the second round refines at most (the best by pilot error after the first)."""
FINALIST_MARGIN = 1.5
"""A candidate goes on to the second round only if its first-round pilot error is within this factor of the best's:
one clearly behind would take half the second round from the likely winner. With a quarter for the first round,
autotune's error against the exhaustive sweep is 1.07-1.43x on the arena's EDM cases over 6 seeds, against
1.01-1.86x over 3 seeds before (benchmarks/README.md, "Cheap calibration and autotune")."""

CACHE_VERSION = 3


@dataclass
class Autotuned:
    """The tuned sampler: `sample(sde, model, t.solver, grid=t.times, denoise=True, **t.options)` spends `nfe`
    evaluations (at most the budget asked for)."""

    solver: str
    options: dict[str, Any]
    times: torch.Tensor
    """The calibrated grid, float64, steps + 1 decreasing times."""
    validation_error: float
    """Relative RMS error against the teacher on the held-out draws, on `times`."""
    cost: int
    """Sample-evaluations the search spent (teacher, probes, fits, validation), counted; the cost of the search
    that made this result, also when it was read from the cache (then this call spent nothing)."""
    nfe: int
    """Evaluations of one sampling call with this solver and grid, the denoising step included (measured)."""
    pilot_error: float = math.nan
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """Per candidate: solver, options, steps, and its pilot error after the first round."""
    wall_time_s: float = 0.0
    fingerprint: str | None = None
    from_cache: bool = False

    @property
    def steps(self) -> int:
        return len(self.times) - 1


def autotune(
    sde: SDE,
    model: ScoreModel | Callable,
    *,
    nfe: int,
    shape: Sequence[int],
    candidates: Sequence[tuple[str, dict[str, Any]]] = CANDIDATES,
    budget: int = 400_000,
    pilot: int = 128,
    validation: int = 128,
    lr: float = 0.2,
    teacher_tol: float = 1e-4,
    t_min: float | None = None,
    t_max: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
) -> Autotuned:
    """The best of `candidates` (deterministic fixed-step solvers, each `(name, options)`) on a grid calibrated to
    `model` for an NFE budget of `nfe` (the final denoising evaluation included), searched with at most `budget`
    sample-evaluations (see the module). `shape` is a batch's shape `(n, ...)`, as in `sample`; only the shape of
    one sample, `shape[1:]`, matters: `pilot` and `validation` prior draws come from `seed`."""
    started = time.perf_counter()
    model = as_score_model(sde, model)
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"autotune calibrates grids in log-SNR and needs a LinearSDE; got {type(sde).__name__}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe is the evaluation budget of one sampling call, a positive integer; got {nfe!r}")
    for name, value in (("budget", budget), ("pilot", pilot), ("validation", validation)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if not candidates:
        raise ValueError("candidates is empty: give at least one (solver name, options) pair")
    engines = []
    for entry in candidates:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise ValueError(f"each candidate is a (solver name, options dict) pair; got {entry!r}")
        engine = get(entry[0], **entry[1])
        check_calibratable(engine)
        engine.problem(sde, model)
        engines.append((engine.name, dict(entry[1]), engine))
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape is a batch's shape (n, ...), as in sample; got {shape} (a 2-D point: shape=(1, 2))")
    sample_shape = shape[1:]
    t_min = sde.default_t_min if t_min is None else float(t_min)
    t_max = sde.T if t_max is None else float(t_max)
    settings = dict(nfe=nfe, shape=list(sample_shape), candidates=[[n, o] for n, o, _ in engines], budget=budget,
                    pilot=pilot, validation=validation, lr=lr, teacher_tol=teacher_tol, t_min=t_min, t_max=t_max,
                    seed=seed, dtype=str(dtype), prediction=model.prediction, version=CACHE_VERSION)
    key = fingerprint(model, sde, settings, cache_key) if cache else None
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key}.json" if key else None
    if key is not None and path is not None and (hit := _read(path, key)) is not None:
        return hit

    model, counter = counted(model)
    probe = sde.prior_sample((1, *sample_shape), torch.Generator().manual_seed(seed), dtype=dtype, device=device)
    plans = []
    for name, options, engine in engines:
        steps = steps_within(sde, model, engine, nfe, probe, t_min, t_max)
        if steps is not None:
            plans.append((name, options, engine, steps))
    if not plans:
        raise ValueError(f"nfe={nfe} is below one calibrated solve of every candidate: the cheapest needs 2 steps "
                         "and the denoising evaluation (3 NFE for a multistep solver); give a larger nfe")

    draws = torch.cat(pilot_draws(sde, sample_shape, pilot, validation, seed, dtype, probe.device))
    with torch.no_grad():
        references = teacher_solve(sde, model, draws, t_min, t_max, True, teacher_tol)
    x_pilot, x_val, ref_pilot, ref_val = draws[:pilot], draws[pilot:], references[:pilot], references[pilot:]

    def descend(plan, starts, share, lr):
        _, _, engine, _ = plan
        fit = fit_grid_by_gradient(sde, model, engine, x_pilot, ref_pilot, starts, t_min, t_max, True,
                                   lambda: counter.total, counter.total + share, lr=lr)
        return fit, plan

    first_share = int((budget - counter.total) * FIRST_ROUND) // len(plans)
    first = [descend(plan, {grid_label(g): get_grid(g)(sde, plan[3], t_min, t_max) for g in GRADIENT_STARTS},
                     first_share, lr) for plan in plans]
    table = [dict(solver=n, options=o, steps=s, pilot_error=f.error, initial_errors=f.initial_errors)
             for f, (n, o, _, s) in first]
    ranked = sorted(first, key=lambda r: r[0].error)
    finalists = [r for r in ranked[:FINALISTS] if r[0].error <= FINALIST_MARGIN * ranked[0][0].error]
    reserve = validation * nfe  # the validation solve of the winner
    second_share = (budget - reserve - counter.total) // len(finalists)
    second = [descend(plan, {"first round": fit.times}, second_share, lr / 2) for fit, plan in finalists]
    final, (name, options, engine, steps) = min(second, key=lambda r: r[0].error)
    with torch.no_grad():
        result = sample(sde, model, engine, x_T=x_val, grid=final.times, denoise=True)
    tuned = Autotuned(name, options, final.times, relative_error(result.x, ref_val), counter.total, result.nfe,
                      final.error, table, time.perf_counter() - started, key)
    if tuned.nfe > nfe:  # steps_within measured the same solve: a solver whose cost depends on the grid
        raise RuntimeError(f"{name} on the tuned grid spends {tuned.nfe} evaluations, over nfe={nfe}")
    if path is not None:
        _write(path, tuned)
    return tuned


def pilot_draws(sde: LinearSDE, sample_shape: Sequence[int], pilot: int, validation: int, seed: int = 0,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pilot, validation): the prior draws `autotune(..., seed=seed)` fits on and judges on, so that other code (a
    sweep of single calibrations, say) can use the very same draws."""
    generator = torch.Generator(device=device or "cpu").manual_seed(seed + 1)
    draws = sde.prior_sample((pilot + validation, *sample_shape), generator, dtype=dtype, device=device)
    return draws[:pilot], draws[pilot:]


def steps_within(sde: LinearSDE, model: ScoreModel, engine: Solver, nfe: int, probe: torch.Tensor, t_min: float,
                 t_max: float) -> int | None:
    """The most steps (at least 2) whose denoised solve of `probe` costs at most `nfe` evaluations, measured by
    bisection over probe solves on the log-SNR grid; None if 2 steps already cost more."""

    def cost(steps: int) -> int:
        with torch.no_grad():
            return sample(sde, model, engine, x_T=probe, steps=steps, grid="log_snr", t_min=t_min, t_max=t_max,
                          denoise=True).nfe

    if nfe < 3 or cost(2) > nfe:
        return None
    lo, hi = 2, nfe - 1  # cost(lo) <= nfe; every step costs at least one evaluation
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= nfe else (lo, mid - 1)
    return lo


def default_cache_dir() -> Path:
    """$SDE_DIFFUSION_CACHE, else ~/.cache/sde_diffusion/autotune."""
    root = os.environ.get("SDE_DIFFUSION_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "sde_diffusion" / "autotune"


def fingerprint(model: ScoreModel, sde: LinearSDE, settings: dict[str, Any], cache_key: str | None = None) -> str | None:
    """sha256 of the network's weights (or `cache_key`), the SDE's alpha and sigma at 33 fixed times and class, and
    `settings`; None when the network is not an `nn.Module` and no `cache_key` names it."""
    digest = hashlib.sha256()
    network = model.network
    if cache_key is not None:
        digest.update(f"key:{cache_key}".encode())
    elif isinstance(network, torch.nn.Module):
        digest.update(f"{type(network).__module__}.{type(network).__qualname__}".encode())
        for name, tensor in network.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        return None
    t = torch.linspace(settings["t_min"], settings["t_max"], 33, dtype=torch.float64)
    digest.update(f"{type(sde).__module__}.{type(sde).__qualname__}".encode())
    digest.update(torch.stack([sde.alpha(t), sde.sigma(t)]).to(torch.float64).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _read(path: Path, key: str) -> Autotuned | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: tune again (and overwrite it)
    if record.get("fingerprint") != key:
        return None
    record["times"] = torch.tensor(record["times"], dtype=torch.float64)
    record["from_cache"] = True
    fields = {f.name for f in dataclasses.fields(Autotuned)}
    return Autotuned(**{k: v for k, v in record.items() if k in fields})


def _write(path: Path, tuned: Autotuned) -> None:
    """Write the record to a temporary file in the same folder, then rename it over `path` (atomic on POSIX), so a
    reader never sees half a file and a crash leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = dataclasses.asdict(tuned) | {"times": tuned.times.tolist(), "from_cache": False}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


@dataclass
class AutoSolver:
    """`solver=auto` in the app (conf/solver/auto.yaml): before sampling, `autotune` the trained model for
    `sample.nfe` evaluations with these settings, then sample with what it chose. `candidates`: a list of
    [solver name, options] pairs, or None for `CANDIDATES`; `cache_dir`: None for `default_cache_dir()`."""

    budget: int = 400_000
    pilot: int = 128
    validation: int = 128
    candidates: list | None = None
    cache_dir: str | None = None
    name = "auto"

    def tune(self, sde: SDE, model: ScoreModel, nfe: int, shape: Sequence[int], seed: int,
             device: torch.device | str | None = None) -> Autotuned:
        """`autotune` with these settings; `shape` is one sample's."""
        candidates = CANDIDATES if self.candidates is None else [(n, dict(o or {})) for n, o in self.candidates]
        return autotune(sde, model, nfe=nfe, shape=(1, *shape), candidates=candidates, budget=self.budget,
                        pilot=self.pilot, validation=self.validation, seed=seed, device=device, cache_dir=self.cache_dir)
