"""CT NIfTI in -> pancreas mask NIfTI out, on the input's grid with its affine (coarse-to-fine testing).

Usage:
    python -m projects.rstn.predict --input ct.nii.gz --output mask.nii.gz \
        --checkpoint X=outputs/rstn/nih_pancreas_fd0/X/checkpoints/last.ckpt --checkpoint Y=... --checkpoint Z=...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.nifti import load_nifti, save_nifti
from projects.rstn.eval import Protocol, load_plane_model, protocol_of
from projects.rstn.inference import coarse_to_fine, predict_plane
from projects.rstn.model import RSTN
from projects.rstn.prepare import to_cache_layout, to_source_layout, window


def predict_volume(hu: np.ndarray, affine: np.ndarray, models: dict[str, RSTN], protocol: Protocol
                   ) -> np.ndarray:
    """Returns the uint8 mask [X, Y, Z] of a HU volume indexed like its NIfTI file (eval's coarse2fine stage).

    Args:
        hu: CT in Hounsfield units, NIfTI array order [X, Y, Z].
        affine: its [4, 4] affine (only used to keep the layout round trip exact).
        models: plane -> RSTN (any subset of X, Y, Z).
        protocol: the coarse-to-fine settings (see `protocol_of`).
    """
    image, cache_affine = to_cache_layout(window(hu).astype(np.float32), affine)
    with torch.no_grad():
        coarse = {p: predict_plane(image, p, m, protocol.batch_size, protocol.precision) for p, m in models.items()}
        result = coarse_to_fine(image, models, coarse, protocol.max_rounds, protocol.stop_inter_dsc,
                                protocol.threshold, protocol.margin, protocol.post_ratio,
                                precision=protocol.precision, batch_size=protocol.fine_batch_size)
    return to_source_layout(result.mask, cache_affine)[0]


#: Protocol field -> command-line flag that overrides the checkpoint's value.
FLAGS = {"margin": "--margin", "max_rounds": "--max-rounds", "stop_inter_dsc": "--stop-inter-dsc",
         "threshold": "--threshold", "post_ratio": "--post-ratio", "fine_batch_size": "--fine-batch-size",
         "precision": "--precision"}


def _checkpoints(items: Sequence[str]) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in items if "=" in item)
    if not pairs or set(pairs) - {"X", "Y", "Z"} or len(pairs) != len(items):
        raise DataError(None, f"--checkpoint takes PLANE=PATH with PLANE in X, Y, Z; got {list(items)}")
    return pairs


@exit_code_on_data_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--checkpoint", action="append", required=True, help="PLANE=PATH, once per plane")
    parser.add_argument("--max-rounds", type=int, default=None)
    parser.add_argument("--stop-inter-dsc", type=float, default=None)
    parser.add_argument("--fine-batch-size", type=int, default=None)
    parser.add_argument("--margin", type=int, default=None, help="fine-stage crop margin (pixels)")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--post-ratio", type=float, default=None)
    parser.add_argument("--precision", choices=["32", "bf16"], default=None)
    args = parser.parse_args(argv)
    checkpoints = _checkpoints(args.checkpoint)
    models = {p: load_plane_model(path) for p, path in checkpoints.items()}
    protocol = protocol_of(next(iter(checkpoints.values())), {name: getattr(args, name) for name in FLAGS}, FLAGS)
    volume = load_nifti(args.input, dtype=np.float32)
    mask = predict_volume(volume.data, volume.affine, models, protocol)
    save_nifti(Path(args.output), mask, volume.affine, header=volume.header, dtype=np.uint8)
    print(f"wrote {args.output}: {int(mask.sum())} pancreas voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
