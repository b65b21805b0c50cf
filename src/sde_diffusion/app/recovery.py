"""What the app does when a run ends early: the command that resumes it, and no empty output folder left behind.

Hydra creates the output folder (with `.hydra/` and the log) before the job starts; a run refused by validation
wrote nothing else there, so the folder is removed again. An interrupted training run keeps its folder (the
checkpoint, config.yaml, metrics.json with the history so far) and prints one line: the same command with
`train.resume=true hydra.run.dir=<that folder>`, which continues it bit for bit.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

HYDRA_ONLY = {".hydra"}


def discard_if_empty(out: Path, log_name: str | None = None) -> bool:
    """Remove `out` when it holds nothing but what Hydra itself put there (`.hydra/`, the job's log); True if removed."""
    if not out.is_dir():
        return False
    allowed = HYDRA_ONLY | ({f"{log_name}.log"} if log_name else set())
    if any(p.name not in allowed for p in out.iterdir()):
        return False
    shutil.rmtree(out, ignore_errors=True)
    return True


def program(argv0: str, job: str) -> str:
    """How this entry point was called: `python -m sde_diffusion`, `python -m sde_diffusion.app.cli JOB` or sde-JOB."""
    name = Path(argv0).name
    if name == "__main__.py":
        return f"{Path(sys.executable).name} -m sde_diffusion"
    if name == "cli.py":
        return f"{Path(sys.executable).name} -m sde_diffusion.app.cli {job}"
    return name


def resume_command(argv0: str, job: str, overrides: Sequence[str], out: Path) -> str:
    """The command line that continues an interrupted training run in `out`."""
    drop = ("train.resume=", "hydra.run.dir=", "+train.resume=")
    kept = [o for o in overrides if not o.startswith(drop)]
    return " ".join([program(argv0, job), *map(shlex.quote, kept), "train.resume=true", shlex.quote(f"hydra.run.dir={out}")])
