"""The arena's contestants: every registered solver, a few option and grid variants, and peer libraries.

A contestant turns `x_T` (at the SDE's T) into an estimate of `x_0`: it integrates down to the SDE's `t_min` and
returns Tweedie's denoised `E[x_0 | x_{t_min}]`, the last evaluation of its budget. The peers end the same way
(diffusers' schedulers take their last step to sigma = 0, which returns the data prediction at sigma_min), so
every row of a table starts from the same `x_T`, ends at the same point and is charged the same way.
NFE is never computed: it is what the `ScoreModel` wrapper counted during the call.

How a contestant meets an NFE budget is measured, not assumed: `plan` runs it on two samples at 8 and at 16
steps, reads the NFE each spent, and takes the largest step count whose NFE fits the budget (cost per step and
fixed cost from those two runs; the arena re-checks every real run). A contestant whose NFE does not depend on the
step count chooses its own steps (adaptive): it is run over a range of tolerances when it takes `rtol`/`atol`
(capped by `max_nfe` when it takes one), and once with its defaults otherwise.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import solvers as solver_registry
from ..calibration import calibrate_grid
from ..sampling import sample
from ..score import ScoreModel
from ..sde import LinearSDE
from ..solvers.grids import get_grid


@dataclass(frozen=True)
class Setting:
    """One way to run a contestant: a step count chosen for an NFE budget, or a tolerance (adaptive solvers)."""

    budget: int | None = None
    steps: int | None = None
    tol: float | None = None
    max_nfe: int | None = None

    def describe(self) -> str:
        if self.tol is not None:
            return f"tol={self.tol:g}"
        return f"steps={self.steps}" if self.steps is not None else "default"


class Contestant:
    """Base class: a labelled way of sampling. Subclasses implement `solve` (and `unavailable` if optional)."""

    label: str = ""
    family: str = "ours"
    stochastic: bool = False
    takes_tolerance: bool = False
    takes_max_nfe: bool = False
    probe_steps: tuple[int, int] = (8, 16)
    sdes: tuple[str, ...] | None = None
    """The arena SDEs (by name) this contestant runs on; None: every one."""

    def unavailable(self) -> str | None:
        """Why this contestant cannot run here (a missing optional package), or None."""
        return None

    def solve(
        self, sde: LinearSDE, model: ScoreModel, x_T: torch.Tensor, t_min: float, setting: Setting,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The denoised sample from x_T at sde.T; every score evaluation goes through `model`."""
        raise NotImplementedError

    def prepare(self, sde: LinearSDE, model: ScoreModel, x_T: torch.Tensor, t_min: float, setting: Setting) -> None:
        """One-time work before the timed runs of `setting` (none but for calibrated grids)."""

    def setup_nfe(self, setting: Setting) -> int:
        """Score evaluations `prepare` spent for `setting`, not counted in the runs' NFE."""
        return 0

    def spent(self, sde, model, x, t_min, setting, generator) -> int:
        before = model.nfe
        self.solve(sde, model, x, t_min, setting, generator)
        return model.nfe - before

    def plan(
        self, sde: LinearSDE, model: ScoreModel, x_probe: torch.Tensor, t_min: float, budgets, tolerances
    ) -> list[Setting]:
        """The settings to run: the largest step count within each budget (measured), or a tolerance sweep."""
        g = torch.Generator(device=x_probe.device).manual_seed(0)
        s1, s2 = self.probe_steps
        n1, n2 = (self.spent(sde, model, x_probe, t_min, Setting(steps=s), g) for s in (s1, s2))
        cap = max(budgets)
        if n2 <= n1:  # the grid does not set the cost: the solver picks its own steps
            if self.takes_tolerance:
                return [Setting(tol=tol, max_nfe=cap if self.takes_max_nfe else None) for tol in tolerances]
            return [Setting()]
        per_step = (n2 - n1) / (s2 - s1)
        fixed = n1 - s1 * per_step
        settings, seen = [], set()
        for budget in sorted(budgets):
            steps = math.floor((budget - fixed) / per_step + 1e-9)
            if steps >= 1 and steps not in seen:
                seen.add(steps)
                settings.append(Setting(budget=budget, steps=steps))
        return settings

    def describe(self) -> str:
        return self.label

    def __repr__(self):
        return f"{type(self).__name__}({self.label!r})"


