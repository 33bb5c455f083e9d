"""MobileNetV2 trunks: torchvision-layout weights from a local file, and a warning when they stay random."""

from __future__ import annotations

import logging

import torch

from projects.fastmri_gen.module import RANDOM_TRUNKS_WARNING, ReconstructionModule

# torchvision's mobilenet_v2 (width 1.0): (expansion, output channels, repeats, first stride)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def torchvision_mobilenet_v2_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of torchvision's `mobilenet_v2()` (features and classifier)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, *shape: int) -> None:
        state[name] = torch.randn(shape, generator=generator)

    def bn(name: str, channels: int) -> None:
        for param in ("weight", "bias", "running_mean"):
            state[f"{name}.{param}"] = torch.randn(channels, generator=generator)
        state[f"{name}.running_var"] = torch.rand(channels, generator=generator) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("features.0.0.weight", 32, 3, 3, 3)
    bn("features.0.1", 32)
    index, channels = 1, 32
    for expansion, out, repeats, _ in SETTINGS:
        for _ in range(repeats):
            hidden, prefix, layer = channels * expansion, f"features.{index}.conv", 0
            if expansion != 1:
                conv(f"{prefix}.0.0.weight", hidden, channels, 1, 1)
                bn(f"{prefix}.0.1", hidden)
                layer = 1
            conv(f"{prefix}.{layer}.0.weight", hidden, 1, 3, 3)  # depthwise
            bn(f"{prefix}.{layer}.1", hidden)
            conv(f"{prefix}.{layer + 1}.weight", out, hidden, 1, 1)
            bn(f"{prefix}.{layer + 2}", out)
            index, channels = index + 1, out
    conv(f"features.{index}.0.weight", 1280, 320, 1, 1)
    bn(f"features.{index}.1", 1280)
    conv("classifier.1.weight", 1000, 1280)
    conv("classifier.1.bias", 1000)
    return state


def small_generative(weights: str | None) -> ReconstructionModule:
    net = {"_target_": "projects.fastmri_gen.model.StylishGenerator", "min_channels": 4, "max_channels": 8}
    return ReconstructionModule(net=net, proxy={"weights": weights})


def test_torchvision_layout_initialises_both_trunks_without_warning(tmp_path, caplog):
    state = torchvision_mobilenet_v2_state()
    torch.save(state, tmp_path / "mobilenet_v2.pth")
    module = small_generative(str(tmp_path / "mobilenet_v2.pth"))
    for trunk in (module.proxy.trunk, module.net.z_encoder.trunk):
        loaded = trunk.state_dict()
        assert len(loaded) == len(state) - 2  # everything but the classifier
        assert all(torch.equal(value, state[key]) for key, value in loaded.items())
    with caplog.at_level(logging.WARNING):
        module.on_fit_start()
    assert RANDOM_TRUNKS_WARNING not in caplog.text


def test_random_trunks_are_announced_once_at_fit_start(caplog):
    module = small_generative(None)
    with caplog.at_level(logging.WARNING):
        module.on_fit_start()
    assert caplog.text.count("RANDOM MobileNetV2 weights") == 1
    caplog.clear()
    baseline = ReconstructionModule(net={"_target_": "projects.fastmri_gen.model.StylishReconstructor",
                                         "min_channels": 4, "max_channels": 8})
    with caplog.at_level(logging.WARNING):
        baseline.on_fit_start()  # no MobileNetV2 in the baseline: nothing to say
    assert "MobileNetV2" not in caplog.text
