"""Import the reference's EasySR weights (`G_latest_{T1,Mixed}.pth`, optionally `D_latest_*.pth`) into one of ours.

    python -m projects.easysr.import_weights ckpt_final/G_latest_T1.pth [ckpt_final/D_latest_T1.pth] \
        --out outputs/easysr/imported/T1.ckpt

Our networks keep the reference's names (G: `conv_block1.0`, `residual_block{1,2}.conv_block.*`,
`conv_block2.*`, `deup.deupblock.0`, `conv3`; D: `conv{1..4}.{0,1}`, `conv5`, `fc`), so the import sorts the
files into generator and discriminator by their names, adds the LightningModule's prefixes and loads strictly.
`experiment=reference` (the default) has the reference's linear-head discriminator for 128x192x128 volumes;
without a D file the discriminator keeps its fresh initialisation (listed as `fresh_init` in the checkpoint).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.errors import DataError
from common.weights import import_main, load_third_party

# a name only the generator has, and one only the discriminator has
MARKERS = {"generator": "conv_block1.0.weight", "discriminator": "conv5.weight"}


def _part(path: Path, state: dict[str, torch.Tensor]) -> str:
    for part, marker in MARKERS.items():
        if marker in state:
            return part
    raise DataError(path, f"neither an EasySR generator ({MARKERS['generator']}) nor discriminator"
                          f" ({MARKERS['discriminator']}) state dict (found {sorted(state)[:3]}...)")


def convert(sources: list[Path], experiment: str) -> dict[str, torch.Tensor]:
    """Returns the LightningModule state dict of a generator file and an optional discriminator file."""
    parts: dict[str, Path] = {}
    state: dict[str, torch.Tensor] = {}
    for path in sources:
        tensors = load_third_party(path)
        part = _part(path, tensors)
        if part in parts:
            raise DataError(path, f"a second {part} file (the first was {parts[part]})")
        parts[part] = path
        state.update({f"{part}.{key}": value for key, value in tensors.items()})
    if "generator" not in parts:
        raise DataError(sources[0], "no generator: give the G_latest_*.pth file (the D file is optional)")
    return state


def main(argv: Sequence[str] | None = None) -> int:
    return import_main("easysr", convert, "reference", __doc__ or "", argv, optional_parts=["discriminator"])


if __name__ == "__main__":
    sys.exit(main())
