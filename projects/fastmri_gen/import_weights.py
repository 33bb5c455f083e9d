"""Import the stylish-fastmri authors' checkpoints (baseline or generative) as checkpoints of this project.

    python -m projects.fastmri_gen.import_weights AUTHORS.pth [MOBILENET_V2.pth] --out CKPT [--experiment NAME]

`AUTHORS.pth` is a state dict saved by the reference trainer (`rec_blocks.0.*`, and for the generative model
`z_encoder.*` and `w_encoder.*`). The experiment is `knee_reference` (baseline, the default) or
`knee_reference_generative`: the authors' networks only fit reference mode (2 input channels, the reference
layers). The reference checkpoints hold the generator only; the discriminator in CKPT is freshly initialised
(seed 0) and the generative model's frozen texture proxy comes from the optional MobileNetV2 file in the
torchvision layout (`features.N...`, ImageNet in the reference) or is random. Both matter only when CKPT is
fine-tuned (`train.py experiment=NAME model.init_weights=CKPT`); `eval.py ckpt_path=CKPT` and `predict.py --ckpt
CKPT` use the generator alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from common.checkpoint import instantiate_model
from common.errors import DataError
from common.model_card import compose_experiment
from common.weights import import_main, load_third_party

log = logging.getLogger(__name__)

EXPERIMENTS = ("knee_reference", "knee_reference_generative")
REFERENCE_BLOCK = "rec_blocks."
GENERATIVE_MARKERS = ("z_encoder.", "w_encoder.")

# Our Block (two ConvBNAct) and FuseBlock (Dropout, 1x1 conv, Block) positions -> the reference's flat
# Sequential positions (spectrally normalised convolutions sit in a wrapper called `module`).
BLOCK_POSITIONS = {"0.0": "0.module", "0.1": "1", "1.0": "3.module", "1.1": "4"}
FUSE_POSITIONS = {"1": "1", "2.0.0": "2.module", "2.0.1": "3", "2.1.0": "5.module", "2.1.1": "6"}


def threshold_index(level: int, depth: int) -> int:
    """Return the reference's `soft_thresholders` index of the skip threshold of our encoder level `level`.

    The reference applies threshold 0 to the shallowest skip (its final block) and thresholds 1..depth-1 to
    the skips from the deepest upwards; ours index the thresholds by encoder level.
    """
    return 0 if level == 0 else depth - level


def _stage_name(stage: str, index: int | None, depth: int) -> tuple[str, str, str, dict[str, str]]:
    """Return the reference's (body, noise, AdaIN) containers and body layout of one of our stages."""
    if stage == "encoders":
        return (f"encoder_blocks.{index}", f"encoder_noise_applier_blocks.{index}", f"encoder_adain_blocks.{index}",
                BLOCK_POSITIONS)
    if stage == "bottleneck":
        return "decoder_blocks.0", "decoder_noise_applier_blocks.0", "decoder_adain_blocks.0", BLOCK_POSITIONS
    assert index is not None
    body = "final_block" if index == depth - 1 else f"decoder_blocks.{index + 1}"
    return body, f"decoder_noise_applier_blocks.{index + 1}", f"decoder_adain_blocks.{index + 1}", FUSE_POSITIONS


def _unet_name(key: str, depth: int) -> str:
    """Return the reference name of a key of one of our `StylishUNet`s (relative to the U-Net)."""
    simple = {"init.": "init_block.", "out.": "conv_out.", "ups.": "decoder_up_blocks."}
    for ours, theirs in simple.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    if match := re.fullmatch(r"downs\.(\d+)\.(\w+)", key):
        return f"encoder_down_blocks.{match[1]}.1.module.{match[2]}"
    if match := re.fullmatch(r"thresholds\.(\d+)\.threshold", key):
        return f"soft_thresholders.{threshold_index(int(match[1]), depth)}.lambd"
    match = re.fullmatch(r"(encoders|decoders|bottleneck)\.(?:(\d+)\.)?(body|noise|style)\.(.+)", key)
    if match is None:
        raise KeyError(key)
    stage, index, part, rest = match.groups()
    body, noise, adain, positions = _stage_name(stage, None if index is None else int(index), depth)
    if part == "noise":
        return f"{noise}.{rest}"
    if part == "style":
        return f"{adain}.{rest}"
    position, _, param = rest.rpartition(".")
    if position not in positions:
        raise KeyError(key)
    return f"{body}.{positions[position]}.{param}"


def reference_name(key: str, depth: int = 4) -> str:
    """Return the reference checkpoint's name of one of our reference-mode network keys.

    Args:
        key: a `state_dict` key of `StylishReconstructor` (`blocks.N...`) or `StylishGenerator`
            (`unet.blocks.N...`, `z_encoder...`, `mapping...`).
        depth: U-Net depth (4 in the reference).

    Raises:
        KeyError: a key the reference has no counterpart of (e.g. the learned DC weight of fixed mode).
    """
    if match := re.fullmatch(r"(?:unet\.)?blocks\.(\d+)\.(.+)", key):
        return f"{REFERENCE_BLOCK}{match[1]}.{_unet_name(match[2], depth)}"
    renames = {"z_encoder.trunk.features.": "z_encoder.features.", "z_encoder.mu.": "z_encoder.mu.",
               "z_encoder.logvar.": "z_encoder.log_var.", "mapping.": "w_encoder.model."}
    for ours, theirs in renames.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def _fit_shape(value: torch.Tensor, target: torch.Tensor, name: str, source: str | os.PathLike | None) -> torch.Tensor:
    """Return `value` in `target`'s shape when the two differ by singleton dimensions only (thresholds (1,) vs
    (), noise scales [C] vs [1, C, 1, 1])."""
    if value.shape == target.shape:
        return value
    if [d for d in value.shape if d != 1] != [d for d in target.shape if d != 1]:
        raise DataError(source, f"weight {name} has shape {tuple(value.shape)}, the reference network needs "
                                f"{tuple(target.shape)}")
    return value.reshape(target.shape)


