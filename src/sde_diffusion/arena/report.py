"""The arena's outputs: per-run and summary CSVs, a Markdown report, the frontier, and error-vs-NFE charts.

Summary rows average a contestant's runs at one setting over the seeds (mean and standard error of each metric,
median wall time). The frontier of a case lists, for each target accuracy, the fewest NFE (actual, as counted) at
which any contestant's mean error meets it, and which contestant that is, beside the best of ours and the best peer.
The claims section evaluates the fast-solver issue's targets on this run's numbers, whatever they turn out to be.
"""

from __future__ import annotations

import csv
import math
import platform
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from .charts import plot_case

METRICS = ("traj_err", "traj_err_median", "sw2", "mmd", "energy")
TRAJECTORY_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4)
FLOOR_TARGETS = (2.0, 1.25)
"""Distribution targets, as multiples of the two-sample floor of the sliced W2 at the same sample size."""
CALIBRATED_SUFFIX = "@calibrated"
"""Labels of contestants on calibrated grids end so; the claim also reports our best on a fixed grid."""
CLAIM_CASES = (("ring-2d", "edm"), ("gmm-32d", "edm"))
CLAIM_BUDGETS = (10, 20)
STOCHASTIC_BUDGETS = (10, 20, 50, 100)
STOCHASTIC_CHALLENGERS = ("sde_dpm_solver_pp_2m", "edm_heun(S_churn=40)")
STOCHASTIC_BASELINE = "euler_maruyama"


