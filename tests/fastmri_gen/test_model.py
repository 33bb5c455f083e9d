"""Networks: exact parameter counts of the reference configuration, shapes, state-dict names, modes."""

from __future__ import annotations

import pytest
import torch

from projects.fastmri_gen.model import (
    StylishGenerator,
    StylishReconstructor,
    measured_residual,
    texture_grid,
)
from projects.fastmri_gen.nets import FastMRIUnet, PatchDiscriminator
from projects.fastmri_gen.transforms import fft2c, ifft2c


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_reference_parameter_counts():
    baseline = StylishReconstructor()
    generator = StylishGenerator()
    assert count(baseline) == 9_774_853
    assert sum(b.numel() for b in baseline.buffers()) == 36_786
    assert count(generator) == 13_561_541
    assert {k: count(v) for k, v in generator.named_children()} == {
        "unet": 10_721_349, "z_encoder": 2_429_312, "mapping": 410_880}
    assert count(PatchDiscriminator()) == 2_764_609
    assert count(FastMRIUnet(chans=32)) == 7_756_097


def test_state_dict_names():
    keys = set(StylishReconstructor().state_dict())
    for key in ("blocks.0.init.weight", "blocks.0.encoders.0.body.0.0.weight_orig",
                "blocks.0.encoders.0.body.0.0.weight_u", "blocks.0.downs.3.weight_orig",
                "blocks.0.bottleneck.body.1.1.running_var", "blocks.0.ups.0.weight",
                "blocks.0.thresholds.2.threshold", "blocks.0.decoders.3.body.1.weight", "blocks.0.out.bias"):
        assert key in keys, key
    gen_keys = set(StylishGenerator().state_dict())
    for key in ("unet.blocks.0.encoders.1.noise.scale", "unet.blocks.0.decoders.0.style.gamma.weight_orig",
                "z_encoder.trunk.features.0.0.weight", "z_encoder.trunk.features.18.1.running_mean",
                "z_encoder.mu.weight_orig", "mapping.6.weight_orig"):
        assert key in gen_keys, key
    assert "up_conv.3.1.weight" in FastMRIUnet().state_dict()


@pytest.mark.parametrize("size_fit", ["resize", "pad"])
def test_reference_mode_odd_sizes(size_fit):
    net = StylishReconstructor(min_channels=4, max_channels=16, size_fit=size_fit).eval()
    x = torch.rand(2, 1, 37, 45)
    out = net(x, known_freq=torch.rand_like(x), mask=torch.ones_like(x))
    assert out.shape == x.shape
    assert float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1  # hardsigmoid output


def test_complex_mode_mixed_widths_and_hard_dc():
    net = StylishReconstructor(data_consistency="complex", residual=True, output_dc="hard", output="linear",
                               size_fit="pad", min_channels=4, max_channels=16).eval()
    torch.manual_seed(0)
    widths = torch.tensor([20, 18])
    kspace = torch.zeros(2, 16, 20, dtype=torch.complex64)
    mask = torch.zeros(2, 20)
    for b, w in enumerate(widths.tolist()):
        left = (20 - w) // 2
        kspace[b, :, left:left + w] = torch.randn(16, w, dtype=torch.complex64)
        mask[b, left:left + w:2] = 1
    kspace = kspace * mask[:, None]
    image = torch.stack([ifft2c(kspace).real, ifft2c(kspace).imag], 1)
    net.train()(image, kspace=kspace, mask=mask, widths=widths)  # one power iteration of the spectral norms
    with torch.no_grad():
        out = net.eval()(image, kspace=kspace, mask=mask, widths=widths)
    assert out.shape == image.shape
    # hard DC: the measured columns of every sample's own k-space equal the data
    estimate = torch.complex(out[:, 0], out[:, 1])
    residual = measured_residual(estimate, kspace, mask, widths)
    assert residual.abs().max() < 1e-4
    k1 = fft2c(estimate[1, :, 1:19])
    assert torch.allclose(k1[:, mask[1, 1:19] > 0], kspace[1, :, 1:19][:, mask[1, 1:19] > 0], atol=1e-4)


def test_magnitude_update_moves_along_the_phase():
    net = StylishReconstructor(data_consistency="complex", residual=True, update="magnitude", output_dc="none",
                               output="linear", size_fit="pad", min_channels=4, max_channels=8, zero_output=True)
    torch.manual_seed(0)
    kspace = torch.randn(2, 16, 16, dtype=torch.complex64)
    mask = torch.ones(2, 16)
    image = torch.stack([ifft2c(kspace).real, ifft2c(kspace).imag], 1)
    assert net.blocks[0].init.in_channels == 5 and net.blocks[0].out.out_channels == 1
    with torch.no_grad():
        assert torch.allclose(net.eval()(image, kspace=kspace, mask=mask), image, atol=1e-5)  # delta 0: identity
        torch.nn.init.constant_(net.blocks[0].out.bias, 0.5)  # delta = 0.5 everywhere
        out = net(image, kspace=kspace, mask=mask)
    before, after = torch.complex(image[:, 0], image[:, 1]), torch.complex(out[:, 0], out[:, 1])
    clear = before.abs() > 0.05  # away from the near-zero pixels whose phase is damped by PHASE_EPS
    assert torch.allclose(after.abs()[clear], before.abs()[clear] + 0.5, atol=1e-3)
    assert torch.allclose(torch.angle(after)[clear], torch.angle(before)[clear], atol=1e-3)


