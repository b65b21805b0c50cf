"""The catalogue of bad inputs: one row per (entry point, bad call, expected exception, message fragment).

Each row's call must fail at the boundary with the expected exception type and a message matching the fragment
(which names the argument or config key), raised from inside sde_diffusion (not from torch, numpy, PIL or Hydra).
`classify` sorts an outcome into clear / unclear / silent / hang, so the same table measures any version of the
code (`python -m benchmarks.bad_inputs_census`); `tests/test_bad_inputs.py` asserts that every row is clear.

A new public entry point gets its rows here. CLI rows go through the app in-process: `build(...)` is Hydra's
compose API plus the app's validation and construction (all that runs before training), `main(...)` is the
console entry point itself with its argv, its exit status and stderr.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import sde_diffusion as sd
from sde_diffusion.data import ArrayDataset
from sde_diffusion.networks import MLP, UNet
from sde_diffusion.training import CheckpointError, DSMLoss, Trainer, load_checkpoint

NAN, INF = float("nan"), float("inf")
SRC = Path(sd.__file__).resolve().parent
CONF = SRC / "conf"


@dataclass(frozen=True)
class Row:
    entry: str  # the public entry point
    name: str  # what is wrong
    call: Callable[[], Any]
    error: type | tuple[type, ...]
    match: str  # a regex the message must contain: it names the argument or key


class CLIFailure(Exception):
    """A CLI run that exited non-zero: its status and what it wrote to stderr (the message)."""

    def __init__(self, code: int, stderr: str):
        self.code, self.stderr = code, stderr
        super().__init__(f"exit {code}: {stderr}")


# -- small fixtures (cheap, built on use) -----------------------------------------------------------------------------
VP = sd.VPSDE()
GAUSS = sd.GaussianMixture.gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])


def exact():
    return GAUSS.score_model(VP)


def draw(**kw):
    kw.setdefault("shape", (4, 2))
    solver = kw.pop("solver", "euler")
    kw.setdefault("steps", 4) if not kw.get("grid") else None
    return sd.sample(VP, exact(), solver, **kw)


def nan_below(t_nan: float):
    """The exact Gaussian score, NaN for t <= t_nan (a network that breaks near t_min)."""
    model = exact()
    return sd.ScoreModel(lambda x, t: torch.where((t <= t_nan)[:, None], NAN, model.network(x, t)), VP, "score")


def dataset(n=256):
    return ArrayDataset(torch.randn(n, 2, generator=torch.Generator().manual_seed(0)), name="randn")


def trainer(**kw):
    return Trainer(MLP(2, width=8, depth=1), DSMLoss(VP), dataset(), batch_size=kw.pop("batch_size", 32), progress=False, **kw)


class NaNData(torch.utils.data.Dataset):
    """A map-style data set (no up-front check possible) whose examples are all NaN."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.full((2,), NAN)


def a_file() -> Path:
    path = Path(tempfile.mkdtemp()) / "a_file"
    path.write_text("not a directory")
    return path


def corrupt_checkpoint() -> Path:
    path = Path(tempfile.mkdtemp()) / "step_000000001.pt"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    return path


def pickled_object_checkpoint() -> Path:
    """A file torch.save wrote from a custom class: loading it needs unpickling code, which is refused."""
    path = Path(tempfile.mkdtemp()) / "step_000000001.pt"
    torch.save({"format": "x", "obj": Row("a", "b", print, ValueError, "")}, path)
    return path


def foreign_checkpoint_dir() -> Path:
    """A checkpoint_dir holding a checkpoint of another configuration (lr 1e-3)."""
    directory = Path(tempfile.mkdtemp()) / "ck"
    trainer(checkpoint_dir=directory, lr=1e-3).train(1)
    return directory


def not_npz() -> Path:
    path = Path(tempfile.mkdtemp()) / "samples.npz"
    import pickle

    path.write_bytes(pickle.dumps({"x": 1}))
    return path


class TanhSDE(sd.SDE):
    """dx = -tanh(x) dt + dW: not linear."""

    T = 1.0

    def drift(self, x, t):
        return -torch.tanh(x)

    def diffusion(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float32))

    def prior_sample(self, shape, generator=None, *, dtype=torch.float32, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x):
        return -0.5 * (x**2).flatten(1).sum(1)


# -- the CLI in-process -------------------------------------------------------------------------------------------
TINY = {"train.steps": "3", "train.batch_size": "64", "train.warmup_steps": "0", "train.log_every": "1", "data.n": "300", "sample.n": "20",
        "sample.progress": "false", "solvers.pc.steps": "3", "solvers.pf_ode.rtol": "1e-2", "solvers.pf_ode.atol": "1e-2",
        "evaluate.floor_repeats": "2", "evaluate.projections": "8", "plots": "false", "model.width": "8", "model.depth": "1"}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _overrides(overrides) -> list[str]:
    """The row's overrides after the small defaults that keep a run short (the row's win: same key, dropped)."""
    mine = {_key(o) for o in overrides}
    return [f"{k}={v}" for k, v in TINY.items() if k not in mine and not any(k.startswith(m + ".") for m in mine)] + list(overrides)


