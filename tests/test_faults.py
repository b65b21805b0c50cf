"""Faults that must not lose work or pass silently: NaN data in training, kill -9 during a checkpoint write,
SIGINT / SIGTERM, a full disk and a read-only directory, NaN at the last evaluation of every solver.

Each subprocess is a tiny trainer (an 8-wide MLP, batches of 32), so the file runs in seconds."""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.networks import MLP
from sde_diffusion.training import (
    CheckpointError,
    DSMLoss,
    NonFiniteTrainingError,
    Trainer,
    list_checkpoints,
    load_checkpoint,
)
from sde_diffusion.training import checkpoint as checkpoint_module

SRC = Path(sd.__file__).resolve().parent.parent
ROOT = SRC.parent
VP = sd.VPSDE()


class OneBadExample(torch.utils.data.Dataset):
    """512 standard normal points, example `bad` NaN: a map-style data set, read batch by batch."""

    def __init__(self, n: int = 512, bad: int = 123):
        self.x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
        self.x[bad] = math.nan

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def tiny_trainer(directory, data=None, **options) -> Trainer:
    torch.manual_seed(0)
    data = data if data is not None else sd.data.ArrayDataset(torch.randn(512, 2, generator=torch.Generator().manual_seed(1)), name="randn")
    options = {"batch_size": 32, "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 4, "progress": False, **options}
    return Trainer(MLP(2, width=8, depth=1), DSMLoss(VP), data, checkpoint_dir=directory, **options)


def finite_state(path: Path) -> bool:
    state = load_checkpoint(path)
    return all(torch.isfinite(v).all() for v in [*state["model"].values(), *state["ema"]["module"].values()] if v.is_floating_point())


def same_weights(a: Trainer, b: Trainer) -> bool:
    pairs = [*zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True),
             *zip(a.ema.module.state_dict().values(), b.ema.module.state_dict().values(), strict=True)]
    return all(torch.equal(x, y) for x, y in pairs)


# -- NaN data --------------------------------------------------------------------------------------------------------
def test_one_nan_example_skips_its_steps_and_no_checkpoint_turns_non_finite(tmp_path):
    """The batch holding the bad example (once per epoch of 16 batches) is skipped, named, and never applied; every
    checkpoint written and kept is finite, and the run ends with finite weights and a finite logged loss."""
    trainer = tiny_trainer(tmp_path, OneBadExample(), checkpoint_every=16)
    trainer.train(48)
    skipped = trainer.skipped_steps
    assert [s["nonfinite_examples"] for s in skipped] == [[123]] * 3  # epochs 0, 1, 2 of 16 batches each
    assert all(s["epoch"] == k for k, s in enumerate(skipped))
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step_000000032.pt", "step_000000048.pt"] and all(finite_state(p) for p in kept)
    assert all(math.isfinite(r["loss"]) for r in trainer.history if "loss" in r)


