"""The application's config schema (a dataclass in Hydra's ConfigStore) and the validator of `_target_` nodes.

Two layers of checking, both before any work starts:
  - the typed top level (`Config`: seed, device, train, sample, evaluate) is a structured config, so OmegaConf
    rejects an unknown key or a value of the wrong type at composition, naming the full key;
  - every node with a `_target_` (sde, model, data, each solver, the likelihood) is checked by `validate` against
    the signature of what it builds: an unknown key fails with a "did you mean" hint, a value whose type
    contradicts a simple annotation (int, float, bool, str) fails, each naming the full key path.

A solver node's `_target_` is the registry (`sde_diffusion.solvers.get` with a `name`) or any callable that builds
a `Solver`, a user's own class included (the plugin point): its options are checked against its signature, and the
app's own keys `steps` and `grid` are taken off before it is called.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ..registry import simple_types as _simple_types
from ..registry import type_ok as _type_ok

# Keys of a solver node that the app reads itself (the time grid), not options of the solver.
SAMPLING_KEYS = ("steps", "grid")
AUTO_SOLVER = "sde_diffusion.autotuning.AutoSolver"  # conf/solver/auto.yaml: tuned to the model for sample.nfe


class ConfigError(ValueError):
    """A configuration that cannot be run: the message names the key and says how to fix it."""


@dataclass
class TrainConfig:
    """The trainer's options (`sde_diffusion.training.Trainer`) and the loss (`DSMLoss`, a `_target_` node)."""

    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"  # or "cosine": after the warm-up, a cosine decay of the rate to 0 at `steps`
    grad_clip: float | None = 1.0
    on_nonfinite: str = "skip"  # a NaN / inf loss or gradient: skip that step, or stop the run (training/guard.py)
    max_nonfinite_steps: int = 10  # with skip: stop after this many non-finite steps in a row
    ema_decay: float = 0.999
    precision: str = "fp32"
    compile: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False
    log_every: int = 50
    loss: Any = field(
        default_factory=lambda: {
            "_target_": "sde_diffusion.training.DSMLoss",
            "_partial_": True,
            "prediction": "eps",
            "weighting": "sigma2",
            "importance_sampling": False,
            "stratified": False,
            "antithetic": False,
        }
    )


@dataclass
class CalibrationConfig:
    """For solvers with `grid: calibrated`: the grid is fitted to the trained model before sampling
    (`sde_diffusion.calibrate_grid`) on `pilot` prior draws, by `method`: `gradient` (descent through the solve,
    at most `budget` sample-evaluations in all) or `powell` (each Powell search capped at `max_evaluations`; `trim`),
    and judged on `validation` held-out draws. With `pool`, the pilot batch and the held-out draws are stratified
    from that many draws (`calibrate_grid(stratify=pilot)`; pool >= pilot + validation): their hardest half by
    screening error and a reweighted sample of the rest; worth it where a few trajectories carry most of the error
    (separated modes, few steps)."""

    method: str = "gradient"
    budget: int = 100_000
    pilot: int = 128
    max_evaluations: int = 1500
    trim: float = 0.0
    pool: int | None = None
    validation: int = 128


@dataclass
class SampleConfig:
    """How many samples to draw with each solver in `solvers`, and from which checkpoint (sde-sample)."""

    n: int = 2000
    steps: int | None = None  # the steps of a single-solver run (a sweep); refused with several solvers
    nfe: int | None = None  # the evaluation budget of solver=auto (conf/solver/auto.yaml), denoising included
    denoise: bool = True  # the final Tweedie step E[x_0 | x_t_min] (one more NFE)
    checkpoint: str | None = None  # a run directory (its checkpoints/ and .hydra/config.yaml) or a .pt file
    progress: bool = True
    batch_size: int | None = None  # samples per solver call on each rank (null: a rank's whole shard at once)
    batch_invariant: bool = True  # evaluate the network so that a sample's output ignores its batch (networks/invariant.py)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class EvaluateConfig:
    """Sample-quality metrics against the data law (fresh draws) or a held-out split, each beside its floor."""

    metrics: list = field(default_factory=lambda: ["sliced_wasserstein", "mmd", "energy_distance"])
    projections: int = 256  # fixed directions for sliced Wasserstein (drawn from `seed`)
    floor_repeats: int = 5  # two-sample floor: mean over this many pairs of data samples
    ground_truth: bool = True  # for Gaussian-mixture data: also sample with the exact score, and log p of samples
    samples: str | None = None  # sde-evaluate: a samples.npz (or a run directory holding one) to evaluate
    likelihood_n: int = 500  # sde-likelihood: data points (fresh draws, or the first of the test split)


