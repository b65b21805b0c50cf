"""The app's guidance and inpainting: the `guidance` group (none / cfg / classifier) and the `inpaint` node.

`guided(built, score, out)` turns the trained score model into the one every solver samples with; `inpaint_all`
inpaints held-out examples with every configured solver. Both are checked before any training (`check`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from ..guidance import ClassifierFreeGuidance, ClassifierGuidance
from ..inpainting import METHODS, inpaint
from ..networks import NULL_LABEL
from ..score import ScoreModel
from ..training import ClassifierLoss, Trainer
from .config import ConfigError

log = logging.getLogger("sde_diffusion")
KINDS = ("none", "cfg", "classifier")
OBSERVED = ("upper_half", "left_half", "random")


def check(built) -> None:
    """The guidance and inpaint nodes against the model and data, before any work."""
    g, p = built.config["guidance"], built.config["inpaint"]
    if g["kind"] not in KINDS:
        raise ConfigError(f"guidance.kind must be one of {KINDS} (guidance=none|cfg|classifier); got {g['kind']!r}")
    classes = built.data.num_classes if built.data.labels is not None else None
    if g["kind"] != "none" and not classes:
        raise ConfigError(f"guidance={g['kind']} needs labelled data; {built.data.name} has no labels")
    if g["kind"] == "cfg" and not getattr(built.network, "num_classes", None):
        raise ConfigError(f"guidance=cfg needs a class-conditional model: set model.num_classes={classes} and "
                          "train.loss.label_dropout=0.1 (the null label learns the unconditional score)")
    if g["labels"] is not None and classes and any(not isinstance(k, int) or not 0 <= k < classes for k in g["labels"]):
        raise ConfigError(f"guidance.labels must be classes in [0, {classes}); got {g['labels']}")
    if g["weight"] < 0 or g["scale"] < 0:
        raise ConfigError(f"guidance.weight and guidance.scale must be >= 0; got {g['weight']}, {g['scale']}")
    if g["kind"] != "none" and (built.config["sample"]["batch_size"] is not None or _world_size() > 1):
        raise ConfigError(f"guidance={g['kind']} labels the samples of one batch: leave sample.batch_size null and run "
                          "it in one process (guided sampling is not sharded yet)")
    if p["method"] is not None and p["method"] not in METHODS:
        raise ConfigError(f"inpaint.method must be null or one of {METHODS}; got {p['method']!r}")
    if p["observed"] not in OBSERVED:
        raise ConfigError(f"inpaint.observed must be one of {OBSERVED}; got {p['observed']!r}")


def _world_size() -> int:
    from ..training import distributed

    return distributed.context().world_size


def requested_labels(built, n: int) -> torch.Tensor:
    """The classes asked for, cycled over n samples."""
    g = built.config["guidance"]
    cycle = torch.as_tensor(g["labels"] or list(range(built.data.num_classes)), dtype=torch.long)
    return cycle[torch.arange(n) % len(cycle)].to(built.device)


def train_classifier(built, out: Path):
    """A noise-conditional classifier trained on the data and SDE by the Trainer (ClassifierLoss)."""
    from .jobs import _instantiate

    g = built.config["guidance"]
    node = dict(g["classifier"])
    for key, value in {"dim": math.prod(built.data.shape), "num_classes": built.data.num_classes, "T": built.sde.T}.items():
        if key in node and node[key] is None:
            node[key] = value
    classifier = _instantiate(node, "guidance.classifier")
    trainer = Trainer(classifier, ClassifierLoss(built.sde), built.data, batch_size=g["classifier_batch_size"],
                      lr=g["classifier_lr"], seed=built.config["seed"], device=built.device,
                      checkpoint_dir=out / "classifier", progress=built.config["sample"]["progress"])
    start = time.perf_counter()
    history = trainer.train(g["classifier_steps"])
    log.info("trained the noise-conditional classifier for %d steps in %.1f s (loss %.4g)", trainer.step,
             time.perf_counter() - start, history[-1]["loss"])
    return trainer.ema.module.eval(), {"steps": trainer.step, "final_loss": history[-1]["loss"]}


def guided(built, score: ScoreModel, out: Path) -> tuple[ScoreModel, dict]:
    """The score model to sample with under `guidance`, and what it did (for metrics.json)."""
    g, n = built.config["guidance"], built.config["sample"]["n"]
    if g["kind"] == "none":
        return score, {"kind": "none"}
    labels = requested_labels(built, n)
    info = {"kind": g["kind"], "labels": labels[: len(g["labels"] or range(built.data.num_classes))].tolist()}
    if g["kind"] == "cfg":
        interval = tuple(g["interval"]) if g["interval"] is not None else None
        network = ClassifierFreeGuidance(score.network, labels, g["weight"], interval, sde=built.sde)
        return ScoreModel(network, built.sde, score.prediction), {**info, "weight": g["weight"], "interval": g["interval"]}
    classifier, trained = train_classifier(built, out)
    return ClassifierGuidance(score, classifier, labels, g["scale"]), {**info, "scale": g["scale"], "classifier": trained}


def observation_mask(built, n: int) -> torch.Tensor:
    p = built.config["inpaint"]
    shape = built.data.shape
    if p["observed"] == "random":
        g = torch.Generator().manual_seed(built.config["seed"] + 7)
        return torch.rand((n, *shape), generator=g) < p["fraction"]
    mask = torch.zeros(shape, dtype=torch.bool)
    axis = -2 if p["observed"] == "upper_half" and len(shape) >= 2 else -1
    index = [slice(None)] * len(shape)
    index[axis] = slice(0, shape[axis] // 2)
    mask[tuple(index)] = True
    return mask.expand(n, *shape)


def inpaint_all(built, score: ScoreModel, held_out: torch.Tensor) -> tuple[dict, dict]:
    """Inpaint the first `inpaint.n` held-out examples with every solver: (samples by name, metrics by name)."""
    p = built.config["inpaint"]
    if p["method"] is None:
        return {}, {}
    if isinstance(score, ClassifierGuidance):  # inpaint from the score without the classifier's pull
        score = score.base
    if isinstance(score.network, ClassifierFreeGuidance):  # inpaint from the unconditional score
        score = ScoreModel(ClassifierFreeGuidance(score.network.network, NULL_LABEL), built.sde, score.prediction)
    truth = held_out[: p["n"]].to(built.device)
    mask = observation_mask(built, len(truth)).to(built.device)
    samples, report = {}, {}
    for name, sampler in built.samplers.items():
        if p["method"] != "tmpd" and sampler.solver.adaptive:
            log.info("inpainting: skipping %s (adaptive; %s needs a fixed grid)", name, p["method"])
            continue
        start = time.perf_counter()
        with torch.no_grad():
            result = inpaint(built.sde, score, sampler.solver, known=truth, mask=mask, method=p["method"],
                             cg_iterations=p["cg_iterations"], observation_std=p["observation_std"],
                             max_noise_level=p["max_noise_level"], max_update=p["max_update"], resample=p["resample"],
                             steps=sampler.steps,
                             generator=torch.Generator(device=built.device).manual_seed(built.config["seed"] + 8))
        x = result.x.detach().cpu()
        samples[f"inpaint_{name}"] = x
        missing = ~mask.cpu()
        report[name] = {
            "method": p["method"], "n": len(x), "nfe": result.nfe, "wall_time_s": time.perf_counter() - start,
            "observed_kept_exactly": bool(torch.equal(x[mask.cpu()], truth.cpu()[mask.cpu()])),
            "missing_rmse": float((x - truth.cpu())[missing].pow(2).mean().sqrt()),
            **{k: v for k, v in result.stats["inpainting"].items() if k != "method"},
        }
        log.info("inpainted %d held-out examples with %s (%s): NFE %d, RMSE of the missing part %.4f", len(x), name,
                 p["method"], result.nfe, report[name]["missing_rmse"])
    return samples, report


def inpainting(built, score: ScoreModel, out: Path) -> dict:
    """`inpaint_all` on held-out examples (the test split, or fresh draws of the data law); writes inpainting.npz
    (and inpainting.png beside the truth); returns the metrics (empty when inpaint.method is null)."""
    from . import outputs
    from .jobs import reference

    if built.config["inpaint"]["method"] is None:
        return {}
    _, held_out = reference(built, built.config["inpaint"]["n"], built.config["seed"])
    samples, report = inpaint_all(built, score, held_out)
    outputs.write_npz(out / "inpainting.npz", {"truth": held_out[: built.config["inpaint"]["n"]].numpy(),
                                                **{k: v.numpy() for k, v in samples.items()}})
    if built.config["plots"] and samples:
        outputs.plot_samples(out / "inpainting.png", samples, held_out[: built.config["inpaint"]["n"]], built.data.shape)
    return report
