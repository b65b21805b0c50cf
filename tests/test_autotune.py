"""`sd.autotune`: the contract of its result, its cost accounting, its disk cache, `solver=auto` from Hydra, and
bad input refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.app import jobs
from sde_diffusion.app.config import ConfigError
from sde_diffusion.networks import MLP
from tests.test_app import TINY, cfg_of
from tests.test_calibration import counted_exact_score

CANDIDATES = [("unipc", {"order": 2}), ("dpm_solver_pp_2m", {})]
SMALL = dict(candidates=CANDIDATES, budget=30_000, pilot=24, validation=24)


class Counting(torch.nn.Module):
    """A network that counts the rows it is called on (forward only: enough to see that a call spends nothing)."""

    def __init__(self, network):
        super().__init__()
        self.network, self.rows = network, 0

    def forward(self, x, t):
        self.rows += len(x)
        return self.network(x, t)


@pytest.fixture()
def mlp_model():
    sde = sd.VPSDE()
    torch.manual_seed(0)
    return sde, sd.ScoreModel(Counting(MLP(dim=2, width=32, depth=2)), sde, prediction="eps")


def test_the_tuned_sampler_keeps_to_the_budget_and_the_cost_is_counted():
    """sample(sde, model, t.solver, grid=t.times, denoise=True, **t.options) spends t.nfe <= nfe; t.cost is what an
    independent wrapper of the network counted (forward rows + 2 x backward rows), within the search budget."""
    sde, mixture = sd.EDMSDE(), sd.GaussianMixture.ring()
    model, counts = counted_exact_score(mixture, sde)
    t = sd.autotune(sde, model, nfe=6, shape=(1, 2), dtype=torch.float64, cache=False, **SMALL)
    assert (t.solver, t.options) in [(n, o) for n, o in CANDIDATES] and t.steps == 5 and t.nfe == 6
    assert t.cost == counts["forward"] + 2 * counts["backward"] <= SMALL["budget"] and counts["backward"] > 0
    result = sd.sample(sde, model, t.solver, shape=(8, 2), grid=t.times, denoise=True, dtype=torch.float64, **t.options)
    assert result.nfe == t.nfe <= 6
    assert t.validation_error < min(min(c["initial_errors"].values()) for c in t.candidates)
    assert {c["solver"] for c in t.candidates} == {"unipc", "dpm_solver_pp_2m"} and not t.from_cache


def test_the_winner_is_a_finalist_of_the_first_round_and_every_start_was_tried():
    """Successive halving: the chosen candidate is among the `FINALISTS` with the least first-round pilot error and
    within `FINALIST_MARGIN` of the least, each candidate's first round tried every start of `GRADIENT_STARTS`, and
    its pilot error is no worse than its best start's."""
    sde, mixture = sd.EDMSDE(), sd.GaussianMixture.ring()
    model = mixture.score_model(sde)
    candidates = [("unipc", {"order": 2}), ("unipc", {"order": 3}), ("dpm_solver_pp_2m", {})]
    t = sd.autotune(sde, model, nfe=8, shape=(1, 2), dtype=torch.float64, cache=False, candidates=candidates,
                    budget=60_000, pilot=24, validation=24)
    labels = {sd.calibration.grid_label(g) for g in sd.calibration.GRADIENT_STARTS}
    for c in t.candidates:
        assert set(c["initial_errors"]) == labels and c["pilot_error"] <= min(c["initial_errors"].values())
    first = sorted(t.candidates, key=lambda c: c["pilot_error"])[: sd.autotuning.FINALISTS]
    least = first[0]["pilot_error"]
    finalists = [(c["solver"], c["options"]) for c in first if c["pilot_error"] <= sd.autotuning.FINALIST_MARGIN * least]
    assert (t.solver, t.options) in finalists