def build(*overrides: str):
    """Compose the packaged config with `overrides` (Hydra's compose API) and build it as every job does first:
    validate, then instantiate the SDE, data, network and samplers."""
    from hydra import compose, initialize_config_dir

    from sde_diffusion.app import jobs
    from sde_diffusion.app.config import register

    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=_overrides(overrides))
    return jobs.build(cfg)


def main(*overrides: str, job: str = "run", tiny: bool = True):
    """The entry point `job` of sde_diffusion.app.cli run in-process with `overrides` as its argv; a non-zero exit
    raises CLIFailure with the exit status and stderr."""
    from sde_diffusion.app import cli

    out = Path(tempfile.mkdtemp()) / "run"
    argv = [f"sde-{job}", *(_overrides(overrides) if tiny else overrides), f"hydra.run.dir={out}"]
    old, err = sys.argv, io.StringIO()
    sys.argv = argv
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            getattr(cli, job)()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    if code:
        raise CLIFailure(code, err.getvalue())
    return out


def _cli_rows(entry, runner, table):
    return [Row(entry, name, (lambda o=overrides: runner(*o)), (CLIFailure,) if runner is main else (ValueError,), match)
            for name, overrides, match in table]


# -- the rows ---------------------------------------------------------------------------------------------------------
def _sde_rows():
    f_overflow = lambda t: 200.0 + 0 * t  # noqa: E731  alpha(1) = e^200
    rows = [
        ("beta_min < 0", lambda: sd.VPSDE(beta_min=-1.0), ValueError, "beta_min"),
        ("beta_max = 0", lambda: sd.VPSDE(beta_max=0.0), ValueError, "beta_max"),
        ("beta_max NaN", lambda: sd.VPSDE(beta_max=NAN), ValueError, "beta_max"),
        ("beta_max inf", lambda: sd.VPSDE(beta_max=INF), ValueError, "beta_max"),
        ("beta_max < beta_min", lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0), ValueError, "beta_max"),
        ("beta_max a string", lambda: sd.VPSDE(beta_max="20"), (ValueError, TypeError), "beta_max"),
        ("beta_max a bool", lambda: sd.VPSDE(beta_max=True), (ValueError, TypeError), "beta_max"),
        ("beta_min NaN", lambda: sd.VPSDE(beta_min=NAN), ValueError, "beta_min"),
        ("T = 0", lambda: sd.VPSDE(T=0.0), ValueError, "T"),
        ("T < 0", lambda: sd.VPSDE(T=-1.0), ValueError, "T"),
        ("subvp beta_max < 0", lambda: sd.SubVPSDE(beta_max=-1.0), ValueError, "beta_max"),
        ("ve sigma_min = 0", lambda: sd.VESDE(sigma_min=0.0), ValueError, "sigma_min"),
        ("ve sigma_max < sigma_min", lambda: sd.VESDE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_max"),
        ("ve sigma_max inf", lambda: sd.VESDE(sigma_max=INF), ValueError, "sigma_max"),
        ("ve T NaN", lambda: sd.VESDE(T=NAN), ValueError, "T"),
        ("ou rate = 0", lambda: sd.OUSDE(rate=0.0), ValueError, "rate"),
        ("ou T < 0", lambda: sd.OUSDE(T=-1.0), ValueError, "T"),
        ("ou rate a string", lambda: sd.OUSDE(rate="0.5"), (ValueError, TypeError), "rate"),
        ("cosine T = 1", lambda: sd.CosineVPSDE(T=1.0), ValueError, "T"),
        ("cosine s < 0", lambda: sd.CosineVPSDE(s=-1.0), ValueError, r"\bs\b"),
        ("edm sigma_min = 0", lambda: sd.EDMSDE(sigma_min=0.0), ValueError, "sigma_min"),
        ("edm sigma_max < sigma_min", lambda: sd.EDMSDE(sigma_max=1e-4), ValueError, "sigma_max"),
        ("from_coefficients: alpha(T) overflows", lambda: sd.LinearSDE.from_coefficients(f_overflow, lambda t: 1 + 0 * t), ValueError, r"alpha\(t\)"),
        ("from_coefficients: g not callable", lambda: sd.LinearSDE.from_coefficients(lambda t: -t, 3.0), (TypeError, ValueError), r"\bg\b"),
        ("from_coefficients: f of the wrong shape", lambda: sd.LinearSDE.from_coefficients(lambda t: torch.zeros(3), lambda t: 1 + 0 * t), ValueError, r"f\(t\)"),
        ("from_coefficients: f NaN", lambda: sd.LinearSDE.from_coefficients(lambda t: t * NAN, lambda t: 1 + 0 * t), ValueError, r"f\(t\)"),
        ("from_coefficients: T = 0", lambda: sd.LinearSDE.from_coefficients(lambda t: -t, lambda t: 1 + 0 * t, T=0.0), ValueError, "T"),
        ("from_coefficients: intervals = 0", lambda: sd.LinearSDE.from_coefficients(lambda t: -t, lambda t: 1 + 0 * t, intervals=0), ValueError, "intervals"),
        ("from_coefficients: t_min > T", lambda: sd.LinearSDE.from_coefficients(lambda t: -t, lambda t: 1 + 0 * t, t_min=2.0), ValueError, "t_min"),
        ("from_beta: beta < 0", lambda: sd.LinearSDE.from_beta(lambda t: -1 + 0 * t), ValueError, r"g\(t\)\^2"),
        ("from_beta: not callable", lambda: sd.LinearSDE.from_beta(0.1), (TypeError, ValueError), "beta"),
        ("from_alphas_cumprod: a 2-D table", lambda: sd.LinearSDE.from_alphas_cumprod([[0.9, 0.5]]), ValueError, "alphas_cumprod"),
        ("from_alphas_cumprod: increasing", lambda: sd.LinearSDE.from_alphas_cumprod([0.5, 0.9]), ValueError, "alphas_cumprod"),
        ("rectified flow shift = 0", lambda: sd.RectifiedFlowSDE(shift=0.0), ValueError, "shift"),
        ("rectified flow T > 1", lambda: sd.RectifiedFlowSDE(T=1.5), ValueError, "T"),
    ]
    return [Row("SDE", *r) for r in rows]


