"""The solver arena on tiny configurations: its numbers are honest.

- the NFE of every row is the number of calls the network itself received;
- every distance (each solver's and the floor's) compares two samples of the configured size;
- a deliberately wrong score (scaled by 0.5) is ranked worse than the exact one on every metric;
- the report writes its CSV, Markdown and PNG; peers that are not installed are skipped with a message;
- the diffusers adapter is faithful: diffusers' Euler on Karras sigmas reproduces our Euler on the EDM grid.
"""

from __future__ import annotations

import csv
import pickle
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sde_diffusion as sd
from sde_diffusion import arena
from sde_diffusion.arena.contestants import Calibrated, Diffusers, Ours, Setting
from sde_diffusion.arena.run import Case

F64 = torch.float64


class CountingMixture(sd.GaussianMixture):
    """A mixture whose exact score counts its own evaluations: the network the wrapper's count is checked against."""

    calls = 0

    def score(self, x, t, sde):
        CountingMixture.calls += 1
        return super().score(x, t, sde)


def counting_ring() -> arena.Problem:
    ring = sd.GaussianMixture.ring(8, radius=2.0, std=0.05)
    return arena.Problem("counting-ring", CountingMixture(ring.weights, ring.means, ring.covs))


def tiny(**overrides) -> arena.ArenaConfig:
    base = dict(problems=("ring-2d",), sdes=("edm",), budgets=(5, 10), seeds=2, samples=32, tolerances=(1e-2,),
                memory=False, reference_tol=1e-8)
    return arena.ArenaConfig(**{**base, **overrides})


class HalfScore(Ours):
    """A contestant whose score is the exact one times 0.5 (each evaluation still counted by the case's wrapper)."""

    def solve(self, sde, model, x_T, t_min, setting, generator):
        half = sd.ScoreModel(lambda x, t: 0.5 * model.score(x, t), sde, prediction="score")
        return super().solve(sde, half, x_T, t_min, setting, generator)


def test_nfe_is_what_the_network_saw():
    config = tiny(seeds=1, samples=8, budgets=(5, 10, 40))  # torchsde's srk needs 10 NFE a step
    case = Case(counting_ring(), "edm", config)
    case.seeds = [case.prepare(0)]
    lineup = arena.default_contestants(peers=True, calibrated=False)  # calibrated grids: test_calibrated_rows_...
    assert len(lineup.contestants) >= len(sd.solvers.names()) - 2  # registry-driven: every solver takes part
    for c in lineup.contestants:
        settings = c.plan(case.sde, case.model, case.seeds[0].x_T[:2], case.t_min, config.budgets, config.tolerances)
        assert settings, c.label
        for setting in settings:
            before = CountingMixture.calls
            record, x = arena.run.run_setting(case, c, setting, case.seeds[0])
            assert record.nfe == CountingMixture.calls - before, c.label
            assert x.shape == case.seeds[0].x_T.shape
            if setting.budget is not None and c.family != "torchsde":  # torchsde's extra step is caught by run_seeds
                assert record.nfe <= setting.budget, (c.label, setting, record.nfe)


def test_calibrated_rows_charge_sampling_and_keep_the_calibration_apart():
    """A calibrated grid is fitted once per step count through its own wrapper; the row's NFE is then exactly what
    the network saw while sampling on it, and a second run with the same steps reuses the grid."""
    config = tiny(seeds=1, samples=8, budgets=(10, 40))
    case = Case(counting_ring(), "edm", config)
    case.seeds = [case.prepare(0)]
    c = Calibrated("unipc@calibrated", "unipc", pilot=16, pool=64, max_evaluations=20, max_budget=10)
    settings = c.plan(case.sde, case.model, case.seeds[0].x_T[:2], case.t_min, config.budgets, config.tolerances)
    assert [s.budget for s in settings] == [10]  # the budget of 40 is over max_budget
    steps = settings[0].steps
    before, wrapper_before = CountingMixture.calls, case.model.nfe
    c.grid(case.sde, case.model, case.t_min, steps, case.seeds[0].x_T)
    assert c.calibration_nfe[steps] == CountingMixture.calls - before > 0 and case.model.nfe == wrapper_before
    for _ in range(2):
        before, wrapper_before = CountingMixture.calls, case.model.nfe
        record, _ = arena.run.run_setting(case, c, settings[0], case.seeds[0])
        assert record.nfe == CountingMixture.calls - before == case.model.nfe - wrapper_before == 10
        assert record.setup_nfe == c.calibration_nfe[steps]
    assert pickle.loads(pickle.dumps(c)).label == c.label  # worker processes receive the contestants pickled
    assert c.sdes == ("edm",) and all(r.family == "reference" for r in arena.run_case("ring-2d", "vp", [c], config))
    with pytest.raises(ValueError, match="stochastic"):
        Calibrated("em@calibrated", "euler_maruyama")
    with pytest.raises(ValueError, match="at least pilot=16"):
        Calibrated("unipc@calibrated", "unipc", pilot=16, pool=8)


