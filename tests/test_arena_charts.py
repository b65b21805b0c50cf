"""The arena's charts: the groups, the best few per budget, the frontier, and a chart drawn from summary rows."""

from __future__ import annotations

from sde_diffusion.arena.charts import best_labels, frontier_line, plot_case, solver_group


def row(label, budget, nfe, err, family="ours", stochastic=False, sw2=0.5):
    return dict(problem="p", sde="edm", label=label, family=family, stochastic=stochastic, budget=budget, nfe=nfe,
                traj_err=err, sw2=sw2, sw2_floor=0.5, sw2_floor_se=0.01)


def test_groups_follow_the_solver_and_the_peer():
    assert solver_group("heun", "ours", False) == "runge-kutta"
    assert solver_group("unipc(order=3)@calibrated", "ours", False) == "exponential"
    assert solver_group("dopri5", "ours", False) == "adaptive"
    assert solver_group("edm_heun(S_churn=40)", "ours", True) == "stochastic"
    assert solver_group("diffusers:unipc-karras", "diffusers", False) == "diffusers"


def test_the_best_few_per_budget_and_the_frontier():
    rows = [row("a", 5, 5, 0.3), row("b", 5, 5, 0.1), row("c", 5, 5, 0.2), row("d", 5, 5, 0.9),
            row("a", 10, 10, 0.01), row("b", 10, 9, 0.05), row("c", 10, 10, float("nan")), row("d", 10, 10, 0.5)]
    assert best_labels(rows, "traj_err", k=2) == ["a", "b", "c"]  # b, c best at 5; a, b at 10; ordered by best value
    assert frontier_line(rows, "traj_err") == [(5, 0.1), (9, 0.05), (10, 0.01)]


def test_a_chart_is_drawn(tmp_path):
    rows = [row(s, b, b, e / b) for s, e in (("heun", 1.0), ("unipc", 0.5)) for b in (5, 10, 20)]
    rows += [row("diffusers:unipc-karras", b, b, 0.8 / b, family="diffusers") for b in (5, 10, 20)]
    plot_case(rows, "p", "edm", tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 10_000
