"""The trainer: each prediction target learns the exact score of Gaussian data, bit-for-bit resume, atomic
checkpoints with clear errors, EMA, warm-up, evaluation hook and progress bar."""

import errno
import logging
import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.data import ArrayDataset, gaussian_mixture
from sde_diffusion.networks import MLP
from sde_diffusion.training import EMA, CheckpointError, DSMLoss, Trainer, list_checkpoints, load_checkpoint
from sde_diffusion.training import checkpoint as checkpoint_module


def gaussian_dataset(n=8192):
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    return gaussian_mixture(sd.GaussianMixture.gaussian(torch.tensor([0.5, -1.0]), cov), n=n, seed=0)


def score_error(model: sd.ScoreModel, mixture, sde, n=4096, t_min=1e-3):
    """E_{t ~ U, x ~ p_t} sigma^2 ||s_theta - s||^2 / d (eps-space MSE), and the same for the zero-score guess."""
    g = torch.Generator().manual_seed(123)
    t = t_min + (sde.T - t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = mixture.sample(n, g)
    x = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    exact = mixture.score(x, t, sde)
    with torch.no_grad():
        learned = model.score(x.float(), t.float()).double()
    sigma2 = sde.sigma(t)[:, None] ** 2
    return (sigma2 * (learned - exact) ** 2).mean().item(), (sigma2 * exact**2).mean().item()


@pytest.mark.parametrize("prediction,tolerance", [("eps", 0.01), ("v", 0.01), ("score", 0.01), ("x0", 0.1)])
def test_each_prediction_target_learns_the_exact_gaussian_score(prediction, tolerance):
    """A small MLP trained 400 steps (sigma^2 weighting) on Gaussian data: the eps-space mean squared error of its
    EMA score against the exact score, averaged over t ~ U[t_min, T] and x ~ p_t, falls below `tolerance` times
    the score's own size (from about 40x at initialisation). x0 prediction gets a looser budget: its eps error is
    its own error times alpha / sigma, which is large near t_min, so it converges more slowly in this metric."""
    sde, data = sd.VPSDE(), gaussian_dataset()
    torch.manual_seed(0)
    trainer = Trainer(
        MLP(2, width=64, depth=2), DSMLoss(sde, prediction, "sigma2"), data,
        batch_size=256, lr=3e-3, warmup_steps=50, ema_decay=0.99, progress=False, log_every=100,
    )
    before, scale = score_error(trainer.score_model(), data.mixture, sde)
    trainer.train(400)
    after, _ = score_error(trainer.score_model(), data.mixture, sde)
    assert after < tolerance * scale < before, (after, scale, before)
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]


def small_trainer(tmp_path, *, width=16, depth=2, lr=1e-3, conditional=True, **options):
    data = gaussian_dataset(512)
    data = ArrayDataset(data.data, torch.arange(512) % 3, num_classes=3, name="gauss3") if conditional else data
    torch.manual_seed(0)
    net = MLP(2, width=width, depth=depth, dropout=0.1, num_classes=3 if conditional else None)
    loss = DSMLoss(sd.VPSDE(), "eps", "likelihood", importance_sampling=True, label_dropout=0.2)
    options = {"progress": False, **options}
    return Trainer(
        net, loss, data, batch_size=64, lr=lr, warmup_steps=5, ema_decay=0.9, log_every=4, checkpoint_dir=tmp_path, **options
    )


def states_equal(a: Trainer, b: Trainer) -> bool:
    same = lambda x, y: all(torch.equal(x[k], y[k]) for k in x) and x.keys() == y.keys()  # noqa: E731
    opt_a, opt_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    return (
        same(a.model.state_dict(), b.model.state_dict())
        and same(a.ema.module.state_dict(), b.ema.module.state_dict())
        and all(same(opt_a[k], opt_b[k]) for k in opt_a)
        and torch.equal(a.generator.get_state(), b.generator.get_state())
    )


def test_resume_from_step_k_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    """Dropout, label dropout, importance-sampled t, warm-up and EMA all in play; 8 batches per epoch, so the
    resume point (step 11) is mid-epoch and the run crosses an epoch boundary afterwards."""
    full = small_trainer(tmp_path / "full", checkpoint_every=11, keep_checkpoints=5)
    full.train(25)
    rng_after_full = torch.get_rng_state()
    assert [p.name for p in list_checkpoints(tmp_path / "full")] == ["step_000000011.pt", "step_000000022.pt", "step_000000025.pt"]

    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed" / "step_000000011.pt").write_bytes((tmp_path / "full" / "step_000000011.pt").read_bytes())
    torch.manual_seed(999)  # a different global RNG and a fresh initialisation: all must be restored from the file
    resumed = small_trainer(tmp_path / "resumed", resume=True)
    assert resumed.step == 11
    resumed.train(25)
    assert states_equal(full, resumed)
    assert torch.equal(rng_after_full, torch.get_rng_state())
    assert full.batches.state_dict() == resumed.batches.state_dict()
    # logged losses agree too, except the window (8, 12] the resume cut in two
    logged = lambda h: [(r["step"], r["loss"]) for r in h if r["step"] != 12]  # noqa: E731
    assert logged(full.history) == logged(resumed.history) and len(logged(full.history)) == 6

    # and the run really moved: the weights differ from the checkpoint they resumed from
    start = load_checkpoint(tmp_path / "full" / "step_000000011.pt")["model"]
    assert not all(torch.equal(start[k], v) for k, v in resumed.model.state_dict().items())


