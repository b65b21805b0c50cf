"""The app under torchrun with two CPU processes (gloo): one run folder, files written once, DDP weights identical
on both ranks, and sharded samples bit-identical to one process with any batch size; bad launches fail clearly."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sde_diffusion

SRC = Path(sde_diffusion.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# A stochastic solver (PC), an adaptive stochastic one (adaptive_sde) and an adaptive ODE solver (dopri5); 25
# samples, not divisible by 2 ranks.
TINY = [
    "train.steps=12", "train.warmup_steps=0", "train.log_every=4", "train.batch_size=64", "model.width=32",
    "model.depth=1", "data.n=512", "sample.n=25", "sample.progress=false", "solvers.pc.steps=8",
    "solvers.pf_ode.rtol=1e-2", "solvers.pf_ode.atol=1e-2", "+solver@solvers.asde=adaptive_sde",
    "solvers.asde.rtol=0.05", "solvers.asde.atol=0.05", "evaluate.floor_repeats=2", "evaluate.projections=16",
    "evaluate.ground_truth=false", "plots=false",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS.parent)]), "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo", **extra}


def torchrun(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def one_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=240)


def samples(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "samples.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def only_folder(root: Path) -> Path:
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    # ${now:...} with microseconds: if each rank resolved the folder itself, there would be two
    run = torchrun("-m", "sde_diffusion", *TINY, f"hydra.run.dir={root}/runs/" + "${now:%H-%M-%S-%f}", cwd=root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return root, run


@pytest.mark.slow
def test_two_ranks_share_one_folder_and_write_each_file_once(two_rank_run):
    root, run = two_rank_run
    folder = only_folder(root / "runs")
    assert run.stdout.count("outputs written to") == 1
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".hydra", "checkpoints", "config.yaml", "metrics.json", "run.log", "samples.npz",
                     "sde_diffusion.rank1.log"]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step_000000012.pt"]
    assert not list(folder.rglob("*.tmp"))
    # DDP: both ranks ended training with the same weights, bit for bit
    fingerprints = [re.findall(r"on 2 rank\(s\); weights sha256 ([0-9a-f]{64})", (folder / log).read_text())
                    for log in ("run.log", "sde_diffusion.rank1.log")]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1]
    # only rank 0 logs to the console
    assert "sampled 25 with pc" in (folder / "sde_diffusion.rank1.log").read_text()
    assert run.stdout.count("sampled 25 with pc") + run.stderr.count("sampled 25 with pc") == 1


@pytest.mark.slow
def test_sharded_samples_equal_one_process_with_any_batch_size(two_rank_run, tmp_path):
    root, _ = two_rank_run
    trained = only_folder(root / "runs")
    main_run = samples(trained)
    sample = ["-m", "sde_diffusion.app.cli", "sample", *TINY, f"sample.checkpoint={trained}"]
    two = torchrun(*sample, f"hydra.run.dir={tmp_path}/two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for name, batch in (("one", "null"), ("one_batch4", "4")):
        run = one_process(*sample, f"sample.batch_size={batch}", f"hydra.run.dir={tmp_path}/{name}", cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
    runs = {name: samples(tmp_path / name) for name in ("two", "one", "one_batch4")}
    for name in ("pc", "pf_ode", "asde"):
        assert main_run[name].shape == (25, 2)
        for other in runs.values():  # bit for bit: no cross-rank reduction enters a sample
            assert np.array_equal(other[name], main_run[name]), name


def test_world_size_without_a_reachable_master_is_a_clear_error(tmp_path):
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "sde_diffusion", "train.steps=1", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
        env=env(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                SDE_DIFFUSION_DIST_TIMEOUT="3"),
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "could not join the process group at MASTER_ADDR:MASTER_PORT = 127.0.0.1" in run.stderr
    assert "within 3 s" in run.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_rank_failing_mid_run_stops_the_others_and_leaves_nothing_half_written(tmp_path):
    start = time.monotonic()
    run = torchrun(str(TESTS / "scale_worker.py"), *TINY, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, timeout=200)
    assert run.returncode != 0
    assert "injected failure on rank 1" in run.stdout + run.stderr
    assert time.monotonic() - start < 150  # rank 0, waiting in the gather, was stopped: no hang
    folder = tmp_path / "run"
    assert not (folder / "samples.npz").exists() and not (folder / "metrics.json").exists()
    assert not list(folder.rglob("*.tmp"))


def test_slurm_variables_map_to_torch_distributed():
    from sde_diffusion.app.parallel import first_host, slurm_environment

    assert first_host("gpu[07-09,12],cpu3") == "gpu07" and first_host("node1,node2") == "node1"
    assert first_host("a[3]") == "a3" and first_host("solo") == "solo"
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_ID": "123456"}
    assert slurm_environment(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                                      "MASTER_PORT": str(20000 + 123456 % 20000)}
    assert slurm_environment({**env, "WORLD_SIZE": "8"}) == {}  # torchrun inside the allocation sets its own
    assert slurm_environment({**env, "SLURM_NTASKS": "1"}) == {}


@pytest.mark.slow
def test_sharded_likelihood_gathers_every_point(two_rank_run, tmp_path):
    """The NLL job shards the data points over the ranks and gathers their log-likelihoods: the same points and
    mean as one process, to the ODE solver's tolerance (each shard is one solve_ivp system, so its steps differ)."""
    import json

    root, _ = two_rank_run
    trained = only_folder(root / "runs")
    job = ["-m", "sde_diffusion.app.cli", "likelihood", *TINY, f"sample.checkpoint={trained}",
           "evaluate.likelihood_n=21", "likelihood.rtol=1e-4", "likelihood.atol=1e-4"]
    two = torchrun(*job, f"hydra.run.dir={tmp_path}/two", cwd=tmp_path)
    one = one_process(*job, f"hydra.run.dir={tmp_path}/one", cwd=tmp_path)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-2000:] + one.stderr[-2000:]
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text())["likelihood"] for name in ("two", "one"))
    assert a["ranks"] == 2 and b["ranks"] == 1 and a["n"] == b["n"] == 21
    assert a["nll"] == pytest.approx(b["nll"], rel=1e-3, abs=1e-3)
    assert a["exact_nll"] == b["exact_nll"]
