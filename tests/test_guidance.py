"""Classifier-free and classifier guidance against exact ground truth.

Gaussian mixtures have exact class-conditional scores (component k given label k) and an exact noise-conditional
classifier (the marginal responsibilities), so conditioning is checked against truth: samples land in the requested
component; the guided score of two Gaussians, (1 + w) s_c - w s_u, is linear in x, so the law of the samples of any
solver is Gaussian with moments given by the linear (Lyapunov) ODEs of its SDE or probability flow, integrated here
with scipy to 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import sde_diffusion as sd
from sde_diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from sde_diffusion.networks import MLP, NULL_LABEL, NoiseConditionalClassifier
from sde_diffusion.training import ClassifierLoss, Trainer

RING = sd.GaussianMixture.ring(4, radius=2.0, std=0.3)


def component_of(mixture: sd.GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """The most probable component of each data point (the Bayes classifier at t = 0)."""
    return mixture.class_logits(x, 0.0, sd.VPSDE()).argmax(1)


@pytest.mark.parametrize("solver, steps", [("euler_maruyama", 200), ("dpm_solver_pp_2m", 20)])
def test_conditional_sampling_with_exact_conditional_score_lands_in_the_requested_component(solver, steps):
    sde, n = sd.VPSDE(), 2000
    labels = torch.arange(n) % 4
    model = sd.ScoreModel(ClassifierFreeGuidance(RING.conditional_network(sde), labels, 0.0), sde, "score")
    x = sd.sample(sde, model, solver, shape=(n, 2), steps=steps, denoise=True, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(0)).x
    hit = (component_of(RING, x) == labels).double().mean().item()
    assert hit >= 0.99, hit
    unconditional = sd.sample(sde, RING.score_model(sde), solver, shape=(n, 2), steps=steps, denoise=True,
                              dtype=torch.float64, generator=torch.Generator().manual_seed(0)).x
    assert (component_of(RING, unconditional) == labels).double().mean().item() < 0.35  # the label is what did it


def test_classifier_guidance_with_the_exact_classifier_is_the_exact_conditional_score():
    """score(x) + grad log p_t(y | x) = grad log p_t(x | y) (Bayes): equal to the exact conditional score, and its
    samples land in the requested component; the classifier's passes are counted apart from the NFE."""
    sde, n = sd.VPSDE(), 2000
    labels = torch.arange(n) % 4
    guided = ClassifierGuidance(RING.score_model(sde), lambda x, t: RING.class_logits(x, t, sde), labels, scale=1.0,
                                num_classes=4)
    x, t = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.rand(n, dtype=torch.float64) * 0.9 + 0.05
    exact = RING.score(x, t, sde, labels)
    assert torch.allclose(guided.score(x, t), exact, rtol=1e-8, atol=1e-8)
    assert guided.nfe == 1 and guided.base.nfe == 1 and guided.classifier_evaluations == 1 and guided.classifier_backward_passes == 1
    with torch.no_grad():  # the gradient is taken inside, whatever the caller's grad mode
        result = sd.sample(sde, guided, "dpm_solver_pp_2m", shape=(n, 2), steps=20, denoise=True, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0))
    assert (component_of(RING, result.x) == labels).double().mean().item() >= 0.99
    assert result.nfe == 21 and guided.classifier_evaluations == 1 + 21 and guided.classifier_backward_passes == 1 + 21


# -- guided moments of two Gaussians ------------------------------------------------------------------------------
COND = sd.GaussianMixture.gaussian([1.0, 0.5], [[0.5, 0.2], [0.2, 0.3]])
UNCOND = sd.GaussianMixture.gaussian([0.0, 0.0], [[1.5, 0.3], [0.3, 1.0]])


def two_gaussians(sde):
    """A class-conditional 'network': the exact score of COND for a real label, of UNCOND for the null label."""
    def network(x, t, labels):
        return torch.where((labels == NULL_LABEL)[:, None], UNCOND.score(x, t, sde), COND.score(x, t, sde))
    return network


