"""The Hydra entry points: sde-run (also `python -m sde_diffusion`), sde-train, sde-sample, sde-evaluate,
sde-likelihood. All read the same packaged config (conf/config.yaml) and take the same overrides.

A configuration or checkpoint problem ends the run with one line naming the key or file, and exit status 2 (a
run refused before it wrote anything leaves no output folder); Hydra itself reports unknown keys and wrong types of
the typed top level (exit status 1). Training that stops on non-finite values exits with status 3; Ctrl-C or
SIGTERM during training exits with 130 / 143 after printing the command that resumes the run (`recovery.py`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..training import CheckpointError, NonFiniteTrainingError, TrainingInterrupted
from . import jobs, recovery
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


def _run(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    try:
        set_threads(cfg.get("threads", 1))
        job(cfg, out)
    except (ConfigError, CheckpointError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        recovery.discard_if_empty(out, hydra_cfg.job.name)
        raise SystemExit(2)
    except NonFiniteTrainingError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3)
    except TrainingInterrupted as e:
        name = job.__name__.removeprefix("run_").replace("main", "run")
        command = recovery.resume_command(sys.argv[0], name, list(hydra_cfg.overrides.task), out)
        log.warning("%s", e)
        print(f"interrupted: {e}; resume with: {command}", file=sys.stderr)
        raise SystemExit(e.exit_code)
    print(f"outputs written to {out}")


def _entry(job: Callable[[DictConfig, Path], dict]) -> Callable[[], None]:
    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
    def main(cfg: DictConfig) -> None:
        _run(job, cfg)

    return main


run = _entry(jobs.run_main)
train = _entry(jobs.run_train)
sample = _entry(jobs.run_sample)
evaluate = _entry(jobs.run_evaluate)
likelihood = _entry(jobs.run_likelihood)

JOBS = {"run": run, "train": train, "sample": sample, "evaluate": evaluate, "likelihood": likelihood}


def dispatch() -> None:
    """`python -m sde_diffusion.app.cli JOB [overrides]`, JOB one of run, train, sample, evaluate, likelihood."""
    if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
        print(f"usage: python -m sde_diffusion.app.cli {{{','.join(JOBS)}}} [overrides]", file=sys.stderr)
        raise SystemExit(2)
    JOBS[sys.argv.pop(1)]()


if __name__ == "__main__":
    dispatch()
