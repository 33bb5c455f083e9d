"""Thick-slice CT (NIfTI or DICOM series) in, thin-slice NIfTI out (SAINT, whole volume, both views).

    python -m projects.saint.predict -i thick.nii.gz -o thin.nii.gz --ckpt CKPT [--factor 4]
    python -m projects.saint.predict -i THICK_FOLDER -o THIN_FOLDER --ckpt CKPT [--device cuda] [--precision 32]

A folder in gives a folder out: one thin-slice NIfTI per input case, named like it (a DICOM series folder
`case/` gives `case.nii.gz`); see `common.predict_cli`.

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

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.nifti import save_nifti, scale_axis_affine, voxel_spacing
from common.memory import parse_memory
from common.predict_cli import Case, list_cases, load_ct, parse_predict_args, predict_cases, predict_parser
from common.runtime import autocast, set_threads
from common.settings import CONF_ROOT
from projects.saint.checkpoint import load_saint
from projects.saint.data import HU_OFFSET, LAYOUT, offset_intensities
from projects.saint.eval import Inference, inference_of
from projects.saint.model import SAINT


def synthesise_hu(net: SAINT, hu: np.ndarray, spacing: tuple[float, float, float], factor: int,
                  fuse: str = "rfn", plane_batch: int | None = None, precision: str = "32",
                  max_memory: int | None = None) -> np.ndarray:
    """Returns the thin-slice volume in HU, float32 `[X, Y, Z * factor]`, for a thick-slice `[X, Y, Z]` in HU.

    Args:
        net: the SAINT network (on the device it runs on).
        hu: thick-slice volume, z (last axis) the slice axis.
        spacing: input voxel size (sx, sy, sz) in mm.
        factor: integer factor along z.
        fuse: "rfn" or "mean".
        plane_batch: planes per pass (None: by pixel budget).
        precision: "32" or "bf16" (autocast on the network's device).
        max_memory: peak resident bytes of the process: fewer planes per pass when needed (None: no budget).
    """
    sx, sy, sz = spacing
    lr = torch.from_numpy(offset_intensities(hu).astype(np.float32))
    device = str(next(net.parameters()).device)
    with torch.inference_mode(), autocast(precision, device):
        sr = net.infer_volume(lr, (sx, sy, sz / factor), factor, fuse, plane_batch, max_memory)
    return sr.float().cpu().numpy() - HU_OFFSET


def load_predictor(ckpt: str | Path, factor: int | None = None, fuse: str | None = None,
                   plane_batch: int | None = None, device: str = "cpu") -> tuple[SAINT, Inference]:
    """Returns the checkpoint's network on `device` and its inference settings, the given ones overriding them.

    Raises:
        DataError: unreadable checkpoint.
        ValueError: a factor below 1.
    """
    net, rfn_trained = load_saint(ckpt)
    run = inference_of(ckpt, rfn_trained, {"factor": factor, "fuse": fuse, "plane_batch": plane_batch}, FLAGS,
                       OmegaConf.load(CONF_ROOT / "saint" / "model" / "saint.yaml"))
    if run.factor < 1:
        raise ValueError(f"factor must be a positive integer, got {run.factor}")
    return net.to(device), run


def predict_case(case: Case, net: SAINT, run: Inference, precision: str = "32",
                 max_memory: int | None = None) -> Path:
    """Writes the thin-slice NIfTI of one case (NIfTI file or DICOM series) to `case.target`; returns it.

    Raises:
        DataError: unreadable input, or fewer than 2 slices along its axial axis.
    """
    volume = load_ct(case)
    axes = LAYOUT.axes(volume.affine)
    axis = axes.file_axis(2)
    if volume.shape[axis] < 2:
        raise DataError(case.source, f"needs at least 2 slices along the axial axis {axis}, got {volume.shape}")
    lr, lr_affine = axes.to_cache(volume.data, volume.affine)
    hu = synthesise_hu(net, lr, tuple(float(s) for s in voxel_spacing(lr_affine)), run.factor,
                       run.fuse, run.plane_batch, precision, max_memory)
    thin, _ = axes.to_file(hu, lr_affine)
    affine = scale_axis_affine(volume.affine, axis, run.factor, anchor="first")
    return save_nifti(case.target, thin, affine, header=volume.header, dtype=np.int16)


def predict_file(input_path: str | Path, output_path: str | Path, ckpt: str | Path, factor: int | None = None,
                 fuse: str | None = None, plane_batch: int | None = None, precision: str = "32",
                 max_memory: int | None = None) -> Path:
    """Writes the thin-slice NIfTI of one thick-slice NIfTI file or DICOM series; returns the output path.

    Args:
        factor, fuse, plane_batch: override the checkpoint's settings when given (see the module docstring).
        max_memory: peak resident bytes of the process (None: planes per pass from `plane_batch` only).

    Raises:
        DataError: unreadable input or checkpoint, or fewer than 2 slices.
    """
    net, run = load_predictor(ckpt, factor, fuse, plane_batch)
    case = list_cases(input_path, output_path, dicom=True)[0]
    return predict_case(case, net, run, precision, max_memory)


#: Inference field -> the flag that overrides the checkpoint's value.
FLAGS = {"factor": "--factor", "fuse": "--fuse", "plane_batch": "--plane-batch"}


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = predict_parser(__doc__.split("\n")[0], "thick-slice CT: NIfTI (HU) or DICOM series folder",
                            "thin-slice NIfTI to write", "SAINT checkpoint (Lightning .ckpt or model_comb.pt)")
    parser.add_argument("--factor", type=int, default=None, help="default: the checkpoint's model.eval_factors[0]")
    parser.add_argument("--fuse", choices=["rfn", "mean"], default=None, help="default: the checkpoint's")
    parser.add_argument("--plane-batch", type=int, default=None, help="planes per pass (default: the checkpoint's)")
    parser.add_argument("--max-memory", default=None,
                        help="peak memory, e.g. 4G: fewer planes per pass when needed (default: no budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: by load)")
    args = parse_predict_args(parser, argv)
    try:
        max_memory = parse_memory(args.max_memory)
    except ValueError as err:
        raise DataError(None, f"--max-memory: {err}") from None
    set_threads(args.threads)
    cases = list_cases(args.input, args.output, dicom=True)
    net, run = load_predictor(args.ckpt, args.factor, args.fuse, args.plane_batch, args.device)
    predict_cases(cases, lambda case: predict_case(case, net, run, args.precision, max_memory), "SAINT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
