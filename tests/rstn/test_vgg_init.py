"""RSTN trunks: a local torchvision-layout VGG16 file initialises both FCNs; without one, training warns."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.checkpoint import init_from_checkpoint, instantiate_model
from common.errors import DataError
from common.run import CONF_ROOT

# torchvision's VGG16 `features`: conv output channels (each conv followed by a ReLU), "M" = max-pool
VGG16_FEATURES = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def torchvision_vgg16(width: float, distinct_like) -> dict[str, torch.Tensor]:
    """A VGG16 state dict in torchvision's layout (`features.N`, `classifier.{0,3,6}`), channels x `width`."""
    shapes, c_in, index = {}, 3, 0
    for layer in VGG16_FEATURES:
        if layer == "M":
            index += 1
            continue
        c_out = int(layer * width)
        shapes |= {f"features.{index}.weight": (c_out, c_in, 3, 3), f"features.{index}.bias": (c_out,)}
        c_in, index = c_out, index + 2  # a ReLU follows every convolution
    fc = int(4096 * width)
    shapes |= {"classifier.0.weight": (fc, c_in * 7 * 7), "classifier.0.bias": (fc,), "classifier.3.weight": (fc, fc),
               "classifier.3.bias": (fc,), "classifier.6.weight": (1000, fc), "classifier.6.bias": (1000,)}
    return distinct_like({k: torch.empty(s) for k, s in shapes.items()}, scale=1e-6)


def _module(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "rstn"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "paths.output_dir=/tmp/unused", *overrides])
    return instantiate_model(cfg.model)


def test_torchvision_vgg16_file_initialises_both_trunks(tmp_path, distinct_like, caplog):
    vgg = torchvision_vgg16(0.0625, distinct_like)
    torch.save({"state_dict": {f"module.{k}": v for k, v in vgg.items()}}, tmp_path / "vgg16.pth")
    module = _module(f"model.vgg16_weights={tmp_path / 'vgg16.pth'}")
    for fcn in (module.net.coarse_model, module.net.fine_model):
        torch.testing.assert_close(fcn.conv1_1.weight, vgg["features.0.weight"], rtol=0, atol=0)
        torch.testing.assert_close(fcn.conv3_2.bias, vgg["features.12.bias"], rtol=0, atol=0)
        torch.testing.assert_close(fcn.conv5_3.weight, vgg["features.28.weight"], rtol=0, atol=0)
        torch.testing.assert_close(fcn.fc6.weight.flatten(1), vgg["classifier.0.weight"], rtol=0, atol=0)
        torch.testing.assert_close(fcn.fc7.weight.flatten(1), vgg["classifier.3.weight"], rtol=0, atol=0)
        assert not fcn.score_fr.weight.any()  # the score layers stay at zero, as in the reference
    with caplog.at_level(logging.WARNING, logger="projects.rstn.module"):
        module.setup("fit")
    assert not caplog.records

    del vgg["classifier.3.weight"]
    torch.save(vgg, tmp_path / "partial.pth")
    with pytest.raises(DataError, match=r"partial.pth: does not fit the FCN trunks: no tensor 'classifier.3.weight'"):
        _module(f"model.vgg16_weights={tmp_path / 'partial.pth'}")
    torch.save({k: v for k, v in vgg.items() if k.startswith("features.")}, tmp_path / "features.pth")
    with pytest.raises(DataError, match=r"features.pth: not a torchvision VGG16 state dict: no weights named "
                                        r"classifier.0.\*, classifier.3.\*"):
        _module(f"model.vgg16_weights={tmp_path / 'features.pth'}")
    torch.save(torchvision_vgg16(0.125, distinct_like), tmp_path / "wide.pth")
    with pytest.raises(DataError, match=r"wide.pth: does not fit the FCN trunks: features.0"):
        _module(f"model.vgg16_weights={tmp_path / 'wide.pth'}")


def test_random_trunks_warn_once_at_fit_unless_weights_were_loaded(tmp_path, caplog):
    module = _module()
    with caplog.at_level(logging.WARNING, logger="projects.rstn.module"):
        module.setup("validate")
        assert not caplog.records
        module.setup("fit")
    assert [r.getMessage() for r in caplog.records] == [
        "RSTN: both FCN-8s trunks start from random (Kaiming) weights: no model.vgg16_weights (a local torchvision "
        "VGG16 file) or model.init_weights was given, while the reference starts from PASCAL FCN-8s weights; "
        "expect slower training and lower Dice than the paper"]
    torch.save({"state_dict": module.state_dict()}, tmp_path / "trained.ckpt")
    tuned = _module()
    init_from_checkpoint(tuned, tmp_path / "trained.ckpt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="projects.rstn.module"):
        tuned.setup("fit")
    assert not caplog.records