@pytest.mark.parametrize("mode,shape", [("global", (2, 320)), ("multi_vector", (2, 3, 320)),
                                        ("spatial", (2, 4, 320)), ("attention", (2, 3, 320))])
def test_generator_texture_modes(mode, shape):
    gen = StylishGenerator(texture_mode=mode, texture_vectors=3, spatial_grid=2, min_channels=4, max_channels=16)
    x = torch.rand(2, 1, 40, 40)
    out, mu, logvar, w = gen(x, x, known_freq=x, mask=x)
    assert out.shape == x.shape and mu.shape == shape and logvar.shape == shape and w.shape == shape
    assert texture_grid(mode, 3, 2)[0] * texture_grid(mode, 3, 2)[1] == (1 if mode == "global" else shape[1])


def test_attention_modulation_weights_and_identical_tokens():
    from projects.fastmri_gen.layers import StyleModulation

    torch.manual_seed(0)
    layer = StyleModulation(channels=4, style_dim=8, attention_dim=4)
    x, tokens = torch.randn(2, 4, 6, 5), torch.randn(2, 3, 8)
    weights = layer.attention(x, tokens)
    assert weights.shape == (2, 30, 3) and torch.allclose(weights.sum(-1), torch.ones(2, 30))
    assert weights.std(dim=1).max() > 1e-3  # pixels choose different mixtures of the tokens
    assert layer(x, tokens, (3, 1)).shape == x.shape
    # over identical tokens the attention reduces to global AdaIN with that token
    same = tokens[:, :1].expand(2, 3, 8)
    global_layer = StyleModulation(channels=4, style_dim=8)
    global_layer.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("attention.")})
    layer.eval(), global_layer.eval()
    assert torch.allclose(layer(x, same, (3, 1)), global_layer(x, tokens[:, :1], (1, 1)), atol=1e-5)
    generator = StylishGenerator(texture_mode="attention", texture_vectors=3, min_channels=4, max_channels=8)
    assert sum(m.attention is not None for m in generator.modules() if isinstance(m, StyleModulation)) == 9


def test_generator_eval_is_deterministic_and_noise_matters_in_training():
    gen = StylishGenerator(min_channels=4, max_channels=16).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = gen(x, x, known_freq=x, mask=x)[0]
        b = gen(x, x, known_freq=x, mask=x)[0]
    assert torch.equal(a, b)
    gen.train()
    c = gen(x, x, known_freq=x, mask=x)[3]
    d = gen(x, x, known_freq=x, mask=x)[3]
    assert not torch.equal(c, d)  # reparameterised z differs per call


def test_discriminator_patch_map():
    assert PatchDiscriminator()(torch.rand(1, 1, 320, 320), torch.rand(1, 1, 320, 320)).shape == (1, 1, 38, 38)


def test_fidelity_switches_reach_the_network():
    from projects.fastmri_gen.layers import StyleModulation
    from tests.fastmri_gen.test_train import net_of

    widths = ("min_channels=4", "max_channels=8")
    reference, fixed = net_of("generative", "reference", *widths), net_of("generative", "fixed", *widths)
    ref_unet, fixed_unet = reference.unet.blocks[0], fixed.unet.blocks[0]
    assert not reference.unet.complex_mode and fixed.unet.complex_mode and fixed.unet.residual
    assert (ref_unet.output, ref_unet.size_fit, fixed_unet.output, fixed_unet.size_fit) == (
        "hardsigmoid", "resize", "linear", "pad")
    # fixed: complex image + DC residual + magnitude in, one magnitude update out
    assert ref_unet.init.in_channels == 2 and fixed_unet.init.in_channels == 5 and fixed_unet.out.out_channels == 1
    assert [float(t.threshold.detach()) for t in ref_unet.thresholds] == [1.0] * 4
    assert [float(t.threshold.detach()) for t in fixed_unet.thresholds] == [0.0] * 4
    noise_scales = [float(u.encoders[0].noise.scale.detach().abs().sum()) for u in (fixed_unet, ref_unet)]
    assert noise_scales[0] == 0 < noise_scales[1]
    assert hasattr(ref_unet.encoders[0].body[0][0], "weight_orig") and not hasattr(fixed_unet.encoders[0].body[0][0],
                                                                                   "weight_orig")
    override = net_of("generative", "fixed", *widths, "threshold_init=0.5", "update=complex")
    assert float(override.unet.blocks[0].thresholds[0].threshold.detach()) == 0.5  # a config key beats the switch
    assert override.unet.blocks[0].out.out_channels == 2
    modes = {m.mode for m in reference.modules() if isinstance(m, StyleModulation)}
    assert modes == {"reference"} and {m.mode for m in fixed.modules() if isinstance(m, StyleModulation)} == {
        "per_channel"}
    assert (reference.test_latent, reference.imagenet_norm, fixed.test_latent, fixed.imagenet_norm) == (
        "fixed_noise", False, "mean", True)


def test_mobilenet_weights_load_from_a_local_file_only(tmp_path):
    from common.errors import DataError
    from projects.fastmri_gen.mobilenet import MobileNetV2Features, load_trunk_weights

    source = MobileNetV2Features()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1000, 1280)  # a full classifier checkpoint: head ignored
    torch.save({"state_dict": state}, tmp_path / "mnv2.pth")
    target = MobileNetV2Features()
    load_trunk_weights(target, tmp_path / "mnv2.pth")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(DataError, match="never downloaded"):
        load_trunk_weights(target, tmp_path / "missing.pth")
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="bad.pth"):
        load_trunk_weights(target, tmp_path / "bad.pth")
