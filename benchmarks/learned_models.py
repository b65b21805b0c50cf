"""Learned models (issue 15): our autotuned sampler against every diffusers scheduler on the same trained network.

Two cases, each a network trained once and cached under benchmarks/results/ (keyed by its config; a second run
loads it):

- ``digits``: a small U-Net (eps prediction, VP SDE) on scikit-learn's 8x8 digits, float32;
- ``toy``: the residual MLP (eps prediction, VP SDE) on the eight Gaussians, float64.

For each case and NFE budget (5, 10, 20; the final denoising evaluation included), every contestant solves the
probability flow of the *learned* model from the same `--n` prior draws:

- ``autotune``: `sd.autotune(sde, model, nfe=...)` with its defaults (its choice, options, cost in
  sample-evaluations and validation error are reported);
- every diffusers scheduler of the arena (`arena.contestants.DIFFUSERS_PEERS`, driven by `Diffusers`, the arena's
  own driver), its step count the largest whose measured NFE fits the budget;
- every candidate of `autotuning.CANDIDATES` without calibration, on its default grid and on the log-SNR grid;
- the exhaustive sweep: every candidate of `autotuning.CANDIDATES` on its own grid, `calibrate_grid` at `--sweep-budget`
  sample-evaluations each (default: autotune's whole budget, per candidate), on autotune's own pilot draws, so the
  two differ by the search alone and autotune costs a quarter of the sweep.

Measured for each, on the same draws:

- trajectory error: RMS over samples and coordinates of x - x_teacher, where the teacher is our adaptive
  Dormand-Prince pair (`dopri5`) at rtol = atol = `--teacher-tol` from the same x_T, ending with the same Tweedie
  step; its own error is estimated against a 10x tighter solve of the first 128 draws. The standard error is the
  delta method's, se(mean e_i) / (2 RMS) with e_i each sample's mean squared difference;
- sample quality: digits, the Frechet distance of the digits classifier's features (`train_digits.py`) to the
  test split, bootstrap standard error over the samples, beside the train-vs-test floor and the teacher's value,
  and the share of samples the classifier labels with confidence > 0.9 (binomial standard error); toy, sliced W2
  (512 fixed directions) to 4 fresh data sets of the same size (mean, standard error over the sets) beside the
  floor, the same between pairs of data sets.

NFE is what the model's wrapper counted during each solve (`ScoreModel.nfe`), checked against the budget.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/learned_models.py [--cases digits toy] [--n 1000]

Prints markdown tables; writes benchmarks/results/learned_<case>.json and benchmarks/figures/learned_<case>.png.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import sde_diffusion as sd
from sde_diffusion import data, metrics
from sde_diffusion.arena.contestants import DIFFUSERS_PEERS, Diffusers
from sde_diffusion.autotuning import CANDIDATES, fingerprint, steps_within
from sde_diffusion.networks import MLP, UNet
from sde_diffusion.training import DSMLoss, Trainer
from train_digits import Classifier, features, frechet_distance_of_features, judge, train_classifier

RESULTS = Path(__file__).parent / "results"
FIGURES = Path(__file__).parent / "figures"
BUDGETS = (5, 10, 20)
AUTOTUNE_DEFAULTS = {k: v.default for k, v in inspect.signature(sd.autotune).parameters.items()
                     if v.default is not inspect.Parameter.empty}

DIGITS_CONFIG = dict(channels=16, mults=[1, 2, 2], res_blocks=1, dropout=0.1, steps=3000, batch=128, lr=1e-3,
                     warmup=200, ema=0.999, seed=0)
TOY_CONFIG = dict(toy="eight_gaussians", width=128, depth=3, steps=4000, batch=512, lr=1e-3, warmup=500, ema=0.999,
                  seed=0)


def cpu_wall() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) since `start` (wall time is inflated by other jobs on a shared machine)."""
    cpu, wall = cpu_wall()
    return cpu - start[0], wall - start[1]