def guided_moments(sde: sd.LinearSDE, w: float, stochastic: bool, t_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the denoised samples of the guided score s(x, t) = q(t) - P(t) x, started from the
    prior N(0, prior_std^2 I) at T: dm/dt = A m + b, dS/dt = A S + S A^T - [stochastic] g^2 I, with
    A = f I + k g^2 P, b = -k g^2 q (k = 1 for the reverse SDE, 1/2 for the probability flow), integrated from T
    down to t_min; then Tweedie's step x0 = ((I - sigma^2 P) x + sigma^2 q) / alpha."""
    eye, k = np.eye(2), 1.0 if stochastic else 0.5

    def coefficients(t):
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = sde.alpha(tt).item(), sde.sigma(tt).item()
        precisions = [np.linalg.inv(a**2 * g.covs[0].numpy() + s**2 * eye) for g in (COND, UNCOND)]
        P = (1 + w) * precisions[0] - w * precisions[1]
        q = (1 + w) * precisions[0] @ (a * COND.means[0].numpy()) - w * precisions[1] @ (a * UNCOND.means[0].numpy())
        return a, s, sde.f(tt).item(), sde.g2(tt).item(), P, q

    def rhs(t, y):
        _, _, f, g2, P, q = coefficients(t)
        A, b = f * eye + k * g2 * P, -k * g2 * q
        m, S = y[:2], y[2:].reshape(2, 2)
        dS = A @ S + S @ A.T - (g2 * eye if stochastic else 0)
        return np.concatenate([A @ m + b, dS.ravel()])

    y0 = np.concatenate([np.zeros(2), (sde.prior_std()**2 * eye).ravel()])
    y = solve_ivp(rhs, (sde.T, t_min), y0, rtol=1e-10, atol=1e-12, method="DOP853").y[:, -1]
    a, s, _, _, P, q = coefficients(t_min)
    L = (eye - s**2 * P) / a
    return L @ y[:2] + s**2 * q / a, L @ y[2:].reshape(2, 2) @ L.T


@pytest.mark.slow
@pytest.mark.parametrize("solver, steps", [("euler_maruyama", 500), ("dpm_solver_pp_2m", 50)])
def test_guided_moments_of_two_gaussians_match_theory(solver, steps):
    sde, n, w = sd.VPSDE(), 4000, 2.0
    cfg = ClassifierFreeGuidance(two_gaussians(sde), 0, w)
    model = sd.ScoreModel(cfg, sde, "score")
    x = sd.sample(sde, model, solver, shape=(n, 2), steps=steps, denoise=True, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(3)).x.numpy()
    mean, cov = guided_moments(sde, w, solver == "euler_maruyama", sde.default_t_min)
    mean_se = np.sqrt(np.diag(cov) / n)
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # Var of a sample covariance entry
    assert np.all(np.abs(x.mean(0) - mean) < 4.5 * mean_se), ((x.mean(0) - mean) / mean_se)
    assert np.all(np.abs(np.cov(x.T) - cov) < 4.5 * cov_se), ((np.cov(x.T) - cov) / cov_se)
    # guidance moved the mean away from the unguided (conditional) one by many standard errors
    assert np.abs(mean - COND.means[0].numpy()).max() > 20 * mean_se.max()
    assert model.nfe == cfg.network_calls and cfg.rows_evaluated == 2 * n * cfg.network_calls  # one doubled call each


def test_an_interval_that_excludes_every_step_gives_the_unguided_samples_exactly():
    sde, n = sd.VPSDE(), 256
    network = two_gaussians(sde)
    level_max = (sde.sigma(torch.tensor(sde.T)) / sde.alpha(torch.tensor(sde.T))).item()
    runs = {}
    for key, cfg in {
        "unguided": ClassifierFreeGuidance(network, 0, 0.0),
        "outside": ClassifierFreeGuidance(network, 0, 3.0, interval=(2 * level_max, 4 * level_max), sde=sde),
        "everywhere": ClassifierFreeGuidance(network, 0, 3.0, interval=(0.0, 2 * level_max), sde=sde),
        "no_interval": ClassifierFreeGuidance(network, 0, 3.0),
    }.items():
        result = sd.sample(sde, sd.ScoreModel(cfg, sde, "score"), "heun", shape=(n, 2), steps=10, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0))
        runs[key] = (result.x, result.nfe, cfg.rows_evaluated)
    assert torch.equal(runs["outside"][0], runs["unguided"][0]) and runs["outside"][2] == n * runs["outside"][1]
    assert torch.equal(runs["everywhere"][0], runs["no_interval"][0])
    assert not torch.allclose(runs["no_interval"][0], runs["unguided"][0])


def test_interval_and_schedule_apply_guidance_only_where_asked():
    sde = sd.VPSDE()
    network = two_gaussians(sde)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    level = sde.sigma(t) / sde.alpha(t)
    labels = torch.zeros(4, dtype=torch.long)
    cond, uncond = network(x, t, labels), network(x, t, torch.full_like(labels, NULL_LABEL))
    lo, hi = level[1].item() * 0.99, level[2].item() * 1.01
    cfg = ClassifierFreeGuidance(network, 0, 2.0, interval=(lo, hi), sde=sde)
    inside = ((level >= lo) & (level <= hi))[:, None]
    assert torch.allclose(cfg(x, t), torch.where(inside, 3 * cond - 2 * uncond, cond))
    assert cfg.rows_evaluated == 4 + 2  # the unconditional rows only where guided
    schedule = ClassifierFreeGuidance(network, 0, lambda t: 4.0 * t)
    assert torch.allclose(schedule(x, t), cond + (4 * t)[:, None] * (cond - uncond))
    assert torch.equal(ClassifierFreeGuidance(network, 0, lambda t: torch.tensor(2.0))(x, t), ClassifierFreeGuidance(network, 0, 2.0)(x, t))


