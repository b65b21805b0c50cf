"""The arena's error-vs-NFE charts, drawn to answer "which solver for this budget?".

One colour per solver group (our stochastic, Runge-Kutta, exponential and adaptive solvers; diffusers, torchsde
and scipy as peers, dashed), the few best contestants at each budget drawn bold and named, every other line faint,
and on the trajectory-error panel the frontier (the lowest error reached at or below each NFE by any contestant) as
a black step line; sliced W2 at its floor is sampling noise, so it gets the floor band instead.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

GROUPS = {  # group: (colour, what it holds)
    "stochastic": ("tab:red", "ours: stochastic"),
    "runge-kutta": ("tab:blue", "ours: Runge-Kutta / EDM"),
    "exponential": ("tab:green", "ours: exponential, UniPC"),
    "adaptive": ("tab:cyan", "ours: adaptive"),
    "diffusers": ("tab:orange", "diffusers (peer)"),
    "torchsde": ("tab:brown", "torchsde (peer)"),
    "scipy": ("tab:gray", "scipy (peer)"),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BEST_PER_BUDGET = 3


def solver_group(label: str, family: str, stochastic: bool) -> str:
    """The chart group of a contestant: its peer library, or for ours stochastic / adaptive / the module it is in."""
    if family != "ours":
        return family if family in GROUPS else "scipy"
    if stochastic:
        return "stochastic"
    from ..solvers import get

    solver = get(re.split(r"[(@]", label)[0])
    if solver.adaptive:
        return "adaptive"
    return "exponential" if type(solver).__module__.endswith(("exponential", "unipc")) else "runge-kutta"


def best_labels(case: list[dict], metric: str, k: int = BEST_PER_BUDGET) -> list[str]:
    """The `k` contestants with the lowest `metric` at each budget, over all budgets, best first."""
    chosen: dict[str, float] = {}
    for budget in sorted({r["budget"] for r in case}):
        at = sorted((r[metric], r["label"]) for r in case if r["budget"] == budget and _finite(r[metric]))
        for value, label in at[:k]:
            chosen[label] = min(value, chosen.get(label, math.inf))
    return sorted(chosen, key=lambda label: chosen[label])


def frontier_line(case: list[dict], metric: str) -> list[tuple[float, float]]:
    """The lower envelope: at each NFE, the lowest `metric` any contestant reached with at most that many NFE."""
    points = sorted((r["nfe"], r[metric]) for r in case if _finite(r[metric]) and r[metric] > 0)
    line, best = [], math.inf
    for nfe, value in points:
        if value < best:
            best = value
            line.append((nfe, value))
    return line


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def plot_case(rows: list[dict], problem: str, sde: str, path: Path) -> None:
    """Two panels, log axes: trajectory error and sliced W2 against NFE (the floor as a band, mean +- 2 se)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    case = [r for r in rows if r["problem"] == problem and r["sde"] == sde]
    contestants = [r for r in case if r["family"] != "reference"]
    group = {r["label"]: solver_group(r["label"], r["family"], str(r["stochastic"]) == "True") for r in contestants}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    panels = ((axes[0], "traj_err", "trajectory error (relative RMS)"), (axes[1], "sw2", "sliced W2 to fresh data"))
    for ax, metric, title in panels:
        best = best_labels(contestants, metric)
        marker = {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(best)}
        for label in dict.fromkeys(r["label"] for r in contestants):
            pts = sorted((r["nfe"], r[metric]) for r in contestants if r["label"] == label and _finite(r[metric]) and r[metric] > 0)
            if not pts:
                continue
            colour, _ = GROUPS[group[label]]
            style = "-" if group[label] in ("stochastic", "runge-kutta", "exponential", "adaptive") else "--"
            bold = label in marker
            ax.plot(*zip(*pts, strict=True), linestyle=style, color=colour, linewidth=2.2 if bold else 0.8, alpha=1.0 if bold else 0.22,
                    marker=marker.get(label, "."), markersize=6 if bold else 2, zorder=3 if bold else 1,
                    label=label if bold else None)
        line = frontier_line(contestants, metric) if metric == "traj_err" else []  # SW2 at its floor is noise
        if line:
            ax.step(*zip(*line, strict=True), where="post", color="k", linewidth=1.2, zorder=2, label="frontier (best at each NFE)")
        if metric == "sw2" and case:
            floor, se = case[0]["sw2_floor"], case[0]["sw2_floor_se"]
            ax.axhspan(max(floor - 2 * se, 1e-12), floor + 2 * se, color="0.85", zorder=0, label="two-sample floor ± 2 se")
            ax.set_ylim(0.5 * floor, 30 * floor)  # what lies beyond is far from the data law, and clipped
        ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", title=f"{problem}, {sde}: {title}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, title=f"best {BEST_PER_BUDGET} at each budget", title_fontsize=7)
    used = [g for g in GROUPS if g in group.values()]
    handles = [Line2D([], [], color=GROUPS[g][0], linewidth=3, linestyle="-" if g in ("stochastic", "runge-kutta",
               "exponential", "adaptive") else "--") for g in used]
    fig.legend(handles, [GROUPS[g][1] for g in used], loc="lower center", ncol=len(used), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