@dataclass
class PathsConfig:
    """Where data sets are read from and runs are written (conf/paths/default.yaml sets them)."""

    data_dir: str = "data"  # the torchvision-layout root of mnist / cifar10 (their `root`)
    output_dir: str = "outputs"  # runs go to output_dir/<job>/DATE/TIME (job: run, train, sample, ...)
    multirun_dir: str = "multirun"  # sweeps (-m) go to multirun_dir/<job>/DATE/TIME


@dataclass
class LoggerConfig:
    """Experiment tracking (app/tracking.py), rank 0 only: conf/logger/{tensorboard,csv,none}.yaml."""

    kind: str = "none"  # tensorboard (event files in <run>/tensorboard), csv (<run>/log.csv) or none
    eval_every: int = 0  # training steps between evaluation-hook calls (0: none): metrics and a sample plot
    eval_samples: int = 256  # samples the hook draws with the first configured solver


@dataclass
class GuidanceConfig:
    """Steering the samples (`sde_diffusion.guidance`): `kind` none, cfg (classifier-free: a model with num_classes,
    trained with train.loss.label_dropout > 0) or classifier (a noise-conditional classifier, `classifier`, trained
    on the same data and SDE for `classifier_steps` after the score model). `labels`: the classes requested, cycled
    over the samples (null: 0, 1, ..., K-1 in turn). `interval`: [lo, hi] in sigma / alpha (cfg only)."""

    kind: str = "none"
    weight: float = 1.0
    interval: list | None = None
    scale: float = 1.0
    labels: list | None = None
    classifier: Any = None
    classifier_steps: int = 2000
    classifier_batch_size: int = 256
    classifier_lr: float = 1e-3


@dataclass
class InpaintConfig:
    """Inpainting after sampling (`sde_diffusion.inpaint`) with every configured solver, of the first `n` held-out
    examples with the part `observed` known (upper_half, left_half, or random: a fraction `fraction` of entries).
    `method` null skips it; tmpd (exact for Gaussian data), replacement or repaint."""

    method: str | None = None
    observed: str = "upper_half"
    fraction: float = 0.5
    n: int = 360
    cg_iterations: int = 5
    observation_std: float = 0.0
    max_noise_level: float | None = None  # tmpd: correct the score only where sigma / alpha <= this
    max_update: float | None = None  # tmpd: trust region on the change of E[x_0 | x_t], per unit residual
    resample: int = 10


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    # torch's intra-op threads, set at the start of every entry point: 1 by default, since the toy and digits jobs
    # are bound by small-tensor overhead and extra threads only contend on a busy machine (3-6 instead of ~40
    # steps/s measured on 2 cores); 0 leaves torch's own choice (OMP_NUM_THREADS or the core count), N uses N.
    threads: int = 1
    plots: bool = True
    # The number a job returns (to a sweeper such as Optuna): a dotted path into its metrics.json, e.g.
    # solvers.pc.sliced_wasserstein; null: the job's main metric (see sde_diffusion.app.jobs.objective).
    objective: str | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    sde: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    solvers: Any = field(default_factory=dict)
    likelihood: Any = None
    arena: Any = None  # sde-arena: a node of conf/arena/ (arena=quick or arena=full)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)


def register() -> None:
    """Put the schema in Hydra's ConfigStore as `base_config` (the first entry of conf/config.yaml's defaults)."""
    ConfigStore.instance().store(name="base_config", node=Config)


# -- validation of _target_ nodes ---------------------------------------------------------------------------------
def _locate(path: str) -> Callable:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from None


