"""The logger config group: TensorBoard event files and a CSV of loss, lr, grad norm, steps/s and the evaluation
hook's metrics; nothing with logger=none."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sde_diffusion
from sde_diffusion.app import jobs
from sde_diffusion.app.config import ConfigError, register

CONF = Path(sde_diffusion.__file__).resolve().parent / "conf"
register()
TINY = ["train.steps=8", "train.warmup_steps=0", "train.log_every=2", "train.batch_size=32", "model.width=16",
        "model.depth=1", "data.n=256", "sample.progress=false", "solvers.pc.steps=4", "plots=false",
        "logger.eval_every=4", "logger.eval_samples=32"]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_csv_logger_records_training_and_the_evaluation_hook(tmp_path):
    jobs.run_train(cfg_of(*TINY, "logger=csv"), tmp_path)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    train = {(int(r["step"]), r["name"]) for r in rows if r["prefix"] == "train"}
    for step in (2, 4, 6, 8):
        for name in ("loss", "lr", "grad_norm", "steps_per_s"):
            assert (step, name) in train
    evals = [r for r in rows if r["prefix"] == "eval"]
    assert [(int(r["step"]), r["name"]) for r in evals] == [(4, "pc_sliced_wasserstein"), (8, "pc_sliced_wasserstein")]
    assert all(float(r["value"]) > 0 for r in evals)


def test_tensorboard_logger_writes_scalars_and_sample_plots(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jobs.run_train(cfg_of(*TINY, "logger=tensorboard"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/steps_per_s", "eval/pc_sliced_wasserstein"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert tags["images"] == ["samples/pc"] and [e.step for e in events.Images("samples/pc")] == [4, 8]


def test_no_logger_writes_nothing_and_a_bad_kind_is_refused(tmp_path):
    jobs.run_train(cfg_of(*TINY[:-2], "logger=none"), tmp_path)
    assert not (tmp_path / "log.csv").exists() and not (tmp_path / "tensorboard").exists()
    with pytest.raises(ConfigError, match=r"logger\.kind"):
        jobs.run_train(cfg_of(*TINY, "logger.kind=wandb"), tmp_path / "bad")