def test_a_corrupt_checkpoint_gets_a_clear_error_and_the_last_good_one_survives(tmp_path):
    trainer = small_trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3)
    trainer.train(8)
    good = tmp_path / "step_000000004.pt"
    good_bytes = good.read_bytes()
    latest = tmp_path / "step_000000008.pt"
    latest.write_bytes(latest.read_bytes()[: len(latest.read_bytes()) // 2])  # truncated, as by a crash mid-copy
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*step_000000004\.pt is untouched"):
        small_trainer(tmp_path, resume=True)
    assert good.read_bytes() == good_bytes
    latest.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(latest)


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    trainer = small_trainer(tmp_path, checkpoint_every=4)
    trainer.train(4)
    before = (tmp_path / "step_000000004.pt").read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_000000004\.pt: no space left on the device"):
        checkpoint_module.save_checkpoint({"x": 1}, tmp_path / "step_000000004.pt")
    with pytest.raises(CheckpointError, match=r"step_000000008\.pt: no space left on the device\. The previous checkpoints"):
        trainer.train(8)
    assert (tmp_path / "step_000000004.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000004.pt"]


def test_mismatched_model_or_config_is_refused_with_the_reason(tmp_path):
    small_trainer(tmp_path, checkpoint_every=4).train(4)
    with pytest.raises(CheckpointError, match=r"different architecture.*shape mismatch"):
        small_trainer(tmp_path, width=32, resume=True)
    with pytest.raises(CheckpointError, match=r"trainer\.lr"):
        small_trainer(tmp_path, lr=5e-4, resume=True)
    with pytest.raises(CheckpointError, match=r"different architecture.*missing blocks\.2"):
        small_trainer(tmp_path, depth=3, resume=True)
    with pytest.raises(CheckpointError, match=r"data\.name: checkpoint 'gauss3'"):
        small_trainer(tmp_path, conditional=False, resume=True)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        small_trainer(tmp_path)
    checkpoint_module.save_checkpoint({"x": 1}, tmp_path / "other.pt")
    torch.save({"hello": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an sde_diffusion training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_ema_follows_its_formula_with_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=True)
    expected = 0.0
    for k in range(30):
        with torch.no_grad():
            model.weight.fill_(float(k + 1))
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * (k + 1)
        ema.update(model)
    assert math.isclose(ema.module.weight.item(), expected, rel_tol=1e-6)
    assert not ema.module.weight.requires_grad


def test_warmup_clipping_eval_hook_and_history(tmp_path):
    calls = []

    def evaluate(trainer):
        calls.append(trainer.step)
        assert not trainer.ema.module.training
        return {"metric": float(trainer.step)}

    trainer = small_trainer(None, eval_every=3, eval_fn=evaluate, grad_clip=1e-3)
    assert [trainer.lr_at(s) for s in (0, 1, 4, 10)] == pytest.approx([2e-4, 4e-4, 1e-3, 1e-3])
    history = trainer.train(7)
    assert calls == [3, 6]
    assert {"step": 3, "metric": 3.0} in history
    logged = [r for r in history if "loss" in r]
    assert [r["step"] for r in logged] == [4, 7] and all(r["steps_per_s"] > 0 for r in logged)
    assert all(r["grad_norm"] > 1e-3 for r in logged)  # norms before clipping are recorded


def test_progress_shows_loss_and_speed(caplog):
    """Not on a terminal (as under pytest), progress is a log line, with the loss and the speed."""
    with caplog.at_level(logging.INFO, logger="sde_diffusion"):
        small_trainer(None, progress=True).train(4)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("train: 4/4"))
    assert "loss=" in line and "steps_per_s=" in line


def test_bf16_autocast_trains_with_a_finite_loss():
    trainer = small_trainer(None, precision="bf16")
    history = trainer.train(8)
    assert all(math.isfinite(r["loss"]) for r in history if "loss" in r)


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        small_trainer(None, precision="fp16")
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(MLP(2), DSMLoss(sd.VPSDE()), gaussian_dataset(10), batch_size=64, progress=False)
    with pytest.raises(ValueError, match="eval_fn"):
        small_trainer(None, eval_every=5)
    trainer = small_trainer(None)
    trainer.train(3)
    with pytest.raises(ValueError, match="already at step 3"):
        trainer.train(2)


@pytest.mark.slow
def test_torch_compile_option_trains_and_checkpoints_the_plain_model(tmp_path):
    """compile=True (meant for GPUs; ~100 s of compilation on a CPU): the compiled model trains, and checkpoints
    hold the plain module's keys, so they load into an uncompiled trainer."""
    trainer = small_trainer(tmp_path, compile=True, checkpoint_every=8)
    history = trainer.train(8)
    assert all(math.isfinite(r["loss"]) for r in history if "loss" in r)
    state = load_checkpoint(tmp_path / "step_000000008.pt")
    assert not any(k.startswith("_orig_mod") for k in state["model"])
    assert small_trainer(tmp_path, resume=True).step == 8