def _dispatched(target: str, node: dict, key: str) -> tuple[Callable | None, tuple[str, ...]]:
    """For registry factories `get(name, **options)`: the callable `name` selects, and keys the app adds."""
    table: Mapping[str, Callable[..., Any]]
    extra: tuple[str, ...]
    if target == "sde_diffusion.solvers.get":
        from ..solvers import SOLVERS

        table, extra = SOLVERS, SAMPLING_KEYS
    elif target == "sde_diffusion.data.get":
        from ..data import DATASETS

        table, extra = DATASETS, ()
    else:
        return None, ()
    name: Any = node.get("name")  # any value of the config; checked against the table
    if name not in table:
        hint = difflib.get_close_matches(str(name), table, n=1)
        raise ConfigError(
            f"{key}.name: unknown name {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" Known: {sorted(table)}"
        )
    fn = table[name]
    return (fn.__init__ if inspect.isclass(fn) else fn), extra


def validate_node(node: dict, key: str, extra: tuple[str, ...] = ()) -> None:
    """Check one `_target_` node's keys and simple types against the signature of what it builds; `extra` are keys
    the app reads itself (a solver node's `steps` and `grid`)."""
    target = node["_target_"]
    fn, dispatched_extra = _dispatched(target, node, key)
    extra = tuple(dict.fromkeys(extra + dispatched_extra))
    params: dict[str, inspect.Parameter | None]  # None: a key the registry factory takes itself
    if fn is None:
        obj = _locate(target)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        # a class without an __init__ of its own takes no options (object's signature is *args, **kwargs)
        params = {} if fn is object.__init__ else {k: p for k, p in inspect.signature(fn).parameters.items() if k != "self"}
    else:
        params = {k: p for k, p in inspect.signature(fn).parameters.items() if k not in ("self", "name")}
        params["name"] = None
    open_ended = any(p is not None and p.kind == p.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    known = [k for k, p in params.items() if p is None or p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)] + list(extra)
    for k, value in node.items():
        if k.startswith("_"):
            continue
        if k not in known:
            if open_ended:
                continue
            hint = difflib.get_close_matches(k, known, n=1)
            raise ConfigError(
                f"unknown key {key}.{k}" + (f"; did you mean {key}.{hint[0]}?" if hint else "")
                + f" ({target} takes: {', '.join(known) or 'no options'})"
            )
        allowed = _simple_types(hints[k]) if k in hints else None
        if value is not None and allowed is not None and not _type_ok(value, allowed):
            names = " or ".join(sorted(t.__name__ for t in allowed if t is not type(None)))
            raise ConfigError(f"{key}.{k} must be {names}; got {type(value).__name__} {value!r}")
    steps = node.get("steps") if "steps" in extra else None
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ConfigError(f"{key}.steps must be a positive integer or null; got {steps!r}")


def _walk(node, key: str):
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")


def to_container(cfg: DictConfig, key: str = "") -> dict:
    """The resolved config as plain containers; a `???` value fails naming its key."""
    try:
        return cast(dict, OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))  # a DictConfig gives a dict
    except MissingMandatoryValue as e:
        full = getattr(e, "full_key", None) or key
        raise ConfigError(f"{full} must be set (it is ??? in the config); pass {full}=...") from None


def validate(cfg: DictConfig) -> dict:
    """Check every `_target_` node of the composed config; returns the resolved config as plain containers."""
    resolved = to_container(cfg)
    for key in ("sde", "model", "data"):
        if not isinstance(resolved.get(key), dict) or "_target_" not in resolved[key]:
            raise ConfigError(f"{key} must be a node with a _target_ (choose one from conf/{key}/, e.g. {key}=...)")
    if not isinstance(resolved.get("solvers"), dict):
        raise ConfigError("solvers must map names to solver nodes (e.g. +solver@solvers.ode=heun)")
    for name, node in resolved["solvers"].items():
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(f"solvers.{name} must be a solver node: one from conf/solver/ (+solver@solvers.{name}=heun) "
                              "or a node whose _target_ builds a Solver (your own class)")
    if resolved["device"] not in ("auto", "cpu", "cuda") and not str(resolved["device"]).startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {resolved['device']!r}")
    for key, node in _walk(resolved, ""):
        validate_node(node, key, SAMPLING_KEYS if key.startswith("solvers.") and key.count(".") == 1 else ())
    from .preflight import check_values

    check_values(resolved)
    return resolved
