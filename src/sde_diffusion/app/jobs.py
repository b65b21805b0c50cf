"""The application's jobs: build objects from a config, train, sample, evaluate, likelihood.

Each job takes the composed config and an output folder and writes its files there (see `outputs.py`);
the Hydra entry points in `cli.py` only call these.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .. import metrics as M
from ..calibration import calibrate_grid
from ..sampling import sample as draw_samples
from ..score import ScoreModel
from ..solvers import Solver, get_grid
from ..training import CheckpointError, DSMLoss, Trainer, list_checkpoints, load_checkpoint
from ..training.checkpoint import load_module_state
from . import outputs, steering
from .config import SAMPLING_KEYS, ConfigError, validate

log = logging.getLogger("sde_diffusion")

CALIBRATED = "calibrated"
"""The grid name that asks for a grid fitted to the trained model before sampling (`sample.calibration`)."""


@dataclass
class Sampler:
    """A configured solver and its time grid (`steps`, `grid`; None: the solver's or SDE's default)."""

    solver: Solver
    steps: int | None
    grid: str | None


@dataclass
class Built:
    sde: Any
    data: Any
    network: torch.nn.Module
    samplers: dict[str, Sampler]
    device: torch.device
    config: dict  # the resolved, validated config


def _instantiate(node, key: str, **kwargs):
    """`instantiate(node)`, turning the library's own errors into a ConfigError that names the key."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e  # Hydra wraps the target's exception in an InstantiationException
        if not isinstance(cause, (ValueError, TypeError, FileNotFoundError, KeyError, ImportError)):
            raise
        raise ConfigError(f"{key}: {type(cause).__name__}: {cause}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=auto or device=cpu")
    return torch.device(name)


def build(cfg: DictConfig) -> Built:
    """Validate the config, then build the SDE, the data set, the network (its size read off the data where the
    model node leaves it null) and every sampler in `solvers`; all before any training starts."""
    resolved = validate(cfg)
    sde = _instantiate(resolved["sde"], "sde")
    data = _instantiate(resolved["data"], "data")
    model_node = dict(resolved["model"])
    filled = {"dim": math.prod(data.shape), "in_channels": data.shape[0], "T": sde.T}
    for key, value in filled.items():
        if key in model_node and model_node[key] is None:
            model_node[key] = value
    with torch.random.fork_rng(devices=[]):  # the initial weights come from `seed`, leaving the global RNG as it was
        torch.manual_seed(resolved["seed"])
        network = _instantiate(model_node, "model")
    if not resolved["solvers"]:
        raise ConfigError("no solvers configured: add one with +solver@solvers.NAME=<a file of conf/solver/>")
    steps_override = resolved["sample"]["steps"]
    samplers = {}
    for name, node in resolved["solvers"].items():
        options = {k: v for k, v in node.items() if k not in SAMPLING_KEYS}
        solver = _instantiate(options, f"solvers.{name}")
        steps = steps_override if steps_override is not None else node.get("steps")
        samplers[name] = Sampler(solver, steps, _checked_grid(node.get("grid"), solver, f"solvers.{name}.grid"))
    if any(sampler.grid == CALIBRATED for sampler in samplers.values()):
        _check_calibration(resolved["sample"]["calibration"])
    built = Built(sde, data, network, samplers, resolve_device(resolved["device"]), resolved)
    steering.check(built)
    return built


def _check_calibration(c) -> None:
    """sample.calibration, checked before training when a solver asks for a calibrated grid."""
    if c["pool"] is not None and c["pool"] < c["pilot"]:
        raise ConfigError(f"sample.calibration.pool={c['pool']} must be at least sample.calibration.pilot={c['pilot']} "
                          "(the pilot batch is stratified from the pool), or null to fit on plain pilot draws")
    if c["pool"] is not None and c["trim"]:
        raise ConfigError("sample.calibration: give trim or pool, not both (the stratified pilot keeps the hard samples "
                          "that trim would leave out)")


