"""The app under torchrun: one run folder for all ranks, rank 0 the only writer, work sharded by sample index.

`torchrun --nproc_per_node N -m sde_diffusion ...` (or any `sde-*` entry point under torchrun) starts N copies of
the app. `launch` joins the process group (gloo on CPU, NCCL with CUDA) before Hydra starts, with a timeout, so a
missing master is a clear error and not a hang; ranks > 0 run Hydra in a throwaway folder with its file outputs
and console logging off. Inside the job, `shared_folder` hands every rank the folder rank 0's Hydra resolved
(`${now:...}` included), where ranks > 0 keep only their own log file, `sde_diffusion.rank<r>.log`.

Sampling is sharded by sample index: rank r draws the samples i = r, r + N, r + 2N, ... with seeds[i] =
base + i (`sample(..., seeds=...)`), in batches of `sample.batch_size`, and rank 0 puts them back in index order. A
sample depends only on its seed, so the gathered set is bit for bit the one-process set, for any N and batch size
(given a network whose rows do not mix, as ours do on CPU). Sample counts not divisible by N are fine: the first
n mod N ranks draw one more.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..training import distributed
from ..training.distributed import DistributedContext

log = logging.getLogger("sde_diffusion")

TIMEOUT_ENV = "SDE_DIFFUSION_DIST_TIMEOUT"
"""Seconds to wait for the other ranks (joining the group, and any collective after): default 300."""
DEFAULT_TIMEOUT_S = 300.0


class LaunchError(RuntimeError):
    """The process group could not be joined (no master, a wrong address, a rank missing)."""


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise LaunchError(f"{TIMEOUT_ENV}={value!r}: give the seconds to wait for the other ranks, a positive number")
    return seconds


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "gpu[07-09,12],cpu3" -> "gpu07" (what `scontrol show hostnames` lists
    first)."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist)
    assert match is not None  # the pattern matches any string (both parts may be empty)
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def slurm_environment(env: dict[str, str]) -> dict[str, str]:
    """torch.distributed's variables from Slurm's, for one task of `srun` (one process per task, as submitit
    does): RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the first
    host of SLURM_JOB_NODELIST, MASTER_PORT = 20000 + SLURM_JOB_ID mod 20000 (unless already set). Empty outside
    a multi-task Slurm step, or when WORLD_SIZE is already set (torchrun inside the allocation)."""
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes:
        raise LaunchError("a Slurm step with SLURM_NTASKS > 1 but no SLURM_JOB_NODELIST: cannot find the master host")
    return {
        "RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR", first_host(nodes)),
        "MASTER_PORT": env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)),
    }


def join() -> DistributedContext:
    """Join the group torchrun (or a multi-task Slurm step, `slurm_environment`) describes, or the single-process
    context; a LaunchError naming the master and the timeout when the others cannot be reached."""
    os.environ.update(slurm_environment(dict(os.environ)))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return distributed.init_distributed()
    seconds = timeout_s()
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        return distributed.init_distributed(timeout=timedelta(seconds=seconds))
    except Exception as e:  # torch raises DistStoreError, RuntimeError or TimeoutError by version and backend
        raise LaunchError(
            f"rank {os.environ.get('RANK', '?')} of WORLD_SIZE={os.environ['WORLD_SIZE']} could not join the process "
            f"group at MASTER_ADDR:MASTER_PORT = {where} within {seconds:g} s ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Launch with torchrun --nproc_per_node N, check the address "
            f"and port, or unset WORLD_SIZE to run one process; {TIMEOUT_ENV} sets the wait."
        ) from None


def follower_overrides(folder: str) -> list[str]:
    """Hydra overrides for ranks > 0: run in `folder` (thrown away), no .hydra files, no console or file log."""
    return [f"hydra.run.dir={folder}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"]


def launch(main: Callable[[], Any]) -> Any:
    """Run a Hydra main under torchrun (or alone): join, let ranks > 0 run Hydra out of the way, leave the group."""
    try:
        ctx = join()
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None  # the message is the whole report
    if not ctx.distributed:
        return main()
    if any(arg in ("-m", "--multirun") or arg.startswith("hydra/launcher=") for arg in sys.argv[1:]):
        print("error: a -m sweep under torchrun is not supported: run the sweep's jobs one by one under torchrun, "
              "or sweep in one process per job (hydra/launcher=submitit_slurm)", file=sys.stderr)
        raise SystemExit(2)
    scratch = None
    if not ctx.is_main:
        scratch = tempfile.mkdtemp(prefix=f"sde_diffusion_rank{ctx.rank}_")
        sys.argv += follower_overrides(scratch)
    try:
        return main()
    finally:
        distributed.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def shared_folder(folder: Path, ctx: DistributedContext) -> Path:
    """Rank 0's output folder, on every rank; ranks > 0 log to their own file there."""
    if not ctx.distributed:
        return folder
    box = [str(folder) if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    folder = Path(str(box[0]))
    if not ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(folder / f"sde_diffusion.rank{ctx.rank}.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.disabled, log.propagate = False, False  # Hydra's disabled job logging turned it off; no console
    return folder


def broadcast(obj, ctx: DistributedContext):
    """Rank 0's `obj` on every rank (`obj` itself in one process)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int, ctx: DistributedContext) -> list[int]:
    """The sample indices of this rank: rank, rank + N, rank + 2N, ... below n."""
    return list(range(ctx.rank, n, ctx.world_size))


def chunks(items: Sequence[int], size: int | None) -> list[Sequence[int]]:
    """`items` cut into consecutive pieces of `size` (None: one piece)."""
    if size is None or size >= len(items):
        return [items] if len(items) else []
    return [items[i:i + size] for i in range(0, len(items), size)]


def gather_rows(rows: torch.Tensor | None, n: int, ctx: DistributedContext) -> torch.Tensor:
    """Every rank's rows (rank r holds the indices `shard(n)`), in index order, on every rank."""
    parts = distributed.all_gather_object(rows, ctx)
    first = next(p for p in parts if p is not None)
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
    for rank, part in enumerate(parts):
        if part is not None:
            out[rank::ctx.world_size] = part
    return out


def sample_shards(draw: Callable, n: int, base_seed: int, batch_size: int | None, ctx: DistributedContext):
    """(x of the n samples in index order, total network calls, mean evaluations per sample), on every rank.

    `draw(seeds)` returns a SampleResult for those seeds; this rank draws its shard `shard(n)`, seeds[i] =
    base_seed + i, in batches of `batch_size`."""
    parts, calls, per_sample = [], 0, []
    for piece in chunks(shard(n, ctx), batch_size):
        result = draw([base_seed + i for i in piece])
        parts.append(result.x.detach().cpu())
        calls += int(result.nfe)
        per_sample.append((len(piece), float(result.stats.get("evaluations_per_sample", result.nfe))))
    x = torch.cat(parts) if parts else None
    gathered = distributed.all_gather_object((calls, per_sample), ctx)
    total_calls = sum(c for c, _ in gathered)
    pairs = [pair for _, ps in gathered for pair in ps]
    mean_per_sample = sum(k * v for k, v in pairs) / max(1, sum(k for k, _ in pairs))
    return gather_rows(x, n, ctx), total_calls, mean_per_sample