def test_cfg_works_for_every_parameterisation_of_the_same_network():
    """(1 + w) a - w b is the same guided score whether the network predicts eps, x0, v or the score."""
    sde = sd.VPSDE()
    score_net = two_gaussians(sde)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
    as_eps = lambda x, t, y: -sde.sigma(t)[:, None] * score_net(x, t, y)  # noqa: E731
    as_x0 = lambda x, t, y: (x + sde.sigma(t)[:, None] ** 2 * score_net(x, t, y)) / sde.alpha(t)[:, None]  # noqa: E731
    reference = sd.ScoreModel(ClassifierFreeGuidance(score_net, 0, 1.5), sde, "score").score(x, t)
    for prediction, net in (("eps", as_eps), ("x0", as_x0)):
        assert torch.allclose(sd.ScoreModel(ClassifierFreeGuidance(net, 0, 1.5), sde, prediction).score(x, t), reference)


@pytest.mark.slow
def test_noise_conditional_classifier_trained_by_the_trainer_guides_toward_the_label():
    """A classifier trained with ClassifierLoss by the framework's Trainer on noised mixture data (VE SDE) steers
    the unconditional exact score toward the requested component."""
    sde = sd.VESDE(sigma_min=0.01, sigma_max=10.0)
    mixture = sd.GaussianMixture([1.0, 1.0], [[-1.0, 0.0], [1.0, 0.0]], [0.3**2, 0.3**2])
    x0 = mixture.sample(4096, torch.Generator().manual_seed(0), dtype=torch.float32)
    labels = component_of(mixture, x0.double())
    dataset = sd.data.ArrayDataset(x0, labels, num_classes=2, name="two-gaussians")
    torch.manual_seed(0)
    classifier = NoiseConditionalClassifier(2, 2, width=32, depth=2)
    trainer = Trainer(classifier, ClassifierLoss(sde, importance_sampling=True), dataset, batch_size=256, lr=3e-3,
                      ema_decay=0.99, progress=False, log_every=50)
    trainer.train(150)
    assert trainer.history[-1]["loss"] < 0.8 * trainer.history[0]["loss"]
    n = 1000
    wanted = torch.arange(n) % 2
    guided = ClassifierGuidance(mixture.to(dtype=torch.float32).score_model(sde), trainer.ema.module.eval(), wanted, 2.0)
    x = sd.sample(sde, guided, "dpm_solver_pp_2m", shape=(n, 2), steps=20, denoise=True,
                  generator=torch.Generator().manual_seed(1)).x
    hit = (component_of(mixture, x.double()) == wanted).double().mean().item()
    print(f"trained classifier guidance: {hit:.1%} in the requested component")
    assert hit > 0.9, hit  # unguided: 50%
    assert guided.classifier_evaluations == guided.nfe == 21


# -- bad input ------------------------------------------------------------------------------------------------------
def test_bad_guidance_input_fails_clearly():
    sde = sd.VPSDE()
    conditional, unconditional = MLP(2, width=8, depth=1, num_classes=3), MLP(2, width=8, depth=1)
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        ClassifierFreeGuidance(conditional, 0, -1.0)
    with pytest.raises(ValueError, match=r"classes in \[0, 3\)"):
        ClassifierFreeGuidance(conditional, 3, 1.0)
    with pytest.raises(ValueError, match=r"classes in \[0, 3\)"):
        ClassifierFreeGuidance(conditional, torch.tensor([0, 1, 5]), 1.0)
    with pytest.raises(ValueError, match="unconditional"):
        ClassifierFreeGuidance(unconditional, 1, 1.0)
    with pytest.raises(ValueError, match="pass sde="):
        ClassifierFreeGuidance(conditional, 0, 1.0, interval=(0.1, 1.0))
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        ClassifierFreeGuidance(conditional, 0, 1.0, interval=(1.0, 0.1), sde=sde)
    with pytest.raises(ValueError, match="integer"):
        ClassifierFreeGuidance(conditional, torch.tensor([0.5]), 1.0)
    with pytest.raises(ValueError, match="negative or non-finite"):
        ClassifierFreeGuidance(conditional, 0, lambda t: -t)(torch.randn(2, 2), torch.rand(2))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        ClassifierFreeGuidance(conditional, torch.tensor([0, 1]), 1.0)(torch.randn(3, 2), torch.rand(3))
    model = RING.score_model(sde)
    with pytest.raises(ValueError, match="scale must be finite and >= 0"):
        ClassifierGuidance(model, lambda x, t: RING.class_logits(x, t, sde), 0, -2.0)
    with pytest.raises(ValueError, match=r"classes in \[0, 4\)"):
        ClassifierGuidance(model, lambda x, t: RING.class_logits(x, t, sde), 4, 1.0, num_classes=4)
    with pytest.raises(TypeError, match="ScoreModel"):
        ClassifierGuidance(lambda x, t: x, lambda x, t: x, 0, 1.0)
    assert math.isfinite(ClassifierGuidance(model, NoiseConditionalClassifier(2, 4), 1, 1.0).score(torch.randn(3, 2), 0.5).sum().item())


def test_readme_guidance_example_runs():
    from .test_readme import example

    exec(compile(example("Guidance and inpainting"), "README.md: Guidance and inpainting", "exec"), {})
