"""Two CPU processes under torchrun (gloo on 127.0.0.1): identical weights, disjoint data, one writer."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from sde_diffusion.training import list_checkpoints, load_checkpoint


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_keep_identical_weights_on_disjoint_data(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(root / "tests" / "distributed_worker.py"), str(tmp_path),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # the same weights and EMA on both ranks after 12 steps (started from different initialisations)
    for key in r0["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key
        assert torch.equal(r0["ema"][key], r1["ema"][key]), key
    # each epoch, the two ranks see disjoint halves of the data
    seen0, seen1 = r0["seen"], r1["seen"]
    assert seen0.shape == seen1.shape == (12, 16)
    first_epoch = set(seen0[:8].flatten().tolist()), set(seen1[:8].flatten().tolist())
    assert not first_epoch[0] & first_epoch[1]
    assert first_epoch[0] | first_epoch[1] == set(range(256))
    assert not set(seen0[8:].flatten().tolist()) & set(seen1[8:].flatten().tolist())
    # the loss logged is the average over ranks, the same on both
    assert [r["loss"] for r in r0["history"]] == [r["loss"] for r in r1["history"]]
    # only rank 0 wrote checkpoints, and they hold both ranks' random states
    assert r0["wrote"] is not None and r1["wrote"] is None
    files = list_checkpoints(tmp_path / "checkpoints")
    assert [f.name for f in files] == ["step_000000010.pt", "step_000000012.pt"]
    state = load_checkpoint(files[-1])
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])
    assert all(torch.equal(state["model"][k], r0["model"][k]) for k in r0["model"])