def _checked_grid(grid, solver, key: str):
    """A grid name (or a list of times), checked before any work: `calibrated` needs a fixed-step ODE solver."""
    if grid is None or not isinstance(grid, str):
        return grid
    if grid == CALIBRATED:
        if solver.stochastic or solver.adaptive:
            kind = "stochastic" if solver.stochastic else "adaptive (it chooses its own steps)"
            raise ConfigError(f"{key}: a calibrated grid needs a deterministic fixed-step solver; {solver.name} is {kind}")
        return grid
    try:
        get_grid(grid)
    except ValueError as e:
        raise ConfigError(f"{key}: {e} (or {CALIBRATED!r})") from None
    return grid


def _calibrated_times(built: Built, score: ScoreModel, sampler: Sampler, seed: int) -> tuple[torch.Tensor, dict]:
    """The grid of `sampler` fitted to `score` (sde_diffusion.calibrate_grid), and what the calibration measured."""
    c, s = built.config["sample"]["calibration"], built.config["sample"]
    steps = sampler.steps if sampler.steps is not None else sampler.solver.default_steps
    generator = torch.Generator(device=built.device).manual_seed(seed + 2)
    start = time.perf_counter()
    result = calibrate_grid(
        built.sde, score, sampler.solver, steps, shape=(c["pool"] or c["pilot"], *built.data.shape), generator=generator,
        device=built.device, denoise=s["denoise"], max_evaluations=c["max_evaluations"], trim=c["trim"],
        stratify=c["pilot"] if c["pool"] else None,
    )
    info = {"times": result.times.tolist(), "pilot_error": result.error, "initial_errors": result.initial_errors,
            "evaluations": result.evaluations, "nfe": result.nfe, "wall_time_s": time.perf_counter() - start}
    log.info("calibrated the %d-step grid of %s on %d pilot draws%s: error %.3g (log_snr %.3g, edm %.3g), %d batched "
             "evaluations, %.1f s", steps, sampler.solver.name, c["pilot"],
             f" stratified from {c['pool']}" if c["pool"] else "", result.error,
             result.initial_errors.get("log_snr", math.nan), result.initial_errors.get("edm", math.nan), result.nfe,
             info["wall_time_s"])
    return result.times, info


# -- train ------------------------------------------------------------------------------------------------------------
def train(built: Built, out: Path) -> tuple[ScoreModel, dict]:
    """Train the network by denoising score matching; checkpoints in out/checkpoints; returns the EMA score model."""
    t = built.config["train"]
    loss = _instantiate(t["loss"], "train.loss")(built.sde)
    if not isinstance(loss, DSMLoss):
        raise ConfigError(f"train.loss must build a DSMLoss; got {type(loss).__name__}")
    trainer = Trainer(
        built.network, loss, built.data,
        batch_size=t["batch_size"], lr=t["lr"], weight_decay=t["weight_decay"], warmup_steps=t["warmup_steps"],
        grad_clip=t["grad_clip"], ema_decay=t["ema_decay"], seed=built.config["seed"], device=built.device,
        precision=t["precision"], compile=t["compile"], checkpoint_dir=out / "checkpoints",
        checkpoint_every=t["checkpoint_every"], keep_checkpoints=t["keep_checkpoints"], resume=t["resume"],
        log_every=t["log_every"], progress=built.config["sample"]["progress"],
    )
    log.info("training %s on %s (%d examples) with %s for %d steps on %s", type(built.network).__name__,
             built.data.name, len(built.data), built.sde, t["steps"], built.device)
    start = time.perf_counter()
    history = trainer.train(t["steps"])
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in history if "loss" in r]
    summary = {"steps": trainer.step, "wall_time_s": seconds, "final_loss": losses[-1] if losses else None,
               "parameters": sum(p.numel() for p in built.network.parameters())}
    log.info("trained to step %d in %.1f s (last logged loss %s)", trainer.step, seconds, summary["final_loss"])
    return trainer.score_model(ema=True), {"summary": summary, "history": history}


