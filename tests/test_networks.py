"""Score networks: shapes, time and label embeddings, the null label, classifier-free guidance, and plugging into
`ScoreModel` and the samplers."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.networks import (
    MLP,
    NULL_LABEL,
    ClassConditional,
    FourierTimeEmbedding,
    SinusoidalTimeEmbedding,
    UNet,
)


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (the zero-initialised output layers too) random values, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


def test_sinusoidal_embedding_is_the_transformer_encoding():
    emb = SinusoidalTimeEmbedding(8, T=2.0, scale=1000.0, max_period=10000.0)
    t = torch.tensor([0.0, 0.5, 2.0])
    out = emb(t)
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    args = (1000.0 * t / 2.0)[:, None] * freqs
    assert torch.allclose(out, torch.cat([args.sin(), args.cos()], 1), atol=1e-5)
    assert out.shape == (3, 8)


def test_fourier_embedding_is_seeded_and_saved():
    a, b, c = FourierTimeEmbedding(16, seed=0), FourierTimeEmbedding(16, seed=0), FourierTimeEmbedding(16, seed=1)
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, c.W)
    assert "W" in a.state_dict()
    t = torch.rand(5)
    assert torch.allclose(a(t), torch.cat([torch.sin(t[:, None] * a.W), torch.cos(t[:, None] * a.W)], 1))


@pytest.mark.parametrize("kind", ["fourier", "sinusoidal"])
def test_mlp_shapes_zero_start_and_time_dependence(kind):
    net = MLP(dim=6, width=32, depth=3, time_embedding=kind)
    x, t = torch.randn(5, 2, 3), torch.rand(5)
    assert torch.equal(net(x, t), torch.zeros_like(x))  # zero-initialised output: eps_hat = 0 at the start
    randomise(net)
    out = net(x, t)
    assert out.shape == x.shape
    assert not torch.allclose(net(x, t), net(x, t * 0.5))
    with pytest.raises(ValueError, match="6 values"):
        net(torch.randn(5, 4), t)


def test_unet_shapes_for_several_image_sizes():
    for channels, size, mults in ((1, 8, (1, 2, 2)), (3, 32, (1, 2, 2, 2)), (1, 28, (1, 2))):
        net = randomise(UNet(channels, channels=16, channel_mults=mults, num_res_blocks=1, groups=4))
        x = torch.randn(2, channels, size, size)
        assert net(x, torch.rand(2)).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(1, channels=16, channel_mults=(1, 2, 2))(torch.randn(2, 1, 6, 6), torch.rand(2))
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(1, channel_mults=(1, 2), attention_levels=(2,))


def test_unet_has_attention_where_asked_and_in_the_middle():
    from sde_diffusion.networks.unet import Attention

    net = UNet(1, channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2), groups=4)
    attention = [m for m in net.modules() if isinstance(m, Attention)]
    # levels 1 and 2: one block down, two up, each; plus the middle block
    assert len(attention) == 2 * (1 + 2) + 1


def test_unet_is_translation_aware_not_a_pixelwise_map():
    """A convolutional U-Net mixes neighbouring pixels: changing one pixel changes outputs elsewhere."""
    net = randomise(UNet(1, channels=16, channel_mults=(1, 2), num_res_blocks=1, groups=4)).double()
    x, t = torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.rand(1, dtype=torch.float64)
    y = x.clone()
    y[0, 0, 0, 0] += 1.0
    diff = (net(x, t) - net(y, t)).abs()[0, 0]
    assert diff[4, 4] > 0 and diff.dtype == torch.float64


@pytest.mark.parametrize("make", [lambda: MLP(2, width=32, depth=2, num_classes=3), lambda: UNet(1, channels=16, channel_mults=(1, 2), num_res_blocks=1, groups=4, num_classes=3)])
def test_class_conditioning_and_the_null_label(make):
    net = randomise(make())
    x = torch.randn(4, 2) if isinstance(net, MLP) else torch.randn(4, 1, 8, 8)
    t = torch.rand(4)
    out0, out1 = net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(out0, out1)
    # no labels means the null label
    assert torch.equal(net(x, t), net(x, t, torch.full((4,), NULL_LABEL)))
    # labels act per example
    mixed = net(x, t, torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(mixed[0], out0[0]) and torch.allclose(mixed[1], out1[1])
    with pytest.raises(ValueError, match="integer"):
        net(x, t, torch.zeros(4))


def test_unconditional_network_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        MLP(2)(torch.randn(3, 2), torch.rand(3), torch.zeros(3, dtype=torch.long))


def test_classifier_free_guidance_combines_conditional_and_unconditional_outputs():
    net = randomise(MLP(2, width=32, depth=2, num_classes=4))
    x, t = torch.randn(6, 2), torch.rand(6)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    cond, uncond = net(x, t, labels), net(x, t)
    assert torch.equal(ClassConditional(net, labels)(x, t), cond)
    w = 2.5
    assert torch.allclose(ClassConditional(net, labels, guidance=w)(x, t), (1 + w) * cond - w * uncond, atol=1e-5)
    assert torch.allclose(ClassConditional(net, 2)(x, t), net(x, t, torch.full((6,), 2)))
    with pytest.raises(ValueError, match="shape"):
        ClassConditional(net, torch.tensor([0, 1]))(x, t)


def test_networks_plug_into_score_model_and_sampling():
    sde = sd.VPSDE()
    net = randomise(MLP(2, width=16, depth=1, num_classes=3))
    model = sd.ScoreModel(ClassConditional(net, 1, guidance=1.0), sde, "eps")
    result = sd.sample(sde, model, "euler_maruyama", shape=(8, 2), steps=5, generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (8, 2) and torch.isfinite(result.x).all() and result.nfe == 5


def test_parameter_counts_are_modest():
    """Defaults sized for CPU work: the toy MLP and the digits U-Net stay small."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(MLP(2, width=128, depth=3)) < 2e5
    assert count(UNet(1, channels=32, channel_mults=(1, 2, 2))) < 3e6
    assert math.isfinite(count(UNet(3)))
