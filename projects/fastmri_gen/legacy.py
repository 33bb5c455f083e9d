"""Model configs stored by checkpoints of earlier versions, mapped to today's layout when the checkpoint is read.

Earlier versions stored 14 `fidelity` switches in the model config and derived the stylish networks' reference-vs-
fixed arguments from them when the module was built (a `model.net` key other than null overrode its switch).
Today `model.net` holds every argument and `model.fidelity` only the module's switches (`ModuleFidelity`). This
module maps an old stored config to the new layout, so that such a checkpoint rebuilds the network it was trained
with; it is used for reading checkpoints only (`ReconstructionModule.upgrade_config`), never for building a model
from the configs in `conf/`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from hydra.utils import get_class

from projects.fastmri_gen.model import StylishGenerator, StylishReconstructor
from projects.fastmri_gen.module import ModuleFidelity

# The switches that used to reach the network; an old config always stored them (missing meant the reference side).
NET_SWITCHES = ("dc_reference", "unet_reference", "adain_reference", "proxy_reference", "threshold_init_reference",
                "noise_init_reference", "spectral_norm_reference")


def stored_net_arguments(flags: dict[str, bool], generative: bool) -> dict[str, Any]:
    """Return the stylish network arguments that the earlier switch settings `flags` stood for."""
    magnitude, reference_unet = flags["dc_reference"], flags["unet_reference"]
    arguments: dict[str, Any] = {
        "data_consistency": "reference" if magnitude else "complex",
        "residual": not reference_unet,
        "output": "hardsigmoid" if reference_unet and magnitude else "linear",
        "size_fit": "resize" if reference_unet else "pad",
        "output_dc": "none" if reference_unet or magnitude else "hard",
        "dropout": 0.5 if reference_unet else 0.0,
        "modulation": "reference" if flags["adain_reference"] else "per_channel",
        "update": "complex" if magnitude else "magnitude",
        "threshold_init": 1.0 if flags["threshold_init_reference"] else 0.0,
        "noise_init": "normal" if flags["noise_init_reference"] else "zero",
        "spectral_norm": flags["spectral_norm_reference"],
    }
    if generative:
        proxy = flags["proxy_reference"]
        arguments.update(imagenet_norm=not proxy, test_latent="fixed_noise" if proxy else "mean",
                         draw_source="numpy" if proxy else "torch")
    return arguments


def upgrade_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return `config` (a stored `model` config) in today's layout; configs already in it come back unchanged."""
    stored = dict(config.get("fidelity") or {})
    if not any(key in stored for key in NET_SWITCHES if key != "proxy_reference"):
        return config
    module_switches = [f.name for f in fields(ModuleFidelity)]
    flags = {key: bool(stored.get(key, True)) for key in (*NET_SWITCHES, *module_switches)}
    net = dict(config["net"])
    network = get_class(str(net["_target_"]))
    if issubclass(network, (StylishReconstructor, StylishGenerator)):
        derived = stored_net_arguments(flags, issubclass(network, StylishGenerator))
        net = {**derived, **{key: value for key, value in net.items() if value is not None}}
    return {**config, "net": net, "fidelity": {key: flags[key] for key in module_switches}}