class Ours(Contestant):
    """A solver from the registry (`sde_diffusion.solvers.get(name, **options)`) through `sample(..., denoise=True)`.

    `grid` names the time grid (None: the solver's default, else the SDE's).
    """

    def __init__(self, label: str, name: str, options: dict[str, Any] | None = None, grid: str | None = None, family: str = "ours"):
        self.label, self.name, self.options, self.grid, self.family = label, name, dict(options or {}), grid, family
        solver = solver_registry.get(name, **self.options)  # fails early, with the valid options, on a typo
        self.stochastic = bool(solver.stochastic)
        params = inspect.signature(type(solver).__init__).parameters
        self.takes_tolerance = "rtol" in params and "atol" in params
        self.takes_max_nfe = "max_nfe" in params
        if grid is not None:
            get_grid(grid)

    def solve(self, sde, model, x_T, t_min, setting, generator):
        options = dict(self.options)
        if setting.tol is not None:
            options.update(rtol=setting.tol, atol=setting.tol)
        if setting.max_nfe is not None:
            options["max_nfe"] = setting.max_nfe - 1  # the final denoising evaluation is the last of the budget
        result = sample(
            sde, model, self.name, x_T=x_T, steps=setting.steps, grid=self.grid, t_min=t_min, denoise=True,
            generator=generator, **options,
        )
        return result.x

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})" + (f" on the {self.grid} grid" if self.grid else "")


class Calibrated(Contestant):
    """A registered deterministic solver on a grid calibrated to the case's model for each step count
    (`sde_diffusion.calibration.calibrate_grid`), fitted on `pilot` draws stratified from `pool` prior draws that
    share nothing with the arena's seeds (their own generator), against DOP853 at 1e-9. `pool=None` fits on `pilot`
    plain draws.

    The calibration is a one-time cost per (model, steps), made through a second wrapper of the same network, so a
    row's NFE is what sampling on the grid costs, as for any other grid; what the calibrations spent is kept in
    `calibration_nfe` (batched score evaluations: the pilot batch's, and the screening of its pool). To keep the
    full arena short (a calibration takes up to about 11 min on one core here), it runs only at budgets up to
    `max_budget` and on the SDEs `sdes` (the EDM range of the fast-solver claim). `max_evaluations` is the library's
    default: with 400 the search stops short of converging, and on gmm-32d / EDM at 10 NFE the grid's trajectory
    error pooled over 6 x 8192 draws is 0.058 against 0.037 with 1500 (`benchmarks/calibrated_vs_peers.py`).
    """

    def __init__(self, label: str, name: str, options: dict[str, Any] | None = None, pilot: int = 2048,
                 pool: int | None = 16384, max_evaluations: int = 1500, max_budget: int = 20,
                 sdes: tuple[str, ...] | None = ("edm",)):
        self.label, self.name, self.options, self.sdes = label, name, dict(options or {}), sdes
        self.inner = Ours(label, name, options)
        if self.inner.stochastic:
            raise ValueError(f"{name!r} is stochastic: only deterministic solvers have a calibrated grid")
        if pool is not None and pool < pilot:
            raise ValueError(f"the pool the pilot batch is stratified from must hold at least pilot={pilot} draws; got {pool}")
        self.pilot, self.pool, self.max_evaluations, self.max_budget = pilot, pool, max_evaluations, max_budget
        self.grids: dict[int, tuple[ScoreModel, dict[int, torch.Tensor]]] = {}  # id(model) -> (model, {steps: times})
        self.calibration_nfe: dict[int, int] = {}  # steps -> evaluations, for the case (model) calibrated last

    def __getstate__(self):
        return {**self.__dict__, "grids": {}}  # the grids belong to this process's models

    def plan(self, sde, model, x_probe, t_min, budgets, tolerances):
        """The inner solver's plan (its cost per step does not depend on the grid), up to `max_budget`."""
        return self.inner.plan(sde, model, x_probe, t_min, [b for b in budgets if b <= self.max_budget], tolerances)

    def grid(self, sde: LinearSDE, model: ScoreModel, t_min: float, steps: int, like: torch.Tensor) -> torch.Tensor:
        grids = self.grids.setdefault(id(model), (model, {}))[1]  # the model is kept, so its id is not reused
        if steps not in grids:
            g = torch.Generator(device=like.device).manual_seed(20261130 + steps)
            calibration = calibrate_grid(
                sde, ScoreModel(model.network, sde, model.prediction), self.name, steps, t_min=t_min,
                shape=(self.pool or self.pilot, *like.shape[1:]), stratify=self.pilot if self.pool else None,
                generator=g, dtype=like.dtype, device=like.device, method="powell", max_evaluations=self.max_evaluations,
                validation=0, **self.options,  # the arena judges the grid on its own draws
            )
            grids[steps] = calibration.times
            self.calibration_nfe[steps] = calibration.nfe
        return grids[steps]

    def prepare(self, sde, model, x_T, t_min, setting):
        self.grid(sde, model, t_min, setting.steps, x_T)

    def setup_nfe(self, setting: Setting) -> int:
        """The calibration's batched evaluations for this step count (pilot batch and pool screening)."""
        return self.calibration_nfe.get(setting.steps, 0) if setting.steps is not None else 0

    def solve(self, sde, model, x_T, t_min, setting, generator):
        times = self.grid(sde, model, t_min, setting.steps, x_T)
        return sample(sde, model, self.name, x_T=x_T, grid=times, denoise=True, generator=generator, **self.options).x

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        pilot = f"{self.pilot} pilot draws" + (f" stratified from {self.pool}" if self.pool else "")
        return f"{self.name}({opts}) on a grid calibrated per step count ({pilot}, <= {self.max_evaluations} solves per initial grid)"


