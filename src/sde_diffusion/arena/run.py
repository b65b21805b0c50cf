"""Running the arena: every contestant at every NFE budget on every (problem, SDE) case, against exact truth.

For a case and a seed, `x_T` is drawn from the exact marginal p_T of the data under the SDE (so the exact reverse
process reaches the data law, and no prior mismatch blurs the comparison), and every contestant starts from that
same `x_T`. Each run is measured by:

- `nfe`: what the `ScoreModel` wrapper counted during the call;
- `traj_err` (deterministic contestants): the relative RMS distance ||x - x_ref|| / ||x_ref|| to the reference
  x_ref = Tweedie's E[x_0 | x_{t_min}] applied to the probability-flow ODE solved from the same x_T by scipy's
  DOP853 at rtol = atol = `reference_tol` in float64 (the exact score makes the reference exact to that tolerance);
  `traj_err_median` the median per-sample distance on the same scale, which the rare sample that ends in another
  mixture component (on gmm-32d one sample in 512 can carry most of the RMS) does not set;
- `sw2`, `mmd`, `energy`: sliced 2-Wasserstein on fixed projections, MMD (fixed Gaussian-kernel bandwidths per
  problem) and energy distance between the n samples and n fresh data samples (one data sample per seed, shared by
  every contestant, so that their differences are paired), each beside its floor: the same distance between that
  data sample and another independent data sample of the same size n, averaged over `floor_repeats` such samples
  (`*_floor_sd`: their standard deviation, the sampling noise of one such distance at this n);
- `time_s`: wall time of the call (`cpu_s`: its CPU time, which other processes on the machine do not inflate);
  `peak_mem_mb`: peak tensor memory (see `measure`), measured once per case and
  contestant in a separate run at its smallest setting (the solvers' state does not grow with the step count).

The row "exact PF-ODE" is the reference itself: the distribution error the best deterministic solver can reach.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Any

import torch

from .. import metrics
from ..metrics import median_relative_error, relative_error
from ..solvers import get as get_solver
from .contestants import Contestant, LineUp, Setting, default_contestants, select
from .measure import peak_memory, wall_time
from .problems import Problem, get_problem, get_sde

BUDGETS = (5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class ArenaConfig:
    """What the arena runs. `full()` is the default run (about 45 minutes on 2 cores, 30 of them calibrating grids),
    `quick()` a 2-minute one."""

    problems: tuple[str, ...] = ("ring-2d", "gmm-32d", "gauss-8d")
    sdes: tuple[str, ...] = ("vp", "subvp", "ve", "ou", "edm")
    budgets: tuple[int, ...] = BUDGETS
    seeds: int = 2
    samples: int = 256
    tolerances: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    projections: int = 128
    floor_repeats: int = 8
    """Independent data samples the floor of each seed averages over (cheap: no solving)."""
    reference_tol: float = 1e-11
    stop_below: float = 1e-4
    """A deterministic contestant stops raising its budget once its mean trajectory error is below this (its
    distribution error is then the exact PF-ODE's: further rows would repeat it)."""
    peers: bool = True
    calibrated: bool = True
    """Run the solvers on calibrated grids too (`contestants.CALIBRATED`): one calibration per solver, EDM case and
    budget up to 20 NFE, up to about 11 min each on one core (off in `quick()`)."""
    solvers: tuple[str, ...] | None = None
    """Labels of the contestants to keep (an entry ending in '*' matches a prefix); None: all."""
    memory: bool = True
    jobs: int = 1
    """Cases run in this many worker processes, one torch thread each."""
    device: str = "cpu"

    @classmethod
    def full(cls, **overrides) -> ArenaConfig:
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> ArenaConfig:
        base = dict(problems=("ring-2d", "gmm-32d"), sdes=("edm", "vp"), budgets=(5, 10, 20, 50, 100), seeds=2,
                    samples=256, tolerances=(1e-2, 1e-3, 1e-4), calibrated=False)
        return cls(**{**base, **overrides})

    def __post_init__(self):
        for name in ("problems", "sdes", "budgets", "tolerances", "solvers"):  # lists (or ListConfigs) from YAML
            value = getattr(self, name)
            if value is not None and not isinstance(value, (tuple, str)):
                setattr(self, name, tuple(value))
        for name in self.problems:
            get_problem(name)
        for name in self.sdes:
            get_sde(name)
        if not self.budgets or any(not isinstance(b, int) or b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive integers; got {self.budgets!r}")
        if self.seeds < 1 or self.samples < 4:
            raise ValueError(f"need seeds >= 1 and samples >= 4; got seeds={self.seeds}, samples={self.samples}")


@dataclass
class Record:
    """One run: a contestant at one setting on one case and seed (metrics are NaN where they do not apply)."""

    problem: str
    sde: str
    label: str
    family: str
    stochastic: bool
    setting: str
    budget: float
    steps: float
    tol: float
    seed: int
    nfe: float
    time_s: float
    cpu_s: float
    peak_mem_mb: float
    traj_err: float
    traj_err_median: float
    sw2: float
    sw2_floor: float
    sw2_floor_sd: float
    mmd: float
    mmd_floor: float
    mmd_floor_sd: float
    energy: float
    energy_floor: float
    energy_floor_sd: float
    samples: int
    data_std: float
    setup_nfe: float = 0.0
    """Evaluations spent once per case and setting before its runs (a grid calibration, on its own pilot batch), not
    counted in `nfe`."""
    error: str = ""


@dataclass
class SeedState:
    """What every contestant of a case shares for one seed."""

    seed: int
    x_T: torch.Tensor
    reference: torch.Tensor | None
    reference_nfe: int
    reference_time: float
    data: torch.Tensor
    floors: dict[str, float]


class Case:
    """A (problem, SDE) pair: its exact model (every contestant's evaluations are counted by this one wrapper), the
    metric constants (fixed projections and MMD bandwidths), and the state each seed shares (`prepare`)."""

    def __init__(self, problem: Problem, sde_name: str, config: ArenaConfig, dtype: torch.dtype = torch.float64):
        self.problem, self.sde_name, self.config, self.dtype = problem, sde_name, config, dtype
        self.sde = get_sde(sde_name)
        self.t_min = self.sde.default_t_min
        self.model = problem.data.score_model(self.sde)
        g = torch.Generator().manual_seed(_stable_seed("projections", problem.name))
        self.projections = metrics.random_projections(problem.dim, config.projections, g)
        self.bandwidths = mmd_bandwidths(problem)
        self.seeds: list[SeedState] = []

    @property
    def name(self) -> str:
        return f"{self.problem.name}/{self.sde_name}"

    def distances(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {
            "sw2": metrics.sliced_wasserstein(x, y, self.projections),
            "mmd": metrics.mmd(x, y, self.bandwidths),
            "energy": metrics.energy_distance(x, y),
        }

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.problem.data.sample(n, generator, dtype=self.dtype)

    def prepare(self, seed: int, reference: bool = True) -> SeedState:
        """x_T from the exact p_T, the reference from it (unless `reference` is False: no deterministic contestant),
        a fresh data sample and the floors at the same size."""
        n = self.config.samples
        g = torch.Generator().manual_seed(_stable_seed("x_T", self.name, seed))
        x_T = self.problem.data.marginal(self.sde, self.sde.T).sample(n, g, dtype=self.dtype)
        reference_model = self.problem.data.score_model(self.sde)
        start = time.perf_counter()
        x0_ref: torch.Tensor | None = None
        if reference:
            scipy = get_solver("scipy", method="DOP853", rtol=self.config.reference_tol, atol=self.config.reference_tol)
            times = torch.tensor([self.sde.T, self.t_min], dtype=self.dtype)
            x_ref = scipy.solve(reference_model, x_T, times).x
            x0_ref = reference_model.x0(x_ref, self.t_min)
        elapsed = time.perf_counter() - start
        gd = torch.Generator().manual_seed(_stable_seed("data", self.name, seed))
        data = self.draw(n, gd)
        repeats = [self.distances(self.draw(n, gd), data) for _ in range(self.config.floor_repeats)]
        floors = {}
        for k in repeats[0]:
            values = torch.tensor([r[k] for r in repeats], dtype=torch.float64)
            floors[k] = float(values.mean())
            floors[k + "_sd"] = float(values.std()) if len(values) > 1 else math.nan
        return SeedState(seed, x_T, x0_ref, reference_model.nfe, elapsed, data, floors)


def _stable_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def mmd_bandwidths(problem: Problem, n: int = 1000) -> tuple[float, ...]:
    """Fixed MMD bandwidths for a problem: (0.5, 1, 2) x the median pairwise distance of a fixed data sample."""
    x = problem.data.sample(n, torch.Generator().manual_seed(_stable_seed("bandwidth", problem.name)))
    median = float(torch.cdist(x, x).flatten().median())
    return tuple(median * s for s in (0.5, 1.0, 2.0))


def _record(case: Case, c: Contestant, setting: Setting, seed: int, **values) -> Record:
    nan = math.nan
    base: dict[str, Any] = dict(
        problem=case.problem.name, sde=case.sde_name, label=c.label, family=c.family, stochastic=c.stochastic,
        setting=setting.describe(), budget=setting.budget if setting.budget is not None else nan,
        steps=setting.steps if setting.steps is not None else nan, tol=setting.tol if setting.tol is not None else nan,
        seed=seed, nfe=nan, time_s=nan, cpu_s=nan, peak_mem_mb=nan, traj_err=nan, traj_err_median=nan, sw2=nan, sw2_floor=nan, sw2_floor_sd=nan,
        mmd=nan, mmd_floor=nan, mmd_floor_sd=nan, energy=nan, energy_floor=nan, energy_floor_sd=nan, samples=case.config.samples, data_std=case.problem.data_std,
    )
    base.update(values)
    return Record(**base)


def run_setting(case: Case, c: Contestant, setting: Setting, state: SeedState) -> tuple[Record, torch.Tensor]:
    """Run one contestant at one setting from the seed's x_T; measure NFE, time and the errors."""
    g = torch.Generator(device=state.x_T.device).manual_seed(_stable_seed(c.label, setting.describe(), state.seed))
    c.prepare(case.sde, case.model, state.x_T, case.t_min, setting)  # one-time work (a calibration), not timed
    before, cpu = case.model.nfe, time.process_time()
    x, elapsed = wall_time(lambda: c.solve(case.sde, case.model, state.x_T, case.t_min, setting, g), case.config.device)
    nfe, cpu = case.model.nfe - before, time.process_time() - cpu
    if not torch.isfinite(x).all():
        raise FloatingPointError("the sample holds NaN or inf")
    d = case.distances(x, state.data)
    values = dict(
        nfe=nfe, time_s=elapsed, cpu_s=cpu, sw2=d["sw2"], mmd=d["mmd"], energy=d["energy"], setup_nfe=c.setup_nfe(setting),
        **{f"{k}_floor": v for k, v in state.floors.items() if not k.endswith("_sd")},
        **{f"{k[:-3]}_floor_sd": v for k, v in state.floors.items() if k.endswith("_sd")},
    )
    if not c.stochastic and state.reference is not None:
        values["traj_err"] = relative_error(x, state.reference)
        values["traj_err_median"] = median_relative_error(x, state.reference)
    return _record(case, c, setting, state.seed, **values), x


def _safe_run(case: Case, c: Contestant, setting: Setting, state: SeedState) -> Record:
    try:
        record = run_setting(case, c, setting, state)[0]
    except Exception as e:  # a failing run is a row that says why, not the end of the arena
        return _record(case, c, setting, state.seed, error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
    if setting.budget is not None and record.nfe > setting.budget:
        record.error = f"spent {record.nfe:.0f} NFE, over the budget of {setting.budget}"
    return record


def run_seeds(case: Case, c: Contestant, setting: Setting, used_steps: set[int]) -> tuple[Setting, list[Record]]:
    """One setting on every seed. The plan measured the cost per step at two step counts; should the first run
    still spend more than its budget (a cost not affine in the steps: torchsde takes an extra step when its dt does
    not divide the interval), the step count is lowered until it fits. Returns the setting run and its rows (none
    if it lands on a step count already run, or if even one step is over the budget)."""
    first = _safe_run(case, c, setting, case.seeds[0])
    while setting.budget is not None and setting.steps is not None and first.nfe > setting.budget and setting.steps > 1:
        # Scale the steps down by the overshoot (at least one step): one or two re-runs, not one per excess NFE.
        steps = min(setting.steps - 1, math.floor(setting.steps * setting.budget / first.nfe))
        if steps < 1:
            break
        setting = replace(setting, steps=steps)
        first = _safe_run(case, c, setting, case.seeds[0])
    if setting.budget is not None and first.nfe > setting.budget:  # even one step is over: the budget is too small
        return setting, []
    if setting.steps is not None:
        if setting.steps in used_steps:
            return setting, []
        used_steps.add(setting.steps)
    return setting, [first] + [_safe_run(case, c, setting, state) for state in case.seeds[1:]]


def run_contestant(case: Case, c: Contestant, log: Callable[[str], None] = lambda s: None) -> list[Record]:
    """Every setting of one contestant on one case, for every seed, with its peak memory measured once."""
    config = case.config
    try:
        settings = c.plan(case.sde, case.model, case.seeds[0].x_T[:2], case.t_min, config.budgets, config.tolerances)
    except Exception as e:  # a solver that cannot run on this SDE at all: one row says why
        return [_record(case, c, Setting(), -1, error=f"plan: {type(e).__name__}: {e}".splitlines()[0][:300])]
    records: list[Record] = []
    used_steps: set[int] = set()
    memory_setting = None
    for setting in settings:
        setting, rows = run_seeds(case, c, setting, used_steps)
        records.extend(rows)
        if memory_setting is None and any(not r.error for r in rows):
            memory_setting = setting
        errors = [r.traj_err for r in rows if not r.error]
        if not c.stochastic and rows and len(errors) == len(rows) and sum(errors) / len(errors) < config.stop_below:
            break
    memory_mb = math.nan
    if config.memory and memory_setting is not None:  # at the cheapest setting that ran: state does not grow with steps
        state, g = case.seeds[0], torch.Generator().manual_seed(0)
        try:
            solve = lambda: c.solve(case.sde, case.model, state.x_T, case.t_min, memory_setting, g)  # noqa: E731
            memory_mb = peak_memory(solve, config.device)[1] / 2**20
        except Exception:  # memory is a side measurement: a failure leaves it NaN
            pass
    for r in records:
        r.peak_mem_mb = memory_mb
    done = [r for r in records if not r.error]
    log(f"  {case.name:16s} {c.label:28s} {len(done):3d}/{len(records):3d} runs ok, NFE {sorted({int(r.nfe) for r in done})}")
    return records


def reference_records(case: Case) -> list[Record]:
    """The "exact PF-ODE" rows: the reference's own distribution error and cost."""

    class _Reference(Contestant):
        label, family = "exact PF-ODE", "reference"

    ref = _Reference()
    setting = Setting(tol=case.config.reference_tol)
    out = []
    for s in case.seeds:
        assert s.reference is not None  # the seeds were prepared with their reference (deterministic contestants)
        d = case.distances(s.reference, s.data)
        out.append(_record(
            case, ref, setting, s.seed, nfe=s.reference_nfe + 1, time_s=s.reference_time, cpu_s=s.reference_time,
            traj_err=0.0, traj_err_median=0.0,
            sw2=d["sw2"], mmd=d["mmd"], energy=d["energy"],
            **{f"{k}_floor": v for k, v in s.floors.items() if not k.endswith("_sd")},
            **{f"{k[:-3]}_floor_sd": v for k, v in s.floors.items() if k.endswith("_sd")},
        ))
    return out


def run_case(
    problem: str | Problem, sde: str, contestants: Sequence[Contestant], config: ArenaConfig,
    log: Callable[[str], None] = lambda s: None,
) -> list[Record]:
    """All contestants on one (problem, SDE) case."""
    problem = get_problem(problem) if isinstance(problem, str) else problem
    case = Case(problem, sde, config)
    start = time.perf_counter()
    deterministic = any(not c.stochastic for c in contestants)
    case.seeds = [case.prepare(seed, reference=deterministic) for seed in range(config.seeds)]
    log(f"{case.name}: data std {problem.data_std:.3g}, reference {time.perf_counter() - start:.1f}s "
        f"({case.seeds[0].reference_nfe} NFE per seed)")
    records = reference_records(case) if deterministic else []
    for c in contestants:
        if c.sdes is None or sde in c.sdes:
            records.extend(run_contestant(case, c, log))
    log(f"{case.name}: done in {time.perf_counter() - start:.0f}s")
    return records


def run_one(problem: str, sde: str, contestant: Contestant, budget: int, seed: int = 0, **options) -> Record:
    """A single run: `contestant` at the largest step count within `budget` NFE on (problem, sde), for one seed."""
    config = ArenaConfig(problems=(problem,), sdes=(sde,), budgets=(budget,), seeds=seed + 1, memory=False, **options)
    case = Case(get_problem(problem), sde, config)
    case.seeds = [case.prepare(seed)]
    settings = contestant.plan(case.sde, case.model, case.seeds[0].x_T[:2], case.t_min, config.budgets, config.tolerances)
    if not settings:
        raise ValueError(f"{contestant.label} cannot run within {budget} NFE")
    return run_setting(case, contestant, settings[-1], case.seeds[0])[0]


def _worker(args) -> list[dict]:
    problem, sde, contestants, config = args
    torch.set_num_threads(1)
    log = lambda s: print(s, flush=True)  # noqa: E731
    return [asdict(r) for r in run_case(problem, sde, contestants, config, log)]


@dataclass
class ArenaResult:
    """Everything a report needs: the records, the config, the contestants, who was skipped, and the runtime."""

    records: list[dict]
    config: ArenaConfig
    contestants: list[dict]
    skipped: list[tuple[str, str]]
    seconds: float


def run_arena(config: ArenaConfig, lineup: LineUp | None = None, log: Callable[[str], None] = print) -> ArenaResult:
    """Run every case of `config`; with `config.jobs > 1` the cases are spread over worker processes."""
    lineup = select(lineup or default_contestants(config.peers, config.calibrated), config.solvers)
    for label, reason in lineup.skipped:
        log(f"skipping {label}: {reason}")
    start = time.perf_counter()
    cases = [(p, s) for p in config.problems for s in config.sdes]
    # The costliest cases first, so that the last worker to finish is not the one that started last.
    cost = {p: get_problem(p).dim for p in config.problems}
    cases.sort(key=lambda ps: -cost[ps[0]])
    jobs = [(p, s, lineup.contestants, config) for p, s in cases]
    if config.jobs > 1:
        with ProcessPoolExecutor(max_workers=config.jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_worker, jobs))
    else:
        results = [[asdict(r) for r in run_case(p, s, cs, cfg, log)] for p, s, cs, cfg in jobs]
    records = [r for rs in results for r in rs]
    described = [dict(label=c.label, family=c.family, stochastic=c.stochastic, what=c.describe()) for c in lineup.contestants]
    return ArenaResult(records, config, described, lineup.skipped, time.perf_counter() - start)


def default_jobs() -> int:
    """Worker processes for this machine: the CPUs torch may use (OMP_NUM_THREADS if set)."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1)
