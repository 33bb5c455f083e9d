"""Lesion mask of a T1 NIfTI in any orientation, written on the input's own grid and affine.

    python -m projects.spin.predict --ckpt outputs/spin/atlas_traintest/checkpoints/best.ckpt \
        --input scan_t1w.nii.gz --output scan_lesion.nii.gz [--tta-flip] [--bf16]

The scan is reoriented to RAS+ (a permutation/flip of the array, no resampling) so that axis 2 is axial, segmented
slice by slice in batches, and the mask is permuted back: the output has exactly the input's shape and affine.
The model expects ATLAS-like input: skull-stripped, MNI-registered, intensities on the ATLAS 0-100 scale.

The network and its settings are the checkpoint's own, as `eval.py` runs it: the slice context `data.n_chunk`
of its run config, the flip averaging, precision and batch of `eval:` in conf/spin/eval.yaml. `--tta-flip`,
`--bf16` and `--batch-size` override them with a one-line note.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from nibabel import orientations

from common.checkpoint import module_from_checkpoint
from common.cli import exit_code_on_data_error
from common.inference import predict_by_slices
from common.io.nifti import load_nifti, save_nifti
from common.settings import CheckpointSettings
from projects.spin.data import normalise


def logits_function(module: torch.nn.Module, tta_flip: bool = False, bf16: bool = False) -> Callable:
    """Returns ``f(x [B, C, H, W]) -> logits [B, H, W]`` (float32) of a network or SegmentationModule.

    Args:
        module: maps normalised slices to ``[B, 1, H, W]`` logits, or to a dict with ``"logits"``.
        tta_flip: also segment the slices flipped along W and average the two logits.
        bf16: run under CPU bfloat16 autocast.
    """
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = module(x)
        out = out["logits"] if isinstance(out, dict) else out
        return out[:, 0].float()

    def predict(x: torch.Tensor) -> torch.Tensor:
        logits = run(x)
        if tta_flip:
            logits = 0.5 * (logits + run(x.flip(-1)).flip(-1))
        return logits

    return predict


@torch.no_grad()
def predict_volume(logits_fn: Callable, t1: np.ndarray, n_chunk: int = 5, batch_size: int = 32,
                   return_logits: bool = False) -> np.ndarray:
    """Returns the lesion mask uint8 ``[X, Y, Z]`` (logit >= 0) of a raw T1 ``[X, Y, Z]`` (axis 2 axial).

    Args:
        logits_fn: see :func:`logits_function`.
        t1: raw intensities (ATLAS scale), float ``[X, Y, Z]``.
        n_chunk: adjacent slices per input (neighbours outside the volume are the dataset mean).
        batch_size: slices per forward pass.
        return_logits: return the float32 logits instead of the mask.
    """
    logits = predict_by_slices(logits_fn, normalise(t1), axis=2, context=n_chunk // 2, batch_size=batch_size,
                               pad_value=0.0)
    logits = logits.numpy()
    return logits if return_logits else (logits >= 0).astype(np.uint8)


def _to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (data in RAS+ axis order, the orientation transform that undoes it)."""
    ornt = orientations.io_orientation(affine)
    ras = orientations.axcodes2ornt(("R", "A", "S"))
    forward = orientations.ornt_transform(ornt, ras)
    return orientations.apply_orientation(data, forward), orientations.ornt_transform(ras, ornt)


def segment_nifti(logits_fn: Callable, input_path: str | Path, output_path: str | Path, n_chunk: int = 5,
                  batch_size: int = 32) -> Path:
    """Segments one T1 NIfTI and writes the uint8 mask with the input's shape, affine and header fields.

    Raises:
        DataError: the input is unreadable, not 3-D, or has NaN/Inf voxels.
    """
    volume = load_nifti(input_path)
    ras, undo = _to_ras(volume.data, volume.affine)
    mask = predict_volume(logits_fn, np.ascontiguousarray(ras), n_chunk, batch_size)
    mask = np.ascontiguousarray(orientations.apply_orientation(mask, undo))
    return save_nifti(output_path, mask, volume.affine, header=volume.header, dtype=np.uint8)


class Inference(NamedTuple):
    """How a checkpoint segments a scan."""

    n_chunk: int  # adjacent slices per input (data.n_chunk of the run config)
    batch_size: int  # slices per forward pass (eval.batch_size)
    tta_flip: bool  # average with the left-right flipped slices (eval.tta_flip)
    precision: str  # "32" or "bf16" (eval.precision)


#: Inference field -> where the checkpoint's settings hold it (`eval.*`: conf/spin/eval.yaml unless stored).
SETTINGS = {"n_chunk": "data.n_chunk", "batch_size": "eval.batch_size", "tta_flip": "eval.tta_flip",
            "precision": "eval.precision"}
#: Inference field -> the predict flag that overrides the checkpoint's value.
FLAGS = {"batch_size": "--batch-size", "tta_flip": "--tta-flip", "precision": "--bf16"}


def inference_of(ckpt: str | Path, run_config: dict | None, overrides: Mapping[str, Any] | None = None,
                 flags: Mapping[str, str] | None = None) -> Inference:
    """Returns the inference settings of a checkpoint, each overridden (with a one-line note) when given.

    Args:
        ckpt: the checkpoint file (named in notes and errors).
        run_config: its run config.
        overrides: field -> given value (None or absent: not given).
        flags: field -> how the user writes it (default: predict's flags).

    Raises:
        DataError: the run config has no `data.n_chunk`.
    """
    settings = CheckpointSettings(ckpt, run_config, project="spin")
    overrides, flags = overrides or {}, FLAGS if flags is None else flags
    values = {field: settings.get(key, overrides.get(field), flags.get(field)) for field, key in SETTINGS.items()}
    return Inference(int(values["n_chunk"]), int(values["batch_size"]), bool(values["tta_flip"]),
                     str(values["precision"]))


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPiN lesion segmentation of a T1 NIfTI")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by projects/spin/train.py")
    parser.add_argument("--input", required=True, help="T1 NIfTI (.nii or .nii.gz), any orientation")
    parser.add_argument("--output", required=True, help="mask NIfTI to write (uint8, same grid and affine)")
    parser.add_argument("--tta-flip", action="store_true", default=None,
                        help="average with the W-flipped prediction (default: the checkpoint's eval.tta_flip)")
    parser.add_argument("--bf16", action="store_true", default=None,
                        help="bfloat16 autocast, faster on recent CPUs (default: the checkpoint's eval.precision)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass")
    args = parser.parse_args(argv)
    module, run_config = module_from_checkpoint(args.ckpt)
    run = inference_of(args.ckpt, run_config, {"batch_size": args.batch_size, "tta_flip": args.tta_flip,
                                               "precision": "bf16" if args.bf16 else None})
    out = segment_nifti(logits_function(module, run.tta_flip, run.precision == "bf16"), args.input, args.output,
                        run.n_chunk, run.batch_size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
