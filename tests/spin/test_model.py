"""SPiN and U-Net: shapes (odd sizes included), parameter counts, state-dict names, downsampler weights."""

from __future__ import annotations

import pytest
import torch

from projects.spin.model import LearnableDownsampler, SPiN, UNet, count_parameters

PAPER_USED_PARAMS = 5_165_984
REFERENCE_PARAMS = 5_263_808
DEAD_SHORTCUT_PARAMS = 97_824


def test_paper_configuration_parameter_counts() -> None:
    model = SPiN()
    assert count_parameters(model) == PAPER_USED_PARAMS
    parts = {name: count_parameters(child) for name, child in model.named_children()}
    # Reference split: SPE enc 14,224 + dec 2,304 (minus 512 dead), SPG 2,912, LD 11,584.
    assert parts == {"embedding": 16_016, "guidance": 2_912, "encoder": 3_377_440, "decoder": 1_758_032,
                     "downsampler": 11_584}


def test_dead_shortcuts_give_the_reference_total() -> None:
    with_dead = SPiN(build_unused_shortcut=True)
    assert count_parameters(with_dead) == REFERENCE_PARAMS
    assert REFERENCE_PARAMS - PAPER_USED_PARAMS == DEAD_SHORTCUT_PARAMS
    extra = set(with_dead.state_dict()) - set(SPiN().state_dict())
    assert extra and all(k.endswith("shortcut.weight") for k in extra)
    assert sum(with_dead.state_dict()[k].numel() for k in extra) == DEAD_SHORTCUT_PARAMS


def test_dead_shortcuts_do_not_change_the_output() -> None:
    torch.manual_seed(0)
    small = dict(encoder_widths=(8, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 8, 8, 8), embedding_width=4)
    plain, dead = SPiN(**small).eval(), SPiN(**small, build_unused_shortcut=True).eval()
    dead.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 5, 33, 37)
    with torch.no_grad():
        assert torch.equal(plain(x)["logits"], dead(x)["logits"])


def test_state_dict_names_follow_the_reference_modules() -> None:
    keys = set(SPiN().state_dict())
    for name in ("encoder.conv1.conv.weight", "encoder.blocks2.0.conv1.conv.weight",
                 "encoder.blocks3.0.shortcut.weight", "encoder.blocks5.1.conv2.norm.running_mean",
                 "decoder.deconv4.up_conv.conv.weight", "decoder.deconv_super_resolution.fuse_conv.conv.weight",
                 "decoder.output.conv.weight", "embedding.conv0.conv.weight", "guidance.level1x.conv.weight",
                 "downsampler.weights.2.conv.weight"):
        assert name in keys, name
    assert "encoder.blocks2.1.shortcut.weight" not in keys


@pytest.mark.parametrize("size", [(32, 32), (37, 45), (65, 29)])
def test_spin_shapes_for_any_size(size: tuple[int, int]) -> None:
    model = SPiN(encoder_widths=(8, 8, 16, 16, 16), decoder_widths=(16, 16, 8, 8, 8, 8)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 5, *size))
    h, w = size
    assert out["logits"].shape == (2, 1, h, w)
    assert out["logits_2x"].shape == (2, 1, 2 * h, 2 * w)
    assert out["embedding"].shape == (2, 8, 2 * h, 2 * w)


def test_spin_atlas_slice_size_shapes() -> None:
    model = SPiN(encoder_widths=(4, 4, 4, 4, 4), decoder_widths=(4, 4, 4, 4, 4, 4), embedding_width=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 5, 197, 233))
    assert out["logits"].shape == (1, 1, 197, 233) and out["logits_2x"].shape == (1, 1, 394, 466)


def test_downsampler_weights_sum_to_one_and_combine_subpixels() -> None:
    torch.manual_seed(1)
    ld = LearnableDownsampler(latent_ch=6, out_ch=1)
    features, logits_2x = torch.randn(2, 6, 14, 18), torch.randn(2, 1, 14, 18)
    weights = ld.subpixel_weights(features)
    assert weights.shape == (2, 1, 4, 7, 9)
    assert torch.allclose(weights.sum(dim=2), torch.ones(2, 1, 7, 9), atol=1e-6)
    out = ld(features, logits_2x)
    blocks = logits_2x.reshape(2, 1, 7, 2, 9, 2)
    lo, hi = blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5))
    # A convex combination of the four subpixels lies between their min and max.
    assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)
    # Constant subpixel blocks pass through unchanged.
    flat = torch.nn.functional.interpolate(torch.randn(2, 1, 7, 9), scale_factor=2, mode="nearest")
    assert torch.allclose(ld(features, flat), flat[:, :, ::2, ::2], atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (41, 35)])
def test_unet_shapes(size: tuple[int, int]) -> None:
    model = UNet(in_ch=1, encoder_widths=(4, 8, 8, 16, 16), decoder_widths=(16, 8, 8, 4, 4)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, *size))["logits"].shape == (2, 1, *size)


def test_unet_baseline_is_vgg13() -> None:
    model = UNet()
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert count_parameters(model) == 19_614_176
