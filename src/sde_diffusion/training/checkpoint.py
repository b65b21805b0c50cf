"""Checkpoint files: written atomically, read back with a clear error, never clobbering the last good one.

A checkpoint is written to a temporary file in the same directory, flushed and fsync'ed, then renamed over the
target with `os.replace` (atomic on POSIX), and the directory entry is fsync'ed. A crash or error mid-write
leaves the previous file untouched and removes the temporary one. Files are named `step_<step>.pt`; the newest
`keep` are kept, older ones are deleted only after a newer one is safely in place.

Everything stored is plain tensors, numbers, strings, lists and dicts, so checkpoints load with
`torch.load(weights_only=True)`: opening one never runs code from the file.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import torch

FORMAT = "sde_diffusion.checkpoint/1"
_NAME = re.compile(r"^step_(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\.step_\d+\.pt\.tmp-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model or configuration it is loaded into."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _abandoned(pid: int) -> bool:
    """A temporary file of this process (not writing now) or of one that no longer runs."""
    return pid == os.getpid() or not _pid_alive(pid)


def prepare_directory(directory: str | Path) -> list[Path]:
    """Make sure checkpoints can be written to `directory` before any training: create it, refuse a path that is a
    file or not writable (CheckpointError naming the path and the cause), and delete the temporary files that an
    interrupted write of a process no longer running left behind. Returns the files deleted."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CheckpointError(f"checkpoint_dir {directory} exists but is not a directory; choose another path") from None
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint_dir {directory}: {_cause(e)}") from None
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint_dir {directory} exists but is not a directory; choose another path")
    probe = directory / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"checkpoint_dir {directory} is not writable: {_cause(e)}; fix its permissions or choose another path") from None
    stale = [p for p in directory.iterdir() if (m := _TEMPORARY.match(p.name)) and _abandoned(int(m.group(1)))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _cause(e: OSError) -> str:
    """An OSError in words: its errno's meaning (no space left, read-only, ...) and the path."""
    known = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
             errno.EACCES: "permission denied", errno.ENOTDIR: "a component of the path is not a directory",
             errno.EDQUOT: "the disk quota is exceeded"}
    return (known.get(e.errno) if e.errno is not None else None) or (e.strerror or str(e)) + (f" ({e.filename})" if e.filename else "")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename). A failed write (full disk, read-only file
    system, ...) raises CheckpointError naming the path and the cause; the previous files are untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            cause = _cause(e)
        else:  # torch's writer reports a failed write as a RuntimeError without the errno
            free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
            cause = f"the write failed ({free} bytes free on that file system)" if free is not None else "the write failed"
        raise CheckpointError(f"could not write checkpoint {path}: {cause}. The previous checkpoints in "
                              f"{path.parent} are untouched; free space or choose another checkpoint_dir") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform can open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; a missing, corrupt or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # torch's text for a foreign pickle advises weights_only=False, which would run code from the file: not quoted
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = "" if "weights_only" in str(e) or "pickle" in str(e).lower() else f": {first[:200]}"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (or not a tensors-only checkpoint) and cannot be read safely "
            f"({type(e).__name__}{detail}). " + _older_hint(path)
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an sde_diffusion training checkpoint (format {found!r}, expected {FORMAT!r})")
    return state


def _older_hint(path: Path) -> str:
    older = [p for p in list_checkpoints(path.parent) if p != path and p.name < path.name]
    if older:
        return f"The previous checkpoint {older[-1]} is untouched; move the corrupt file away to resume from it."
    return "No earlier checkpoint exists in that directory."


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    if keep < 1:
        return
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)


def load_module_state(module: torch.nn.Module, state: dict, what: str, path: str | Path) -> None:
    """`module.load_state_dict(state)`, turning a key or shape mismatch into a CheckpointError that says which."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    resized = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or resized:
        details = []
        if missing:
            details.append(f"missing {_few(missing)}")
        if unexpected:
            details.append(f"unexpected {_few(unexpected)}")
        if resized:
            details.append("shape mismatch " + ", ".join(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in resized[:3]))
        raise CheckpointError(f"the {what} in {path} was saved from a different architecture: " + "; ".join(details))
    module.load_state_dict(state)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
