"""Import the reference's SPiN checkpoint (`alexklwong/subpixel-embedding-segmentation`) into one of ours.

    python -m projects.spin.import_weights spin_atlas.pth --out outputs/spin/imported/spin_atlas.ckpt

The reference saves five sub-network state dicts in one file (`encoder_subpixel_embedding_state_dict`,
`decoder_subpixel_embedding_state_dict`, `subpixel_guidance_state_dict`, `encoder_segmentation_state_dict`,
`decoder_segmentation_state_dict`, plus `train_step` and `optimizer_state_dict`, which are not needed). The
names differ from ours (`.batch_norm` -> `.norm`, `projection.conv` -> `shortcut`, the SPE decoder's
`upsampling_blocks.0` -> `embedding.expand`, the guidance's `conv_modules.{0,1}.0` -> `guidance.level{2x,1x}`,
a decoder block's `deconv.conv` / `conv` -> `up_conv` / `fuse_conv`, the decoder's `learnable_downsampler` ->
our top-level `downsampler`). The reference builds a 1x1 projection in every ResNet block but uses it only where
the stride or the channel count changes; those dead weights (97,824 in the paper configuration) are dropped.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from common.checkpoint import read_checkpoint
from common.errors import DataError
from common.weights import import_main

# reference entry -> our sub-network (the SPE encoder and decoder are both our `embedding`)
SUBNETWORKS = {"encoder_subpixel_embedding_state_dict": "embedding",
               "decoder_subpixel_embedding_state_dict": "embedding",
               "subpixel_guidance_state_dict": "guidance",
               "encoder_segmentation_state_dict": "encoder",
               "decoder_segmentation_state_dict": "decoder"}
# (pattern, replacement) applied in order to every name inside a sub-network
RENAMES = [(r"\.batch_norm\.", ".norm."),
           (r"projection\.conv\.weight$", "shortcut.weight"),
           (r"^upsampling_blocks\.0\.", "expand."),
           (r"^conv_modules\.0\.0\.", "level2x."),
           (r"^conv_modules\.1\.0\.", "level1x."),
           (r"^(deconv\w*)\.deconv\.conv\.", r"\1.up_conv."),
           (r"^(deconv\w*)\.conv\.", r"\1.fuse_conv."),
           (r"^learnable_downsampler\.conv_block\.", "downsampler.weights.")]
ENCODER_BLOCK = re.compile(r"^(?:blocks(\d)|blocks)\.(\d+)\.projection\.")


def _sections(path: Path) -> dict[str, Mapping[str, torch.Tensor]]:
    """Returns the five sub-network state dicts of a reference checkpoint."""
    ckpt = read_checkpoint(path)
    missing = [k for k in SUBNETWORKS if not isinstance(ckpt.get(k), Mapping)]
    if missing:
        raise DataError(path, f"not a SPiN checkpoint of the reference: no {', '.join(missing)}"
                              f" (found {sorted(ckpt)[:5]})")
    return {k: ckpt[k] for k in SUBNETWORKS}


def _dead_projection(name: str, section: Mapping[str, torch.Tensor]) -> bool:
    """Returns whether `name` is the 1x1 projection of a block whose shortcut is the identity.

    The reference projects when the stride or the channel count changes; the first block of encoder stages
    3-5 has stride 2, every other block stride 1 (the channel counts come from the block's first conv).
    """
    found = ENCODER_BLOCK.match(name)
    if not found:
        return False
    stage, index = found.group(1), int(found.group(2))
    block = name[: name.index(".projection.")]
    out_ch, in_ch = section[f"{block}.conv1.conv.weight"].shape[:2]
    strided = stage is not None and int(stage) >= 3 and index == 0
    return not strided and in_ch == out_ch


def _rename(subnetwork: str, name: str, n_downsampler_convs: int) -> str:
    if name.startswith("learnable_downsampler.weights."):
        return f"downsampler.weights.{n_downsampler_convs}." + name.removeprefix("learnable_downsampler.weights.")
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name if name.startswith("downsampler.") else f"{subnetwork}.{name}"


def reference_to_ours(sections: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Returns our `SPiN` state dict (without the `net.` prefix) of the reference's five sub-network dicts."""
    decoder = sections["decoder_segmentation_state_dict"]
    n_convs = len({k.split(".")[2] for k in decoder if k.startswith("learnable_downsampler.conv_block.")})
    state = {}
    for entry, subnetwork in SUBNETWORKS.items():
        for name, value in sections[entry].items():
            if not _dead_projection(name, sections[entry]):
                state[_rename(subnetwork, name, n_convs)] = value
    return state


def convert(sources: list[Path], experiment: str) -> dict[str, torch.Tensor]:
    """Returns the LightningModule state dict of one reference SPiN checkpoint."""
    if len(sources) != 1:
        raise DataError(None, f"expected one SPiN checkpoint, got {len(sources)} files")
    return {f"net.{k}": v for k, v in reference_to_ours(_sections(sources[0])).items()}


def main(argv: Sequence[str] | None = None) -> int:
    return import_main("spin", convert, "atlas_traintest", __doc__ or "", argv,
                       experiments=["atlas_traintest", "atlas_6fold", "demo"])


if __name__ == "__main__":
    sys.exit(main())