def load_run(cfg: DictConfig, checkpoint: str | None) -> tuple[DictConfig, Path]:
    """The config of a previous run (its sde, model, data and loss replace ours) and its newest checkpoint file."""
    if not checkpoint:
        raise CheckpointError("no checkpoint given: pass sample.checkpoint=<a run directory> (or a step_*.pt file)")
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: pass sample.checkpoint=<a run directory> (or a step_*.pt file)")
    run_dir = path if path.is_dir() else path.parent.parent
    files = list_checkpoints(run_dir / "checkpoints") if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{path} holds no checkpoints (expected {path}/checkpoints/step_*.pt from a training run)")
    saved = run_dir / "config.yaml"  # the resolved config every job writes
    if not saved.is_file():
        raise CheckpointError(f"{run_dir} has no config.yaml, so its sde, model and data are unknown")
    theirs = OmegaConf.load(saved)
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in ("sde", "model", "data"):
            cfg[key] = theirs[key]
        cfg.train.loss = theirs.train.loss  # the prediction the network was trained for
    return cfg, files[-1]


def score_from_checkpoint(built: Built, file: Path) -> ScoreModel:
    """The EMA weights of a training checkpoint in the network, wrapped as the ScoreModel it was trained as."""
    state = load_checkpoint(file, map_location="cpu")
    load_module_state(built.network, state["ema"]["module"], "EMA model", file)
    prediction = built.config["train"]["loss"].get("prediction", "eps")
    log.info("loaded %s (step %d, %s prediction)", file, state["step"], prediction)
    return ScoreModel(built.network.to(built.device).eval(), built.sde, prediction)


# -- sample -----------------------------------------------------------------------------------------------------------
def sample_all(built: Built, score: ScoreModel, generator_seed: int | None = None) -> dict[str, dict]:
    """Draw `sample.n` samples with every configured sampler from the same seed; x, NFE and wall time each."""
    s = built.config["sample"]
    seed = built.config["seed"] if generator_seed is None else generator_seed
    results = {}
    with torch.no_grad():
        for name, sampler in built.samplers.items():
            grid, extra = sampler.grid, {}
            if grid == CALIBRATED:
                grid, extra["calibration"] = _calibrated_times(built, score, sampler, seed)
            generator = torch.Generator(device=built.device).manual_seed(seed + 1)
            start = time.perf_counter()
            result = draw_samples(
                built.sde, score, sampler.solver, shape=(s["n"], *built.data.shape), steps=sampler.steps,
                grid=grid, denoise=s["denoise"], generator=generator, progress=s["progress"], device=built.device,
            )
            seconds = time.perf_counter() - start
            results[name] = {"x": result.x.detach().cpu(), "nfe": int(result.nfe), "wall_time_s": seconds,
                             "solver": sampler.solver.name, "steps": sampler.steps, "grid": sampler.grid, **extra}
            log.info("sampled %d with %s (%s, steps=%s): NFE %d, %.2f s", s["n"], name, sampler.solver.name,
                     sampler.steps, result.nfe, seconds)
    return results


# -- evaluate ---------------------------------------------------------------------------------------------------------
def reference(built: Built, n: int, seed: int) -> tuple[Any, torch.Tensor]:
    """(draw(n, generator) for the two-sample floor, the reference sample of size n): fresh draws from the data
    law where it is known (toys, mixtures), else the held-out split (test split / train=false) of the data node."""
    data = built.data
    if data.sampler is not None:
        draw = lambda k, g: data.sample(k, g)  # noqa: E731
        return draw, draw(n, torch.Generator().manual_seed(seed + 2))
    node = dict(built.config["data"])
    if "split" in node:
        node["split"] = "test"
    elif "train" in node:
        node["train"] = False
    test = _instantiate(node, "data").tensors()[0] if node != built.config["data"] else None
    pool_train = data.tensors()[0]
    if test is None:
        log.warning("data %s has no held-out split: metrics compare with training examples", data.name)
        test = pool_train
    n = min(n, len(test))

    def draw(k, g):  # a random subset of the training set, for the floor against the test split
        return pool_train[torch.randperm(len(pool_train), generator=g)[:k]]

    return draw, test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed + 2))[:n]]


def _metric_fns(names: list[str], dim: int, projections: int, seed: int) -> dict:
    directions = M.random_projections(dim, projections, torch.Generator().manual_seed(seed + 3))
    table = {
        "sliced_wasserstein": lambda x, y: M.sliced_wasserstein(x, y, directions),
        "mmd": M.mmd,
        "energy_distance": M.energy_distance,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"evaluate.metrics: unknown metric(s) {unknown}; choose from {sorted(table)}")
    return {n: table[n] for n in names}


