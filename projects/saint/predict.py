"""Thick-slice CT NIfTI in, thin-slice NIfTI out (SAINT, whole volume, both views, batched planes).

    python -m projects.saint.predict --input thick.nii.gz --output thin.nii.gz --ckpt CKPT --factor 4

The input is in Hounsfield units with any orientation; its axial axis (the one closest to superior-inferior) is
super-resolved. Output slice `z * f + k` is phase k after input slice z, so the output affine is the input's with
the slice step divided by f and the first slice in place: the output overlays the input (its last f - 1 slices
extrapolate beyond the last input slice). The output is int16 HU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.nifti import load_nifti, save_nifti, scale_axis_affine, voxel_spacing
from common.runtime import set_threads
from projects.saint.checkpoint import load_saint
from projects.saint.model import SAINT
from projects.saint.prepare import HU_OFFSET, axial_axis, offset_intensities


def synthesise_hu(net: SAINT, hu: np.ndarray, spacing: tuple[float, float, float], factor: int,
                  fuse: str = "rfn", plane_batch: int | None = None) -> np.ndarray:
    """Returns the thin-slice volume in HU, float32 `[X, Y, Z * factor]`, for a thick-slice `[X, Y, Z]` in HU.

    Args:
        net: the SAINT network.
        hu: thick-slice volume, z (last axis) the slice axis.
        spacing: input voxel size (sx, sy, sz) in mm.
        factor: integer factor along z.
        fuse: "rfn" or "mean".
        plane_batch: planes per pass (None: by pixel budget).
    """
    sx, sy, sz = spacing
    lr = torch.from_numpy(offset_intensities(hu).astype(np.float32))
    with torch.inference_mode():
        sr = net.infer_volume(lr, (sx, sy, sz / factor), factor, fuse, plane_batch)
    return sr.numpy() - HU_OFFSET


def predict_file(input_path: str | Path, output_path: str | Path, ckpt: str | Path, factor: int,
                 fuse: str | None = None, plane_batch: int | None = None) -> Path:
    """Writes the thin-slice NIfTI of `input_path` to `output_path`; returns the output path.

    Args:
        fuse: "rfn", "mean", or None (RFN when the checkpoint has a trained one, else mean).

    Raises:
        DataError: unreadable input or checkpoint, or fewer than 2 slices.
    """
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    volume = load_nifti(input_path, dtype=np.float32)
    axis = axial_axis(volume.affine)
    if volume.shape[axis] < 2:
        raise DataError(input_path, f"needs at least 2 slices along the axial axis {axis}, got {volume.shape}")
    net, rfn_trained = load_saint(ckpt)
    fuse = fuse or ("rfn" if rfn_trained else "mean")
    order = [a for a in range(3) if a != axis] + [axis]
    spacing = voxel_spacing(volume.affine)[order]
    hu = synthesise_hu(net, np.transpose(volume.data, order), tuple(float(s) for s in spacing), factor, fuse,
                       plane_batch)
    thin = np.transpose(hu, np.argsort(order))
    affine = scale_axis_affine(volume.affine, axis, factor, anchor="first")
    return save_nifti(output_path, thin, affine, header=volume.header, dtype=np.int16)


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="thick-slice CT NIfTI (HU)")
    parser.add_argument("--output", required=True, help="thin-slice NIfTI to write")
    parser.add_argument("--ckpt", required=True, help="SAINT checkpoint (Lightning .ckpt or model_comb.pt)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--fuse", choices=["rfn", "mean"], default=None)
    parser.add_argument("--plane-batch", type=int, default=None, help="planes per pass (default: by pixel budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: by load)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = predict_file(args.input, args.output, args.ckpt, args.factor, args.fuse, args.plane_batch)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
