"""The Hydra application: every config composes and builds; the main job, sampling from a checkpoint, evaluation,
likelihood and a two-solver sweep write their files; bad input fails at start with a clear message and a
non-zero exit. Tiny overrides keep the file fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import sde_diffusion
from sde_diffusion.app import jobs
from sde_diffusion.app.config import ConfigError, register, validate
from sde_diffusion.app.gather import gather
from sde_diffusion.sde import LinearSDE
from sde_diffusion.solvers import Solver

CONF = Path(sde_diffusion.__file__).resolve().parent / "conf"
SRC = Path(sde_diffusion.__file__).resolve().parent.parent
register()

# A main job in seconds: a small MLP, few steps, few samples.
TINY = [
    "train.steps=20", "train.warmup_steps=0", "train.log_every=5", "model.width=32", "model.depth=1", "data.n=2000",
    "sample.n=200", "sample.progress=false", "solvers.pc.steps=10", "solvers.pf_ode.rtol=1e-3", "solvers.pf_ode.atol=1e-3",
    "evaluate.floor_repeats=2", "evaluate.projections=32",
]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# -- every config composes and instantiates --------------------------------------------------------------------------
def test_conf_is_packaged_and_linked():
    assert (CONF / "config.yaml").is_file()
    top = SRC.parent / "conf"
    assert top.is_symlink() and top.resolve() == CONF


@pytest.mark.parametrize("name", options("sde"))
def test_every_sde_builds(name):
    sde = instantiate(validate(cfg_of(f"sde={name}"))["sde"])
    assert isinstance(sde, LinearSDE) and sde.T > 0


@pytest.mark.parametrize("name", options("solver"))
def test_every_solver_builds(name):
    auto = name == "auto"  # solver=auto is tuned to the trained model for sample.nfe (tests/test_autotune.py)
    built = jobs.build(cfg_of(f"solver@solvers.pc={name}", "data.n=10", *(["sample.nfe=10"] if auto else [])))
    kind = sde_diffusion.autotuning.AutoSolver if auto else Solver
    assert isinstance(built.samplers["pc"].solver, kind) and built.samplers["pc"].solver.name == name


def test_the_network_is_initialised_from_the_seed():
    weights = [[p.detach().clone() for p in jobs.build(cfg_of("data.n=10", f"seed={s}")).network.parameters()] for s in (0, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[2], strict=True))


@pytest.mark.parametrize("name", [n for n in options("data") if n not in ("mnist", "cifar10", "image_folder")])
def test_every_builtin_dataset_builds_with_a_fitting_model(name):
    model = "unet" if name == "digits" else "mlp"
    size = [] if name == "digits" else ["data.n=50"]
    built = jobs.build(cfg_of(f"data={name}", f"model={model}", *size))
    x, _ = built.data.batch(torch.arange(4))
    out = built.network(x, torch.full((4,), 0.5))
    assert out.shape == x.shape


def test_an_image_folder_needs_a_root():  # mnist and cifar10 read paths.data_dir (test_app_conventions.py)
    with pytest.raises(ConfigError, match=r"data\.root must be set"):
        validate(cfg_of("data=image_folder"))


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_builds(name):
    built = jobs.build(cfg_of(f"experiment={name}"))
    assert built.samplers and all(isinstance(s.solver, Solver) for s in built.samplers.values())


@pytest.mark.parametrize("name", options("likelihood"))
def test_every_likelihood_and_train_config_instantiates(name):
    cfg = validate(cfg_of(f"likelihood={name}", "train=long"))
    assert callable(instantiate(cfg["likelihood"]))
    assert callable(instantiate(cfg["train"]["loss"]))
    assert cfg["train"]["steps"] == 20000


# -- the main job, and the jobs that start from its checkpoint --------------------------------------------------------
@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("main")
    metrics = jobs.run_main(cfg_of(*TINY), out)
    return out, metrics


def test_main_job_writes_every_output(main_run):
    out, _metrics = main_run
    for name in ("config.yaml", "samples.npz", "metrics.json", "samples.png", "loss.png", "quality_vs_nfe.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert [p.name for p in (out / "checkpoints").glob("step_*.pt")] == ["step_000000020.pt"]
    with np.load(out / "samples.npz") as arrays:
        assert sorted(arrays.files) == ["pc", "pf_ode"] and arrays["pc"].shape == (200, 2)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["train"]["steps"] == 20 and len(saved["loss_history"]) == 4
    pc, ode = saved["solvers"]["pc"], saved["solvers"]["pf_ode"]
    assert pc["nfe"] == 2 * 10 + 1  # reverse-diffusion predictor + one Langevin step per grid point, then Tweedie
    assert ode["nfe"] > 1 and ode["wall_time_s"] > 0
    for row in (pc, ode):
        assert row["sliced_wasserstein"] > 0 and "mmd" in row and "energy_distance" in row
    assert saved["floor"]["sliced_wasserstein"] > 0 and saved["n"] == 200
    # eight Gaussians is an exact mixture: the exact score drives the same solvers, and log p of samples is exact
    assert sorted(saved["exact_score"]) == ["pc", "pf_ode"] and saved["exact_score"]["pc"]["nfe"] == 21
    assert np.isfinite(saved["data_log_prob"]) and np.isfinite(pc["sample_log_prob"])


def test_digits_experiment_writes_an_image_grid_and_bits_per_dim(tmp_path):
    cfg = cfg_of("experiment=digits", "train.steps=3", "train.warmup_steps=0", "train.batch_size=32", "model.channels=8",
                 "sample.n=16", "sample.progress=false", "solvers.pc.steps=3", "solvers.pf_ode.rtol=1e-2",
                 "solvers.pf_ode.atol=1e-2", "evaluate.floor_repeats=2", "evaluate.metrics=[sliced_wasserstein]")
    metrics = jobs.run_main(cfg, tmp_path)
    with np.load(tmp_path / "samples.npz") as arrays:
        assert arrays["pc"].shape == (16, 1, 8, 8)
    assert metrics["solvers"]["pc"]["nfe"] == 3 + 1 and metrics["n"] == 16  # against 16 test-split images
    assert (tmp_path / "samples.png").stat().st_size > 0
    cfg = cfg_of("experiment=digits", f"sample.checkpoint={tmp_path}", "evaluate.likelihood_n=4",
                 "likelihood.n_dequant=1", "likelihood.rtol=1e-2", "likelihood.atol=1e-2", "likelihood.progress=false")
    bpd = jobs.run_likelihood(cfg, tmp_path / "likelihood")["likelihood"]
    assert bpd["n_samples"] == 4 and np.isfinite(bpd["bits_per_dim"]) and bpd["bits_per_dim"] > 0


@pytest.mark.parametrize("sde", ["subvp", "ve", "ou", "cosine", "edm"])
def test_main_job_runs_with_every_sde(sde, tmp_path):
    tiny = [o for o in TINY if not o.startswith(("train.steps", "sample.n", "solvers.pc.steps"))]
    metrics = jobs.run_main(cfg_of(f"sde={sde}", *tiny, "train.steps=5", "sample.n=50", "solvers.pc.steps=5", "plots=false",
                                   "evaluate.ground_truth=false"), tmp_path)
    assert metrics["solvers"]["pc"]["nfe"] == 2 * 5 + 1 and metrics["solvers"]["pf_ode"]["nfe"] > 1
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "samples.npz").is_file()


def test_sample_from_checkpoint_with_any_solver_and_steps(main_run, tmp_path):
    run_dir, _ = main_run
    cfg = cfg_of("~solver@solvers.pc", "~solver@solvers.pf_ode", "+solver@solvers.fast=ddim", "sample.steps=7",
                 "sample.n=100", "sample.progress=false", "evaluate.floor_repeats=2", f"sample.checkpoint={run_dir}",
                 "data=swiss_roll")  # the run's own data (eight_gaussians) is used, not this
    metrics = jobs.run_sample(cfg, tmp_path)
    assert metrics["solvers"]["fast"]["nfe"] == 7 + 1
    assert metrics["checkpoint"].endswith("step_000000020.pt")
    assert "eight_gaussians" in (tmp_path / "config.yaml").read_text()
    with np.load(tmp_path / "samples.npz") as arrays:
        assert arrays["fast"].shape == (100, 2)


def test_evaluate_saved_samples(main_run, tmp_path):
    run_dir, metrics = main_run
    report = jobs.run_evaluate(cfg_of(f"evaluate.samples={run_dir}", "evaluate.floor_repeats=2", "evaluate.projections=32"), tmp_path)
    assert sorted(report["solvers"]) == ["pc", "pf_ode"]
    # the same samples against a fresh reference: the same order of magnitude as the run's own evaluation
    for name in ("pc", "pf_ode"):
        assert report["solvers"][name]["sliced_wasserstein"] == pytest.approx(metrics["solvers"][name]["sliced_wasserstein"], rel=0.5)


def test_likelihood_from_checkpoint(main_run, tmp_path):
    run_dir, _ = main_run
    cfg = cfg_of(f"sample.checkpoint={run_dir}", "evaluate.likelihood_n=20", "likelihood.rtol=1e-3", "likelihood.atol=1e-3")
    result = jobs.run_likelihood(cfg, tmp_path)["likelihood"]
    assert np.isfinite(result["nll"]) and result["n"] == 20 and result["nfe"] > 0 and np.isfinite(result["exact_nll"])
    assert json.loads((tmp_path / "metrics.json").read_text())["likelihood"]["nll"] == pytest.approx(result["nll"])


# -- a sweep of two solvers, gathered -----------------------------------------------------------------------------------
def test_two_solver_sweep_writes_two_metrics_and_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("solvers.")]
    result = run_cli(
        "-m", "sde_diffusion", "-m", "~solver@solvers.pc", "~solver@solvers.pf_ode", "+solver@solvers.main=euler,heun",
        "sample.steps=4", "plots=false", *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(sweep.rglob("metrics.json"))
    assert len(files) == 2
    nfe = sorted(json.loads(f.read_text())["solvers"]["main"]["nfe"] for f in files)
    assert nfe == [4 + 1, 2 * 4 + 1]  # Euler: 1 per step, Heun: 2 per step; + 1 for the Tweedie denoising
    table = (sweep / "metrics.csv").read_text().splitlines()
    assert len(table) == 3 and "sliced_wasserstein" in table[0]
    assert (sweep / "metrics.md").is_file() and (sweep / "quality_vs_nfe.png").is_file()
    rows = gather(sweep)  # the command does the same again
    assert sorted(r["solver"] for r in rows) == ["euler", "heun"]


# -- bad input fails at start, with the key named and a non-zero exit -----------------------------------------------------
def test_unknown_key_in_a_target_node_names_it_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key sde\.beta_mx; did you mean sde\.beta_max\?"):
        validate(cfg_of("+sde.beta_mx=3"))
    with pytest.raises(ConfigError, match=r"unknown key solvers\.pc\.snrr; did you mean solvers\.pc\.snr\?"):
        validate(cfg_of("+solvers.pc.snrr=0.1"))


def test_wrong_type_in_a_target_node_names_it():
    with pytest.raises(ConfigError, match=r"sde\.beta_max must be float; got str 'abc'"):
        validate(cfg_of("sde.beta_max=abc"))
    with pytest.raises(ConfigError, match=r"model\.width must be int; got float 1\.5"):
        validate(cfg_of("model.width=1.5"))


@pytest.mark.parametrize(
    "args, rc, message",
    [
        (["train.stepz=5"], 1, "Key 'stepz' not in 'TrainConfig'"),
        (["+data.nn=5"], 2, "unknown key data.nn; did you mean data.n?"),
        (["train.steps=abc"], 1, "full_key: train.steps"),
        (["sde.beta_max=abc"], 2, "sde.beta_max must be float"),
        (["data=mnist", "data.root=/nonexistent/mnist"], 2, "data: FileNotFoundError: MNIST: the data root /nonexistent/mnist does not exist"),
    ],
    ids=["unknown-key", "unknown-target-key", "wrong-type", "wrong-target-type", "missing-dataset"],
)
def test_bad_config_exits_nonzero_with_a_clear_message(tmp_path, args, rc, message):
    result = run_cli("-m", "sde_diffusion", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == rc, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # it failed before any training


def test_missing_checkpoint_exits_nonzero_with_a_clear_message(tmp_path):
    result = run_cli("-m", "sde_diffusion.app.cli", "sample", "sample.checkpoint=/nonexistent/run",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: no checkpoint at /nonexistent/run" in result.stderr and "Traceback" not in result.stderr


def test_gather_command(main_run, tmp_path, capsys):
    from sde_diffusion.app.gather import main

    main([str(main_run[0])])
    assert "| run | sampler |" in capsys.readouterr().out and (main_run[0] / "metrics.csv").is_file()
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path)])
    assert exit.value.code == 2 and "no metrics.json" in capsys.readouterr().err


def test_a_calibrated_grid_is_fitted_before_sampling(main_run, tmp_path):
    """`grid: calibrated` fits the grid to the run's model on pilot draws (here stratified from a pool); the samples'
    NFE is that of the grid alone, and metrics.json keeps the grid and what the calibration cost."""
    run_dir, _ = main_run
    cfg = cfg_of("~solver@solvers.pc", "~solver@solvers.pf_ode", "+solver@solvers.fast=unipc", "solvers.fast.steps=5",
                 "solvers.fast.grid=calibrated", "sample.calibration.pilot=64", "sample.calibration.max_evaluations=30",
                 "sample.calibration.pool=256",
                 "sample.n=100", "sample.progress=false", "evaluate.floor_repeats=2", "evaluate.ground_truth=false",
                 "plots=false", f"sample.checkpoint={run_dir}")
    fast = jobs.run_sample(cfg, tmp_path)["solvers"]["fast"]
    assert fast["nfe"] == 5 + 1 and fast["grid"] == "calibrated"
    calibration = json.loads((tmp_path / "metrics.json").read_text())["solvers"]["fast"]["calibration"]
    times = calibration["times"]
    assert len(times) == 6 and times == sorted(times, reverse=True) and calibration["nfe"] > calibration["evaluations"]
    assert calibration["pilot_error"] <= min(calibration["initial_errors"].values())


@pytest.mark.parametrize(
    "solver, grid, message",
    [("euler_maruyama", "calibrated", "needs a deterministic fixed-step solver; euler_maruyama is stochastic"),
     ("dopri5", "calibrated", "dopri5 is adaptive"), ("unipc", "log_snrr", "did you mean 'log_snr'")],
)
def test_a_bad_grid_is_refused_before_training(solver, grid, message):
    cfg = cfg_of(f"+solver@solvers.bad={solver}", f"solvers.bad.grid={grid}", *TINY)
    with pytest.raises(ConfigError, match=message):
        jobs.build(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [(["sample.calibration.pool=200"], "must be at least sample.calibration.pilot=128 \\+ sample.calibration.validation=128"),
     (["sample.calibration.pool=2048", "sample.calibration.trim=0.01"], "give trim or pool, not both")],
)
def test_bad_calibration_options_are_refused_before_training(overrides, message):
    cfg = cfg_of("+solver@solvers.fast=unipc", "solvers.fast.grid=calibrated", *overrides, *TINY)
    with pytest.raises(ConfigError, match=message):
        jobs.build(cfg)


def test_every_registered_solver_has_a_config_file():
    """Every solver is reachable from Hydra as solver@solvers.NAME=<its name>."""
    assert set(sde_diffusion.solvers.names()) <= set(options("solver"))


def test_the_thread_count_is_a_checked_config_key():
    """Every entry point sets torch's threads from `threads` (1 by default), whether started by make or by hand."""
    import torch

    from sde_diffusion.app.cli import set_threads
    from sde_diffusion.app.config import ConfigError

    assert cfg_of().threads == 1
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(0)  # torch's own choice: left as it is
        assert torch.get_num_threads() == 1
        for bad in (-1, 1.5, True, "2"):
            with pytest.raises(ConfigError, match="threads must be an integer >= 0"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)