# -- diffusers' schedulers, driven with the exact model ----------------------------------------------------------


def discrete_table(sde: LinearSDE, t_min: float, n: int = 1000) -> torch.Tensor:
    """alpha_bar_i = sigmoid(2 lambda(t_i)) (the VP process with the same log-SNR) at n times from t_min (i = 0) to T
    (i = n - 1) on the SDE's own default grid: the discrete table a diffusers scheduler is built on, in float64."""
    times = get_grid(sde.default_grid)(sde, n - 1, t_min).flip(0)
    return torch.sigmoid(2 * sde.log_snr(times)).to(torch.float64)


def sigma_tilde(sde: LinearSDE, t: float) -> float:
    """sigma / alpha = exp(-lambda): the noise level of the EDM/VE parameterisation at time t."""
    return float(torch.exp(-sde.log_snr(torch.tensor(float(t), dtype=torch.float64))))


def exact_eps(model: ScoreModel, x_vp: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise prediction at noise level `sigma` (= sigma / alpha) for x in the VP parameterisation
    x_vp = (x0 + sigma eps) / sqrt(1 + sigma^2), from the exact model of any linear SDE.

    The time with that log-SNR is t = t_of_log_snr(-log sigma); there x = sqrt(alpha_t^2 + sigma_t^2) x_vp and eps is
    unchanged by the rescaling. One evaluation of `model`, counted by its wrapper.
    """
    sde = model.sde
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"exact_eps needs a model of a LinearSDE (alpha, sigma, t_of_log_snr); got {type(sde).__name__}")
    lam = -torch.log(torch.tensor(float(sigma), dtype=torch.float64))
    t = sde.t_of_log_snr(lam).to(torch.float64).clamp(0.0, sde.T)
    scale = float(torch.sqrt(sde.alpha(t) ** 2 + sde.sigma(t) ** 2))
    return model.eps(x_vp * scale, t.to(x_vp.dtype))


class Diffusers(Contestant):
    """A diffusers scheduler (`set_timesteps` / `step`) on the SDE's discrete table, with the exact noise prediction.

    The scheduler is built on `discrete_table(sde, t_min)` (1000 entries from t_min to T); diffusers casts the betas
    to float32, which moves the table's end points (sigma_min by ~1%), so the exact float64 `alphas_cumprod` is
    set back before `set_timesteps`, and its sigma range is checked against the SDE's. At every model call the
    scheduler's own sigma for that call is read back and the exact eps at that sigma is returned, so the timestep
    rounding of diffusers' discrete interface plays no part. `space`: "vp" when the scheduler's sample is
    x0 + sigma eps scaled by 1 / sqrt(1 + sigma^2) (DPM-Solver, UniPC, DDIM), "ve" when it is x0 + sigma eps
    (Euler, Heun, which scale the model input themselves). diffusers computes each step in float32.
    """

    family = "diffusers"
    stochastic = False

    def __init__(self, label: str, scheduler: str, config: dict[str, Any] | None = None, space: str = "vp", check_range: bool = True):
        if space not in ("vp", "ve"):
            raise ValueError(f"space must be 'vp' or 've'; got {space!r}")
        self.label, self.scheduler, self.config, self.space = label, scheduler, dict(config or {}), space
        self.check_range = check_range

    def unavailable(self):
        try:
            import diffusers  # noqa: F401
        except ImportError:
            return "diffusers is not installed (pip install 'sde_diffusion[peers]')"
        return None

    def build(self, sde: LinearSDE, t_min: float):
        import diffusers

        table = discrete_table(sde, t_min)
        betas = 1 - table / torch.cat([torch.ones(1, dtype=torch.float64), table[:-1]])
        cls = getattr(diffusers, self.scheduler)
        scheduler = cls(num_train_timesteps=len(table), trained_betas=betas.tolist(), prediction_type="epsilon", **self.config)
        scheduler.alphas_cumprod = table.clone()
        return scheduler

    @staticmethod
    def current_sigma(scheduler, timestep) -> float:
        if hasattr(scheduler, "sigmas"):
            index = scheduler.step_index if scheduler.step_index is not None else 0
            return float(scheduler.sigmas[index])
        alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])  # DDIM: the table entry at the timestep
        return math.sqrt((1 - alpha_bar) / alpha_bar)

    def _check_range(self, scheduler, sde: LinearSDE, t_min: float) -> None:
        sigmas = scheduler.sigmas.to(torch.float64)
        first, last = float(sigmas[0]), float(sigmas[sigmas > 0][-1])
        want_first, want_last = sigma_tilde(sde, sde.T), sigma_tilde(sde, t_min)
        if abs(first / want_first - 1) > 1e-5 or abs(last / want_last - 1) > 1e-5:
            raise RuntimeError(
                f"{self.label}: the scheduler runs from sigma {first:.6g} to {last:.6g}, "
                f"not the SDE's {want_first:.6g} to {want_last:.6g}"
            )

    def solve(self, sde, model, x_T, t_min, setting, generator):
        with warnings.catch_warnings():  # numpy 2's notice about diffusers' np.array(tensor) calls
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._solve(sde, model, x_T, t_min, setting)

    def _solve(self, sde, model, x_T, t_min, setting):
        scheduler = self.build(sde, t_min)
        scheduler.set_timesteps(setting.steps)
        if self.check_range and hasattr(scheduler, "sigmas"):
            self._check_range(scheduler, sde, t_min)
        T = torch.tensor(sde.T, dtype=torch.float64)
        alpha_T, sigma_T = float(sde.alpha(T)), float(sde.sigma(T))
        x = x_T / (math.hypot(alpha_T, sigma_T) if self.space == "vp" else alpha_T)
        for timestep in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, timestep)
            eps = exact_eps(model, model_input, self.current_sigma(scheduler, timestep))
            x = scheduler.step(eps, timestep, x).prev_sample
        return x.to(x_T.dtype)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"diffusers.{self.scheduler}({opts})"


# -- the default line-up -----------------------------------------------------------------------------------------

PEER_SOLVERS = ("torchsde", "scipy")
"""Registered solvers that wrap another library's integrator: they are listed as peers, under the library's name."""

VARIANTS: list[tuple[str, str, dict, str | None]] = [
    # (label, registered name, options, grid): option and grid variants worth a row of their own. (DDIM with
    # eta = 1 is ancestral sampling, and DPM-Solver-1 is DDIM: both already have rows.)
    ("unipc(order=3)", "unipc", {"order": 3}, None),
    ("dpm_solver_pp_2m@edm", "dpm_solver_pp_2m", {}, "edm"),  # "DPM++ 2M Karras" (diffusers' below 15 steps with count_denoise)
    ("unipc@edm", "unipc", {}, "edm"),
    ("unipc(count_denoise=True)", "unipc", {"count_denoise": True}, None),  # diffusers' lower_order_final convention
    ("dpm_solver_pp_2m(count_denoise=True)", "dpm_solver_pp_2m", {"count_denoise": True}, None),
    ("edm_heun(S_churn=40)", "edm_heun", {"S_churn": 40.0}, None),
]

CALIBRATED: list[tuple[str, str, dict]] = [
    # (label, registered name, options): solvers that also run on a grid calibrated to the case's model
    ("unipc@calibrated", "unipc", {}),
    ("unipc(order=3)@calibrated", "unipc", {"order": 3}),
]

LIBRARY_PEERS: list[tuple[str, str, dict, str | None, str]] = [
    # (label, registered name, options, grid, library)
    ("torchsde:euler", "torchsde", {"method": "euler"}, None, "torchsde"),
    ("torchsde:srk", "torchsde", {"method": "srk"}, None, "torchsde"),
    ("scipy:RK45", "scipy", {"method": "RK45"}, None, "scipy"),
]

_KARRAS = {"use_karras_sigmas": True}
DIFFUSERS_PEERS: list[tuple[str, str, dict, str]] = [
    # (label, scheduler class, config, space)
    ("diffusers:dpm++2m-karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, **_KARRAS}, "vp"),
    ("diffusers:dpm++3m-karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3, **_KARRAS}, "vp"),
    ("diffusers:dpm++2m-logsnr", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_lu_lambdas": True}, "vp"),
    ("diffusers:unipc-karras", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", **_KARRAS}, "vp"),
    ("diffusers:euler-karras", "EulerDiscreteScheduler", dict(_KARRAS), "ve"),
    ("diffusers:heun-karras", "HeunDiscreteScheduler", dict(_KARRAS), "ve"),
    ("diffusers:ddim-trailing", "DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False}, "vp"),
]
"""diffusers' schedulers in their recommended few-step configurations. DDIM has no Karras option: it runs on the
table (the SDE's default grid) with "trailing" spacing, the only spacing whose steps chain consistently, and its last
model call is at table entry 1000 / N - 1, above sigma_min."""


def _accepts(name: str, options: dict) -> bool:
    params = inspect.signature(solver_registry.SOLVERS[name].__init__).parameters
    return all(k in params for k in options)


@dataclass
class LineUp:
    """The contestants of a run, with those left out and why."""

    contestants: list[Contestant]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def default_contestants(peers: bool = True, calibrated: bool = True) -> LineUp:
    """Every registered solver with its defaults (new solvers join without code changes), the variants above whose
    solver is registered, with `calibrated` the solvers on calibrated grids, and, with `peers`, torchsde, scipy and
    diffusers (skipped with a reason if not installed)."""
    names = solver_registry.names()
    contestants: list[Contestant] = [Ours(name, name) for name in names if name not in PEER_SOLVERS]
    for label, name, options, grid in VARIANTS:
        if name in names and _accepts(name, options):
            contestants.append(Ours(label, name, options, grid))
    if calibrated:
        contestants += [Calibrated(label, name, options) for label, name, options in CALIBRATED if name in names]
    skipped = []
    if peers:
        for label, name, options, grid, library in LIBRARY_PEERS:
            if name in names:
                contestants.append(Ours(label, name, options, grid, family=library))
        for label, scheduler, config, space in DIFFUSERS_PEERS:
            peer = Diffusers(label, scheduler, config, space)
            reason = peer.unavailable()
            if reason:
                skipped.append((label, reason))
            else:
                contestants.append(peer)
    return LineUp(contestants, skipped)


def select(lineup: LineUp, labels: list[str] | tuple[str, ...] | None) -> LineUp:
    """Keep the contestants whose label is in `labels` (or starts with an entry ending in '*'); None keeps all."""
    if not labels:
        return lineup

    def wanted(label: str) -> bool:
        return any(label == w or (w.endswith("*") and label.startswith(w[:-1])) for w in labels)

    known = [c.label for c in lineup.contestants] + [label for label, _ in lineup.skipped]
    unknown = [w for w in labels if not any(label == w or (w.endswith("*") and label.startswith(w[:-1])) for label in known)]
    if unknown:
        raise ValueError(f"no contestant matches {unknown}; known contestants: {known}")
    return LineUp([c for c in lineup.contestants if wanted(c.label)], [s for s in lineup.skipped if wanted(s[0])])