def evaluate(built: Built, samples: dict[str, dict], score: ScoreModel | None = None) -> dict:
    """Each metric of each sample set against the reference (the mean over `floor_repeats` fresh draws of the data
    law, or the held-out split), beside the two-sample floor at the same size; for a Gaussian mixture also the exact
    score's samples (same solver and steps) and the mean log p of the samples under the mixture."""
    e, seed = built.config["evaluate"], built.config["seed"]
    n = min(len(r["x"]) for r in samples.values()) if samples else built.config["sample"]["n"]
    draw, ref = reference(built, n, seed)
    n = min(n, len(ref))
    fns = _metric_fns(e["metrics"], math.prod(built.data.shape), e["projections"], seed)
    floor = {}
    for name, fn in fns.items():
        mean, err = M.two_sample_floor(draw, n, fn, e["floor_repeats"], torch.Generator().manual_seed(seed + 4))
        floor[name], floor[name + "_stderr"] = mean, err
    # One reference sample is itself a random draw whose own deviation (e.g. in mode weights) moves every
    # distance to it by as much as the floor; where the law can be sampled, average over fresh references.
    refs = [ref]
    if built.data.sampler is not None:
        g = torch.Generator().manual_seed(seed + 5)
        refs += [draw(n, g) for _ in range(e["floor_repeats"] - 1)]

    def distance(x: torch.Tensor, fn) -> tuple[float, float]:
        values = torch.tensor([fn(x, r) for r in refs], dtype=torch.float64)
        return float(values.mean()), float(values.std() / math.sqrt(len(refs))) if len(refs) > 1 else 0.0

    mixture = getattr(built.data, "mixture", None)
    report = {"n": n, "references": len(refs), "floor": floor, "solvers": {}}
    if mixture is not None:
        report["data_log_prob"] = float(mixture.log_prob(ref.double()).mean())
    for name, r in samples.items():
        x = r["x"][:n]
        row = {k: r[k] for k in ("solver", "steps", "grid", "nfe", "wall_time_s", "calibration") if k in r}
        row["finite"] = bool(torch.isfinite(x).all())
        for metric, fn in fns.items():
            row[metric], row[metric + "_stderr"] = distance(x, fn) if row["finite"] else (float("nan"), float("nan"))
        if mixture is not None:
            row["sample_log_prob"] = float(mixture.log_prob(x.double()).mean()) if row["finite"] else float("nan")
        report["solvers"][name] = row
    if mixture is not None and e["ground_truth"] and score is not None:
        exact = mixture.score_model(built.sde)
        log.info("ground truth: the same solvers driven by the exact score of the mixture")
        truth = sample_all(built, exact)
        report["exact_score"] = {
            name: {
                "nfe": r["nfe"],
                **{m: distance(r["x"][:n].float(), fn)[0] for m, fn in fns.items()},
                "sample_log_prob": float(mixture.log_prob(r["x"][:n].double()).mean()),
            }
            for name, r in truth.items()
        }
    return report


# -- likelihood ------------------------------------------------------------------------------------------------------
def likelihood(built: Built, score: ScoreModel) -> dict:
    """The configured likelihood: bits/dim of the held-out split (`likelihood=bpd`), or the mean negative log-
    likelihood of fresh data through the PF-ODE (`likelihood=nll`), beside the exact value for a mixture."""
    node = built.config.get("likelihood")
    if not node:
        raise ConfigError("no likelihood configured: pass likelihood=nll (low-dimensional data) or likelihood=bpd (images)")
    fn = _instantiate(node, "likelihood")
    n, seed = built.config["evaluate"]["likelihood_n"], built.config["seed"]
    _, x = reference(built, n, seed)
    x = x.to(built.device)
    start = time.perf_counter()
    if node["_target_"].endswith("evaluate_bits_per_dim"):
        result = fn(built.sde, score, x)
    else:
        out = fn(built.sde, score, x.double() if x.dtype == torch.float64 else x)
        result = {"nll": float(-out.log_prob.mean()), "nll_stderr": float(out.log_prob.std() / math.sqrt(len(x))),
                  "n": len(x), "nfe": int(out.nfe)}
        mixture = getattr(built.data, "mixture", None)
        if mixture is not None:
            result["exact_nll"] = float(-mixture.log_prob(x.double().cpu()).mean())
    result["wall_time_s"] = time.perf_counter() - start
    return result


