"""The values of the typed top level of the config (train, sample, evaluate, seed, threads), checked before any work.

OmegaConf checks their types at composition, but not their ranges, and it lets `+key=value` add a key the schema
does not have (`python -m sde_diffusion +no_such_key=1` would run and ignore it). `check_values` refuses both,
naming the full key, so a value that would fail only after training (`sample.n=0`, an unknown metric) or deep in
the trainer with a traceback (`train.batch_size=0`) fails at start with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Callable
from typing import Any

from .. import validation as check
from ..solvers.grids import MAX_STEPS
from ..training.guard import ON_NONFINITE
from ..training.trainer import PRECISIONS
from .config import CalibrationConfig, Config, ConfigError, EvaluateConfig, SampleConfig, TrainConfig

METRICS = ("sliced_wasserstein", "mmd", "energy_distance")
"""The sample-quality metrics `evaluate.metrics` may list (see jobs._metric_fns)."""

SCHEMAS = {"": Config, "train": TrainConfig, "sample": SampleConfig, "sample.calibration": CalibrationConfig,
           "evaluate": EvaluateConfig}


def _integer(minimum: int, maximum: int | None = None, optional: bool = False) -> Callable:
    return lambda key, v: None if (optional and v is None) else check.integer(key, v, minimum=minimum, maximum=maximum)


def _real(optional: bool = False, **bounds) -> Callable:
    return lambda key, v: None if (optional and v is None) else check.real(key, v, **bounds)


def _metrics(key: str, value) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key} must be a non-empty list of metric names from {list(METRICS)}; got {value!r}")
    unknown = [m for m in value if m not in METRICS]
    if unknown:
        raise ValueError(f"{key}: unknown metric(s) {unknown}; choose from {list(METRICS)}")


def _precision(key: str, value) -> None:
    check.choice(key, value, PRECISIONS)


RULES: dict[str, Callable[[str, Any], Any]] = {
    "seed": _integer(0),
    "threads": _integer(0),
    "train.steps": _integer(0),
    "train.batch_size": _integer(1),
    "train.lr": _real(positive=True),
    "train.weight_decay": _real(minimum=0),
    "train.warmup_steps": _integer(0),
    "train.grad_clip": _real(optional=True, minimum=0),
    "train.ema_decay": _real(minimum=0, below=1),
    "train.on_nonfinite": lambda key, v: check.choice(key, v, ON_NONFINITE),
    "train.max_nonfinite_steps": _integer(1),
    "train.precision": _precision,
    "train.checkpoint_every": _integer(0),
    "train.keep_checkpoints": _integer(1),
    "train.log_every": _integer(1),
    "sample.n": _integer(1),
    "sample.steps": _integer(1, MAX_STEPS, optional=True),
    "sample.calibration.pilot": _integer(1),
    "sample.calibration.max_evaluations": _integer(1),
    "sample.calibration.trim": _real(minimum=0, below=1),
    "sample.calibration.pool": _integer(1, optional=True),
    "sample.calibration.validation": _integer(0),
    "evaluate.metrics": _metrics,
    "evaluate.projections": _integer(1),
    "evaluate.floor_repeats": _integer(2),
    "evaluate.likelihood_n": _integer(2),
}
"""Each checked key and its check, which raises TypeError / ValueError with a message naming the key."""


def _unknown_keys(resolved: dict) -> None:
    for prefix, schema in SCHEMAS.items():
        node = resolved
        for part in filter(None, prefix.split(".")):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            continue
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in known:
                full = f"{prefix}.{key}" if prefix else key
                hint = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(
                    f"unknown key {full}" + (f"; did you mean {(prefix + '.') if prefix else ''}{hint[0]}?" if hint else "")
                    + f" (known keys{' of ' + prefix if prefix else ''}: {', '.join(known)})"
                )


def _get(resolved: dict, key: str):
    node = resolved
    for part in key.split("."):
        node = node[part]
    return node


def _solver_steps(resolved: dict) -> None:
    """Each solver's steps at most MAX_STEPS (as a named grid allows); a grid given as a list of times fixes the step
    count, so steps (the solver's or sample.steps) must agree with it."""
    override = resolved["sample"]["steps"]
    for name, node in resolved["solvers"].items():
        grid, own = node.get("grid"), node.get("steps")
        if isinstance(own, int) and own > MAX_STEPS:
            raise ConfigError(f"solvers.{name}.steps={own} is more than any sampler needs (at most {MAX_STEPS}; "
                              "a run would take hours); lower it")
        if not isinstance(grid, list):
            continue
        key = f"solvers.{name}.grid"
        if len(grid) < 2 or any(isinstance(t, bool) or not isinstance(t, (int, float)) for t in grid) or any(
                not b < a for a, b in itertools.pairwise(grid)):
            raise ConfigError(f"{key} must be a list of at least two strictly decreasing times; got {grid!r}")
        steps = override if override is not None else node.get("steps")
        if steps is not None and steps != len(grid) - 1:
            which = "sample.steps" if override is not None else f"solvers.{name}.steps"
            raise ConfigError(f"{key} has {len(grid) - 1} steps but {which}={steps}: leave {which} null with a "
                              "given grid, or change the times")


def check_values(resolved: dict) -> None:
    """Refuse keys the schema does not have and values outside their range; each error names the full key."""
    _unknown_keys(resolved)
    for key, rule in RULES.items():
        try:
            rule(key, _get(resolved, key))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{e} (pass {key}=...)") from None
    if isinstance(resolved.get("solvers"), dict):
        _solver_steps(resolved)
