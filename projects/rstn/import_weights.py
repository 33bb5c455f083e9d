"""Import the reference's RSTN snapshot (PyTorch port): one file per plane and fold, coarse + saliency + fine.

    python -m projects.rstn.import_weights 'snapshots/.../FD0:XJ3_1_<time>.pkl' \
        --out outputs/rstn/imported_fd0/X/checkpoints/last.ckpt

The port saves `RSTN.state_dict()` after each training mode; the mode-J file is the trained one. Its names
(`coarse_model.conv1_1.weight`, `saliency1.bias`, `fine_model.score_fr.weight`, ...) are ours, so the import
only adds the LightningModule's `net.` prefix; the strict load checks every name and shape.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from common.errors import DataError
from common.weights import import_main, load_third_party, require_keys

PARTS = ("coarse_model.", "saliency1.", "saliency2.", "fine_model.")


def convert(sources: list[Path], experiment: str) -> dict[str, torch.Tensor]:
    """Returns the LightningModule state dict of one reference RSTN snapshot."""
    if len(sources) != 1:
        raise DataError(None, f"one snapshot per plane (got {len(sources)} files): import each plane's file"
                              " into its own checkpoint")
    state = load_third_party(sources[0])
    require_keys(state, PARTS, sources[0], "an RSTN snapshot (coarse_model, saliency1/2, fine_model)")
    return {f"net.{key}": value for key, value in state.items()}


def main(argv: Sequence[str] | None = None) -> int:
    return import_main("rstn", convert, "nih_pancreas", __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
