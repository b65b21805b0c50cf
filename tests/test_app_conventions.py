"""The app's Hydra conventions: task-named output folders, the objective a job returns to a sweeper, the `debug`
and `paths` configs, a user's own solver class as `_target_`, step overrides that name their solver, and the
arena as a job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sde_diffusion.app import jobs
from sde_diffusion.app.cli import with_job_name
from sde_diffusion.app.config import ConfigError, validate
from sde_diffusion.solvers import Solver

from .test_app import CONF, cfg_of, run_cli

QUICK = ["debug=quick", "data.n=500", "model.width=16", "model.depth=1", "solvers.pc.steps=5", "sample.progress=false",
         "solvers.pf_ode.rtol=1e-3", "solvers.pf_ode.atol=1e-3", "plots=false"]


class Midpoint(Solver):
    """A user's own solver, outside the package: the explicit midpoint rule, order 2, 2 NFE per step."""

    name = "midpoint"
    order = 2

    def step(self, term, x, t, t_next, state, generator):
        h = t_next - t
        return x + h * term.drift(x + 0.5 * h * term.drift(x, t), t + 0.5 * h), None, state


# -- output folders named by the job ------------------------------------------------------------------------------------
@pytest.mark.parametrize("job", ["run", "train", "sample", "evaluate", "likelihood", "arena"])
def test_each_job_writes_to_a_folder_named_after_it(job):
    argv = with_job_name(["sde-x", "seed=1"], job)
    assert argv[-1] == f"hydra.job.name={job}"
    assert with_job_name(["sde-x", "hydra.job.name=mine"], job) == ["sde-x", "hydra.job.name=mine"]
    with initialize_config_dir(str(CONF), version_base="1.3", job_name=job):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.job.name == job
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith(f"outputs/{job}/")
    assert OmegaConf.select(cfg, "hydra.sweep.dir").startswith(f"multirun/{job}/")


def test_a_training_run_lands_in_outputs_train_with_its_log(tmp_path):
    result = run_cli("-m", "sde_diffusion.app.cli", "train", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "train").glob("*/*")
    assert (run / "train.log").is_file() and (run / "checkpoints").is_dir() and (run / "metrics.json").is_file()


# -- the objective ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return jobs.run_main(cfg_of(*QUICK), tmp_path_factory.mktemp("quick"))


def test_a_job_returns_its_main_metric_or_the_one_named(quick_run):
    first = quick_run["solvers"]["pc"]["sliced_wasserstein"]
    assert jobs.objective(quick_run) == first and math.isfinite(first)
    assert jobs.objective(quick_run, "solvers.pf_ode.mmd") == quick_run["solvers"]["pf_ode"]["mmd"]
    assert jobs.objective(quick_run, metric="energy_distance") == quick_run["solvers"]["pc"]["energy_distance"]
    assert jobs.objective({"train": {"final_loss": 0.5}}) == 0.5
    assert jobs.objective({"likelihood": {"nll": 1.5}}) == 1.5
    assert jobs.objective({"runs": 3}) is None  # the arena: nothing to optimise


@pytest.mark.parametrize("path, message", [
    ("solvers.pcc.mmd", r"solvers has no 'pcc' \(it has: pc, pf_ode\)"),
    ("solvers.pc", r"objective=solvers.pc is not a number \(dict\)"),
    ("solvers.pc.solver", r"is not a number \(str\)"),
])
def test_a_bad_objective_names_what_is_there(quick_run, path, message):
    with pytest.raises(ConfigError, match=message):
        jobs.objective(quick_run, path)


# -- debug and paths ----------------------------------------------------------------------------------------------------
def test_debug_preset_shrinks_any_experiment():
    cfg = validate(cfg_of("experiment=digits", "debug=quick"))
    assert cfg["train"]["steps"] == 20 and cfg["sample"]["n"] == 64 and not cfg["evaluate"]["ground_truth"]
    assert cfg["model"]["_target_"].endswith("UNet")  # the experiment's own model stays


