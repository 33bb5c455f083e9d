"""Reference mode against the reference's own definitions: DC channel, fixed draws, size rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.fastmri_gen.layers import NoiseInjection
from projects.fastmri_gen.model import (
    StylishGenerator,
    StylishUNet,
    fixed_draws,
    nearest_multiple,
    reference_data_consistency,
)
from tests.fastmri_gen.test_train import net_of


def reference_dc_numpy(image: np.ndarray, known: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference's definition on a whole [B, 1, H, W] batch: shifts over every axis, FFTs over the last two."""
    kspace = np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(image)))
    difference = mask * np.abs(kspace) - mask * known
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(difference))).real


def test_reference_dc_gives_each_sample_its_own_channel():
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 12, 16))
    known = rng.random((2, 1, 12, 16)) * 5
    mask = np.zeros((2, 1, 12, 16))
    mask[0, ..., ::2, :] = 1  # the two samples differ in image, k-space and mask
    mask[1, ..., :, 3:9] = 1
    out = reference_data_consistency(*(torch.from_numpy(a).float() for a in (image, known, mask)))
    expected = reference_dc_numpy(image, known, mask)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)
    for b in range(2):  # a sample alone gives the same channel as inside the batch
        single = reference_dc_numpy(image[b:b + 1], known[b:b + 1], mask[b:b + 1])
        np.testing.assert_allclose(out[b:b + 1].numpy(), single, rtol=1e-4, atol=1e-4)


def test_reference_dc_puts_an_off_centre_feature_back_in_its_place():
    # known k-space = the centred spectrum of an image with one bright pixel at (3, 11); with a zero estimate and
    # a full mask the channel is minus that image, pixel in place (without the final fftshift it lands at (9, 3))
    feature = torch.zeros(1, 1, 12, 16)
    feature[..., 3, 11] = 1.0
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(feature, dim=(-2, -1))), dim=(-2, -1))
    out = reference_data_consistency(torch.zeros_like(feature), spectrum, torch.ones_like(feature))
    torch.testing.assert_close(out, -feature, atol=1e-5, rtol=0)


def test_fixed_noise_and_latent_are_randomstate_0_draws():
    layer = NoiseInjection(3, draw_source="numpy").eval()
    layer.scale.data.fill_(1.0)
    noise = layer(torch.zeros(2, 3, 5, 7)).detach()
    expected = np.random.RandomState(0).randn(2, 1, 5, 7)
    np.testing.assert_allclose(noise.numpy(), np.broadcast_to(expected, (2, 3, 5, 7)), rtol=1e-6, atol=1e-6)
    gen = StylishGenerator(min_channels=4, max_channels=8, test_latent="fixed_noise", draw_source="numpy").eval()
    z = gen.latent(torch.zeros(2, 1, 320), torch.zeros(2, 1, 320))
    np.testing.assert_allclose(z.numpy(), np.random.RandomState(0).randn(2, 1, 320), rtol=1e-6, atol=1e-6)
    # the reference validates in train mode with the same fixed draws
    gen.train()
    with fixed_draws(gen):
        assert torch.equal(gen.latent(torch.zeros(2, 1, 320), torch.zeros(2, 1, 320)), z)
        assert all(m.fixed_draws for m in gen.modules() if isinstance(m, NoiseInjection))
    assert not any(m.fixed_draws for m in gen.modules() if isinstance(m, NoiseInjection))
    assert not torch.equal(gen.latent(torch.zeros(2, 1, 320), torch.zeros(2, 1, 320)), z)


def test_reference_switch_selects_numpy_draws():
    reference = net_of("generative", "reference", "min_channels=4", "max_channels=8")
    fixed = net_of("generative", "fixed", "min_channels=4", "max_channels=8")
    sources = {m.draw_source for m in reference.modules() if isinstance(m, NoiseInjection)}
    assert (reference.draw_source, sources, fixed.draw_source) == ("numpy", {"numpy"}, "torch")


@pytest.mark.parametrize("size,expected", [(68, 64), (72, 80), (76, 80), (64, 64), (6, 16), (327, 320), (329, 336)])
def test_resize_mode_rounds_to_the_nearest_multiple_ties_up(size, expected):
    assert nearest_multiple(size, 16) == expected
    net = StylishUNet(min_channels=4, max_channels=16, depth=4, size_fit="resize").eval()
    seen = []
    net.init.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    out = net(torch.rand(1, 2, size, 64))
    assert seen == [(expected, 64)] and out.shape[-2:] == (size, 64)
    pad = StylishUNet(min_channels=4, max_channels=16, depth=4, size_fit="pad").eval()
    pad.init.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    pad(torch.rand(1, 2, size, 64))
    assert seen[1][0] == -(-size // 16) * 16  # padding still goes up to the next multiple