def cached(kind: str, config: dict, build: Callable[[], nn.Module], train: Callable[[nn.Module], dict]) -> tuple[nn.Module, dict]:
    """The network `build()` trained by `train` (which returns what to record), or loaded from
    results/learned_<kind>_<hash of config>.pt when that checkpoint exists. Written atomically."""
    key = hashlib.sha256(json.dumps({"kind": kind, **config}, sort_keys=True).encode()).hexdigest()[:12]
    path = RESULTS / f"learned_{kind}_{key}.pt"
    network = build()
    if path.exists():
        record = torch.load(path, weights_only=False)
        network.load_state_dict(record["state_dict"])
        print(f"{kind}: loaded {path.name} (trained in {record['info'].get('cpu_s', 0):.0f} CPU s)")
        return network.eval(), record["info"] | {"checkpoint": path.name, "loaded": True}
    start = cpu_wall()
    info = train(network)
    info["cpu_s"], info["wall_s"] = since(start)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": config, "state_dict": network.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    print(f"{kind}: trained {info} -> {path.name}")
    return network.eval(), info | {"checkpoint": path.name, "loaded": False}


def fit(network: nn.Module, sde: sd.LinearSDE, dataset, config: dict) -> dict:
    """Eps matching (sigma^2 weighting) for `config["steps"]` steps; the EMA weights are copied into `network`."""
    torch.manual_seed(config["seed"])
    trainer = Trainer(network, DSMLoss(sde, "eps", "sigma2"), dataset, batch_size=config["batch"], lr=config["lr"],
                      warmup_steps=config["warmup"], lr_decay_steps=config["steps"], ema_decay=config["ema"],
                      grad_clip=1.0, progress=False, log_every=500, seed=config["seed"])
    trainer.train(config["steps"])
    network.load_state_dict(trainer.ema.module.state_dict())
    return {"steps": trainer.step, "final_loss": trainer.history[-1]["loss"]}