def _sample_rows():
    rows = [
        ("unknown solver", lambda: draw(solver="eulr"), ValueError, "unknown solver 'eulr'"),
        ("unknown option", lambda: draw(solver="heun", rtol=1e-3), ValueError, "rtol"),
        ("steps = 0", lambda: draw(steps=0), ValueError, "steps"),
        ("steps < 0", lambda: draw(steps=-3), ValueError, "steps"),
        ("steps = True", lambda: draw(steps=True), (TypeError, ValueError), "steps"),
        ("steps a float", lambda: draw(steps=2.5), (TypeError, ValueError), "steps"),
        ("steps a string", lambda: draw(steps="10"), (TypeError, ValueError), "steps"),
        ("steps = 10**7", lambda: draw(steps=10**7), ValueError, "steps"),
        ("unknown grid", lambda: draw(grid="logsnr"), ValueError, "log_snr"),
        ("grid increasing", lambda: draw(grid=[0.5, 0.7]), ValueError, "decreasing"),
        ("grid with NaN", lambda: draw(grid=[1.0, NAN, 0.1]), ValueError, "grid"),
        ("grid of one time", lambda: draw(grid=[1.0]), ValueError, "grid"),
        ("grid outside [0, T]", lambda: draw(grid=[2.0, 0.5]), ValueError, r"\[0, T\]"),
        ("grid with steps that disagree", lambda: draw(grid=[1.0, 0.5, 0.01], steps=10), ValueError, "steps"),
        ("grid with t_min that disagrees", lambda: draw(grid=[1.0, 0.5, 0.01], t_min=0.1), ValueError, "t_min"),
        ("grid not times", lambda: draw(grid={"a": 1}), (TypeError, ValueError), "grid"),
        ("t_min < 0", lambda: draw(t_min=-1.0), ValueError, "t_min"),
        ("t_min > t_max", lambda: draw(t_min=0.9, t_max=0.5), ValueError, "t_min"),
        ("t_max > T", lambda: draw(t_max=2.0), ValueError, "t_max"),
        ("t_min a string", lambda: draw(t_min="0.1"), (TypeError, ValueError), "t_min"),
        ("t_min NaN", lambda: draw(t_min=NAN), ValueError, "t_min"),
        ("shape and x_T", lambda: draw(x_T=torch.zeros(4, 2)), ValueError, "shape"),
        ("neither shape nor x_T", lambda: draw(shape=None), ValueError, "shape"),
        ("shape with a 0", lambda: draw(shape=(0, 2)), ValueError, "shape"),
        ("shape negative", lambda: draw(shape=(-1, 2)), ValueError, "shape"),
        ("shape a string", lambda: draw(shape="4,2"), (TypeError, ValueError), "shape"),
        ("x_T integer", lambda: draw(shape=None, x_T=torch.zeros(4, 2, dtype=torch.long)), ValueError, "x_T"),
        ("x_T inf", lambda: draw(shape=None, x_T=torch.full((4, 2), INF)), ValueError, "x_T"),
        ("x_T a list", lambda: draw(shape=None, x_T=[[0.0, 0.0]]), (TypeError, ValueError), "x_T"),
        ("dtype integer", lambda: draw(dtype=torch.int64), (TypeError, ValueError), "dtype"),
        ("generator an int", lambda: draw(generator=0), (TypeError, ValueError), "generator"),
        ("denoise a string", lambda: draw(denoise="yes"), (TypeError, ValueError), "denoise"),
        ("denoise on a non-linear SDE", lambda: sd.sample(TanhSDE(), lambda x, t: -x, "euler", shape=(4, 2), steps=3, denoise=True), ValueError, "denoise"),
        ("sde a string", lambda: sd.sample("vp", exact(), "euler", shape=(4, 2)), (TypeError, ValueError), "sde"),
        ("score not callable", lambda: sd.sample(VP, 3.0, "euler", shape=(4, 2)), TypeError, "score"),
        ("score model of another SDE", lambda: sd.sample(sd.VESDE(), exact(), "euler", shape=(4, 2)), ValueError, "sigma_max|type"),
        ("snr a string", lambda: draw(solver="pc", snr="0.1"), (TypeError, ValueError), "snr"),
        ("corrector_steps a float", lambda: draw(solver="pc", corrector_steps=1.5), (TypeError, ValueError), "corrector_steps"),
        ("unknown corrector", lambda: draw(solver="pc", corrector="metropolis"), ValueError, "corrector"),
        ("unknown torchsde method", lambda: draw(solver="torchsde", method="rk4"), ValueError, "method"),
        ("removed option denoise_to_zero", lambda: draw(solver="euler", denoise_to_zero=True), ValueError, "denoise_to_zero"),
        ("options with a built solver", lambda: draw(solver=sd.solvers.get("euler"), rtol=1.0), ValueError, "options"),
        ("dopri5 rtol < 0", lambda: draw(solver="dopri5", rtol=-1.0), ValueError, "rtol"),
        ("dopri5 max_nfe = 0", lambda: draw(solver="dopri5", max_nfe=0), ValueError, "max_nfe"),
        ("dopri5 rtol a string", lambda: draw(solver="dopri5", rtol="1e-3"), (TypeError, ValueError), "rtol"),
        ("ddim eta a string", lambda: draw(solver="ddim", eta="0"), (TypeError, ValueError), "eta"),
        ("edm_heun S_churn a string", lambda: draw(solver="edm_heun", S_churn="1"), (TypeError, ValueError), "S_churn"),
        ("lms order a float", lambda: draw(solver="lms", order=2.0), (TypeError, ValueError), "order"),
        ("scipy method unknown", lambda: draw(solver="scipy", method="RK99"), ValueError, "method"),
        ("a linear-SDE solver on a non-linear SDE", lambda: sd.sample(TanhSDE(), lambda x, t: -x, "ddim", shape=(4, 2), steps=3), ValueError, "LinearSDE"),
        ("NaN score mid-run", lambda: sd.sample(VP, nan_below(0.5), "euler_maruyama", shape=(4, 2), steps=10), sd.NonFiniteError, "step 7 of 10"),
        ("NaN at the final denoise (euler)", lambda: sd.sample(VP, nan_below(1.5e-3), "euler", shape=(4, 2), steps=4, denoise=True), sd.NonFiniteError, "euler: .*final denoising"),
        ("NaN at the last stage (dopri5)", lambda: sd.sample(VP, nan_below(1.5e-3), "dopri5", shape=(4, 2)), sd.NonFiniteError, "dopri5"),
        ("NaN at the last stage (bosh3)", lambda: sd.sample(VP, nan_below(1.5e-3), "bosh3", shape=(4, 2)), sd.NonFiniteError, "bosh3"),
        ("NaN at the last stage (tsit5)", lambda: sd.sample(VP, nan_below(1.5e-3), "tsit5", shape=(4, 2)), sd.NonFiniteError, "tsit5"),
    ]
    return [Row("sample", *r) for r in rows]