# -- the jobs -------------------------------------------------------------------------------------------------------
def _finish(built: Built, out: Path, samples: dict, report: dict, extra: dict) -> dict:
    metrics = {**extra, **report}
    outputs.write_npz(out / "samples.npz", {name: r["x"].numpy() for name, r in samples.items()})
    outputs.write_json(out / "metrics.json", metrics)
    if built.config["plots"]:
        draw_ref, ref = reference(built, min(len(r["x"]) for r in samples.values()), built.config["seed"])
        outputs.plot_samples(out / "samples.png", {n: r["x"] for n, r in samples.items()}, ref, built.data.shape)
        outputs.plot_quality_vs_nfe(out / "quality_vs_nfe.png", outputs.rows_from_metrics(metrics, out.name))
    return metrics


def run_main(cfg: DictConfig, out: Path) -> dict:
    """Train, sample with every solver, evaluate, plot: the default experiment."""
    built = build(cfg)
    outputs.write_config(out / "config.yaml", built.config)
    score, training = train(built, out)
    if built.config["plots"]:
        outputs.plot_loss(out / "loss.png", training["history"])
    score, guidance = steering.guided(built, score, out)
    samples = sample_all(built, score)
    report = evaluate(built, samples, score)
    extra = {"train": training["summary"], "loss_history": training["history"], "guidance": guidance,
             "inpainting": steering.inpainting(built, score, out)}
    return _finish(built, out, samples, report, extra)


def run_train(cfg: DictConfig, out: Path) -> dict:
    built = build(cfg)
    outputs.write_config(out / "config.yaml", built.config)
    _, training = train(built, out)
    if built.config["plots"]:
        outputs.plot_loss(out / "loss.png", training["history"])
    metrics = {"train": training["summary"], "loss_history": training["history"]}
    outputs.write_json(out / "metrics.json", metrics)
    return metrics


def run_sample(cfg: DictConfig, out: Path) -> dict:
    """Sample (and evaluate) from a previous run's checkpoint with the configured solvers and step counts."""
    cfg, file = load_run(cfg, cfg.sample.checkpoint)
    built = build(cfg)
    outputs.write_config(out / "config.yaml", built.config)
    score, guidance = steering.guided(built, score_from_checkpoint(built, file), out)
    samples = sample_all(built, score)
    report = evaluate(built, samples, score)
    extra = {"checkpoint": str(file), "guidance": guidance, "inpainting": steering.inpainting(built, score, out)}
    return _finish(built, out, samples, report, extra)


def run_evaluate(cfg: DictConfig, out: Path) -> dict:
    """Metrics of saved samples (evaluate.samples: a samples.npz or a run folder) or, without them, of fresh samples
    from sample.checkpoint."""
    source = cfg.evaluate.samples
    if not source:
        return run_sample(cfg, out)
    path = Path(source).expanduser()
    path = path / "samples.npz" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"evaluate.samples: no samples file at {path} (give a samples.npz or the run folder holding it)")
    run_dir = path.parent
    if (run_dir / "config.yaml").is_file():  # the run that wrote the samples: evaluate against its data
        theirs = OmegaConf.load(run_dir / "config.yaml")
        cfg = cfg.copy()
        with open_dict(cfg):
            for key in ("sde", "model", "data"):
                cfg[key] = theirs[key]
    built = build(cfg)
    with np.load(path) as arrays:
        samples = {name: {"x": torch.from_numpy(arrays[name]), "solver": name, "steps": None, "grid": None,
                          "nfe": None, "wall_time_s": None} for name in arrays.files}
    report = evaluate(built, samples)
    report["samples_file"] = str(path)
    outputs.write_json(out / "metrics.json", report)
    return report


def run_likelihood(cfg: DictConfig, out: Path) -> dict:
    cfg, file = load_run(cfg, cfg.sample.checkpoint)
    built = build(cfg)
    score = score_from_checkpoint(built, file)
    result = {"checkpoint": str(file), "likelihood": likelihood(built, score)}
    outputs.write_json(out / "metrics.json", result)
    return result