# -- the cases -----------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A learned model with its quality measure: `quality(x) -> {metric: (value, standard error, bootstrap
    replicates)}`; the replicates (digits' FD: 40 resamplings, the same indices for every solver, so two solvers'
    replicates are paired) may be empty."""

    name: str
    sde: sd.LinearSDE
    model: sd.ScoreModel
    sample_shape: tuple[int, ...]
    dtype: torch.dtype
    quality: Callable[[torch.Tensor], dict[str, tuple[float, float, list[float]]]]
    floors: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


def digits_case(n: int) -> Case:
    sde = sd.VPSDE()
    train, test = data.get("digits", split="train"), data.get("digits", split="test")
    c = DIGITS_CONFIG
    network, info = cached(
        "digits_unet", c,
        lambda: UNet(1, channels=c["channels"], channel_mults=tuple(c["mults"]), num_res_blocks=c["res_blocks"],
                     dropout=c["dropout"]),
        lambda net: fit(net, sde, train, c))

    def train_judge(clf: nn.Module) -> dict:
        clf.load_state_dict(train_classifier(train).state_dict())
        return {}

    clf, _ = cached("digits_classifier", {"epochs": 40, "seed": 0}, Classifier, train_judge)
    x_test, y_test = test.tensors()
    x_train, _ = train.tensors()
    test_features = features(clf, x_test)
    info["classifier_test_accuracy"] = float((judge(clf, x_test)["labels"] == y_test).double().mean())
    bootstrap = torch.Generator().manual_seed(5)
    resamples = [torch.randint(n, (n,), generator=bootstrap).numpy() for _ in range(40)]  # the same for every solver

    def quality(x: torch.Tensor) -> dict[str, tuple[float, float, list[float]]]:
        f = features(clf, x)
        fd = frechet_distance_of_features(f, test_features)
        resampled = [frechet_distance_of_features(f[i], test_features) for i in resamples]
        share = judge(clf, x)["confident_share"]
        return {"fd": (fd, float(np.std(resampled, ddof=1)), resampled),
                "confident": (share, math.sqrt(share * (1 - share) / len(x)), [])}

    floors = {"fd": frechet_distance_of_features(features(clf, x_train), test_features),
              "confident": judge(clf, x_test)["confident_share"]}
    model = sd.ScoreModel(network, sde, "eps")
    return Case("digits", sde, model, (1, 8, 8), torch.float32, quality, floors, info)


def toy_case(n: int) -> Case:
    sde = sd.VPSDE()
    c = TOY_CONFIG
    dataset = data.get(c["toy"], n=200_000, seed=0)
    network, info = cached("toy_mlp", c, lambda: MLP(2, width=c["width"], depth=c["depth"], time_embedding="fourier"),
                           lambda net: fit(net, sde, dataset, c))
    network = network.double()
    projections = metrics.random_projections(2, 512, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(1000)
    references = [dataset.sample(n, g).double() for _ in range(4)]
    floor = float(np.mean([metrics.sliced_wasserstein(r, dataset.sample(n, g).double(), projections) for r in references]))

    def quality(x: torch.Tensor) -> dict[str, tuple[float, float, list[float]]]:
        d = [metrics.sliced_wasserstein(x, r, projections) for r in references]
        return {"sw2": (float(np.mean(d)), float(np.std(d, ddof=1) / math.sqrt(len(d))), [])}

    model = sd.ScoreModel(network, sde, "eps")
    return Case("toy", sde, model, (2,), torch.float64, quality, {"sw2": floor}, info)


CASES = {"digits": digits_case, "toy": toy_case}


# -- the contestants -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    nfe_budget: int
    label: str
    family: str
    detail: str
    nfe: int
    rms: float
    rms_se: float
    quality: dict[str, tuple[float, float, list[float]]]
    cost: int | None = None
    seconds: float = 0.0


def trajectory_error(x: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(RMS of x - reference over samples and coordinates, its delta-method standard error)."""
    e = (x.double() - reference.double()).reshape(len(x), -1).pow(2).mean(1)
    rms = float(e.mean().sqrt())
    return rms, float(e.std() / math.sqrt(len(e)) / (2 * max(rms, 1e-300)))


def measure(case: Case, budget: int, label: str, family: str, detail: str, solve: Callable[[torch.Tensor], torch.Tensor],
            x_T: torch.Tensor, teacher: torch.Tensor, cost: int | None = None) -> tuple[Row, torch.Tensor]:
    """Run `solve(x_T)` once, read its NFE off the model's wrapper and check it against `budget`."""
    before, start = case.model.nfe, time.perf_counter()
    with torch.no_grad():
        x = solve(x_T)
    nfe = case.model.nfe - before
    if nfe > budget:
        raise RuntimeError(f"{label} spent {nfe} evaluations at a budget of {budget}")
    rms, se = trajectory_error(x, teacher)
    return Row(case.name, budget, label, family, detail, nfe, rms, se, case.quality(x), cost,
               time.perf_counter() - start), x


def contestants(case: Case, budget: int, args, probe: torch.Tensor, log: dict) -> list[tuple[str, str, str, Callable, int | None]]:
    """(label, family, detail, solve, cost) for autotune, every diffusers scheduler and the sweep at `budget`."""
    sde, model, t_min = case.sde, case.model, case.sde.default_t_min
    out = []
    start = cpu_wall()
    tuned = sd.autotune(sde, model, nfe=budget, shape=(1, *case.sample_shape), dtype=case.dtype,
                        cache_dir=RESULTS / "autotune")
    cpu_s, _ = since(start)
    log["autotune"] = {"solver": tuned.solver, "options": tuned.options, "steps": tuned.steps, "cost": tuned.cost,
                       "validation_error": tuned.validation_error, "pilot_error": tuned.pilot_error, "nfe": tuned.nfe,
                       "candidates": tuned.candidates, "from_cache": tuned.from_cache, "wall_s": tuned.wall_time_s,
                       "cpu_s_this_run": cpu_s, "times": tuned.times.tolist()}
    out.append(("autotune", "ours", f"{tuned.solver}{tuned.options or ''}, {tuned.steps} steps",
                lambda x, t=tuned: sd.sample(sde, model, t.solver, x_T=x, grid=t.times, denoise=True, **t.options).x,
                tuned.cost))
    for label, scheduler, config, space in DIFFUSERS_PEERS:
        peer = Diffusers(label, scheduler, config, space)
        if (reason := peer.unavailable()) is not None:
            sys.exit(reason)
        plans = [s for s in peer.plan(sde, model, probe, t_min, [budget], ()) if s.budget == budget]
        if not plans:
            print(f"  {label}: no step count fits {budget} NFE")
            continue
        setting = plans[0]
        out.append((label.removeprefix("diffusers:"), "diffusers", f"{scheduler}, {setting.steps} steps",
                    lambda x, p=peer, s=setting: p.solve(sde, model, x, t_min, s, None), None))
    for name, options in CANDIDATES:  # no calibration: the grid a user gets by default, and the log-SNR grid
        engine = sd.solvers.get(name, **options)
        steps = steps_within(sde, model, engine, budget, probe[:1], t_min, sde.T)
        for grid, where in ((None, "default"), ("log_snr", "log-SNR")):
            if steps is not None:
                out.append((f"{name}{options or ''}@{where}", "fixed", f"{steps} steps, {where} grid",
                            lambda x, n=name, o=options, k=steps, g=grid: sd.sample(sde, model, n, x_T=x, steps=k, grid=g,
                                                                                   denoise=True, **o).x, None))
    if budget in args.sweep_nfe:
        sweep_budget = args.sweep_budget or AUTOTUNE_DEFAULTS["budget"]
        for name, options in CANDIDATES:
            engine = sd.solvers.get(name, **options)
            steps = steps_within(sde, model, engine, budget, probe[:1], t_min, sde.T)
            if steps is None:
                continue
            cal = calibrated(case, name, options, steps, sweep_budget)
            out.append((f"sweep:{name}{options or ''}", "sweep", f"{steps} steps, calibrated at {sweep_budget}",
                        lambda x, n=name, o=options, g=cal["times"]: sd.sample(sde, model, n, x_T=x, grid=g,
                                                                              denoise=True, **o).x, cal["cost"]))
    return out


def calibrated(case: Case, name: str, options: dict, steps: int, budget: int) -> dict:
    """`calibrate_grid` (gradient method) on autotune's own pilot draws (`autotuning.pilot_draws`, its default
    sizes and seed), so the sweep and autotune differ by the search alone; cached by the model's fingerprint."""
    pilot, validation = AUTOTUNE_DEFAULTS["pilot"], AUTOTUNE_DEFAULTS["validation"]
    settings = dict(solver=name, options=options, steps=steps, budget=budget, t_min=case.sde.default_t_min,
                    t_max=case.sde.T, dtype=str(case.dtype), pilot=pilot, validation=validation, pilot_of="autotune")
    key = fingerprint(case.model, case.sde, settings)
    path = RESULTS / "autotune" / f"sweep_{key}.json"
    if path.exists():
        record = json.loads(path.read_text())
    else:
        x_pilot, _ = sd.autotuning.pilot_draws(case.sde, case.sample_shape, pilot, validation, dtype=case.dtype)
        cal = sd.calibrate_grid(case.sde, sd.ScoreModel(case.model.network, case.sde, "eps"), name, steps,
                                x_T=x_pilot, validation=validation, budget=budget,
                                generator=torch.Generator().manual_seed(20261202 + steps), dtype=case.dtype, **options)
        record = {"times": cal.times.tolist(), "cost": cal.cost, "validation_error": cal.validation_error,
                  "pilot_error": cal.error, "wall_s": cal.wall_time_s}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return record | {"times": torch.tensor(record["times"], dtype=torch.float64)}


# -- the run -------------------------------------------------------------------------------------------------------


def teacher(case: Case, x_T: torch.Tensor, tol: float) -> tuple[torch.Tensor, dict]:
    """The accurate solve (dopri5 at `tol`, Tweedie at the end) and its own error against a 10x tighter solve of the
    first 128 draws; cached under results/ by the model's fingerprint, the draws and `tol`."""
    sde, model = case.sde, case.model
    key = fingerprint(model, sde, dict(tol=tol, t_min=sde.default_t_min, t_max=sde.T, x_T=hashlib.sha256(
        x_T.numpy().tobytes()).hexdigest(), dtype=str(x_T.dtype)))
    path = RESULTS / "autotune" / f"teacher_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    run = lambda x, tol: sd.sample(sde, model, "dopri5", x_T=x, t_min=sde.default_t_min, denoise=True,  # noqa: E731
                                   rtol=tol, atol=tol)
    start = cpu_wall()
    with torch.no_grad():
        result = run(x_T, tol)
        check = run(x_T[:128], tol / 10).x
    rms, _ = trajectory_error(result.x[:128], check)
    cpu_s, wall_s = since(start)
    out = result.x, {"tol": tol, "nfe": result.nfe, "rms_vs_tighter": rms, "cpu_s": cpu_s, "wall_s": wall_s}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def run_case(name: str, args) -> dict:
    start = cpu_wall()
    n = args.n or {"digits": 1000, "toy": 4000}[name]
    case = CASES[name](n)
    x_T = case.sde.prior_sample((n, *case.sample_shape), torch.Generator().manual_seed(123), dtype=case.dtype)
    reference, teacher_info = teacher(case, x_T, args.teacher_tol[name])
    teacher_quality = case.quality(reference)
    print(f"\n## {name}: teacher {teacher_info}; quality {teacher_quality}; floors {case.floors}", flush=True)
    rows, logs, pictures = [], {}, {}
    for budget in args.budgets:
        log: dict[str, Any] = {}
        for label, family, detail, solve, cost in contestants(case, budget, args, x_T[:2], log):
            row, x = measure(case, budget, label, family, detail, solve, x_T, reference, cost)
            rows.append(row)
            pictures[(budget, label)] = x
            print(f"  {budget:2d} NFE {label:34s} nfe {row.nfe:2d}  rms {row.rms:.4g} ± {row.rms_se:.2g}  "
                  + "  ".join(f"{k} {v:.4g} ± {s:.2g}" for k, (v, s, _) in row.quality.items()), flush=True)
        logs[budget] = log
    cpu_s, wall_s = since(start)
    result = {"case": name, "n": n, "info": case.info, "floors": case.floors, "teacher": teacher_info,
              "teacher_quality": teacher_quality, "rows": [vars(r) for r in rows], "autotune": logs,
              "cpu_s": cpu_s, "wall_s": wall_s}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"learned_{name}.json").write_text(json.dumps(result, indent=1, default=str))
    print_tables(result)
    if args.picture:
        figure = picture_panels(result, pictures, reference, args.picture if name == "digits" else 2000)
        torch.save(figure, RESULTS / f"learned_{name}_samples.pt")
        plot(figure, FIGURES / f"learned_{name}.png")
    print(f"{name}: {cpu_s:.0f} CPU s, {wall_s:.0f} wall s")
    return result


def print_tables(result: dict) -> None:
    rows = result["rows"]
    metrics_ = list(rows[0]["quality"])
    floors, teacher_quality = result["floors"], result["teacher_quality"]
    print(f"\n### {result['case']} (n = {result['n']}; teacher: dopri5 at {result['teacher']['tol']:g}, "
          f"{result['teacher']['nfe']} NFE, its RMS error {result['teacher']['rms_vs_tighter']:.2g}; "
          + ", ".join(f"{m}: floor {floors[m]:.4g}, teacher {teacher_quality[m][0]:.4g}" for m in metrics_) + ")\n")
    print("| NFE | solver | detail | NFE spent | trajectory RMS | " + " | ".join(metrics_) + " |")
    print("|---|---|---|---|---|" + "---|" * len(metrics_))
    for budget in sorted({r["nfe_budget"] for r in rows}):
        group = [r for r in rows if r["nfe_budget"] == budget and r["family"] != "sweep"]
        best_rms = min(r["rms"] for r in group)
        for r in group:
            rms = f"{r['rms']:.4g} ± {r['rms_se']:.1g}"
            rms = f"**{rms}**" if r["rms"] == best_rms else rms
            q = " | ".join(f"{v:.4g} ± {s:.1g}" for v, s, _ in r["quality"].values())
            print(f"| {budget} | {r['label']} | {r['detail']} | {r['nfe']} | {rms} | {q} |")
    metric = metrics_[0]
    print(f"\n| NFE | autotune RMS | best diffusers on RMS | its RMS | autotune / best | autotune {metric} | "
          f"best diffusers on {metric} | its {metric} | difference (se; FD: paired bootstrap) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for budget in sorted({r["nfe_budget"] for r in rows}):
        tuned = next(r for r in rows if r["nfe_budget"] == budget and r["label"] == "autotune")
        peers = [r for r in rows if r["nfe_budget"] == budget and r["family"] == "diffusers"]
        by_rms, by_quality = min(peers, key=lambda r: r["rms"]), min(peers, key=lambda r: r["quality"][metric][0])
        (a, a_se, a_rep), (b, b_se, b_rep) = tuned["quality"][metric], by_quality["quality"][metric]
        se = float(np.std(np.subtract(a_rep, b_rep), ddof=1)) if a_rep and b_rep else math.hypot(a_se, b_se)
        print(f"| {budget} | {tuned['rms']:.4g} | {by_rms['label']} | {by_rms['rms']:.4g} | "
              f"{tuned['rms'] / by_rms['rms']:.2f} | {a:.4g} | {by_quality['label']} | {b:.4g} | {a - b:+.3g} ({se:.2g}) |")
    fixed = [r for r in rows if r["family"] == "fixed"]
    if fixed:
        labels = list(dict.fromkeys(r["label"].rsplit("@", 1)[0] for r in fixed))
        print("\nFixed grids, no calibration: RMS / the best diffusers scheduler's RMS, on the default grid (log-SNR grid)\n")
        print("| NFE | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        for budget in sorted({r["nfe_budget"] for r in fixed}):
            best = min(r["rms"] for r in rows if r["nfe_budget"] == budget and r["family"] == "diffusers")
            at = {r["label"]: r["rms"] / best for r in fixed if r["nfe_budget"] == budget}
            print(f"| {budget} | " + " | ".join(f"{at.get(lab + '@default', math.nan):.2f} ({at.get(lab + '@log-SNR', math.nan):.2f})"
                                                 for lab in labels) + " |")
    print("\n| NFE | autotune's choice (cost) | its RMS | sweep's best (total cost) | its RMS | chosen / best | "
          "autotune cost / sweep cost |")
    print("|---|---|---|---|---|---|---|")
    for budget in sorted({r["nfe_budget"] for r in rows}):
        sweep = [r for r in rows if r["nfe_budget"] == budget and r["family"] == "sweep"]
        if not sweep:
            continue
        tuned = next(r for r in rows if r["nfe_budget"] == budget and r["label"] == "autotune")
        best = min(sweep, key=lambda r: r["rms"])
        total = sum(r["cost"] for r in sweep)
        print(f"| {budget} | {tuned['detail']} ({tuned['cost']}) | {tuned['rms']:.4g} | {best['label']} ({total}) | "
              f"{best['rms']:.4g} | {tuned['rms'] / best['rms']:.2f} | {tuned['cost'] / total:.2f} |")


def picture_panels(result: dict, pictures: dict, reference: torch.Tensor, count: int) -> dict:
    """What the figure shows, kept in results/learned_<case>_samples.pt so `--replot` redraws it: per solver (the
    teacher first, no sweep rows) and budget (5 and 10 NFE), the first `count` samples and a caption."""
    budgets = [b for b in (5, 10) if any(k[0] == b for k in pictures)]
    captions = {}
    for r in result["rows"]:
        if r["nfe_budget"] in budgets and r["family"] not in ("sweep", "fixed"):
            first = next(iter(r["quality"].items()))
            captions[(r["nfe_budget"], r["label"])] = f"RMS {r['rms']:.3g}, {first[0]} {first[1][0]:.3g}"
    teacher = f"teacher (dopri5, {result['teacher']['nfe']} NFE)"
    first = next(iter(result["teacher_quality"].items()))
    panels = {teacher: {b: (reference[:count], f"{first[0]} {first[1][0]:.3g}") for b in budgets}}
    for (budget, label), x in pictures.items():
        if (budget, label) in captions:
            panels.setdefault(label, {})[budget] = (x[:count], captions[(budget, label)])
    return {"case": result["case"], "budgets": budgets, "panels": panels}


def plot(figure: dict, path: Path) -> None:
    """Samples of each solver at 5 and 10 NFE from the same prior draws, side by side: digits one solver per row,
    the budgets in columns; the toy one solver per column, the budgets in rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets, panels, image = figure["budgets"], figure["panels"], figure["case"] == "digits"
    labels = list(panels)
    shape = (len(labels), len(budgets)) if image else (len(budgets), len(labels))
    size = (3.4 * len(budgets) + 2.0, 1.05 * len(labels)) if image else (2.0 * len(labels), 2.3 * len(budgets))
    fig, axes = plt.subplots(*shape, figsize=size, squeeze=False)
    for i, label in enumerate(labels):
        for j, budget in enumerate(budgets):
            ax = axes[i, j] if image else axes[j, i]
            ax.set_xticks([]), ax.set_yticks([])
            if budget not in panels[label]:
                ax.set_axis_off()
                continue
            x, caption = panels[label][budget]
            x = x.float()
            if image:
                padded = nn.functional.pad(x.clamp(-1, 1), (1, 1, 1, 1), value=-1.0)
                grid = padded.reshape(-1, 8, 10, 10).permute(0, 2, 1, 3).reshape(-1, 80).numpy()
                ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
                ax.set_title(caption, fontsize=7, pad=2)
                if j == 0:
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            else:
                ax.scatter(x[:, 0], x[:, 1], s=0.2, alpha=0.4, color="k" if i == 0 else "C0", rasterized=True)
                ax.set_xlim(-3.2, 3.2), ax.set_ylim(-3.2, 3.2), ax.set_aspect("equal")
                ax.set_title(f"{label}\n{caption}" if j == 0 else caption, fontsize=7, pad=2)
                if i == 0:
                    ax.set_ylabel(f"{budget} NFE", fontsize=9)
    if image:
        for j, budget in enumerate(budgets):
            axes[0, j].set_title(f"{budget} NFE\n{axes[0, j].get_title()}", fontsize=8, pad=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--sweep-nfe", type=int, nargs="*", default=list(BUDGETS), help="budgets with the sweep")
    parser.add_argument("--sweep-budget", type=int, default=None, help="sample-evaluations per swept candidate "
                        "(default: autotune's whole budget)")
    parser.add_argument("--n", type=int, default=None, help="prior draws every contestant solves (default: digits "
                        "1000, toy 4000)")
    parser.add_argument("--picture", type=int, default=16, help="digits per panel of the figure, a multiple of 8 (0: no figure)")
    parser.add_argument("--replot", action="store_true", help="redraw the figures from the saved samples")
    args = parser.parse_args()
    args.teacher_tol = {"digits": 1e-5, "toy": 1e-7}
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in args.cases:
        if args.replot:
            plot(torch.load(RESULTS / f"learned_{name}_samples.pt", weights_only=False), FIGURES / f"learned_{name}.png")
        else:
            run_case(name, args)


if __name__ == "__main__":
    main()