def _score_model_rows():
    rows = [
        ("unknown prediction", lambda: sd.ScoreModel(lambda x, t: x, VP, prediction="noise"), ValueError, "prediction"),
        ("network not callable", lambda: sd.ScoreModel(3, VP), TypeError, "network"),
        ("eps model of a non-linear SDE", lambda: sd.ScoreModel(lambda x, t: x, TanhSDE(), prediction="eps"), ValueError, "LinearSDE"),
        ("output of the wrong shape", lambda: sd.ScoreModel(lambda x, t: x[:, :1], VP).eps(torch.zeros(4, 2), 0.5), ValueError, "shape"),
        ("output not a tensor", lambda: sd.ScoreModel(lambda x, t: 0.0, VP).eps(torch.zeros(4, 2), 0.5), ValueError, "float"),
        ("t > T", lambda: exact().score(torch.zeros(4, 2), 1.5), ValueError, r"t must lie in \[0, T\]"),
        ("t < 0", lambda: exact().score(torch.zeros(4, 2), torch.tensor([0.5, -0.1, 0.2, 0.3])), ValueError, "-0.1"),
        ("t of the wrong shape", lambda: exact().score(torch.zeros(4, 2), torch.zeros(3)), ValueError, "t must be a scalar or have shape"),
        ("t NaN", lambda: exact().score(torch.zeros(4, 2), NAN), ValueError, r"\bt\b"),
        ("sde not an SDE", lambda: sd.ScoreModel(lambda x, t: x, "vp"), TypeError, "sde"),
    ]
    return [Row("ScoreModel", *r) for r in rows]


