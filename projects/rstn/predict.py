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
from projects.rstn.eval import load_plane_model
from projects.rstn.inference import coarse_to_fine, predict_plane
from projects.rstn.model import RSTN
from projects.rstn.prepare import to_cache_layout, to_source_layout, window


def predict_volume(hu: np.ndarray, affine: np.ndarray, models: dict[str, RSTN], max_rounds: int = 10,
                   stop_inter_dsc: float = 0.99, margin: int = 20, fine_batch_size: int = 1) -> np.ndarray:
    """Returns the uint8 mask [X, Y, Z] of a HU volume indexed like its NIfTI file.

    Args:
        hu: CT in Hounsfield units, NIfTI array order [X, Y, Z].
        affine: its [4, 4] affine (only used to keep the layout round trip exact).
        models: plane -> RSTN (any subset of X, Y, Z).
        max_rounds, stop_inter_dsc, margin: the coarse-to-fine protocol.
        fine_batch_size: slices per fine forward pass.
    """
    image, cache_affine = to_cache_layout(window(hu).astype(np.float32), affine)
    with torch.no_grad():
        coarse = {p: predict_plane(image, p, m) for p, m in models.items()}
        result = coarse_to_fine(image, models, coarse, max_rounds, stop_inter_dsc, margin=margin,
                                batch_size=fine_batch_size)
    return to_source_layout(result.mask, cache_affine)[0]


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
    parser.add_argument("--max-rounds", type=int, default=10)
    parser.add_argument("--stop-inter-dsc", type=float, default=0.99)
    parser.add_argument("--fine-batch-size", type=int, default=1)
    args = parser.parse_args(argv)
    models = {p: load_plane_model(path) for p, path in _checkpoints(args.checkpoint).items()}
    volume = load_nifti(args.input, dtype=np.float32)
    mask = predict_volume(volume.data, volume.affine, models, args.max_rounds, args.stop_inter_dsc,
                          fine_batch_size=args.fine_batch_size)
    save_nifti(Path(args.output), mask, volume.affine, header=volume.header, dtype=np.uint8)
    print(f"wrote {args.output}: {int(mask.sum())} pancreas voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
