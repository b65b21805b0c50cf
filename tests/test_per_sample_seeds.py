"""`sample(..., seeds=...)`: sample i depends on seeds[i] only, whatever the batch it is drawn in."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.networks import MLP, batch_invariant
from sde_diffusion.noise import SeededNoise
from sde_diffusion.solvers import Langevin

# Every solver that draws noise, every adaptive solver, and the two that couple a batch in one system.
RANDOMISED = [
    ("euler_maruyama", {}),
    ("reverse_diffusion", {}),
    ("ancestral", {}),
    ("pc", {}),
    ("pc", {"predictor": "euler_maruyama", "corrector": "annealed_langevin", "corrector_steps": 2}),
    ("ddim", {"eta": 1.0}),
    ("sde_dpm_solver_pp_2m", {}),
    ("edm_heun", {"S_churn": 20.0}),
    ("torchsde", {"method": "euler"}),
    ("torchsde", {"method": "srk"}),
    ("adaptive_sde", {"rtol": 0.05, "atol": 0.05}),
    ("adaptive_sde", {"rtol": 0.05, "atol": 0.05, "brownian_memory": False}),
    ("adaptive_sde", {"max_nfe": 40}),
    ("dopri5", {"rtol": 1e-3, "atol": 1e-3}),
    ("bosh3", {"per_sample": True}),
    ("adaptive_dpm_solver", {}),
    ("scipy", {"rtol": 1e-4, "atol": 1e-4}),
]
SEEDS = [7, 123, 2**40 + 5, 0, 99, 31337, 8, 1]


def draw(model, solver, options, seeds, batches, **kw):
    """The samples of `seeds`, drawn in consecutive batches of the given sizes, stacked."""
    parts, start = [], 0
    for n in batches:
        parts.append(sd.sample(model.sde, model, solver, shape=(n, 2), steps=12, seeds=seeds[start:start + n],
                               dtype=torch.float64, **options, **kw).x)
        start += n
    return torch.cat(parts)


@pytest.fixture(scope="module")
def model():
    sde = sd.VPSDE()
    return sd.GaussianMixture.ring(4, radius=1.5, std=0.2).score_model(sde)


@pytest.mark.parametrize("solver,options", RANDOMISED, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_samples_do_not_depend_on_the_batch(model, solver, options):
    """Batches of 8, of 3 + 5 and of 1 each give the same samples, bit for bit."""
    whole = draw(model, solver, options, SEEDS, [8])
    assert torch.equal(draw(model, solver, options, SEEDS, [3, 5]), whole)
    assert torch.equal(draw(model, solver, options, SEEDS, [1] * 8), whole)
    assert len({tuple(row.tolist()) for row in whole}) == 8  # distinct seeds, distinct samples


def test_shards_gather_to_the_whole(model):
    """Two 'ranks' drawing the even and the odd sample indices give, interleaved, the one-process samples."""
    seeds = list(range(1000, 1010))
    whole = draw(model, "pc", {}, seeds, [10])
    shards = [draw(model, "pc", {}, seeds[rank::2], [5]) for rank in (0, 1)]
    gathered = torch.empty_like(whole)
    gathered[0::2], gathered[1::2] = shards
    assert torch.equal(gathered, whole)


def test_a_repeated_seed_repeats_its_sample_and_x_T_is_its_first_draw(model):
    seeds = [5, 6, 5]
    out = sd.sample(model.sde, model, "euler_maruyama", shape=(3, 2), steps=10, seeds=seeds, keep_trajectory=True)
    assert torch.equal(out.x[0], out.x[2]) and not torch.equal(out.x[0], out.x[1])
    x_T = out.trajectory[0]
    assert torch.equal(x_T[1:2], model.sde.prior_sample((1, 2), torch.Generator().manual_seed(6)))


def test_a_batch_invariant_network_gives_the_same_samples_in_any_batch():
    """With trained-looking (dense, non-zero) float32 weights, a matmul's rounding of a row can depend on the row
    count; `batch_invariant` removes that, so seeded samples agree bit for bit in any batch."""
    torch.manual_seed(0)
    sde = sd.VPSDE()
    net = MLP(2, width=32, depth=2).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    model = sd.ScoreModel(batch_invariant(net), sde, prediction="eps")
    seeds = list(range(16))
    with torch.no_grad():
        whole = sd.sample(sde, model, "euler_maruyama", shape=(16, 2), steps=8, seeds=seeds).x
        parts = [sd.sample(sde, model, "euler_maruyama", shape=(n, 2), steps=8, seeds=seeds[i:i + n]).x
                 for i, n in ((0, 1), (1, 2), (3, 7), (10, 6))]
        plain = sd.sample(sde, sd.ScoreModel(net, sde, prediction="eps"), "euler_maruyama", shape=(16, 2), steps=8,
                          seeds=seeds).x
    assert torch.equal(torch.cat(parts), whole)
    torch.testing.assert_close(plain, whole, rtol=1e-3, atol=1e-3)  # the same function, up to rounding (amplified)


def test_batch_invariant_network_rows_agree_bit_for_bit_with_a_batch_of_one_in_any_batch_and_position():
    """Every batch size from 1 to 70 (one block of `ChunkedLinear.chunk` rows, several, a partial last one) and
    shuffled positions: each row's output is the one it has alone, bit for bit (width 128 as in the default job,
    dense weights of trained size)."""
    torch.manual_seed(2)
    net = MLP(2, width=128, depth=2).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    inv = batch_invariant(net)
    x, t = torch.randn(70, 2), torch.rand(70)
    with torch.no_grad():
        alone = torch.cat([inv(x[i:i + 1], t[i:i + 1]) for i in range(len(x))])
        for n in range(1, 71):
            rows = torch.randperm(70, generator=torch.Generator().manual_seed(n))[:n]
            assert torch.equal(inv(x[rows], t[rows]), alone[rows]), f"batch of {n}"
        torch.testing.assert_close(alone, net(x, t), rtol=1e-4, atol=1e-5)


def test_batch_invariant_layers_compute_the_same_function():
    torch.manual_seed(1)
    for layer, x in ((torch.nn.Linear(5, 3), torch.randn(7, 4, 5)), (torch.nn.Conv2d(2, 3, 3, padding=1), torch.randn(3, 2, 6, 6))):
        inv = batch_invariant(layer)
        with torch.no_grad():
            torch.testing.assert_close(inv(x), layer(x))
            assert torch.equal(torch.cat([inv(x[:1]), inv(x[1:])]), inv(x))


def test_seeded_samples_have_the_exact_law():
    """Euler-Maruyama under seeds on Gaussian data: mean and variance of the output against the exact marginal at
    t_min (within 5 standard errors of n = 4000 draws, plus the discretisation's bias, measured below 0.02)."""
    sde = sd.VPSDE()
    data = sd.GaussianMixture([1.0], torch.tensor([[0.5, -1.0]]), torch.tensor([[[0.3, 0.0], [0.0, 0.6]]]))
    model = data.score_model(sde)
    n = 2000
    x = sd.sample(sde, model, "euler_maruyama", shape=(n, 2), steps=100, seeds=range(n), dtype=torch.float64).x
    t = torch.tensor(sde.default_t_min, dtype=torch.float64)
    var = sde.alpha(t) ** 2 * torch.tensor([0.3, 0.6], dtype=torch.float64) + sde.sigma(t) ** 2
    mean = sde.alpha(t) * torch.tensor([0.5, -1.0], dtype=torch.float64)
    assert ((x.mean(0) - mean).abs() < 5 * (var / n).sqrt() + 0.02).all()
    assert ((x.var(0) / var - 1).abs() < 5 * math.sqrt(2 / n) + 0.02).all()


def test_langevin_step_is_per_sample_under_seeds(model):
    """Under seeds the expected norms, eps = 2 alpha_i (snr sigma(t))^2 for every sample whatever its batch; the
    batch mean of the norms with one generator (score_sde's convention)."""
    problem = sd.solvers.get("pc").problem(model.sde, model)
    x = torch.tensor([[0.1, 0.2], [3.0, -2.0], [0.5, 0.5]], dtype=torch.float64)
    t, t_next = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.49, dtype=torch.float64)
    grad = model.score(x, t)
    noise = SeededNoise([1, 2, 3]).randn(x.shape, dtype=x.dtype)
    corrector = Langevin(snr=0.2)
    a = (model.sde.alpha(t) / model.sde.alpha(t_next)) ** 2
    own = 2 * a * (0.2 * model.sde.sigma(t)) ** 2 * torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(corrector.step_size(problem, x, t, t_next, grad, noise, per_sample=True), own)
    torch.testing.assert_close(corrector.step_size(problem, x[:1], t, t_next, grad[:1], noise[:1], per_sample=True),
                               own[:1])  # the same step alone
    mean = 2 * a * (0.2 * noise.norm(dim=1).mean() / grad.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(corrector.step_size(problem, x, t, t_next, grad, noise, per_sample=False), mean)


def test_adaptive_solvers_control_each_sample_under_seeds(model):
    out = sd.sample(model.sde, model, "dopri5", shape=(4, 2), seeds=[1, 2, 3, 4], rtol=1e-4, atol=1e-4)
    assert out.stats["accepted_per_sample"].shape == (4,)
    budget = sd.sample(model.sde, model, "dopri5", shape=(3, 2), seeds=[1, 2, 3], max_nfe=20)
    assert budget.nfe <= 3 * 20  # under seeds the budget caps each sample's own solve


def test_seeded_noise_selects_and_masks():
    noise = SeededNoise([4, 5, 6])
    first = noise.randn((3, 2))
    again = SeededNoise([4, 5, 6])
    part = again.select(torch.tensor([False, True, True])).randn((2, 2))
    assert torch.equal(part, first[1:])
    masked = again.randn((3, 2), rows=torch.tensor([True, False, False]))
    assert torch.equal(masked[1:], torch.zeros(2, 2)) and torch.equal(masked[0], first[0])
    # the rows that did not draw went on where they were: their next draw is the second of their own stream
    fresh = SeededNoise([5])
    fresh.randn((1, 2))
    assert torch.equal(again.select([1]).randn((1, 2)), fresh.randn((1, 2)))


@pytest.mark.parametrize("seeds,message", [
    ([1, 2], "one seed per sample"),
    ([1, -2, 3], r"\[0, 2\^63\)"),
    ([1, 2.5, 3], "must be ints"),
    ([True, 1, 2], "must be ints"),
    ([], "empty"),
    (7, "sequence"),
    (torch.tensor([1.0, 2.0, 3.0]), "integer tensor"),
])
def test_bad_seeds_are_refused(model, seeds, message):
    with pytest.raises(ValueError, match=message):
        sd.sample(model.sde, model, "euler_maruyama", shape=(3, 2), steps=2, seeds=seeds)


def test_seeds_and_generator_together_are_refused(model):
    with pytest.raises(ValueError, match="not both"):
        sd.sample(model.sde, model, "euler_maruyama", shape=(2, 2), steps=2, seeds=[1, 2], generator=torch.Generator())


def test_langevin_under_seeds_samples_the_mixture():
    """Per-sample Langevin steps from one sample's own norms were heavy-tailed in 2-D (mean log p -6.5 against the
    data's -1.69 with the exact score); the expected-norm step under seeds samples the law like the batch rule."""
    from sde_diffusion.data.toys import eight_gaussians_mixture

    mix, sde = eight_gaussians_mixture(), sd.VPSDE()
    n = 1000
    x = sd.sample(sde, mix.score_model(sde), "pc", shape=(n, 2), steps=200, denoise=True, seeds=list(range(n))).x
    log_p = mix.log_prob(x.double())
    data = mix.log_prob(mix.sample(20_000, torch.Generator().manual_seed(1)))
    assert abs(float(log_p.mean() - data.mean())) < 4 * float(log_p.std()) / n**0.5