def _nan_mean(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se


def _as_dicts(records) -> list[dict]:
    return [asdict(r) if is_dataclass(r) and not isinstance(r, type) else r for r in records]


def summarize(records: Iterable) -> list[dict]:
    """One row per (problem, sde, label, setting): means and standard errors over the seeds that ran without error.
    `records` are `Record`s or their dicts."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    failures: dict[tuple, list[str]] = defaultdict(list)
    for r in _as_dicts(records):
        key = (r["problem"], r["sde"], r["label"], r["setting"])
        (failures[key].append(r["error"]) if r["error"] else groups[key].append(r))
    rows = []
    for key, rs in groups.items():
        first = rs[0]
        row = {k: first[k] for k in ("problem", "sde", "label", "family", "stochastic", "setting", "budget", "steps", "tol", "samples", "data_std")}
        row["seeds"] = len(rs)
        row["failed_seeds"] = len(failures.get(key, []))
        row["nfe"] = statistics.mean(r["nfe"] for r in rs)
        row["time_s"] = statistics.median(r["time_s"] for r in rs)
        row["cpu_s"] = statistics.median(r["cpu_s"] for r in rs)
        row["peak_mem_mb"] = first["peak_mem_mb"]
        row["setup_nfe"] = first.get("setup_nfe", 0.0)
        for m in METRICS:
            row[m], row[m + "_se"] = _nan_mean([r[m] for r in rs])
            if not m.startswith("traj_err"):
                row[m + "_floor"], row[m + "_floor_se"] = _nan_mean([r[m + "_floor"] for r in rs])
                row[m + "_floor_sd"] = _nan_mean([r[m + "_floor_sd"] for r in rs])[0]
        rows.append(row)
    rows.sort(key=lambda r: (r["problem"], r["sde"], r["label"], r["nfe"]))
    return rows


def failures(records: Iterable[dict]) -> list[dict]:
    """The runs that raised, one per (case, label, error message)."""
    seen, out = set(), []
    for r in _as_dicts(records):
        key = (r["problem"], r["sde"], r["label"], r["error"])
        if r["error"] and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def cases_of(rows: list[dict]) -> list[tuple[str, str]]:
    return sorted({(r["problem"], r["sde"]) for r in rows})


def _of(rows, problem, sde):
    return [r for r in rows if r["problem"] == problem and r["sde"] == sde]


def fewest_nfe(rows: list[dict], ok, metric: str) -> tuple[float, str] | None:
    """(NFE, label) of the cheapest row satisfying `ok` (of equally cheap ones, the lowest `metric`), or None."""
    hits = [(r["nfe"], r[metric], r["label"]) for r in rows if ok(r)]
    return min(hits)[::2] if hits else None


def sw2_noise(r: dict) -> float:
    """The standard error of a row's mean SW2: the spread over its seeds, or, if larger, the spread of a single
    data-vs-data distance at this sample size over sqrt(seeds) (two seeds say little about a heavy-tailed spread)."""
    floor_sd = r.get("sw2_floor_sd", math.nan)
    from_floor = floor_sd / math.sqrt(r["seeds"]) if not math.isnan(floor_sd) else 0.0
    return max(r["sw2_se"], from_floor)


def _at_floor(r: dict) -> bool:
    return r["sw2"] <= r["sw2_floor"] + 2 * math.hypot(sw2_noise(r), r["sw2_floor_se"])


def frontier_targets() -> list[tuple[str, str, Callable[..., bool]]]:
    """(metric, description, test) for each target of the frontier."""
    targets: list[tuple[str, str, Callable[..., bool]]] = [("traj_err", f"traj err <= {t:g}", lambda r, t=t: r["traj_err"] <= t) for t in TRAJECTORY_TARGETS]
    targets += [("sw2", f"SW2 <= {f:g} x floor", lambda r, f=f: r["sw2"] <= f * r["sw2_floor"]) for f in FLOOR_TARGETS]
    targets.append(("sw2", "SW2 at the floor (within 2 se)", _at_floor))
    return targets


def frontier(rows: list[dict], problem: str, sde: str) -> list[dict]:
    """For each target: the fewest NFE meeting it among all contestants, among ours and among the peers."""
    case = [r for r in _of(rows, problem, sde) if r["family"] != "reference"]
    out = []
    for metric, target, ok in frontier_targets():
        out.append(dict(
            metric=metric, target=target,
            best=fewest_nfe(case, ok, metric),
            ours=fewest_nfe([r for r in case if r["family"] == "ours"], ok, metric),
            peers=fewest_nfe([r for r in case if r["family"] != "ours"], ok, metric),
        ))
    return out


def frontier_overview(rows: list[dict]) -> str:
    """One line per case: for each target, the fewest NFE that meets it and the solver (Markdown)."""
    names = [target for _, target, _ in frontier_targets()]
    lines = ["| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for problem, sde in cases_of(rows):
        cells = [_fmt_hit(f["best"]) for f in frontier(rows, problem, sde)]
        lines.append(f"| {problem} / {sde} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_hit(hit) -> str:
    return f"{hit[0]:.0f} ({hit[1]})" if hit else "-"


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}e}"


def pivot(rows: list[dict], metric: str, budgets: tuple[int, ...], deterministic_only: bool) -> tuple[list[str], list[list[str]]]:
    """Contestants x budgets; a run sits in the column of the smallest budget >= its NFE (the most accurate run
    if several do), with its NFE in brackets when it differs from the budget."""
    labels = []
    for r in rows:
        if r["label"] not in labels and not (deterministic_only and r["stochastic"]):
            labels.append(r["label"])
    table = []
    for label in labels:
        cells: dict[int, dict] = {}
        for r in rows:
            if r["label"] != label or math.isnan(r[metric]):
                continue
            column = next((b for b in budgets if r["nfe"] <= b), None)
            if column is not None and (column not in cells or r[metric] < cells[column][metric]):
                cells[column] = r
        if not cells:
            continue
        line = [label]
        for b in budgets:
            best = cells.get(b)
            line.append("" if best is None else _fmt(best[metric]) + ("" if best["nfe"] == b else f" [{best['nfe']:.0f}]"))
        table.append(line)
    return ["solver"] + [str(b) for b in budgets], table


def _markdown_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _at_budget(rows, label, budget):
    hits = [r for r in rows if r["label"] == label and r["budget"] == budget]
    return hits[0] if hits else None


def deterministic_claim(rows: list[dict]) -> list[dict]:
    """At each claim budget on each claim case: the best deterministic row of ours and of diffusers (same budget)."""
    out = []
    for problem, sde in CLAIM_CASES:
        case = _of(rows, problem, sde)
        for budget in CLAIM_BUDGETS:
            at = [r for r in case if r["budget"] == budget and not r["stochastic"] and not math.isnan(r["traj_err"])]
            ours = min((r for r in at if r["family"] == "ours"), key=lambda r: r["traj_err"], default=None)
            fixed = min((r for r in at if r["family"] == "ours" and not r["label"].endswith(CALIBRATED_SUFFIX)),
                        key=lambda r: r["traj_err"], default=None)
            peer = min((r for r in at if r["family"] == "diffusers"), key=lambda r: r["traj_err"], default=None)
            if ours is None or peer is None:
                continue
            ratio = ours["traj_err"] / peer["traj_err"]
            best_median = lambda family: min(r["traj_err_median"] for r in at if r["family"] == family)  # noqa: E731, B023  (called within this iteration)
            out.append(dict(problem=problem, sde=sde, budget=budget, ours=ours, peer=peer, ratio=ratio, holds=ratio <= 0.5,
                            median_ratio=best_median("ours") / best_median("diffusers"), fixed=fixed,
                            fixed_ratio=fixed["traj_err"] / peer["traj_err"] if fixed else math.nan))
    return out


def stochastic_claim(rows: list[dict]) -> list[dict]:
    """Each stochastic challenger against Euler-Maruyama at equal budget: the difference of mean SW2 and its se."""
    out = []
    for problem, sde in cases_of(rows):
        case = _of(rows, problem, sde)
        for budget in STOCHASTIC_BUDGETS:
            base = _at_budget(case, STOCHASTIC_BASELINE, budget)
            if base is None:
                continue
            for label in STOCHASTIC_CHALLENGERS:
                r = _at_budget(case, label, budget)
                if r is None:
                    continue
                se = math.hypot(sw2_noise(r), sw2_noise(base))
                diff = r["sw2"] - base["sw2"]
                if min(r["seeds"], base["seeds"]) < 2:
                    verdict = "n/a (1 seed)"
                elif _at_floor(r) and _at_floor(base):
                    verdict = "both at floor"
                else:
                    verdict = "beats" if diff < -2 * se else ("loses" if diff > 2 * se else "tie")
                out.append(dict(problem=problem, sde=sde, budget=budget, label=label, sw2=r["sw2"], em=base["sw2"],
                                floor=r["sw2_floor"], se=se, verdict=verdict))
    return out


def environment() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"{torch.get_num_threads()} torch thread(s)"]
    try:
        import diffusers

        parts.append(f"diffusers {diffusers.__version__}")
    except ImportError:
        parts.append("diffusers not installed")
    return ", ".join(parts) + f"; {platform.processor() or platform.machine()}"


def markdown(result, rows: list[dict], overhead_rows: list[dict] | None = None, command: str = "", charts: dict | None = None) -> str:
    """The full Markdown report."""
    config = result.config
    lines = [
        "# Solver arena: results",
        "",
        f"Command: `{command}`  " if command else "",
        f"Runtime: {result.seconds / 60:.1f} min ({config.jobs} worker process(es)); {environment()}.  ",
        f"Seeds: {config.seeds}; samples per run: {config.samples}; budgets: {', '.join(map(str, config.budgets))}; "
        f"adaptive tolerances: {', '.join(f'{t:g}' for t in config.tolerances)}; reference: DOP853 at rtol = atol = "
        f"{config.reference_tol:g}; deterministic contestants stop once their trajectory error is below {config.stop_below:g}.",
        "",
        "Every run starts from the same x_T (a draw of the exact p_T), integrates to the SDE's t_min and returns "
        "Tweedie's E[x_0 | x_t_min]; NFE is what the ScoreModel wrapper counted (the denoising evaluation included). "
        "`traj err`: relative RMS distance to the exact probability-flow solution from the same x_T (deterministic "
        "solvers). `SW2`: sliced 2-Wasserstein to fresh data on fixed projections, read against the floor, the "
        "same distance between two data samples of the same size. A cell `e [n]` ran at n NFE, within the column's budget.",
        "",
    ]
    if result.skipped:
        lines += ["Skipped: " + "; ".join(f"{label} ({reason})" for label, reason in result.skipped), ""]

    lines += ["## Problems, data scale and floors", "",
              "| problem | SDE | data std | SW2 floor | MMD floor | energy floor | exact PF-ODE SW2 | reference NFE |",
              "|---|---|---|---|---|---|---|---|"]
    for problem, sde in cases_of(rows):
        case = _of(rows, problem, sde)
        ref = next((r for r in case if r["family"] == "reference"), None)
        r0 = case[0]
        ref_sw2, ref_nfe = (_fmt(ref["sw2"]), f"{ref['nfe']:.0f}") if ref else ("-", "-")
        lines.append(
            f"| {problem} | {sde} | {r0['data_std']:.3g} | {_fmt(r0['sw2_floor'])} ± {_fmt(r0['sw2_floor_se'], 1)} | "
            f"{_fmt(r0['mmd_floor'])} | {_fmt(r0['energy_floor'])} | {ref_sw2} | {ref_nfe} |"
        )
    lines.append("")

    det = deterministic_claim(rows)
    if det:
        lines += ["## Claim: our best deterministic solver vs the best diffusers scheduler (EDM range, sigma 80 -> 0.002)", "",
                  "Target: at 10 and 20 NFE our trajectory error is at most half the best peer's.", "",
                  "| problem | NFE | ours (best) | traj err | diffusers (best) | traj err | ratio | holds | ratio of best median errors | ours on a fixed grid (best) | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in det:
            fixed = f"{c['fixed']['label']} [{c['fixed']['nfe']:.0f}] | {c['fixed_ratio']:.2f}" if c["fixed"] else "- | -"
            lines.append(f"| {c['problem']} | {c['budget']} | {c['ours']['label']} [{c['ours']['nfe']:.0f}] | {_fmt(c['ours']['traj_err'])} | "
                         f"{c['peer']['label']} [{c['peer']['nfe']:.0f}] | {_fmt(c['peer']['traj_err'])} | {c['ratio']:.2f} | "
                         f"{'yes' if c['holds'] else 'no'} | {c['median_ratio']:.2f} | {fixed} |")
        lines.append("")
        calibrated = [c for c in det if c["ours"].get("setup_nfe")]
        if calibrated:
            lines += ["One-time cost of the calibrated grids (not in NFE; batched evaluations of the pilot batch and of the "
                      "screening of its pool): " + "; ".join(
                          f"{c['problem']} at {c['budget']} NFE, {c['ours']['setup_nfe']:.0f}" for c in calibrated) + ".", ""]
    sto = stochastic_claim(rows)
    if sto:
        lines += ["## Claim: stochastic solvers vs Euler-Maruyama at equal NFE", "",
                  "SW2, solver vs Euler-Maruyama. 'beats' / 'loses': lower / higher by more than 2 se, where se is the "
                  "larger of the spread over seeds and the spread of one data-vs-data distance at this sample size over "
                  "sqrt(seeds); 'both at floor': neither is above the floor by 2 se, so this sample size cannot rank them.", "",
                  "| problem | SDE | solver | " + " | ".join(f"NFE {b}" for b in STOCHASTIC_BUDGETS) + " |",
                  "|---|---|---|" + "---|" * len(STOCHASTIC_BUDGETS)]
        for problem, sde in cases_of(rows):
            for label in STOCHASTIC_CHALLENGERS:
                cells = {c["budget"]: c for c in sto if c["problem"] == problem and c["sde"] == sde and c["label"] == label}
                if cells:
                    lines.append(f"| {problem} | {sde} | {label} | " + " | ".join(
                        f"{cells[b]['verdict']} ({cells[b]['sw2']:.3g} vs {cells[b]['em']:.3g})" if b in cells else "-"
                        for b in STOCHASTIC_BUDGETS) + " |")
        lines.append("")

    lines += ["## Frontier: the fewest NFE that reach each target", "",
              "Trajectory targets are relative errors (deterministic solvers); SW2 targets are multiples of the floor "
              "(every solver). Each cell: NFE (solver).", "", frontier_overview(rows), "",
              "Per case, with the best of ours and the best peer:", ""]
    for problem, sde in cases_of(rows):
        lines += [f"### {problem} / {sde}", "", "| target | fewest NFE (solver) | ours | peers |", "|---|---|---|---|"]
        for f in frontier(rows, problem, sde):
            lines.append(f"| {f['target']} | {_fmt_hit(f['best'])} | {_fmt_hit(f['ours'])} | {_fmt_hit(f['peers'])} |")
        lines.append("")

    lines += ["## Error vs NFE", ""]
    for problem, sde in cases_of(rows):
        case = [r for r in _of(rows, problem, sde) if r["family"] != "reference"]
        floor = case[0]["sw2_floor"] if case else math.nan
        lines += [f"### {problem} / {sde}", ""]
        if charts and (problem, sde) in charts:
            lines += [f"![{problem} / {sde}]({charts[(problem, sde)]})", ""]
        lines += ["Trajectory error (deterministic):", "", _markdown_table(*pivot(case, "traj_err", config.budgets, True)), "",
                  f"SW2 (floor {_fmt(floor)}):", "", _markdown_table(*pivot(case, "sw2", config.budgets, False)), ""]
        lines += ["Time per run (wall and CPU seconds, median over seeds) at the largest budget each reached, and peak "
                  "tensor memory:", "", "| solver | NFE | wall (s) | CPU (s) | memory (MiB) |", "|---|---|---|---|---|"]
        for label in dict.fromkeys(r["label"] for r in case):
            last = max((r for r in case if r["label"] == label), key=lambda r: r["nfe"])
            lines.append(f"| {label} | {last['nfe']:.0f} | {last['time_s']:.3f} | {last['cpu_s']:.3f} | {last['peak_mem_mb']:.2f} |")
        lines.append("")

    failed = failures(result.records)
    if failed:
        lines += ["## Failed runs", "", "| problem | SDE | solver | setting | error |", "|---|---|---|---|---|"]
        lines += [f"| {r['problem']} | {r['sde']} | {r['label']} | {r['setting']} | {r['error'].replace('|', '/')} |" for r in failed]
        lines.append("")

    if overhead_rows:
        from .overhead import overhead_markdown

        lines += [overhead_markdown(overhead_rows), ""]
    return "\n".join(line for line in lines if line is not None) + "\n"


def write_report(result, out: Path | str, overhead_rows: list[dict] | None = None, command: str = "") -> dict[str, Path]:
    """Write records.csv, summary.csv, one PNG per case and results.md under `out`; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(result.records)
    paths = {"records": out / "records.csv", "summary": out / "summary.csv", "markdown": out / "results.md"}
    write_csv(result.records, paths["records"])
    write_csv(rows, paths["summary"])
    charts = {}
    for problem, sde in cases_of(rows):
        name = f"error_vs_nfe_{problem}_{sde}.png"
        plot_case(rows, problem, sde, out / name)
        charts[(problem, sde)] = name
        paths[f"chart {problem}/{sde}"] = out / name
    if overhead_rows:
        write_csv(overhead_rows, out / "overhead.csv")
        paths["overhead"] = out / "overhead.csv"
    paths["markdown"].write_text(markdown(result, rows, overhead_rows, command, charts))
    return paths
