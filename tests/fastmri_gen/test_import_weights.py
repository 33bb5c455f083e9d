"""Importing the authors' checkpoints: names, layouts and shapes of the reference mapped onto our networks."""

from __future__ import annotations

import pytest
import torch

from common.errors import DataError
from projects.fastmri_gen.import_weights import reference_to_ours
from projects.fastmri_gen.mobilenet import MobileNetV2Features
from tests.fastmri_gen.test_train import net_of

MIN, MAX, STYLE = 4, 64, 320  # the reference asserts max // 2**4 == min


class ReferenceState:
    """A state dict in the reference's naming and layout (as its modules define it), one distinct value per
    tensor: tensor i holds i + 1 + a ramp in [0, 0.5), so any two tensors can be told apart."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def add(self, name: str, *shape: int) -> None:
        base = len(self.state) + 1
        numel = max(1, int(torch.tensor(shape).prod()) if shape else 1)
        self.state[name] = (base + torch.arange(numel, dtype=torch.float32) / (2 * numel)).reshape(shape)

    def sn_conv(self, name: str, out: int, inp: int, kernel: int, bias: bool) -> None:
        self.add(f"{name}.module.weight_orig", out, inp, kernel, kernel)
        if bias:
            self.add(f"{name}.module.bias", out)
        self.add(f"{name}.module.weight_u", out)
        self.add(f"{name}.module.weight_v", inp * kernel * kernel)

    def sn_linear(self, name: str, out: int, inp: int) -> None:
        for param, shape in (("weight_orig", (out, inp)), ("bias", (out,)), ("weight_u", (out,)),
                             ("weight_v", (inp,))):
            self.add(f"{name}.{param}", *shape)

    def bn(self, name: str, channels: int) -> None:
        for param in ("weight", "bias", "running_mean", "running_var"):
            self.add(f"{name}.{param}", channels)
        self.add(f"{name}.num_batches_tracked")

    def block(self, name: str, channels: int, fused_from: int | None = None) -> None:
        """[Dropout, 1x1 conv,] SN conv, BN, LeakyReLU, SN conv, BN, LeakyReLU."""
        first = 0
        if fused_from is not None:
            self.add(f"{name}.1.weight", channels, fused_from, 1, 1)
            self.add(f"{name}.1.bias", channels)
            first = 2
        self.sn_conv(f"{name}.{first}", channels, channels, 3, bias=False)
        self.bn(f"{name}.{first + 1}", channels)
        self.sn_conv(f"{name}.{first + 3}", channels, channels, 3, bias=False)
        self.bn(f"{name}.{first + 4}", channels)


def reference_unet(ref: ReferenceState, prefix: str, generative: bool, low: int = MIN, high: int = MAX) -> None:
    """The reference `DataConsistedStylishUNet(num_classes=2)`: encoders appended, decoders inserted at 0."""
    ref.add(f"{prefix}init_block.weight", low, 2, 1, 1)
    ref.add(f"{prefix}init_block.bias", low)
    decoders, ups, dec_noise, widths = [], [], [], []
    out = low
    for b in range(1, 5):
        inp, out = (low if b == 1 else out), high // 2 ** (4 - b)
        widths.append(inp)
        ref.block(f"{prefix}encoder_blocks.{b - 1}", inp)
        ref.sn_conv(f"{prefix}encoder_down_blocks.{b - 1}.1", out, inp, 1, bias=True)
        ref.add(f"{prefix}soft_thresholders.{b - 1}.lambd", 1)
        decoders.insert(0, (out, None if out == high else 2 * out))
        ups.insert(0, (out, inp))
        dec_noise.insert(0, out)
    for i, (channels, fused) in enumerate(decoders):
        ref.block(f"{prefix}decoder_blocks.{i}", channels, fused)
    for i, (inp, out) in enumerate(ups):
        ref.add(f"{prefix}decoder_up_blocks.{i}.weight", inp, out, 3, 3)
        ref.add(f"{prefix}decoder_up_blocks.{i}.bias", out)
    ref.block(f"{prefix}final_block", low, 2 * low)
    ref.add(f"{prefix}conv_out.weight", 1, low, 1, 1)
    ref.add(f"{prefix}conv_out.bias", 1)
    if generative:
        for kind, channels in (("encoder", widths), ("decoder", [*dec_noise, low])):
            for i, c in enumerate(channels):
                ref.add(f"{prefix}{kind}_noise_applier_blocks.{i}.scale", c)
                ref.sn_linear(f"{prefix}{kind}_adain_blocks.{i}.gamma", c, STYLE)
                ref.sn_linear(f"{prefix}{kind}_adain_blocks.{i}.beta", c, STYLE)


def reference_state(generative: bool, low: int = MIN, high: int = MAX) -> dict[str, torch.Tensor]:
    ref = ReferenceState()
    reference_unet(ref, "rec_blocks.0.", generative, low, high)
    if generative:
        for key, value in MobileNetV2Features().state_dict().items():  # torchvision's `features` layout
            ref.add(f"z_encoder.{key}", *value.shape)
        ref.sn_linear("z_encoder.mu", STYLE, STYLE)
        ref.sn_linear("z_encoder.log_var", STYLE, STYLE)
        for i in (0, 2, 4, 6):
            ref.sn_linear(f"w_encoder.model.{i}", STYLE, STYLE)
    return ref.state


def reference_net(generative: bool) -> torch.nn.Module:
    return net_of("generative" if generative else "baseline", "reference", f"min_channels={MIN}",
                  f"max_channels={MAX}")


def tensor_ids(tensors) -> list[int]:
    return sorted(int(t.reshape(-1)[0]) if t.numel() else -1 for t in tensors)


@pytest.mark.parametrize("generative", [False, True])
def test_reference_weights_load_strictly_one_to_one(generative):
    state = reference_state(generative)
    net = reference_net(generative)
    ours = reference_to_ours(state, net.state_dict())
    net.load_state_dict(ours, strict=True)
    assert tensor_ids(net.state_dict().values()) == tensor_ids(state.values())  # every tensor used exactly once
    unet = net.unet.blocks[0] if generative else net.blocks[0]
    ref = "rec_blocks.0."
    pairs = [  # (ours, the reference's) for the places where two tensors of one shape could be swapped
        (unet.encoders[0].body[1][0].weight_orig, f"{ref}encoder_blocks.0.3.module.weight_orig"),
        (unet.encoders[2].body[0][1].running_var, f"{ref}encoder_blocks.2.1.running_var"),
        (unet.bottleneck.body[1][1].weight, f"{ref}decoder_blocks.0.4.weight"),
        (unet.decoders[0].body[1].weight, f"{ref}decoder_blocks.1.1.weight"),
        (unet.decoders[3].body[2][1][0].weight_orig, f"{ref}final_block.5.module.weight_orig"),
        (unet.ups[0].weight, f"{ref}decoder_up_blocks.0.weight"),
        # the reference's threshold 0 gates the shallowest skip, 1..3 the skips from the deepest upwards
        (unet.thresholds[0].threshold, f"{ref}soft_thresholders.0.lambd"),
        (unet.thresholds[3].threshold, f"{ref}soft_thresholders.1.lambd"),
        (unet.thresholds[1].threshold, f"{ref}soft_thresholders.3.lambd"),
    ]
    if generative:
        pairs += [
            (unet.bottleneck.noise.scale, f"{ref}decoder_noise_applier_blocks.0.scale"),
            (unet.decoders[3].noise.scale, f"{ref}decoder_noise_applier_blocks.4.scale"),
            (unet.encoders[1].noise.scale, f"{ref}encoder_noise_applier_blocks.1.scale"),
            (unet.encoders[2].style.gamma.weight_orig, f"{ref}encoder_adain_blocks.2.gamma.weight_orig"),
            (unet.decoders[1].style.beta.bias, f"{ref}decoder_adain_blocks.2.beta.bias"),
            (net.z_encoder.logvar.weight_orig, "z_encoder.log_var.weight_orig"),
            (net.z_encoder.trunk.features[18][1].running_mean, "z_encoder.features.18.1.running_mean"),
            (net.mapping[6].weight_u, "w_encoder.model.6.weight_u"),
        ]
    for mine, name in pairs:
        assert torch.equal(mine.detach().reshape(-1), state[name].reshape(-1)), name
    assert unet.thresholds[0].threshold.shape == () and (not generative or unet.encoders[0].noise.scale.dim() == 4)
    net.eval()
    x = torch.rand(1, 1, 32, 32)
    out = net(x, x, known_freq=x, mask=torch.ones_like(x)) if generative else net(x, known_freq=x, mask=x)
    assert (out[0] if generative else out).shape == x.shape


def test_files_that_do_not_fit_give_one_clear_error():
    baseline, generative = reference_state(False), reference_state(True)
    template = reference_net(False).state_dict()
    incomplete = {k: v for k, v in baseline.items() if "soft_thresholders.2" not in k}
    with pytest.raises(DataError, match=r"a\.pth: .*1 weights missing.*rec_blocks\.0\.soft_thresholders\.2\.lambd"):
        reference_to_ours(incomplete, template, "a.pth")
    with pytest.raises(DataError, match="holds the generative model.*knee_reference_generative"):
        reference_to_ours(generative, template, "g.pth")
    with pytest.raises(DataError, match="holds the baseline.*--experiment knee_reference"):
        reference_to_ours(baseline, reference_net(True).state_dict(), "b.pth")
    with pytest.raises(DataError, match="not a stylish-fastmri checkpoint: no rec_blocks"):
        reference_to_ours({"features.0.0.weight": torch.zeros(1)}, template, "m.pth")
    extra = {**baseline, "rec_blocks.0.extra.weight": torch.zeros(1)}
    with pytest.raises(DataError, match="1 weights that the reference network does not have.*extra"):
        reference_to_ours(extra, template, "e.pth")
    wrong = {**baseline, "rec_blocks.0.conv_out.weight": torch.zeros(2, MIN, 1, 1)}
    with pytest.raises(DataError, match=r"conv_out\.weight has shape \(2, 4, 1, 1\)"):
        reference_to_ours(wrong, template, "w.pth")
    fixed = net_of("baseline", "fixed", f"min_channels={MIN}", f"max_channels={MAX}", "output_dc=learned")
    with pytest.raises(DataError, match="dc_weight.*reference-mode experiment"):
        reference_to_ours(baseline, fixed.state_dict(), "f.pth")

