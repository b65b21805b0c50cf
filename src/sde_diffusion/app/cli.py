"""The Hydra entry points: sde-run (also `python -m sde_diffusion`), sde-train, sde-sample, sde-evaluate,
sde-likelihood, sde-arena. All read the same packaged config (conf/config.yaml) and take the same overrides; each
writes to outputs/<its name>/DATE/TIME and returns its objective (the main metric) to a sweeper.

A configuration or checkpoint problem ends the run with one line naming the key or file, and exit status 2 (a
run refused before it wrote anything leaves no output folder); Hydra itself reports unknown keys and wrong types of
the typed top level (exit status 1). Training that stops on non-finite values exits with status 3; Ctrl-C or
SIGTERM during training exits with 130 / 143 after printing the command that resumes the run (`recovery.py`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..training import CheckpointError, NonFiniteTrainingError, TrainingInterrupted, distributed
from . import jobs, parallel, recovery
from .config import ConfigError, register

log = logging.getLogger("sde_diffusion")
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")
register()


def set_threads(threads) -> None:
    """torch.set_num_threads(threads) for threads > 0; 0 keeps torch's default. Anything else is a ConfigError."""
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0):
        raise ConfigError(f"threads must be an integer >= 0 (0: torch's default); got {threads!r}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> float | None:
    """Run `job` in Hydra's output folder (rank 0's, on every rank); return its objective (`jobs.objective`)."""
    hydra_cfg = HydraConfig.get()
    ctx = distributed.context()
    out = parallel.shared_folder(Path(hydra_cfg.runtime.output_dir), ctx)  # rank 0's, on every rank
    try:
        set_threads(cfg.get("threads", 1))
        metrics = job(cfg, out)
        value = jobs.objective(metrics, cfg.get("objective"), (cfg.evaluate.metrics or ["sliced_wasserstein"])[0])
    except (ConfigError, CheckpointError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        if ctx.is_main:
            recovery.discard_if_empty(out, hydra_cfg.job.name)
        raise SystemExit(2) from None  # the message is the whole report
    except NonFiniteTrainingError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    except TrainingInterrupted as e:
        name = job.__name__.removeprefix("run_").replace("main", "run")
        command = recovery.resume_command(sys.argv[0], name, list(hydra_cfg.overrides.task), out)
        log.warning("%s", e)
        print(f"interrupted: {e}; resume with: {command}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    if ctx.is_main:
        print(f"outputs written to {out}")
    return value


def with_job_name(argv: list[str], name: str) -> list[str]:
    """`argv` with `hydra.job.name=name` appended unless it names one: the job name is the output folder's first
    level (outputs/train/DATE/TIME) and the log file's name (train.log)."""
    if any(a.startswith(("hydra.job.name=", "++hydra.job.name=")) for a in argv[1:]):
        return argv
    return [*argv, f"hydra.job.name={name}"]


def _entry(job: Callable[[DictConfig, Path], dict], name: str) -> Callable[[], float | None]:
    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
    def main(cfg: DictConfig) -> float | None:
        return _run(job, cfg)

    def entry() -> float | None:
        sys.argv[:] = with_job_name(sys.argv, name)
        return parallel.launch(main)  # under torchrun: join the group first (app/parallel.py)

    entry.__doc__ = f"The `{name}` job ({job.__doc__ or job.__name__})."
    return entry


run = _entry(jobs.run_main, "run")
train = _entry(jobs.run_train, "train")
sample = _entry(jobs.run_sample, "sample")
evaluate = _entry(jobs.run_evaluate, "evaluate")
likelihood = _entry(jobs.run_likelihood, "likelihood")
arena = _entry(jobs.run_arena, "arena")

JOBS = {"run": run, "train": train, "sample": sample, "evaluate": evaluate, "likelihood": likelihood, "arena": arena}


def dispatch() -> None:
    """`python -m sde_diffusion.app.cli JOB [overrides]`, JOB one of run, train, sample, evaluate, likelihood, arena."""
    if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
        print(f"usage: python -m sde_diffusion.app.cli {{{','.join(JOBS)}}} [overrides]", file=sys.stderr)
        raise SystemExit(2)
    JOBS[sys.argv.pop(1)]()


if __name__ == "__main__":
    dispatch()