def test_paths_set_the_data_root_and_the_output_folders(monkeypatch):
    assert validate(cfg_of("data=mnist", "paths.data_dir=/datasets"))["data"]["root"] == "/datasets"
    assert validate(cfg_of("data=cifar10", "data.root=/elsewhere"))["data"]["root"] == "/elsewhere"
    monkeypatch.setenv("SDE_DATA_DIR", "/from/env")
    assert validate(cfg_of("data=mnist"))["data"]["root"] == "/from/env"
    with initialize_config_dir(str(CONF), version_base="1.3", job_name="train"):
        cfg = compose("config", overrides=["paths.output_dir=/scratch/runs"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith("/scratch/runs/train/")


# -- a user's own solver --------------------------------------------------------------------------------------------
def test_a_user_solver_class_is_a_target_with_its_steps_and_checked_options():
    built = jobs.build(cfg_of("debug=quick", "data.n=500", "~solver@solvers.pc", "~solver@solvers.pf_ode",
                              "+solvers.mine={_target_:tests.test_app_conventions.Midpoint,steps:8}"))
    sampler = built.samplers["mine"]
    assert isinstance(sampler.solver, Midpoint) and sampler.steps == 8
    exact = built.data.mixture.score_model(built.sde)
    samples = jobs.sample_all(built, exact)
    assert samples["mine"]["nfe"] == 2 * 8 + 1 and samples["mine"]["solver"] == "midpoint"
    assert torch.isfinite(samples["mine"]["x"]).all()
    with pytest.raises(ConfigError, match=r"unknown key solvers\.mine\.order"):
        validate(cfg_of("+solvers.mine={_target_:tests.test_app_conventions.Midpoint,order:3}"))
    with pytest.raises(ConfigError, match=r"solvers\.mine: _target_ collections\.OrderedDict built a OrderedDict, not a"):
        jobs.build(cfg_of("data.n=10", "+solvers.mine={_target_:collections.OrderedDict}"))


# -- step overrides name their solver -------------------------------------------------------------------------------
def test_step_overrides_apply_to_the_solver_they_name():
    with pytest.raises(ConfigError, match=r"sample\.steps=20 would set the steps of every solver \(pc, pf_ode\)"):
        jobs.build(cfg_of("data.n=10", "sample.steps=20"))
    built = jobs.build(cfg_of("data.n=10", "solver@solvers.pf_ode=dpm_solver_pp_2m", "solvers.pf_ode.steps=12"))
    assert built.samplers["pf_ode"].steps == 12 and built.samplers["pc"].steps == 500
    with pytest.raises(ConfigError, match=r"solvers\.pf_ode\.steps=10: dopri5 is adaptive and chooses its own steps"):
        jobs.build(cfg_of("data.n=10", "solvers.pf_ode.steps=10"))


# -- the arena from the app ---------------------------------------------------------------------------------------------
def test_the_arena_runs_as_a_job(tmp_path):
    cfg = cfg_of("arena=quick", "arena.problems=[ring-2d]", "arena.sdes=[edm]", "arena.budgets=[5]", "arena.seeds=1",
                 "arena.samples=32", "arena.peers=false", "arena.memory=false", "arena.solvers=[heun]")
    summary = jobs.run_arena(cfg, tmp_path)
    assert summary["runs"] >= 1 and (tmp_path / "results.md").is_file() and (tmp_path / "summary.csv").is_file()
    with pytest.raises(ConfigError, match="no arena configured: pass arena=quick"):
        jobs.run_arena(cfg_of(), tmp_path)


# -- the learning-rate schedule ---------------------------------------------------------------------------------------
def test_a_cosine_schedule_decays_the_rate_to_zero_at_the_last_step():
    from sde_diffusion.data import get
    from sde_diffusion.networks import MLP
    from sde_diffusion.sde import VPSDE
    from sde_diffusion.training import DSMLoss, Trainer

    trainer = Trainer(MLP(2, width=8, depth=1), DSMLoss(VPSDE()), get("two_moons", n=64), batch_size=8, lr=1e-3,
                      warmup_steps=10, lr_decay_steps=110, progress=False)
    assert trainer.lr_at(0) == pytest.approx(1e-4) and trainer.lr_at(9) == pytest.approx(1e-3)
    assert trainer.lr_at(60) == pytest.approx(5e-4) and trainer.lr_at(110) == 0.0 and trainer.lr_at(500) == 0.0
    assert validate(cfg_of("train.lr_schedule=cosine"))["train"]["lr_schedule"] == "cosine"
    with pytest.raises(ConfigError, match=r"train\.lr_schedule must be constant or cosine; got 'linear'"):
        jobs.train(jobs.build(cfg_of("data.n=10", "train.lr_schedule=linear")), Path("unused"))
    with pytest.raises(ValueError, match="lr_decay_steps must be an integer >= 0"):
        Trainer(MLP(2, width=8, depth=1), DSMLoss(VPSDE()), get("two_moons", n=64), lr_decay_steps=-1)