def test_budgets_are_met_and_reported():
    config = tiny(seeds=1, samples=8, budgets=(5, 10, 20))
    lineup = arena.select(arena.default_contestants(peers=True), ["dpm_solver_2", "torchsde:euler", "unipc"])
    records = [r for r in arena.run_case("ring-2d", "edm", lineup.contestants, config) if r.family != "reference"]
    assert records and not any(r.error for r in records)
    for r in records:
        assert r.nfe <= r.budget
    two_stage = sorted(r.nfe for r in records if r.label == "dpm_solver_2")
    assert two_stage == [5, 9, 19]  # 2 per step + 1 denoise, read off the wrapper, never assumed
    one = arena.run_one("ring-2d", "edm", lineup.contestants[0], budget=10, samples=8)
    assert one.nfe == 9 and one.traj_err > 0


def test_floor_is_at_the_same_sample_size(monkeypatch):
    sizes = []
    original = Case.distances

    def spy(self, x, y):
        sizes.append((len(x), len(y)))
        return original(self, x, y)

    monkeypatch.setattr(Case, "distances", spy)
    config = tiny(samples=24)
    lineup = arena.select(arena.default_contestants(peers=False), ["euler_maruyama", "ddim"])
    records = arena.run_case("ring-2d", "edm", lineup.contestants, config)
    assert sizes and all(s == (24, 24) for s in sizes)
    floors = {(r.seed, r.sw2_floor) for r in records}
    assert len({seed for seed, _ in floors}) == config.seeds and len(floors) == config.seeds  # one floor per seed
    assert all(r.samples == 24 for r in records)


@pytest.mark.parametrize(
    "solver, problem, sde, budgets",
    [
        ("euler_maruyama", "gauss-8d", "vp", (50, 200)),  # half the score: twice the variance, seen by every distance
        ("dpm_solver_pp_2m", "ring-2d", "edm", (10, 20)),
    ],
)
def test_half_score_is_ranked_worse(solver, problem, sde, budgets):
    config = tiny(problems=(problem,), sdes=(sde,), samples=64, budgets=budgets)
    exact, wrong = Ours(solver, solver), HalfScore(f"{solver} x0.5", solver)
    rows = arena.summarize(arena.run_case(problem, sde, [exact, wrong], config))
    for budget in budgets:
        good = next(r for r in rows if r["label"] == solver and r["budget"] == budget)
        bad = next(r for r in rows if r["label"] == wrong.label and r["budget"] == budget)
        for metric in ("sw2", "mmd", "energy") + (() if exact.stochastic else ("traj_err",)):
            assert bad[metric] > good[metric], (metric, budget, bad[metric], good[metric])
    for f in arena.frontier(rows, problem, sde):  # the wrong score never wins a target
        assert f["best"] is None or f["best"][1] == solver, f