def test_stopping_on_a_nan_batch_names_it_and_leaves_the_last_finite_checkpoint(tmp_path):
    trainer = tiny_trainer(tmp_path, OneBadExample(), on_nonfinite="stop")
    with pytest.raises(NonFiniteTrainingError, match=r"step (\d+): .* on batch \d+ of epoch 0, whose data examples \[123\]") as e:
        trainer.train(48)
    step = int(re.search(r"step (\d+)", str(e.value)).group(1))
    newest = list_checkpoints(tmp_path)[-1]
    assert finite_state(newest) and load_checkpoint(newest)["step"] == 4 * ((step - 1) // 4)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    trainer = tiny_trainer(tmp_path)
    trainer.train(4)
    with torch.no_grad():
        next(trainer.model.parameters())[0] = math.nan
    with pytest.raises(CheckpointError, match=r"NaN or inf; the last finite checkpoint \(.*step_000000004.pt\) is kept"):
        trainer.train(8)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000004.pt"]


# -- kill -9 during a checkpoint write ------------------------------------------------------------------------------------
CHILD = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_faults import tiny_trainer
from sde_diffusion.training import TrainingInterrupted, checkpoint
mode, directory = sys.argv[1], sys.argv[2]
trainer = tiny_trainer(directory)
if mode == "kill-in-write":  # die half-way through writing the checkpoint of step 8
    real_save = torch.save
    def dying_save(obj, f, *a, **k):
        if obj["step"] == 8:
            f.write(b"half a checkpoint"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *a, **k)
    checkpoint.torch.save = dying_save
    trainer.train(12)
else:  # train "forever" until a signal arrives
    print("started", flush=True)
    try:
        trainer.train(10**9)
    except TrainingInterrupted as e:
        print(e, flush=True)
        sys.exit(e.exit_code)
"""


def child(mode: str, directory: Path) -> subprocess.Popen:
    script = CHILD.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, mode, str(directory)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kill_during_a_checkpoint_write_leaves_a_loadable_checkpoint_that_resumes_bit_for_bit(tmp_path):
    proc = child("kill-in-write", tmp_path)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000004.pt"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the interrupted write's temporary file
    resumed = tiny_trainer(tmp_path, resume=True)  # removes it, continues from step 4
    assert resumed.step == 4 and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    resumed.train(12)
    straight = tiny_trainer(tmp_path / "straight")
    straight.train(12)
    assert same_weights(resumed, straight)


# -- SIGINT / SIGTERM -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_cleanly_with_a_checkpoint_that_resumes_bit_for_bit(tmp_path, signum):
    proc = child("forever", tmp_path)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 60
    while not list_checkpoints(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert f"{signal.Signals(signum).name} received: training stopped after step" in out and "Traceback" not in err
    step = int(re.search(r"after step (\d+)", out).group(1))
    assert load_checkpoint(list_checkpoints(tmp_path)[-1])["step"] == step  # the step it stopped at is saved
    resumed = tiny_trainer(tmp_path, resume=True)
    resumed.train(step + 5)
    straight = tiny_trainer(tmp_path / "straight")
    straight.train(step + 5)
    assert same_weights(resumed, straight)


@pytest.mark.slow
def test_ctrl_c_in_the_app_prints_the_resume_command_and_it_resumes(tmp_path):
    """python -m sde_diffusion, interrupted during training: exit 130, one line with the command, the checkpoint and
    metrics.json kept; that command (with fewer steps) continues the run from its checkpoint."""
    run = tmp_path / "run"
    args = ["train.steps=1000000", "train.lr_schedule=constant", "train.checkpoint_every=20", "train.warmup_steps=0", "model.width=8", "model.depth=1",
            "data.n=512", "train.batch_size=32", "sample.n=20", "sample.progress=false", "solvers.pc.steps=3",
            "solvers.pf_ode.rtol=1e-2", "solvers.pf_ode.atol=1e-2", "evaluate.floor_repeats=2", "evaluate.projections=8",
            "plots=false"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sde_diffusion", *args, f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not list_checkpoints(run / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "resume with:" in line]
    assert len(lines) == 1 and (run / "metrics.json").is_file() and (run / "config.yaml").is_file()
    command = lines[0].split("resume with: ", 1)[1]
    assert command.startswith(f"{Path(sys.executable).name} -m sde_diffusion ") and "train.resume=true" in command
    saved = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"]
    argv = [sys.executable, *command.split()[1:]]
    argv = [a if not a.startswith("train.steps=") else f"train.steps={saved + 3}" for a in argv]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == saved + 3


# -- disk errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on the device"), (errno.EROFS, "the file system is read-only")])
def test_a_failed_write_names_the_path_and_cause_and_keeps_the_previous_checkpoints(tmp_path, monkeypatch, code, words):
    trainer = tiny_trainer(tmp_path)
    trainer.train(8)
    before = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path)}

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=rf"could not write checkpoint {re.escape(str(tmp_path))}/step_000000012.pt: {words}"):
        trainer.train(12)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_torchs_own_write_failure_is_reported_with_the_path(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path)
    trainer.train(4)

    def failing_save(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"step_000000008.pt: the write failed \(\d+ bytes free"):
        trainer.train(8)
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000004.pt"]


def test_a_read_only_checkpoint_dir_is_refused_before_training(tmp_path, monkeypatch):
    real = Path.write_bytes

    def read_only(self, data):
        if self.parent == tmp_path / "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(CheckpointError, match=r"checkpoint_dir .*ro is not writable: the file system is read-only"):
        tiny_trainer(tmp_path / "ro")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_a_directory_without_write_permission_is_refused(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    with pytest.raises(CheckpointError, match="not writable: permission denied"):
        tiny_trainer(tmp_path / "locked")


def test_stale_temporary_files_of_dead_processes_are_removed_on_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale, alive = tmp_path / f".step_000000004.pt.tmp-{dead}", tmp_path / f".step_000000004.pt.tmp-{os.getppid()}"
    stale.write_bytes(b"x")
    alive.write_bytes(b"x")  # a live process's write in progress is left alone
    tiny_trainer(tmp_path)
    assert not stale.exists() and alive.exists()


# -- NaN at the last evaluation of every solver -----------------------------------------------------------------------
@pytest.mark.parametrize("name", sd.solvers.names())
def test_nan_at_the_last_evaluation_is_named_for_every_solver(name):
    """A network that is exact except at t <= 1.5e-3 (the last time, t_min = 1e-3, and the final denoising step):
    every solver raises NonFiniteError naming itself, none returns NaN samples."""
    exact = sd.GaussianMixture.gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]).score_model(VP)
    broken = sd.ScoreModel(lambda x, t: torch.where((t <= 1.5e-3)[:, None], math.nan, exact.network(x, t)), VP, "score")
    with pytest.raises(sd.NonFiniteError, match=rf"^{name}\b|^scipy"):
        sd.sample(VP, broken, name, shape=(4, 2), steps=8, denoise=True, generator=torch.Generator().manual_seed(0))
