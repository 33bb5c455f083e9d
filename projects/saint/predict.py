"""Thick-slice CT NIfTI in, thin-slice NIfTI out (SAINT, whole volume, both views, batched planes).

    python -m projects.saint.predict --input thick.nii.gz --output thin.nii.gz --ckpt CKPT [--factor 4]

The factor, fusion and plane batch are the checkpoint's own (`model.eval_factors[0]`, `model.eval_fuse`,
`model.plane_batch` of its run config), the settings `eval.py` runs it with; `--factor`, `--fuse` and
`--plane-batch` override them with a one-line note. A plain state dict (the reference's `model_comb.pt`) has
no run config: it runs with the paper's settings (conf/saint/model/saint.yaml) and RFN fusion.

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
from omegaconf import OmegaConf

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.nifti import load_nifti, save_nifti, scale_axis_affine, voxel_spacing
from common.runtime import set_threads
from common.settings import CONF_ROOT
from projects.saint.checkpoint import load_saint
from projects.saint.eval import inference_of
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


def predict_file(input_path: str | Path, output_path: str | Path, ckpt: str | Path, factor: int | None = None,
                 fuse: str | None = None, plane_batch: int | None = None) -> Path:
    """Writes the thin-slice NIfTI of `input_path` to `output_path`; returns the output path.

    Args:
        factor, fuse, plane_batch: override the checkpoint's settings when given (see the module docstring).

    Raises:
        DataError: unreadable input or checkpoint, or fewer than 2 slices.
    """
    volume = load_nifti(input_path, dtype=np.float32)
    axis = axial_axis(volume.affine)
    if volume.shape[axis] < 2:
        raise DataError(input_path, f"needs at least 2 slices along the axial axis {axis}, got {volume.shape}")
    net, rfn_trained = load_saint(ckpt)
    run = inference_of(ckpt, rfn_trained, {"factor": factor, "fuse": fuse, "plane_batch": plane_batch}, FLAGS,
                       OmegaConf.load(CONF_ROOT / "saint" / "model" / "saint.yaml"))
    if run.factor < 1:
        raise ValueError(f"factor must be a positive integer, got {run.factor}")
    order = [a for a in range(3) if a != axis] + [axis]
    spacing = voxel_spacing(volume.affine)[order]
    hu = synthesise_hu(net, np.transpose(volume.data, order), tuple(float(s) for s in spacing), run.factor,
                       run.fuse, run.plane_batch)
    thin = np.transpose(hu, np.argsort(order))
    affine = scale_axis_affine(volume.affine, axis, run.factor, anchor="first")
    return save_nifti(output_path, thin, affine, header=volume.header, dtype=np.int16)


#: Inference field -> the flag that overrides the checkpoint's value.
FLAGS = {"factor": "--factor", "fuse": "--fuse", "plane_batch": "--plane-batch"}


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="thick-slice CT NIfTI (HU)")
    parser.add_argument("--output", required=True, help="thin-slice NIfTI to write")
    parser.add_argument("--ckpt", required=True, help="SAINT checkpoint (Lightning .ckpt or model_comb.pt)")
    parser.add_argument("--factor", type=int, default=None, help="default: the checkpoint's model.eval_factors[0]")
    parser.add_argument("--fuse", choices=["rfn", "mean"], default=None, help="default: the checkpoint's")
    parser.add_argument("--plane-batch", type=int, default=None, help="planes per pass (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: by load)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = predict_file(args.input, args.output, args.ckpt, args.factor, args.fuse, args.plane_batch)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