def test_a_second_call_is_free_and_a_changed_weight_misses_the_cache(mlp_model, tmp_path):
    sde, model = mlp_model
    first = sd.autotune(sde, model, nfe=5, shape=(1, 2), cache_dir=tmp_path, **SMALL)
    assert 0 < model.network.rows < first.cost and not first.from_cache  # forward rows; the cost adds backward
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".json"] and json.loads(files[0].read_text())["fingerprint"] == first.fingerprint

    model.network.rows = 0
    second = sd.autotune(sde, model, nfe=5, shape=(1, 2), cache_dir=tmp_path, **SMALL)
    assert model.network.rows == 0 and second.from_cache
    assert torch.equal(second.times, first.times) and second.solver == first.solver and second.cost == first.cost

    other_budget = sd.autotune(sde, model, nfe=6, shape=(1, 2), cache_dir=tmp_path, **SMALL)
    assert not other_budget.from_cache and other_budget.fingerprint != first.fingerprint

    with torch.no_grad():
        next(model.network.parameters()).view(-1)[0] += 1e-3
    model.network.rows = 0
    changed = sd.autotune(sde, model, nfe=5, shape=(1, 2), cache_dir=tmp_path, **SMALL)
    assert not changed.from_cache and model.network.rows > 0 and changed.fingerprint != first.fingerprint
    assert not [f for f in tmp_path.iterdir() if f.suffix != ".json"]  # no temporary file left behind


def test_a_network_without_weights_is_not_cached(tmp_path):
    sde, mixture = sd.EDMSDE(), sd.GaussianMixture.ring()
    sd.autotune(sde, mixture.score_model(sde), nfe=4, shape=(1, 2), cache_dir=tmp_path,
                **(SMALL | dict(budget=8_000, candidates=CANDIDATES[:1])))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(nfe=2), "nfe=2 is below one calibrated solve"),
        (dict(nfe=0), "a positive integer"),
        (dict(candidates=[("euler_maruyama", {})]), "stochastic"),
        (dict(candidates=[("dopri5", {})]), "chooses its own steps"),
        (dict(candidates=[("unipc",)]), "pair"),
        (dict(candidates=[]), "candidates is empty"),
        (dict(shape=(2,)), "a batch's shape"),
        (dict(budget=0), "budget must be a positive integer"),
    ],
)
def test_bad_input_is_refused(mlp_model, kwargs, message):
    sde, model = mlp_model
    with pytest.raises(ValueError, match=message):
        sd.autotune(sde, model, **(dict(nfe=5, shape=(1, 2), cache=False) | kwargs))
    assert model.network.rows == 0  # refused before any evaluation


def test_solver_auto_from_hydra(tmp_path):
    """+solver@solvers.fast=auto with sample.nfe: the run tunes the trained model, samples within the budget, and
    keeps what the tuning chose in metrics.json; the second run reads the cache."""
    overrides = ["~solver@solvers.pc", "~solver@solvers.pf_ode", "+solver@solvers.fast=auto", "sample.nfe=6",
                 "solvers.fast.budget=20000", "solvers.fast.pilot=16", "solvers.fast.validation=16",
                 f"solvers.fast.cache_dir={tmp_path / 'cache'}", "solvers.fast.candidates=[[unipc, {order: 2}]]",
                 *[o for o in TINY if not o.startswith("solvers.")], "evaluate.ground_truth=false", "plots=false"]
    metrics = jobs.run_main(cfg_of(*overrides), tmp_path / "run")
    fast = metrics["solvers"]["fast"]
    assert fast["nfe"] <= 6 and fast["solver"] == "unipc"
    tuned = json.loads((tmp_path / "run" / "metrics.json").read_text())["solvers"]["fast"]["autotune"]
    assert tuned["cost"] <= 20000 and len(tuned["times"]) == 6 and not tuned["from_cache"]


def test_solver_auto_needs_an_nfe_budget():
    with pytest.raises(ConfigError, match=r"sample\.nfe"):
        jobs.build(cfg_of("+solver@solvers.fast=auto", *TINY))
