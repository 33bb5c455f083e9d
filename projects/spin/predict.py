"""Lesion mask of a T1 NIfTI in any orientation, written on the input's own grid and affine.

    python -m projects.spin.predict --ckpt outputs/spin/atlas_traintest/checkpoints/best.ckpt \
        --input scan_t1w.nii.gz --output scan_lesion.nii.gz [--tta-flip] [--bf16]

The scan is reoriented to RAS+ (a permutation/flip of the array, no resampling) so that axis 2 is axial, segmented
slice by slice in batches, and the mask is permuted back: the output has exactly the input's shape and affine.
The model expects ATLAS-like input: skull-stripped, MNI-registered, intensities on the ATLAS 0-100 scale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from nibabel import orientations

from common.checkpoint import module_from_checkpoint
from common.cli import exit_code_on_data_error
from common.inference import predict_by_slices
from common.io.nifti import load_nifti, save_nifti
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


def load_checkpoint_module(ckpt_path: str | Path) -> tuple[torch.nn.Module, int]:
    """Returns (the trained module in eval mode, its n_chunk) from a checkpoint written by ``train.py``.

    Raises:
        DataError: missing or unreadable checkpoint, or one without the run config.
    """
    module, config = module_from_checkpoint(ckpt_path)
    return module, int(config["data"]["n_chunk"])


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPiN lesion segmentation of a T1 NIfTI")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by projects/spin/train.py")
    parser.add_argument("--input", required=True, help="T1 NIfTI (.nii or .nii.gz), any orientation")
    parser.add_argument("--output", required=True, help="mask NIfTI to write (uint8, same grid and affine)")
    parser.add_argument("--tta-flip", action="store_true", help="average with the W-flipped prediction")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on recent CPUs)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    args = parser.parse_args(argv)
    module, n_chunk = load_checkpoint_module(args.ckpt)
    out = segment_nifti(logits_function(module, args.tta_flip, args.bf16), args.input, args.output, n_chunk,
                        args.batch_size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