def _mixture_rows():
    GM = sd.GaussianMixture
    rows = [
        ("inf weight", lambda: GM([1.0, INF], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]), ValueError, "weights"),
        ("NaN weight", lambda: GM([1.0, NAN], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]), ValueError, "weights"),
        ("NaN mean", lambda: GM([1.0], [[NAN, 0.0]], [1.0]), ValueError, "means"),
        ("inf covariance", lambda: GM([1.0], [[0.0, 0.0]], [INF]), ValueError, "cov"),
        ("negative weight", lambda: GM([1.0, -1.0], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]), ValueError, "weights"),
        ("weights of the wrong shape", lambda: GM([1.0, 1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0]), ValueError, "weights"),
        ("means 1-D", lambda: GM([1.0], [0.0, 0.0], [1.0]), ValueError, "means"),
        ("covs of the wrong shape", lambda: GM([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]]), ValueError, "covs"),
        ("covariance not symmetric", lambda: GM([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), ValueError, "symmetric"),
        ("covariance not positive definite", lambda: GM([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), ValueError, "positive definite"),
        ("event_shape mismatch", lambda: GM([1.0], [[0.0, 0.0]], [1.0], event_shape=(3,)), ValueError, "event_shape"),
        ("score model of a non-linear SDE", lambda: GAUSS.score_model(TanhSDE()), (TypeError, ValueError), "LinearSDE"),
    ]
    return [Row("GaussianMixture", *r) for r in rows]


def _likelihood_rows():
    lp = sd.likelihood.log_prob
    x = torch.zeros(4, 2, dtype=torch.float64)
    rows = [
        ("x0 integer", lambda: lp(VP, exact(), torch.zeros(4, 2, dtype=torch.long)), ValueError, "x0"),
        ("x0 NaN", lambda: lp(VP, exact(), torch.full((4, 2), NAN)), ValueError, "x0"),
        ("x0 1-D", lambda: lp(VP, exact(), torch.zeros(2)), ValueError, "x0"),
        ("x0 a list", lambda: lp(VP, exact(), [[0.0, 0.0]]), TypeError, "x0"),
        ("eps < 0", lambda: lp(VP, exact(), x, eps=-1.0), ValueError, "eps"),
        ("eps > T", lambda: lp(VP, exact(), x, eps=2.0), ValueError, "eps"),
        ("unknown method", lambda: lp(VP, exact(), x, method="RK99"), ValueError, "method"),
        ("unknown divergence", lambda: lp(VP, exact(), x, divergence="magic"), ValueError, "divergence"),
        ("rtol < 0", lambda: lp(VP, exact(), x, rtol=-1.0), ValueError, "rtol"),
        ("steps = 0", lambda: lp(VP, exact(), x, method="heun", steps=0), ValueError, "steps"),
    ]
    return [Row("likelihood", *r) for r in rows]


def _calibration_rows():
    cg = sd.calibrate_grid
    rows = [
        ("steps = 0", lambda: cg(VP, exact(), "dpm_solver_pp_2m", 0, shape=(8, 2)), ValueError, "steps"),
        ("a stochastic solver", lambda: cg(VP, exact(), "euler_maruyama", 4, shape=(8, 2)), ValueError, "stochastic|deterministic"),
        ("trim = 1", lambda: cg(VP, exact(), "dpm_solver_pp_2m", 4, shape=(8, 2), trim=1.0), ValueError, "trim"),
        ("max_evaluations = 0", lambda: cg(VP, exact(), "dpm_solver_pp_2m", 4, shape=(8, 2), max_evaluations=0), ValueError, "max_evaluations"),
        ("stratify > pool", lambda: cg(VP, exact(), "dpm_solver_pp_2m", 4, shape=(8, 2), stratify=16), ValueError, "stratify"),
        ("unknown initial grid", lambda: cg(VP, exact(), "dpm_solver_pp_2m", 4, shape=(8, 2), initial_grids=("logsnr",)), ValueError, "grid"),
        ("a non-linear SDE", lambda: cg(TanhSDE(), lambda x, t: -x, "dpm_solver_pp_2m", 4, shape=(8, 2)), ValueError, "LinearSDE"),
        ("an adaptive solver", lambda: cg(VP, exact(), "dopri5", 4, shape=(8, 2)), ValueError, "chooses its own steps"),
    ]
    return [Row("calibrate_grid", *r) for r in rows]


def _trainer_rows():
    rows = [
        ("loss not a DSMLoss", lambda: Trainer(MLP(2), lambda *a: 0, dataset(), progress=False), TypeError, "loss"),
        ("precision fp16", lambda: trainer(precision="fp16"), ValueError, "precision"),
        ("lr = 0", lambda: trainer(lr=0.0), ValueError, "lr"),
        ("lr < 0", lambda: trainer(lr=-1.0), ValueError, "lr"),
        ("lr NaN", lambda: trainer(lr=NAN), ValueError, "lr"),
        ("grad_clip < 0", lambda: trainer(grad_clip=-1.0), ValueError, "grad_clip"),
        ("grad_clip NaN", lambda: trainer(grad_clip=NAN), ValueError, "grad_clip"),
        ("batch_size = 0", lambda: trainer(batch_size=0), ValueError, "batch_size"),
        ("batch_size = True", lambda: trainer(batch_size=True), (TypeError, ValueError), "batch_size"),
        ("batch_size > data", lambda: trainer(batch_size=1024), ValueError, "batch_size"),
        ("betas[0] = 1", lambda: trainer(betas=(1.0, 0.999)), ValueError, "betas"),
        ("betas a number", lambda: trainer(betas=0.9), (TypeError, ValueError), "betas"),
        ("weight_decay < 0", lambda: trainer(weight_decay=-1.0), ValueError, "weight_decay"),
        ("warmup_steps < 0", lambda: trainer(warmup_steps=-1), ValueError, "warmup_steps"),
        ("keep_checkpoints = 0", lambda: trainer(keep_checkpoints=0), ValueError, "keep_checkpoints"),
        ("log_every = 0", lambda: trainer(log_every=0), ValueError, "log_every"),
        ("checkpoint_every < 0", lambda: trainer(checkpoint_every=-1), ValueError, "checkpoint_every"),
        ("eval_every without eval_fn", lambda: trainer(eval_every=5), ValueError, "eval_fn"),
        ("ema_decay = 1", lambda: trainer(ema_decay=1.0), ValueError, "decay"),
        ("model not a Module", lambda: Trainer(lambda x, t: x, DSMLoss(VP), dataset(), progress=False), (TypeError, AttributeError), "model"),
        ("checkpoint_dir is a file", lambda: trainer(checkpoint_dir=a_file()), CheckpointError, "checkpoint_dir .* not a directory"),
        ("checkpoint_dir under a file", lambda: trainer(checkpoint_dir=a_file() / "sub"), CheckpointError, "checkpoint_dir"),
        ("checkpoints of another config", lambda: trainer(checkpoint_dir=foreign_checkpoint_dir(), resume=True), CheckpointError, "lr"),
        ("checkpoints without resume", lambda: trainer(checkpoint_dir=foreign_checkpoint_dir(), lr=1e-3), CheckpointError, "resume"),
        ("train(steps < 0)", lambda: trainer().train(-1), ValueError, "steps"),
        ("train(steps a float)", lambda: trainer().train(2.5), (TypeError, ValueError), "steps"),
        ("train(steps below the current step)", lambda: (lambda tr: (tr.train(2), tr.train(1)))(trainer()), ValueError, "already at step 2"),
        ("non-finite loss, on_nonfinite=stop", lambda: Trainer(MLP(2, width=8, depth=1), DSMLoss(VP), NaNData(), batch_size=32, progress=False, on_nonfinite="stop").train(3), FloatingPointError, "step 1.*batch 0 of epoch 0"),
    ]
    rows += [
        ("loss: a non-linear SDE", lambda: DSMLoss(TanhSDE()), TypeError, "LinearSDE"),
        ("loss: unknown prediction", lambda: DSMLoss(VP, prediction="noise"), ValueError, "prediction"),
        ("loss: unknown weighting", lambda: DSMLoss(VP, weighting="uniform2"), ValueError, "weighting"),
        ("loss: t_min < 0", lambda: DSMLoss(VP, t_min=-1.0), ValueError, "t_min"),
        ("loss: unknown reduction", lambda: DSMLoss(VP, reduction="max"), ValueError, "reduction"),
        ("loss: label_dropout > 1", lambda: DSMLoss(VP, label_dropout=1.5), ValueError, "label_dropout"),
        ("checkpoint: missing", lambda: load_checkpoint("/nonexistent/step_000000001.pt"), CheckpointError, "no checkpoint at"),
        ("checkpoint: corrupt", lambda: load_checkpoint(corrupt_checkpoint()), CheckpointError, r"corrupt(?!.*weights_only)"),
        ("checkpoint: pickled code", lambda: load_checkpoint(pickled_object_checkpoint()), CheckpointError, r"^(?!.*weights_only).*step_000000001"),
    ]
    return [Row(r[0].split(":")[0] if r[0].startswith(("loss:", "checkpoint:")) else "Trainer", *r) for r in rows]


def _data_rows():
    from sde_diffusion import data

    rows = [
        ("unknown dataset", lambda: data.get("moons"), ValueError, "dataset 'moons'"),
        ("unknown dataset option", lambda: data.get("checkerboard", size=3), ValueError, "size"),
        ("toy n = 0", lambda: data.get("checkerboard", n=0), ValueError, r"\bn\b"),
        ("toy n a float", lambda: data.get("checkerboard", n=10.5), (TypeError, ValueError), r"\bn\b"),
        ("empty data", lambda: ArrayDataset(torch.zeros(0, 2)), ValueError, "data"),
        ("integer data", lambda: ArrayDataset(torch.zeros(4, 2, dtype=torch.long)), ValueError, "data"),
        ("labels of the wrong shape", lambda: ArrayDataset(torch.zeros(4, 2), labels=torch.zeros(3)), ValueError, "labels"),
        ("data with NaN", lambda: ArrayDataset(torch.full((4, 2), NAN)), ValueError, "NaN"),
        ("mnist root missing", lambda: data.get("mnist", root="/nonexistent/mnist"), FileNotFoundError, "/nonexistent/mnist"),
        ("cifar10 root missing", lambda: data.get("cifar10", root="/nonexistent/cifar"), FileNotFoundError, "/nonexistent/cifar"),
        ("image folder missing", lambda: data.get("image_folder", root="/nonexistent/images"), FileNotFoundError, "/nonexistent/images"),
        ("digits unknown split", lambda: data.get("digits", split="validation"), ValueError, "split"),
        ("digits test_fraction > 1", lambda: data.get("digits", test_fraction=1.5), ValueError, "test_fraction"),
        ("gaussian mixture dim = 0", lambda: data.get("gaussian_mixture", dim=0), ValueError, "dim"),
        ("swiss roll noise < 0", lambda: data.swiss_roll(10, noise=-1.0), ValueError, "noise"),
    ]
    return [Row("data", *r) for r in rows]


def _network_rows():
    rows = [
        ("mlp dim = 0", lambda: MLP(dim=0), ValueError, "dim"),
        ("mlp width < 0", lambda: MLP(width=-1), ValueError, "width"),
        ("mlp depth a float", lambda: MLP(depth=2.5), (TypeError, ValueError), "depth"),
        ("mlp unknown time embedding", lambda: MLP(time_embedding="learned"), ValueError, "time_embedding|embedding"),
        ("mlp dropout > 1", lambda: MLP(dropout=1.5), ValueError, "dropout"),
        ("unet channels = 0", lambda: UNet(channels=0), ValueError, "channels"),
        ("unet groups = 0", lambda: UNet(groups=0), ValueError, "groups"),
        ("unet in_channels = 0", lambda: UNet(in_channels=0), ValueError, "in_channels"),
        ("unet channel_mults empty", lambda: UNet(channel_mults=()), ValueError, "channel_mults"),
        ("unet attention level out of range", lambda: UNet(channel_mults=(1, 2), attention_levels=(5,)), ValueError, "attention_levels"),
    ]
    return [Row("networks", *r) for r in rows]


def _adapter_rows():
    from sde_diffusion import adapters, metrics

    rows = [
        ("adapters", "from_denoiser sigma_min = 0", lambda: adapters.from_denoiser(lambda x, s: x, sigma_min=0.0), ValueError, "sigma_min"),
        ("adapters", "from_denoiser not callable", lambda: adapters.from_denoiser(3.0), TypeError, "denoiser|network"),
        ("adapters", "from_denoiser sigma_max < sigma_min", lambda: adapters.from_denoiser(lambda x, s: x, sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_max"),
        ("adapters", "from_diffusers with an unknown scheduler", lambda: adapters.from_diffusers(lambda x, t: x, object()), (TypeError, ValueError), "scheduler"),
        ("metrics", "sliced_wasserstein of different dims", lambda: metrics.sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3)), ValueError, "shape|dim"),
        ("metrics", "mmd of different dims", lambda: metrics.mmd(torch.zeros(4, 2), torch.zeros(4, 3)), ValueError, "shape|dim"),
        ("metrics", "energy distance of an empty sample", lambda: metrics.energy_distance(torch.zeros(0, 2), torch.zeros(4, 2)), ValueError, "empty|sample"),
    ]
    return [Row(*r) for r in rows]


def _cli_config_rows():
    table = [
        ("unknown top-level key", ["+no_such_key=1"], "no_such_key"),
        ("unknown train key added", ["+train.foo=1"], "train.foo"),
        ("train.steps < 0", ["train.steps=-5"], "train.steps"),
        ("train.batch_size = 0", ["train.batch_size=0"], "train.batch_size"),
        ("train.lr = 0", ["train.lr=0"], "train.lr"),
        ("train.lr NaN", ["train.lr=nan"], "train.lr"),
        ("train.grad_clip < 0", ["train.grad_clip=-1"], "train.grad_clip"),
        ("train.precision fp16", ["train.precision=fp16"], "train.precision"),
        ("train.ema_decay > 1", ["train.ema_decay=1.5"], "train.ema_decay"),
        ("train.keep_checkpoints = 0", ["train.keep_checkpoints=0"], "train.keep_checkpoints"),
        ("train.log_every = 0", ["train.log_every=0"], "train.log_every"),
        ("train.warmup_steps < 0", ["train.warmup_steps=-1"], "train.warmup_steps"),
        ("train.weight_decay < 0", ["train.weight_decay=-0.1"], "train.weight_decay"),
        ("train.checkpoint_every < 0", ["train.checkpoint_every=-1"], "train.checkpoint_every"),
        ("sample.n = 0", ["sample.n=0"], "sample.n"),
        ("sample.steps = 0", ["sample.steps=0"], "sample.steps"),
        ("sample.steps = 10**7", ["sample.steps=10000000"], "sample.steps"),
        ("solvers.pc.steps = 10**7", ["solvers.pc.steps=10000000"], "solvers.pc.steps"),
        ("sample.calibration.pilot = 0", ["sample.calibration.pilot=0"], "sample.calibration.pilot"),
        ("sample.calibration.trim = 1", ["sample.calibration.trim=1.0"], "sample.calibration.trim"),
        ("evaluate.metrics unknown", ["evaluate.metrics=[fid]"], "evaluate.metrics"),
        ("evaluate.projections = 0", ["evaluate.projections=0"], "evaluate.projections"),
        ("evaluate.floor_repeats = 1", ["evaluate.floor_repeats=1"], "evaluate.floor_repeats"),
        ("evaluate.likelihood_n = 0", ["evaluate.likelihood_n=0"], "evaluate.likelihood_n"),
        ("seed < 0", ["seed=-1"], "seed"),
        ("device tpu", ["device=tpu"], "device"),
        ("sde.beta_max a string", ["sde.beta_max=abc"], "sde.beta_max"),
        ("sde.beta_max < 0", ["sde.beta_max=-1"], "sde.*beta_max"),
        ("unknown sde key", ["+sde.beta_mx=3"], "sde.beta_mx"),
        ("unknown data key", ["+data.nn=5"], "data.nn"),
        ("data.n = 0", ["data.n=0"], r"data.*\bn\b"),
        ("model.width a float", ["model.width=1.5"], "model.width"),
        ("model.width = 0", ["model.width=0"], "model.*width"),
        ("solvers.pc.snr a string", ["solvers.pc.snr=abc"], "solvers.pc.snr"),
        ("solvers.pc.steps = 0", ["solvers.pc.steps=0"], "solvers.pc.steps"),
        ("solvers.pc.grid unknown", ["+solvers.pc.grid=logsnr"], "solvers.pc.grid"),
        ("solvers.pc.grid increasing", ["+solvers.pc.grid=[0.1,0.5]"], "solvers.pc.grid"),
        ("solvers.pc.grid with steps that disagree", ["+solvers.pc.grid=[1.0,0.5,0.01]", "solvers.pc.steps=10"], "solvers.pc.grid"),
        ("solvers.pf_ode.rtol < 0", ["solvers.pf_ode.rtol=-1"], "solvers.pf_ode.*rtol"),
        ("solvers.pc.corrector unknown", ["solvers.pc.corrector=metropolis"], "solvers.pc.*corrector"),
        ("unknown solver name", ["solvers.pc.name=eulr"], "solvers.pc.name"),
        ("mnist without its files", ["data=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
    ]
    return _cli_rows("CLI (compose + build)", build, table)


def _cli_main_rows():
    table = [
        ("unknown top-level key", ["+no_such_key=1"], "no_such_key"),
        ("unknown train key", ["train.stepz=5"], "stepz"),
        ("train.steps a string", ["train.steps=abc"], "train.steps"),
        ("train.steps < 0", ["train.steps=-5"], "train.steps"),
        ("train.batch_size = 0", ["train.batch_size=0"], "train.batch_size"),
        ("train.lr = 0", ["train.lr=0"], "train.lr"),
        ("train.grad_clip < 0", ["train.grad_clip=-1"], "train.grad_clip"),
        ("sample.n = 0", ["sample.n=0"], "sample.n"),
        ("sample.steps = 0", ["sample.steps=0"], "sample.steps"),
        ("evaluate.metrics unknown", ["evaluate.metrics=[fid]"], "evaluate.metrics"),
    ]
    rows = _cli_rows("CLI (main)", main, table)
    rows += [
        Row("CLI (main)", "sde-sample without a checkpoint", lambda: main("sample.checkpoint=/nonexistent/run", job="sample"),
            CLIFailure, "no checkpoint at /nonexistent/run"),
        Row("CLI (main)", "sde-evaluate on a file that is not npz", lambda: main(f"evaluate.samples={not_npz()}", job="evaluate"),
            CLIFailure, r"evaluate.samples(?!.*allow_pickle)"),
    ]
    return rows


ROWS: list[Row] = (
    _sde_rows() + _sample_rows() + _score_model_rows() + _mixture_rows() + _likelihood_rows() + _calibration_rows()
    + _trainer_rows() + _data_rows() + _network_rows() + _adapter_rows() + _cli_config_rows() + _cli_main_rows()
)


def warm_up() -> None:
    """Do once, untimed, what the first rows would otherwise pay for: torch.optim's and Hydra's lazy imports. A
    timeout that fired inside an import would leave a half-imported module behind for every later row."""
    trainer().train(1)
    draw()
    build()


# -- classification ---------------------------------------------------------------------------------------------------
class _Timeout(BaseException):
    pass


def _raised_inside_the_library(e: BaseException) -> bool:
    """Whether the innermost frame of e's traceback is sde_diffusion's own code (or this file), not torch / numpy /
    Hydra: an error raised at the boundary, not one that escaped from deep inside a dependency."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return True
    innermost = Path(frames[-1].filename).resolve()
    return SRC in innermost.parents or innermost == Path(__file__).resolve()


def outcome(row: Row, timeout: float = 20.0) -> tuple[str, str]:
    """(clear | unclear | silent | hang, what happened) for one row; `hang` means it ran past `timeout` seconds."""
    def alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        row.call()
    except _Timeout:
        return "hang", f"still running after {timeout:g} s"
    except CLIFailure as e:
        text = e.stderr.strip()
        ok = (isinstance(row.error, tuple) and CLIFailure in row.error) or row.error is CLIFailure
        clear = ok and re.search(row.match, text, re.S) and "Traceback" not in text
        return ("clear" if clear else "unclear"), f"exit {e.code}: {text.splitlines()[-1] if text else ''}"
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        clear = isinstance(e, row.error) and re.search(row.match, str(e), re.S) and _raised_inside_the_library(e)
        return ("clear" if clear else "unclear"), message
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return "silent", "no error"


def row_id(row: Row) -> str:
    return re.sub(r"[^\w.<>=+-]+", "_", f"{row.entry}-{row.name}")

