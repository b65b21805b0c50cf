"""Default grids that do not lose (issue 15): our fixed-step solvers on candidate time grids against diffusers.

For every arena case (problem x SDE, `sde_diffusion.arena.problems`) and NFE budget, each of our deterministic
fixed-step solvers runs on each candidate grid family (EDM / Karras sigma^(1/rho) for several rho, uniform in
log-SNR, uniform and quadratic in t), and the arena's diffusers peers run in their recommended configurations. The
measurement is the arena's own (`arena.run.Case` draws x_T from the exact p_T and solves the DOP853 reference at
1e-11; `arena.run.run_setting` runs a contestant within its budget and measures the relative RMS trajectory error
and the median per-sample error on the same scale; `Contestant.plan` picks the step count within each budget).
Each row is compared with the best peer of its (case, NFE): ratio = error / min over diffusers schedulers.

Two independent sets of draws (different arena seeds, so different x_T):
- `--phase select` measures every candidate on the selection seeds and prints, per solver and budget, the grid whose
  worst ratio over the cases is smallest (`--metric`). It also prints, per solver, the rule by step count (at most
  two pieces, each over at least two budgets) with the least geometric-mean ratio over cases and budgets, among the
  candidates with kappa >= 0 and among all. The first is what `solvers/exponential.py` takes as its defaults.
- `--phase heldout` measures the solvers on the grids they get by default (what `sample` picks when no grid is
  given) on the held-out seeds, with the log-SNR grid (the old default) beside them, per case and budget and per
  solver.
The multistep solvers also run with `count_denoise=True` (under 15 steps), as rows of their own.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/default_grids.py --phase select
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/default_grids.py --phase heldout
    # options: --problems ... --sdes ... --budgets ... --grids ... --samples 512 --seeds 1000 1001 --metric worst
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from sde_diffusion.arena.contestants import DIFFUSERS_PEERS, Contestant, Diffusers, Ours
from sde_diffusion.arena.problems import PROBLEMS, SDES, get_problem
from sde_diffusion.arena.run import ArenaConfig, Case, run_setting
from sde_diffusion.solvers.exponential import LOWER_ORDER_FINAL_BELOW
from sde_diffusion.solvers.grids import LogSNRGrid, PowerGrid, QuadraticGrid, TimeGrid, UniformGrid

BUDGETS = (5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
MULTISTEP: list[tuple[str, str, dict]] = [  # (label, registered name, options)
    ("unipc", "unipc", {}),
    ("unipc(order=3)", "unipc", {"order": 3}),
    ("dpm_solver_pp_2m", "dpm_solver_pp_2m", {}),
    ("dpm_solver_pp_3m", "dpm_solver_pp_3m", {}),
]
SOLVERS: list[tuple[str, str, dict]] = [
    *MULTISTEP,
    *[(f"{label[:-1]}, count_denoise=True)" if "(" in label else f"{label}(count_denoise=True)", name,
       {**options, "count_denoise": True}) for label, name, options in MULTISTEP],
    ("ddim", "ddim", {}),
    ("heun", "heun", {}),
    ("euler", "euler", {}),
]
"""Our deterministic fixed-step solvers, and the multistep ones with `count_denoise` (which acts only on grids of
fewer than `LOWER_ORDER_FINAL_BELOW` steps, so those rows are measured only there)."""
KAPPAS = (1 / 3, 1 / 5, 1 / 7, 1 / 10, 1 / 20, -1 / 20, -1 / 10, -1 / 5)


def candidate_grids() -> dict[str, TimeGrid]:
    """The grid families searched: uniform in sigma_tilde^kappa (`PowerGrid`: the EDM grid with rho = 1 / kappa for
    kappa > 0, Karras' rho = 7 among them; log-SNR at kappa = 0; denser at low noise for kappa < 0), uniform and
    quadratic in t (which depend on how the SDE's t runs)."""
    grids: dict[str, TimeGrid] = {f"power({kappa:+.3g})": PowerGrid(kappa) for kappa in KAPPAS}
    grids.update({"log_snr": LogSNRGrid(), "uniform": UniformGrid(), "quadratic": QuadraticGrid()})
    return grids


def peers() -> list[Contestant]:
    return [Diffusers(label, scheduler, config, space) for label, scheduler, config, space in DIFFUSERS_PEERS]


def measure(problem: str, sde: str, seeds: list[int], samples: int, budgets, grids: dict[str, TimeGrid | None],
            solvers, out: csv.DictWriter, log) -> None:
    """One case: the peers and every (solver, grid) at every budget on every seed, one CSV row each."""
    config = ArenaConfig(problems=(problem,), sdes=(sde,), budgets=tuple(budgets), seeds=len(seeds), samples=samples,
                         memory=False, calibrated=False)
    case = Case(get_problem(problem), sde, config)
    start = time.perf_counter()
    case.seeds = [case.prepare(seed) for seed in seeds]
    log(f"{case.name}: references {time.perf_counter() - start:.1f}s")
    runs: list[tuple[str, str, Contestant]] = [(c.label, "peer", c) for c in peers()]
    for label, name, options in solvers:
        runs += [(label, grid_label, Ours(label, name, options, grid)) for grid_label, grid in grids.items()]  # type: ignore[arg-type]
    plans: dict[str, list] = {}
    for label, grid_label, c in runs:
        if label not in plans:  # the cost per step does not depend on the grid
            plans[label] = c.plan(case.sde, case.model, case.seeds[0].x_T[:2], case.t_min, budgets, config.tolerances)
        for setting in plans[label]:
            if getattr(c, "options", {}).get("count_denoise") and setting.steps >= LOWER_ORDER_FINAL_BELOW:
                continue  # the same solve as the row without it
            for state in case.seeds:
                try:
                    record = run_setting(case, c, setting, state)[0]
                    err, med, nfe = record.traj_err, record.traj_err_median, record.nfe
                except Exception as e:  # a grid that breaks a solver is a row that says so (error = inf)
                    err, med, nfe = math.inf, math.inf, math.nan
                    log(f"  {label} on {grid_label} at {setting.describe()}: {type(e).__name__}: {e}")
                out.writerow(dict(problem=problem, sde=sde, label=label, grid=grid_label, budget=setting.budget,
                                  steps=setting.steps, seed=state.seed, nfe=nfe, traj_err=err, traj_err_median=med))
    log(f"{case.name}: done in {time.perf_counter() - start:.0f}s")


def load(path: Path) -> dict[tuple, dict[str, float]]:
    """(problem, sde, label, grid, budget) -> mean over seeds of the RMS and median errors (as the arena's summary)."""
    acc: dict[tuple, list[tuple[float, float, float]]] = defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            key = (r["problem"], r["sde"], r["label"], r["grid"], int(float(r["budget"])))
            acc[key].append((float(r["traj_err"]), float(r["traj_err_median"]), float(r["steps"])))
    return {k: {"rms": sum(v[0] for v in vs) / len(vs), "median": sum(v[1] for v in vs) / len(vs), "steps": vs[0][2]}
            for k, vs in acc.items()}


def best_peer(table, problem: str, sde: str, budget: int, metric: str) -> tuple[str, float]:
    rows = [(v[metric], k[2]) for k, v in table.items() if k[:2] == (problem, sde) and k[3] == "peer" and k[4] == budget]
    value, label = min(rows)
    return label, value


def ratios(table, label: str, grid: str, budget: int) -> dict[tuple[str, str], tuple[float, float]]:
    """Per case: (RMS ratio, median ratio) of `label` on `grid` to the best peer (each metric's own best)."""
    out = {}
    for (p, s, lab, g, b), v in table.items():
        if lab == label and g == grid and b == budget:
            out[(p, s)] = (v["rms"] / best_peer(table, p, s, b, "rms")[1], v["median"] / best_peer(table, p, s, b, "median")[1])
    return out


def score(rs: dict, metric: str) -> float:
    """The worst ratio over the cases: of the RMS errors, the median errors, or (worst) whichever is larger."""
    pick = {"rms": lambda r: r[0], "median": lambda r: r[1], "worst": lambda r: max(r)}[metric]
    return max(pick(r) for r in rs.values())


def choose(table, metric: str) -> None:
    """Per solver and budget: the candidate grid with the smallest worst ratio over the cases, and the runner-up."""
    labels = list(dict.fromkeys(k[2] for k in table if k[3] != "peer"))
    grids = list(dict.fromkeys(k[3] for k in table if k[3] != "peer"))
    budgets = sorted({k[4] for k in table})
    print(f"\nPer solver and budget, the grid with the smallest worst ratio to the best peer over the cases ({metric}):\n")
    print("| solver | NFE | steps | best grid | worst RMS ratio | worst median ratio | runner-up (worst) | log-SNR (worst) | Karras rho=7 (worst) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in labels:
        for b in budgets:
            scored = sorted((score(rs, metric), g, rs) for g in grids if (rs := ratios(table, label, g, b)))
            if not scored:
                continue
            _, g, rs = scored[0]
            steps = {int(v["steps"]) for k, v in table.items() if k[2] == label and k[4] == b}
            named = {g2: s2 for s2, g2, _ in scored}
            print(f"| {label} | {b} | {min(steps) if steps else ''} | {g} | {score(rs, 'rms'):.2f} | {score(rs, 'median'):.2f} | "
                  f"{scored[1][1]} ({scored[1][0]:.2f}) | {named.get('log_snr', math.nan):.2f} | {named.get('power(+0.143)', math.nan):.2f} |")


def case_mean_log_ratio(table, label: str, grid: str, budget: int) -> float | None:
    """The mean over the cases of log(RMS / the best peer's RMS) of `label` on `grid` at `budget` (the log of the
    geometric mean); None where `label` has no row there (no step count fits, or a `count_denoise` row above
    `LOWER_ORDER_FINAL_BELOW` steps, which is the plain solver's)."""
    cases = sorted({k[:2] for k in table})
    logs = []
    for p, s in cases:
        row = table.get((p, s, label, grid, budget))
        if row is None and not plain(label):
            row = table.get((p, s, label.replace(", count_denoise=True)", ")").replace("(count_denoise=True)", ""), grid, budget))
        if row is None:
            return None
        logs.append(math.log(max(row["rms"], 1e-300) / best_peer(table, p, s, budget, "rms")[1]))
    return sum(logs) / len(logs)


def piecewise_rule(table, label: str, grids, max_pieces: int = 2, min_budgets: int = 2) -> tuple[list[tuple[int, str]], float]:
    """The rule "grid by step count" for one solver: the budgets split into at most `max_pieces` runs of at least
    `min_budgets` consecutive budgets, each run on one of `grids`, minimising the mean over budgets of
    `case_mean_log_ratio`; returns the pieces as (first step count, grid) and the geometric mean of the ratio. Few,
    wide pieces, so that the rule follows the trend and not one budget's draws."""
    budgets = sorted({k[4] for k in table if k[2] == label or k[2] == label.replace(", count_denoise=True)", ")").replace("(count_denoise=True)", "")})
    cost = {(g, b): case_mean_log_ratio(table, label, g, b) for g in grids for b in budgets}
    budgets = [b for b in budgets if any(cost[(g, b)] is not None for g in grids)]
    steps = {k[4]: int(v["steps"]) for k, v in table.items() if k[2] == label}
    best: tuple[float, list[tuple[int, str]]] = (math.inf, [])
    for n in range(max_pieces):
        for cuts in itertools.combinations(range(1, len(budgets)), n):
            bounds = [0, *cuts, len(budgets)]
            if any(hi - lo < min_budgets for lo, hi in itertools.pairwise(bounds)):
                continue
            total, pieces = 0.0, []
            for lo, hi in itertools.pairwise(bounds):
                run = budgets[lo:hi]
                c, g = min((sum(math.inf if cost[(g, b)] is None else cost[(g, b)] for b in run), g) for g in grids)
                total += c
                pieces.append((steps.get(run[0], run[0] - 1), g))
            if total < best[0] - 1e-9:
                best = (total, pieces)
    return best[1], math.exp(best[0] / max(len(budgets), 1))


def nonnegative(grid: str) -> bool:
    """A candidate with kappa >= 0 (log-SNR, the EDM family, quadratic), not one denser at low noise."""
    return not grid.startswith("power(-")


def rules(table) -> None:
    """Per solver (its `count_denoise` row separately): the rule of at most two pieces over the candidates with
    kappa >= 0, which the library's defaults take (`solvers/exponential.py`), and over every candidate."""
    labels = list(dict.fromkeys(k[2] for k in table if k[3] != "peer"))
    grids = sorted({k[3] for k in table if k[3] != "peer"})
    print("\nRules by step count (at most 2 pieces of at least 2 budgets; first step count: grid), by the geometric mean "
          "over cases and budgets of the RMS ratio to the best peer:\n")
    print("| solver | rule, kappa >= 0 | its geometric mean | rule, any candidate | its geometric mean |")
    print("|---|---|---|---|---|")
    for label in labels:
        cells = []
        for candidates in (list(filter(nonnegative, grids)), grids):
            pieces, mean = piecewise_rule(table, label, candidates)
            cells += [", ".join(f"{first}: {g}" for first, g in pieces), f"{mean:.3f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")


def plain(label: str) -> bool:
    """A solver with its default options (the arena's rows), not a `count_denoise` variant."""
    return "count_denoise" not in label


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def at_or_below(table, grid: str, labels, budgets, cases) -> int:
    """How many (case, budget) cells the best of `labels` on `grid` is at or below the best peer by RMS."""
    return sum(min(table[(p, s, lab, grid, b)]["rms"] for lab in labels if (p, s, lab, grid, b) in table)
               <= best_peer(table, p, s, b, "rms")[1] for p, s in cases for b in budgets)


def per_solver(table, grid: str, baseline: str) -> None:
    """Per solver (what a user of that one solver gets): the geometric mean over cases and budgets of its RMS ratio to
    the best peer, and the cells where it is at or below that peer, on `grid` and on `baseline`; then the best of our
    solvers' cell counts, with and without the `count_denoise` rows."""
    labels = list(dict.fromkeys(k[2] for k in table if k[3] != "peer"))
    budgets = sorted({k[4] for k in table})
    cases = sorted({k[:2] for k in table})
    print(f"\nPer solver: geometric mean of the RMS ratio to the best peer over cases and budgets (cells at or below it) "
          f"on {grid!r} and on {baseline!r}:\n")
    print(f"| solver | {grid} | {baseline} |")
    print("|---|---|---|")
    for lab in labels:
        cells = []
        for g in (grid, baseline):
            rs = [table[(p, s, lab, g, b)]["rms"] / best_peer(table, p, s, b, "rms")[1] for p, s in cases for b in budgets
                  if (p, s, lab, g, b) in table]
            cells.append(f"{geometric_mean(rs):.2f} ({sum(r <= 1 for r in rs)} / {len(rs)})")
        print(f"| {lab} | " + " | ".join(cells) + " |")
    n = len(cases) * len(budgets)
    for rows, name in ((list(filter(plain, labels)), "our solvers with their default options"), (labels, "our solvers with the count_denoise rows too")):
        print(f"\nBest of {name}: at or below the best peer in {at_or_below(table, grid, rows, budgets, cases)} / {n} "
              f"cells on {grid!r}, {at_or_below(table, baseline, rows, budgets, cases)} / {n} on {baseline!r}")


def compare(table, grid: str, baseline: str | None) -> None:
    """Per case and budget: the best of ours (default options) on `grid` against the best peer, RMS and median."""
    ours = sorted({k[2] for k in table if k[3] != "peer" and plain(k[2])})
    budgets = sorted({k[4] for k in table})
    cases = sorted({k[:2] for k in table}, key=lambda c: (list(PROBLEMS).index(c[0]), list(SDES).index(c[1])))
    for metric in ("rms", "median"):
        print(f"\nBest of ours on the {grid!r} grids / best diffusers peer, {metric} trajectory error "
              f"(>1: the peer wins){'; in brackets the same on ' + repr(baseline) if baseline else ''}:\n")
        print("| case | " + " | ".join(str(b) for b in budgets) + " |")
        print("|---|" + "---|" * len(budgets))
        worst = 0.0
        for p, s in cases:
            cells = []
            for b in budgets:
                peer = best_peer(table, p, s, b, metric)[1]
                mine = [table[(p, s, lab, grid, b)][metric] for lab in ours if (p, s, lab, grid, b) in table]
                cell = f"{min(mine) / peer:.2f}"
                worst = max(worst, min(mine) / peer)
                if baseline:
                    base = [table[(p, s, lab, baseline, b)][metric] for lab in ours if (p, s, lab, baseline, b) in table]
                    cell += f" ({min(base) / peer:.2f})"
                cells.append(cell)
            print(f"| {p} / {s} | " + " | ".join(cells) + " |")
        print(f"\nworst ratio over cases and budgets ({metric}): {worst:.2f}")


def arena_table(summary: Path) -> None:
    """The arena's own rows (`summary.csv`, means over its seeds): the best of our fixed-grid solvers on their default
    grids (deterministic, not adaptive, no '@grid' variant) against the best diffusers row, per case and budget."""
    table: dict[tuple, dict[str, float]] = {}
    with open(summary) as f:
        for r in csv.DictReader(f):
            if r["budget"] in ("", "nan") or r["stochastic"] == "True" or r["family"] not in ("ours", "diffusers"):
                continue
            if r["family"] == "ours" and "@" in r["label"]:
                continue
            grid = "peer" if r["family"] == "diffusers" else "default"
            table[(r["problem"], r["sde"], r["label"], grid, int(float(r["budget"])))] = {
                "rms": float(r["traj_err"]), "median": float(r["traj_err_median"]), "steps": float(r["steps"])}
    compare(table, "default", None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("select", "heldout", "report", "arena"), default="select",
                        help="arena: read an arena run's summary.csv (--arena-dir) and compare its default-grid rows with the peers")
    parser.add_argument("--arena-dir", default="benchmarks/results/arena_defaults")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--sdes", nargs="+", default=list(SDES))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--grids", nargs="+", default=None, help=f"with --phase select: the candidates to measure (default all: {', '.join(candidate_grids())})")
    parser.add_argument("--samples", type=int, default=512, help="draws per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="arena seeds of the draws (default: 1000 1001 to select, 2000 2001 held out)")
    parser.add_argument("--metric", choices=("rms", "median", "worst"), default="worst",
                        help="what the per-budget table of --phase select minimises: the worst over the cases of the RMS ratio, the median ratio, or the larger of the two")
    parser.add_argument("--out", default="benchmarks/results/default_grids")
    parser.add_argument("--of", choices=("select", "heldout"), default="heldout", help="with --phase report: which CSV to read")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.phase == "arena":
        arena_table(Path(args.arena_dir) / "summary.csv")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phase = args.of if args.phase == "report" else args.phase
    path = out / f"{phase}.csv"
    if args.phase != "report":
        seeds = args.seeds or ([1000, 1001] if args.phase == "select" else [2000, 2001])
        grids: dict[str, TimeGrid | None] = {"default": None, "log_snr": LogSNRGrid()}
        if args.phase == "select":
            candidates = candidate_grids()
            unknown = set(args.grids or ()) - set(candidates)
            if unknown:
                parser.error(f"unknown grids {sorted(unknown)}; choose from {', '.join(candidates)}")
            grids = {name: grid for name, grid in candidates.items() if args.grids is None or name in args.grids}
        wall, cpu = time.perf_counter(), time.process_time()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["problem", "sde", "label", "grid", "budget", "steps", "seed", "nfe", "traj_err", "traj_err_median"])
            writer.writeheader()
            for problem in args.problems:
                for sde in args.sdes:
                    measure(problem, sde, seeds, args.samples, args.budgets, grids, SOLVERS, writer, lambda s: print(s, flush=True))
                    f.flush()
        print(f"\n{args.phase}: {len(seeds)} seeds x {args.samples} draws, {time.perf_counter() - wall:.0f}s wall, "
              f"{time.process_time() - cpu:.0f}s CPU -> {path}")
    table = load(path)
    if phase == "select":
        choose(table, args.metric)
        rules(table)
        compare(table, "log_snr", None)
    else:
        compare(table, "default", "log_snr")
        per_solver(table, "default", "log_snr")


if __name__ == "__main__":
    main()
