"""The application's jobs: build objects from a config, train, sample, evaluate, likelihood.

Each job takes the composed config and an output folder and writes its files there (see `outputs.py`);
the Hydra entry points in `cli.py` only call these.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .. import metrics as M
from ..autotuning import AutoSolver
from ..calibration import calibrate_grid
from ..networks import batch_invariant
from ..sampling import sample as draw_samples
from ..score import ScoreModel
from ..solvers import Solver, get_grid
from ..solvers import get as get_solver
from ..training import (
    CheckpointError,
    DSMLoss,
    NonFiniteTrainingError,
    Trainer,
    TrainingInterrupted,
    distributed,
    list_checkpoints,
    load_checkpoint,
)
from ..training.checkpoint import load_module_state
from . import outputs, parallel, steering, tracking
from .config import SAMPLING_KEYS, ConfigError, validate

log = logging.getLogger("sde_diffusion")

CALIBRATED = "calibrated"
"""The grid name that asks for a grid fitted to the trained model before sampling (`sample.calibration`)."""


@dataclass
class Sampler:
    """A configured solver and its time grid (`steps`, `grid`; None: the solver's or SDE's default)."""

    solver: Solver | AutoSolver
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
    ctx = distributed.context()
    if ctx.distributed and name in ("auto", "cuda") and ctx.device.type == "cuda":
        return ctx.device  # one GPU per process under torchrun: cuda:LOCAL_RANK
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
    if steps_override is not None and len(resolved["solvers"]) > 1:
        raise ConfigError(
            f"sample.steps={steps_override} would set the steps of every solver ({', '.join(resolved['solvers'])}); set "
            "one solver's with solvers.NAME.steps=..., or sample with a single solver (experiment=solver_sweep)")
    samplers = {}
    for name, node in resolved["solvers"].items():
        options = {k: v for k, v in node.items() if k not in SAMPLING_KEYS}
        solver = _instantiate(options, f"solvers.{name}")
        if isinstance(solver, AutoSolver):
            if resolved["sample"]["nfe"] is None or resolved["sample"]["nfe"] < 1:
                raise ConfigError(f"solvers.{name} is solver=auto: give its NFE budget, sample.nfe=10 for instance")
            samplers[name] = Sampler(solver, None, None)
            continue
        if not isinstance(solver, Solver):
            raise ConfigError(f"solvers.{name}: _target_ {node['_target_']} built a {type(solver).__name__}, not a "
                              "sde_diffusion.solvers.Solver (subclass Solver, with init and step)")
        steps = steps_override if steps_override is not None else node.get("steps")
        if solver.adaptive and steps is not None:
            key = "sample.steps" if steps_override is not None else f"solvers.{name}.steps"
            raise ConfigError(f"{key}={steps}: {solver.name} is adaptive and chooses its own steps; set it to null "
                              "(and bound the work with the solver's tolerances or max_nfe)")
        samplers[name] = Sampler(solver, steps, _checked_grid(node.get("grid"), solver, f"solvers.{name}.grid"))
    batch = resolved["sample"]["batch_size"]
    if batch is not None and not (isinstance(batch, int) and batch >= 1):
        raise ConfigError(f"sample.batch_size must be a positive integer or null (a rank's whole shard); got {batch!r}")
    if any(sampler.grid == CALIBRATED for sampler in samplers.values()):
        _check_calibration(resolved["sample"]["calibration"])
    built = Built(sde, data, network, samplers, resolve_device(resolved["device"]), resolved)
    steering.check(built)
    return built


def _check_calibration(c) -> None:
    """sample.calibration, checked before training when a solver asks for a calibrated grid."""
    if c["pool"] is not None and c["pool"] < c["pilot"] + c["validation"]:
        raise ConfigError(f"sample.calibration.pool={c['pool']} must be at least sample.calibration.pilot="
                          f"{c['pilot']} + sample.calibration.validation={c['validation']} (the pilot batch and the "
                          "held-out draws are stratified from the pool), or null to fit on plain pilot draws")
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
    solver = sampler.solver
    assert isinstance(solver, Solver), "a calibrated grid is checked at build to belong to a fixed-step solver"
    steps = sampler.steps if sampler.steps is not None else solver.default_steps
    generator = torch.Generator(device=built.device).manual_seed(seed + 2)
    start = time.perf_counter()
    search = dict(max_evaluations=c["max_evaluations"], trim=c["trim"]) if c["method"] == "powell" else dict(budget=c["budget"])
    result = calibrate_grid(
        built.sde, score, solver, steps, shape=(c["pool"] or c["pilot"], *built.data.shape), generator=generator,
        device=built.device, denoise=s["denoise"], method=c["method"], stratify=c["pilot"] if c["pool"] else None,
        validation=c["validation"], **search,
    )
    info = {"times": result.times.tolist(), "pilot_error": result.error, "initial_errors": result.initial_errors,
            "evaluations": result.evaluations, "nfe": result.nfe, "cost": result.cost,
            "validation_error": result.validation_error, "wall_time_s": time.perf_counter() - start}
    log.info("calibrated the %d-step grid of %s on %d pilot draws%s: error %.3g (log_snr %.3g, edm %.3g), %d batched "
             "evaluations, %.1f s", steps, sampler.solver.name, c["pilot"],
             f" stratified from {c['pool']}" if c["pool"] else "", result.error,
             result.initial_errors.get("log_snr", math.nan), result.initial_errors.get("edm", math.nan), result.nfe,
             info["wall_time_s"])
    return result.times, info


def _autotuned(built: Built, score: ScoreModel, auto: AutoSolver, seed: int) -> tuple[Sampler, torch.Tensor, dict]:
    """solver=auto: the sampler and grid `autotune` chose for `sample.nfe` on `score`, and what it measured."""
    with torch.enable_grad():
        tuned = auto.tune(built.sde, score, built.config["sample"]["nfe"], built.data.shape, seed + 3, built.device)
    info = {"solver": tuned.solver, "options": tuned.options, "times": tuned.times.tolist(), "cost": tuned.cost,
            "validation_error": tuned.validation_error, "from_cache": tuned.from_cache, "candidates": tuned.candidates}
    log.info("autotuned for %d NFE: %s %s on a %d-step calibrated grid, validation error %.3g, %d sample-evaluations%s",
             built.config["sample"]["nfe"], tuned.solver, tuned.options, tuned.steps, tuned.validation_error,
             tuned.cost, " (from the cache)" if tuned.from_cache else "")
    return Sampler(get_solver(tuned.solver, **tuned.options), None, None), tuned.times, info


# -- train ------------------------------------------------------------------------------------------------------------
def train(built: Built, out: Path) -> tuple[ScoreModel, dict]:
    """Train the network by denoising score matching; checkpoints in out/checkpoints; returns the EMA score model."""
    t = built.config["train"]
    loss = _instantiate(t["loss"], "train.loss")(built.sde)
    if not isinstance(loss, DSMLoss):
        raise ConfigError(f"train.loss must build a DSMLoss; got {type(loss).__name__}")
    if t["lr_schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_schedule must be constant or cosine; got {t['lr_schedule']!r}")
    tracker = tracking.make_logger(built.config["logger"], out, distributed.context())
    trainer = Trainer(
        built.network, loss, built.data,
        batch_size=t["batch_size"], lr=t["lr"], weight_decay=t["weight_decay"], warmup_steps=t["warmup_steps"],
        lr_decay_steps=t["steps"] if t["lr_schedule"] == "cosine" else 0,
        grad_clip=t["grad_clip"], on_nonfinite=t["on_nonfinite"], max_nonfinite_steps=t["max_nonfinite_steps"],
        ema_decay=t["ema_decay"], seed=built.config["seed"], device=built.device,
        precision=t["precision"], compile=t["compile"], checkpoint_dir=out / "checkpoints",
        checkpoint_every=t["checkpoint_every"], keep_checkpoints=t["keep_checkpoints"], resume=t["resume"],
        log_every=t["log_every"], progress=built.config["sample"]["progress"],
        on_log=lambda record: tracker.log_scalars(record["step"], record, "train" if "loss" in record else "eval"),
        eval_every=built.config["logger"]["eval_every"], eval_fn=evaluation_hook(built, tracker),
    )
    log.info("training %s on %s (%d examples) with %s for %d steps on %s", type(built.network).__name__,
             built.data.name, len(built.data), built.sde, t["steps"], built.device)
    start = time.perf_counter()
    try:
        history = trainer.train(t["steps"])
    except (TrainingInterrupted, NonFiniteTrainingError) as e:  # keep what the run measured so far
        if _is_main():
            outputs.write_json(out / "metrics.json", {"train": {"steps": trainer.step, "stopped": str(e),
                                                                "skipped_steps": trainer.skipped_steps},
                                                      "loss_history": trainer.history})
        raise
    finally:
        tracker.close()
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in history if "loss" in r]
    summary = {"steps": trainer.step, "wall_time_s": seconds, "final_loss": losses[-1] if losses else None,
               "parameters": sum(p.numel() for p in built.network.parameters())}
    summary["weights_sha256"] = weights_fingerprint(trainer.model)
    log.info("trained to step %d in %.1f s (last logged loss %s) on %d rank(s); weights sha256 %s", trainer.step,
             seconds, summary["final_loss"], distributed.context().world_size, summary["weights_sha256"])
    return trainer.score_model(ema=True), {"summary": summary, "history": history}


def _saved_config(path: Path) -> DictConfig:
    """The config.yaml a run wrote: a YAML mapping (a list is not a config)."""
    saved = OmegaConf.load(path)
    if not isinstance(saved, DictConfig):
        raise ConfigError(f"{path} holds a YAML list, not the config of a run")
    return saved


def evaluation_hook(built: Built, tracker) -> Callable | None:
    """The trainer's evaluation hook (`logger.eval_every` > 0; run on rank 0 only, so it samples locally): draw
    `logger.eval_samples` with the first configured solver from the EMA weights (seeds 0..n-1), their sliced
    Wasserstein distance to fresh data; on TensorBoard also a plot of them."""
    node = built.config["logger"]
    if not node["eval_every"]:
        return None
    if not (isinstance(node["eval_samples"], int) and node["eval_samples"] >= 2):
        raise ConfigError(f"logger.eval_samples must be an integer >= 2; got {node['eval_samples']!r}")
    name, sampler = next(iter(built.samplers.items()))
    n, seed = node["eval_samples"], built.config["seed"]
    _, ref = reference(built, n, seed)
    fn = _metric_fns(["sliced_wasserstein"], math.prod(built.data.shape), 64, seed)["sliced_wasserstein"]

    solver = sampler.solver
    if not isinstance(solver, Solver):
        raise ConfigError(f"logger.eval_every: the evaluation hook samples with the first solver, {name}, which is "
                          "solver=auto (tuned only after training); put a fixed solver first")

    def hook(trainer) -> dict:
        with torch.no_grad():
            x = draw_samples(built.sde, trainer.score_model(ema=True), solver, shape=(n, *built.data.shape),
                             steps=sampler.steps, grid=None if sampler.grid == CALIBRATED else sampler.grid,
                             denoise=built.config["sample"]["denoise"], seeds=range(n), device=built.device).x.cpu()
        if isinstance(tracker, tracking.TensorBoardLogger):
            tracker.log_figure(trainer.step, f"samples/{name}", outputs.samples_figure({name: x}, ref, built.data.shape))
        return {f"{name}_sliced_wasserstein": fn(x, ref[:len(x)])}

    return hook


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, bit for bit (under DDP every rank logs its own: they agree)."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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
    theirs = _saved_config(saved)
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
def sample_seed(seed: int) -> int:
    """The seed of sample 0 of a run with `seed`: (seed mod 2^31) 2^32, so that runs with different seeds draw disjoint
    streams for up to 2^32 samples; sample i has sample_seed(seed) + i."""
    return (int(seed) % 2**31) * 2**32


def sample_all(built: Built, score: ScoreModel, generator_seed: int | None = None) -> dict[str, dict]:
    """Draw `sample.n` samples with every configured sampler, sample i from its own seed sample_seed(seed) + i
    (`sample(..., seeds=...)`): under torchrun each rank draws its shard and every rank gets the gathered set, the
    same bit for bit as one process with any `sample.batch_size` (with `sample.batch_invariant`, which evaluates the
    network so that no sample's rounding depends on its batch). x, NFE per sample, network calls, wall time."""
    s, ctx = built.config["sample"], distributed.context()
    seed = built.config["seed"] if generator_seed is None else generator_seed
    if s["batch_invariant"] and isinstance(score.network, torch.nn.Module):
        score = ScoreModel(batch_invariant(score.network), score.sde, score.prediction)
    results = {}
    with torch.no_grad():
        for name, sampler in built.samplers.items():
            grid: str | torch.Tensor | None = sampler.grid
            extra: dict[str, Any] = {}
            if grid == CALIBRATED:  # once, on rank 0, and broadcast
                fitted = _calibrated_times(built, score, sampler, seed) if ctx.is_main else None
                times, extra["calibration"] = parallel.broadcast(fitted, ctx)
                grid = times.to(built.device)
            if isinstance(sampler.solver, AutoSolver):  # once, on rank 0, and broadcast
                tuned = _autotuned(built, score, sampler.solver, seed) if ctx.is_main else None
                sampler, grid, extra["autotune"] = parallel.broadcast(tuned, ctx)
            solver = sampler.solver
            assert isinstance(solver, Solver), "solver=auto was replaced by the solver it chose"

            def draw(seeds, solver=solver, sampler=sampler, grid=grid):
                return draw_samples(
                    built.sde, score, solver, shape=(len(seeds), *built.data.shape), steps=sampler.steps,
                    grid=grid, denoise=s["denoise"], seeds=seeds, progress=s["progress"] and ctx.is_main,
                    device=built.device,
                )

            start = time.perf_counter()
            x, calls, per_sample = parallel.sample_shards(draw, s["n"], sample_seed(seed), s["batch_size"], ctx)
            seconds = time.perf_counter() - start
            nfe = round(per_sample) if float(per_sample).is_integer() else per_sample
            results[name] = {"x": x, "nfe": nfe, "network_calls": calls, "wall_time_s": seconds,
                             "solver": solver.name, "steps": sampler.steps, "grid": sampler.grid, **extra}
            steps = "adaptive" if solver.adaptive else f"{sampler.steps or solver.default_steps} steps"
            log.info("sampled %d with %s (slot %s, %s) on %d rank(s): NFE %s per sample, %d network calls, %.2f s",
                     s["n"], solver.name, name, steps, ctx.world_size, nfe, calls, seconds)
    return results


# -- evaluate ---------------------------------------------------------------------------------------------------------
def reference(built: Built, n: int, seed: int) -> tuple[Any, torch.Tensor]:
    """(draw(n, generator) for the two-sample floor, the reference sample of size n): fresh draws from the data
    law where it is known (toys, mixtures), else the held-out split (test split / train=false) of the data node."""
    data = built.data
    if data.sampler is not None:
        fresh = lambda k, g: data.sample(k, g)  # noqa: E731
        return fresh, fresh(n, torch.Generator().manual_seed(seed + 2))
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


def exact_samples(built: Built, score: ScoreModel | None) -> dict[str, dict] | None:
    """For Gaussian-mixture data (and evaluate.ground_truth): the same samplers driven by the mixture's exact score,
    from the same seeds (sharded like every sampling; every rank must call it)."""
    mixture = getattr(built.data, "mixture", None)
    if mixture is None or not built.config["evaluate"]["ground_truth"] or score is None:
        return None
    log.info("ground truth: the same solvers driven by the exact score of the mixture")
    return sample_all(built, mixture.score_model(built.sde))


def evaluate(built: Built, samples: dict[str, dict], score: ScoreModel | None = None,
             truth: dict[str, dict] | None = None) -> dict:
    """Each metric of each sample set against the reference (the mean over `floor_repeats` fresh draws of the data
    law, or the held-out split), beside the two-sample floor at the same size; for a Gaussian mixture also the exact
    score's samples (same solver and steps; `truth` if drawn already) and the mean log p of the samples under the
    mixture. Local: under torchrun rank 0 calls it."""
    e, seed = built.config["evaluate"], built.config["seed"]
    start = time.perf_counter()
    n = min(len(r["x"]) for r in samples.values()) if samples else built.config["sample"]["n"]
    draw, ref = reference(built, n, seed)
    n = min(n, len(ref))
    fns = _metric_fns(e["metrics"], math.prod(built.data.shape), e["projections"], seed)
    log.info("evaluating %d sample set(s) of %d with %s against the data (floors from %d pairs of data samples)",
             len(samples), n, ", ".join(fns), e["floor_repeats"])
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
    report: dict[str, Any] = {"n": n, "references": len(refs), "floor": floor, "solvers": {}}
    if mixture is not None:
        # The data's E[log p] = -H(p) from 2^18 fresh draws (standard error ~0.002 nats), not from the reference
        # sample of n alone, whose own mean log p misses it by ~1 / sqrt(n) (0.02 nats at n = 2000) and would move
        # every slot's gap by that much; the reference sample's is kept as reference_log_prob.
        g = torch.Generator().manual_seed(seed + 6)
        log_p = torch.cat([mixture.log_prob(draw(2**16, g).double()) for _ in range(4)])
        report["data_log_prob"], report["data_log_prob_stderr"] = float(log_p.mean()), float(log_p.std() / 2**9)
        report["reference_log_prob"] = float(mixture.log_prob(ref.double()).mean())
    for name, r in samples.items():
        x = r["x"][:n]
        row = {k: r[k] for k in ("solver", "steps", "grid", "nfe", "wall_time_s", "calibration", "autotune") if k in r}
        row["finite"] = bool(torch.isfinite(x).all())
        for metric, fn in fns.items():
            row[metric], row[metric + "_stderr"] = distance(x, fn) if row["finite"] else (float("nan"), float("nan"))
        if mixture is not None:
            row["sample_log_prob"] = float(mixture.log_prob(x.double()).mean()) if row["finite"] else float("nan")
        report["solvers"][name] = row
        log.info("%s: %s", name if row.get("solver") in (None, name) else f"{row['solver']} ({name})", ", ".join(f"{m} {row[m]:.4g} ± {row[m + '_stderr']:.2g} (floor {floor[m]:.4g} ± "
                                          f"{floor[m + '_stderr']:.2g})" for m in fns)
                 + (f", log p {row['sample_log_prob']:.3f} (data {report['data_log_prob']:.3f})" if mixture is not None else ""))
    if truth is None and mixture is not None and e["ground_truth"] and score is not None:
        truth = exact_samples(built, score)
    if truth is not None and mixture is not None:
        report["exact_score"] = {
            name: {
                "nfe": r["nfe"],
                **{m: distance(r["x"][:n].float(), fn)[0] for m, fn in fns.items()},
                "sample_log_prob": float(mixture.log_prob(r["x"][:n].double()).mean()),
            }
            for name, r in truth.items()
        }
    log.info("evaluated in %.1f s", time.perf_counter() - start)
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
    ctx = distributed.context()
    mine = x[parallel.shard(len(x), ctx)].to(built.device)  # under torchrun each rank takes every N-th point
    start = time.perf_counter()
    if node["_target_"].endswith("evaluate_bits_per_dim"):
        parts = distributed.all_gather_object(fn(built.sde, score, mine) if len(mine) else None, ctx)
        result = merge_bits_per_dim([p for p in parts if p is not None])
        result["ranks"] = ctx.world_size
    else:
        out = fn(built.sde, score, mine.double() if mine.dtype == torch.float64 else mine) if len(mine) else None
        log_p = parallel.gather_rows(out.log_prob.detach().cpu() if out is not None else None, len(x), ctx)
        nfe = sum(distributed.all_gather_object(int(out.nfe) if out is not None else 0, ctx))
        result = {"nll": float(-log_p.mean()), "nll_stderr": float(log_p.std() / math.sqrt(len(x))),
                  "n": len(x), "nfe": nfe, "ranks": ctx.world_size}
        mixture = getattr(built.data, "mixture", None)
        if mixture is not None:
            result["exact_nll"] = float(-mixture.log_prob(x.double().cpu()).mean())
    result["wall_time_s"] = time.perf_counter() - start
    return result


def merge_bits_per_dim(parts: list[dict]) -> dict:
    """One summary from the ranks' `evaluate_bits_per_dim` summaries of disjoint shards: means and standard errors
    pooled by sample count (the within- and between-shard sums of squares), NFE summed."""
    if len(parts) == 1:
        return parts[0]
    counts = [p["n_samples"] for p in parts]
    n = sum(counts)
    mean = sum(k * p["bits_per_dim"] for k, p in zip(counts, parts, strict=True)) / n
    square = sum((k - 1) * k * p["bits_per_dim_stderr"] ** 2 + k * (p["bits_per_dim"] - mean) ** 2
                 for k, p in zip(counts, parts, strict=True))
    batches, nfe = sum(p["n_batches"] for p in parts), sum(p["nfe"] for p in parts)
    return {**parts[0], "bits_per_dim": mean, "bits_per_dim_stderr": math.sqrt(square / max(n - 1, 1) / n),
            "n_samples": n, "n_batches": batches, "nfe": nfe, "nfe_per_batch": nfe / batches}


# -- the jobs -------------------------------------------------------------------------------------------------------
def _is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return distributed.context().is_main


def _finish(built: Built, out: Path, samples: dict, report: dict, extra: dict) -> dict:
    metrics = {**extra, **report}
    if not _is_main():
        return metrics
    outputs.write_npz(out / "samples.npz", {name: r["x"].numpy() for name, r in samples.items()})
    outputs.write_json(out / "metrics.json", metrics)
    if built.config["plots"]:
        _draw_ref, ref = reference(built, min(len(r["x"]) for r in samples.values()), built.config["seed"])
        panels = {(n if r["solver"] == n else f"{r['solver']} ({n})"): r["x"] for n, r in samples.items()}
        outputs.plot_samples(out / "samples.png", panels, ref, built.data.shape)
        outputs.plot_quality_vs_nfe(out / "quality_vs_nfe.png", outputs.rows_from_metrics(metrics, out.name))
    return metrics


def _sample_and_evaluate(built: Built, score: ScoreModel) -> tuple[dict, dict]:
    """Samples and the ground truth on every rank (sharded), the metrics on rank 0 ({} elsewhere)."""
    samples = sample_all(built, score)
    truth = exact_samples(built, score)
    return samples, (evaluate(built, samples, score, truth) if _is_main() else {})


def _write_start(built: Built, out: Path) -> None:
    if _is_main():
        outputs.write_config(out / "config.yaml", built.config)


def run_main(cfg: DictConfig, out: Path) -> dict:
    """Train, sample with every solver, evaluate, plot: the default experiment."""
    built = build(cfg)
    _write_start(built, out)
    score, training = train(built, out)
    if built.config["plots"] and _is_main():
        outputs.plot_loss(out / "loss.png", training["history"])
    score, guidance = steering.guided(built, score, out)
    samples, report = _sample_and_evaluate(built, score)
    extra = {"train": training["summary"], "loss_history": training["history"], "guidance": guidance,
             "inpainting": steering.inpainting(built, score, out) if _is_main() else {}}
    return _finish(built, out, samples, report, extra)


def run_train(cfg: DictConfig, out: Path) -> dict:
    built = build(cfg)
    _write_start(built, out)
    _, training = train(built, out)
    metrics = {"train": training["summary"], "loss_history": training["history"]}
    if _is_main():
        if built.config["plots"]:
            outputs.plot_loss(out / "loss.png", training["history"])
        outputs.write_json(out / "metrics.json", metrics)
    return metrics


def run_sample(cfg: DictConfig, out: Path) -> dict:
    """Sample (and evaluate) from a previous run's checkpoint with the configured solvers and step counts."""
    cfg, file = load_run(cfg, cfg.sample.checkpoint)
    built = build(cfg)
    _write_start(built, out)
    score, guidance = steering.guided(built, score_from_checkpoint(built, file), out)
    samples, report = _sample_and_evaluate(built, score)
    extra = {"checkpoint": str(file), "guidance": guidance,
             "inpainting": steering.inpainting(built, score, out) if _is_main() else {}}
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
        theirs = _saved_config(run_dir / "config.yaml")
        cfg = cfg.copy()
        with open_dict(cfg):
            for key in ("sde", "model", "data"):
                cfg[key] = theirs[key]
    built = build(cfg)
    if not _is_main():  # metrics of saved samples: rank 0's work alone
        return {}
    samples = {name: {"x": x, "solver": name, "steps": None, "grid": None, "nfe": None, "wall_time_s": None}
               for name, x in outputs.read_samples(path).items()}
    report = evaluate(built, samples)
    report["samples_file"] = str(path)
    outputs.write_json(out / "metrics.json", report)
    return report


def run_likelihood(cfg: DictConfig, out: Path) -> dict:
    cfg, file = load_run(cfg, cfg.sample.checkpoint)
    built = build(cfg)
    score = score_from_checkpoint(built, file)
    result = {"checkpoint": str(file), "likelihood": likelihood(built, score)}
    if _is_main():
        outputs.write_json(out / "metrics.json", result)
    return result


def run_arena(cfg: DictConfig, out: Path) -> dict:
    """The solver arena (sde_diffusion.arena) from a node of conf/arena/: every solver x budget on exact-score
    problems beside the peers; its report (records.csv, summary.csv, results.md, charts) in the run folder."""
    from .. import arena

    resolved = validate(cfg)
    if not resolved.get("arena"):
        raise ConfigError("no arena configured: pass arena=quick (about 2 minutes on 2 cores) or arena=full")
    config = _instantiate(resolved["arena"], "arena", _convert_="all")
    lineup = arena.select(arena.default_contestants(config.peers, config.calibrated), config.solvers)
    start = time.perf_counter()
    result = arena.run_arena(config, lineup, log=log.info)
    result.seconds = time.perf_counter() - start
    paths = arena.write_report(result, out, command="sde-arena " + " ".join(_overrides()))
    summary = {"runs": len(result.records), "wall_time_s": result.seconds, "files": {k: str(v) for k, v in paths.items()}}
    outputs.write_json(out / "metrics.json", summary)
    return summary


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# -- the number a job returns --------------------------------------------------------------------------------------
def objective(metrics: dict, path: str | None = None, metric: str = "sliced_wasserstein") -> float | None:
    """The number a job hands to a sweeper (Optuna, Ax): `metrics` at the dotted `path` (e.g.
    `solvers.pc.sliced_wasserstein`, `train.final_loss`, `likelihood.nll`); without a path, the job's main metric:
    `metric` of its first solver (run, sample, evaluate), the likelihood's nll or bits/dim, or the final training loss.
    None where the job measures nothing of the kind (the arena)."""
    if path is None:
        if metrics.get("solvers"):
            path = f"solvers.{next(iter(metrics['solvers']))}.{metric}"
        elif "likelihood" in metrics:
            path = "likelihood." + ("nll" if "nll" in metrics["likelihood"] else "bits_per_dim")
        elif "train" in metrics:
            path = "train.final_loss"
        else:
            return None
    value: Any = metrics
    for i, part in enumerate(path.split(".")):
        if not isinstance(value, dict) or part not in value:
            where = ".".join(path.split(".")[:i]) or "metrics.json"
            known = sorted(value) if isinstance(value, dict) else []
            raise ConfigError(f"objective={path}: {where} has no {part!r} (it has: {', '.join(map(str, known)) or 'nothing'})")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"objective={path} is not a number ({type(value).__name__}); name a metric such as "
                          f"solvers.NAME.{metric}")
    return float(value)