def reference_to_ours(state: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor],
                      source: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Return the authors' state dict renamed and reshaped to our reference-mode network.

    Args:
        state: the reference's state dict (`rec_blocks.0.init_block.weight`, ..., `z_encoder.features...`).
        template: our network's `state_dict()` (keys and shapes of the target; values unused).
        source: the file the weights come from (named in errors).

    Returns:
        `{our key: tensor}` with exactly the keys of `template`.

    Raises:
        DataError: weights the network needs are missing, weights are left over, or a shape does not fit.
    """
    depth = sum(1 for k in template if re.fullmatch(r"(?:unet\.)?blocks\.0\.thresholds\.\d+\.threshold", k))
    _check_kind(state, any(k.startswith("z_encoder.") for k in template), source)
    names = {}
    for key in template:
        try:
            names[key] = reference_name(key, depth)
        except KeyError:
            raise DataError(source, f"our network has {key}, which the reference has no counterpart of: "
                                    "import into a reference-mode experiment") from None
    missing = sorted(n for n in names.values() if n not in state)
    if missing:
        raise DataError(source, f"incomplete stylish-fastmri checkpoint: {len(missing)} weights missing, "
                                f"e.g. {', '.join(missing[:3])}")
    unused = sorted(set(state) - set(names.values()))
    if unused:
        raise DataError(source, f"{len(unused)} weights that the reference network does not have, "
                                f"e.g. {', '.join(unused[:3])}")
    return {key: _fit_shape(state[name], template[key], name, source) for key, name in names.items()}


def _check_kind(state: Mapping[str, torch.Tensor], generative: bool, source: str | os.PathLike | None) -> None:
    """Raise a DataError when `state` is no stylish-fastmri checkpoint or the other model than the target."""
    if not any(k.startswith(REFERENCE_BLOCK) for k in state):
        raise DataError(source, f"not a stylish-fastmri checkpoint: no {REFERENCE_BLOCK}* weights "
                                f"(found e.g. {', '.join(sorted(state)[:3])})")
    holds_generative = any(k.startswith(GENERATIVE_MARKERS) for k in state)
    if holds_generative and not generative:
        raise DataError(source, "this file holds the generative model (z_encoder.*, w_encoder.*): import it with "
                                f"--experiment {EXPERIMENTS[1]}")
    if generative and not holds_generative:
        raise DataError(source, "this file holds the baseline (no z_encoder.*, w_encoder.*): import it with "
                                f"--experiment {EXPERIMENTS[0]}")


def _fresh_module(experiment: str) -> torch.nn.Module:
    """Return the experiment's LightningModule, initialised with seed 0 (the parts the authors' files lack)."""
    torch.manual_seed(0)
    return instantiate_model(compose_experiment("fastmri_gen", experiment).model)


def convert(sources: list[Path], experiment: str) -> dict[str, torch.Tensor]:
    """Return the LightningModule state dict of `experiment` holding the authors' generator.

    Args:
        sources: the authors' checkpoint and, optionally, a MobileNetV2 state dict in torchvision's layout for
            the generative model's frozen texture proxy (in either order).
        experiment: `knee_reference` (baseline) or `knee_reference_generative`.

    Raises:
        DataError: more than two files, no authors' file, a file that does not fit, or a MobileNetV2 file for
            the baseline (which has no proxy).
    """
    from projects.fastmri_gen.mobilenet import load_trunk_weights

    if not 1 <= len(sources) <= 2:
        raise DataError(None, f"expected the authors' checkpoint and at most one MobileNetV2 file, got {len(sources)}")
    states = {path: load_third_party(path) for path in sources}
    authors = [p for p, s in states.items() if any(k.startswith(REFERENCE_BLOCK) for k in s)] or sources[:1]
    trunks = [p for p in sources if p not in authors]
    if len(authors) > 1:
        raise DataError(authors[1], f"two stylish-fastmri checkpoints given ({authors[0]} and this one): import one")
    module = _fresh_module(experiment)
    if trunks and getattr(module, "proxy", None) is None:
        raise DataError(trunks[0], f"experiment {experiment} has no texture proxy: this file would not be used")
    if trunks:
        load_trunk_weights(module.proxy.trunk, trunks[0])
    elif getattr(module, "proxy", None) is not None:
        log.warning("no MobileNetV2 file given: the texture proxy in the checkpoint is random (the reference's "
                    "is ImageNet); it matters only for fine-tuning")
    log.info("the authors' files hold no discriminator: a freshly initialised one (seed 0) is stored")
    net = reference_to_ours(states[authors[0]], module.net.state_dict(), authors[0])
    return {**module.state_dict(), **{f"net.{key}": value for key, value in net.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (see the module docstring); returns the exit code."""

    return import_main("fastmri_gen", convert, EXPERIMENTS[0], __doc__ or "", argv, experiments=EXPERIMENTS)


if __name__ == "__main__":
    sys.exit(main())
