"""Checkpoints whose model config holds the earlier 14 fidelity switches still rebuild the network they trained."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from common.checkpoint import instantiate_model, module_from_checkpoint
from projects.fastmri_gen.module import ModuleFidelity, module_fidelity
from tests.fastmri_gen.test_train import compose_cfg

EARLIER_SWITCHES = ("mask_transposed", "known_freq_magnitude", "dc_reference", "unet_reference",
                    "train_mode_validation", "train_masks_by_filename", "zero_one_norm", "adain_reference", "kl_sum",
                    "proxy_reference", "single_logit", "threshold_init_reference", "noise_init_reference",
                    "spectral_norm_reference")
# what the earlier configs put under model.net: the architecture only, the rest came from the switches
EARLIER_NET_KEYS = ("_target_", "num_blocks", "iterations", "min_channels", "max_channels", "depth", "texture_mode",
                    "texture_vectors", "spatial_grid", "noise")


def settings(net: torch.nn.Module) -> list[str]:
    """Return every plain attribute of every submodule (modes, draw sources, channels, rates; not train mode)."""
    return [f"{name}.{key}={value!r}" for name, module in net.named_modules()
            for key, value in sorted(vars(module).items())
            if not key.startswith("_") and key != "training" and isinstance(value, (str, int, float, bool, tuple, type(None)))]


def earlier_model_config(cfg, reference: bool) -> dict:
    """Return `cfg.model` as an earlier version stored it in a checkpoint's run config."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["net"] = {k: v for k, v in model["net"].items() if k in EARLIER_NET_KEYS} | {"threshold_init": None}
    model["fidelity"] = dict.fromkeys(EARLIER_SWITCHES, reference)
    model.pop("d_scheduler")
    return model


@pytest.mark.parametrize("model,fidelity", [("baseline_small", "reference"), ("baseline_small", "fixed"),
                                            ("generative_small", "reference"), ("generative_small", "fixed")])
def test_earlier_checkpoint_rebuilds_its_network(tmp_path, model, fidelity):
    cfg = compose_cfg([f"model={model}", f"fidelity={fidelity}", "paths.output_dir=/tmp/unused"])
    torch.manual_seed(0)
    today = instantiate_model(cfg.model)
    reference = fidelity == "reference"
    stored = earlier_model_config(cfg, reference)
    run_config = {"model": stored, "data": {"fidelity": dict.fromkeys(EARLIER_SWITCHES, reference)}}
    torch.save({"state_dict": today.state_dict(), "run_config": run_config}, tmp_path / "earlier.ckpt")
    loaded, _ = module_from_checkpoint(tmp_path / "earlier.ckpt")  # strict: every weight fits
    assert settings(loaded.net) == settings(today.net) and repr(loaded.net) == repr(today.net)
    assert loaded.fidelity == ModuleFidelity(*[reference] * 4) == today.fidelity
    assert loaded.complex_mode() == (not reference)
    for key, value in loaded.hparams.net.items():  # the mapped config names what today's config names
        assert cfg.model.net[key] == value, key


def test_a_network_switch_in_the_module_config_is_named():
    with pytest.raises(ValueError, match=r"no switch \['dc_reference'\].*arguments of model.net"):
        module_fidelity({"dc_reference": True, "kl_sum": True})
    assert module_fidelity(None) == ModuleFidelity()