def test_report_writes_csv_markdown_and_png(tmp_path):
    config = tiny(memory=True)
    lineup = arena.select(arena.default_contestants(peers=False), ["euler_maruyama", "dpm_solver_pp_2m", "adaptive_dpm_solver"])
    result = arena.run_arena(config, lineup, log=lambda s: None)
    overhead = arena.measure_overhead(lineup.contestants, batch_sizes=(64,), width=16, steps=4, repeats=1)
    paths = arena.write_report(result, tmp_path, overhead, command="pytest")
    with open(paths["summary"]) as f:
        summary = list(csv.DictReader(f))
    assert {r["label"] for r in summary} >= {"euler_maruyama", "dpm_solver_pp_2m", "exact PF-ODE"}
    with open(paths["records"]) as f:
        assert len(list(csv.DictReader(f))) == len(result.records)
    text = paths["markdown"].read_text()
    for heading in ("Problems, data scale and floors", "Frontier", "Error vs NFE", "Overhead"):
        assert heading in text
    png = tmp_path / "error_vs_nfe_ring-2d_edm.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    memory = [r["peak_mem_mb"] for r in result.records if r["label"] == "dpm_solver_pp_2m"]
    assert all(m > 0 for m in memory)  # measured (a 32 x 2 float64 state is 512 bytes; the score's temporaries more)
    assert all(r["ratio"] > -1 for r in overhead if not r["error"])


def test_peers_skipped_cleanly_when_absent(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    lineup = arena.default_contestants(peers=True)
    assert lineup.skipped and all("not installed" in reason for _, reason in lineup.skipped)
    assert not any(c.family == "diffusers" for c in lineup.contestants)
    config = tiny(seeds=1, budgets=(5,))
    result = arena.run_arena(config, arena.select(lineup, ["ddim", "diffusers:*"]), log=lambda s: None)
    paths = arena.write_report(result, tmp_path)
    assert "Skipped: diffusers:" in paths["markdown"].read_text()


def test_peak_memory_counts_live_tensors():
    x = torch.zeros(1000, 125, dtype=F64)  # 1 MB, allocated before: not counted

    def work():
        ys = [x + i for i in range(3)]  # three 1 MB tensors alive together
        del ys
        return x * 2

    _, peak = arena.peak_memory(work)
    assert peak == 3 * 1000 * 125 * 8


@pytest.mark.parametrize("sde_name", ["vp", "edm", "ve"])
def test_exact_eps_at_a_noise_level(sde_name):
    sde = arena.get_sde(sde_name)
    data = sd.GaussianMixture.ring()
    model = data.score_model(sde)
    t = torch.tensor(0.3 * sde.T, dtype=F64)
    x = data.marginal(sde, float(t)).sample(16, torch.Generator().manual_seed(0))
    sigma = float(sde.sigma(t) / sde.alpha(t))
    x_vp = x / torch.sqrt(sde.alpha(t) ** 2 + sde.sigma(t) ** 2)
    assert torch.allclose(arena.exact_eps(model, x_vp, sigma), model.eps(x, t), rtol=1e-7, atol=1e-9)


def test_diffusers_euler_reproduces_ours_on_the_same_grid():
    pytest.importorskip("diffusers")
    sde = arena.get_sde("edm")
    data = sd.GaussianMixture.ring()
    model = data.score_model(sde)
    x_T = data.marginal(sde, sde.T).sample(64, torch.Generator().manual_seed(0))
    peer = Diffusers("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, space="ve")
    theirs = peer.solve(sde, model, x_T, sde.default_t_min, Setting(steps=10), None)
    ours = sd.sample(sde, model, "euler", x_T=x_T, steps=9, grid="edm", denoise=True).x  # 9 steps + denoise = 10 NFE
    assert float((theirs - ours).norm() / ours.norm()) < 1e-5  # diffusers steps in float32


@pytest.mark.parametrize("name", ["full", "quick"])
def test_config_files_are_the_python_configurations(name):
    """conf/arena/{full,quick}.yaml instantiate to ArenaConfig.full() / .quick(), field for field."""
    path = Path(arena.__file__).parents[1] / "conf" / "arena" / f"{name}.yaml"
    loaded = instantiate(OmegaConf.load(path), _convert_="all")
    expected = getattr(arena.ArenaConfig, name)()
    for field in expected.__dataclass_fields__:
        value, want = getattr(loaded, field), getattr(expected, field)
        assert (tuple(value) if isinstance(value, list) else value) == want, field
