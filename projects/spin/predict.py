"""Lesion mask of a T1 NIfTI in any orientation, written on the input's own grid and affine.

    python -m projects.spin.predict --ckpt outputs/spin/atlas_traintest/checkpoints/best.ckpt \
        -i scan_t1w.nii.gz -o scan_lesion.nii.gz [--tta-flip] [--device auto] [--precision auto]
    python -m projects.spin.predict --ckpt CKPT -i T1_FOLDER -o MASK_FOLDER     # one mask per scan, same names

The scan is reoriented to RAS+ (a permutation/flip of the array, no resampling) so that axis 2 is axial, segmented
slice by slice in batches, and the mask is permuted back: the output has exactly the input's shape and affine.
The model expects ATLAS-like input: skull-stripped, MNI-registered, intensities on the ATLAS 0-100 scale.

The network and its settings are the checkpoint's own, as `eval.py` runs it: the slice context `data.n_chunk`
of its run config, the flip averaging and batch of `eval:` in conf/spin/eval.yaml. `--tta-flip` and
`--batch-size` override them with a one-line note. `--precision` (auto: bf16 where the device has it) is the
machine's choice, as `inference_precision` is eval's; the former `--bf16` is `--precision bf16`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from common.checkpoint import module_from_checkpoint
from common.cli import exit_code_on_data_error
from common.compiled import maybe_compiled
from common.errors import DataError
from common.fold import fold_network
from common.inference import predict_by_slices
from common.io.nifti import load_nifti, save_nifti
from common.memory import parse_memory
from common.predict_cli import list_cases, parse_predict_args, predict_cases, predict_parser, rename_flag
from common.runtime import autocast
from common.settings import CheckpointSettings
from projects.spin.data import RAS, normalise


def logits_function(module: torch.nn.Module, tta_flip: bool = False, bf16: bool = False,
                    device: str = "cpu") -> Callable:
    """Returns ``f(x [B, C, H, W]) -> logits [B, H, W]`` (float32) of a network or SegmentationModule.

    Args:
        module: maps normalised slices to ``[B, 1, H, W]`` logits, or to a dict with ``"logits"``.
        tta_flip: also segment the slices flipped along W and average the two logits.
        bf16: run under bfloat16 autocast.
        device: where the module runs (autocast's device type).
    """
    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast("bf16" if bf16 else "32", device):
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
                   return_logits: bool = False, device: str = "cpu", max_memory: int | None = None) -> np.ndarray:
    """Returns the lesion mask uint8 ``[X, Y, Z]`` (logit >= 0) of a raw T1 ``[X, Y, Z]`` (axis 2 axial).

    Args:
        logits_fn: see :func:`logits_function`.
        t1: raw intensities (ATLAS scale), float ``[X, Y, Z]``.
        n_chunk: adjacent slices per input (neighbours outside the volume are the dataset mean).
        batch_size: slices per forward pass.
        return_logits: return the float32 logits instead of the mask.
        device: where `logits_fn` runs.
        max_memory: peak resident bytes for the process; the batch is then at most what fits
            (`common.inference.predict_by_slices`).
    """
    logits = predict_by_slices(logits_fn, normalise(t1), axis=2, context=n_chunk // 2, batch_size=batch_size,
                               pad_value=0.0, device=device, max_memory=max_memory)
    logits = logits.cpu().numpy()
    return logits if return_logits else (logits >= 0).astype(np.uint8)


def segment_nifti(logits_fn: Callable, input_path: str | Path, output_path: str | Path, n_chunk: int = 5,
                  batch_size: int = 32, device: str = "cpu", max_memory: int | None = None) -> Path:
    """Segments one T1 NIfTI and writes the uint8 mask with the input's shape, affine and header fields.

    Raises:
        DataError: the input is unreadable, not 3-D, or has NaN/Inf voxels.
    """
    volume = load_nifti(input_path)
    ras, ras_affine, axes = RAS.to_cache(volume.data, volume.affine)
    mask = predict_volume(logits_fn, ras, n_chunk, batch_size, device=device, max_memory=max_memory)
    mask, _ = axes.to_file(mask, ras_affine)
    return save_nifti(output_path, mask, volume.affine, header=volume.header, dtype=np.uint8)


class Inference(NamedTuple):
    """How a checkpoint segments a scan."""

    n_chunk: int  # adjacent slices per input (data.n_chunk of the run config)
    batch_size: int  # slices per forward pass (eval.batch_size)
    tta_flip: bool  # average with the left-right flipped slices (eval.tta_flip)
    max_memory: int | None  # peak bytes of a whole-scan segmentation (eval.max_memory; None: batch_size only)


#: Inference field -> where the checkpoint's settings hold it (`eval.*`: conf/spin/eval.yaml unless stored).
SETTINGS = {"n_chunk": "data.n_chunk", "batch_size": "eval.batch_size", "tta_flip": "eval.tta_flip",
            "max_memory": "eval.max_memory"}
#: Settings a checkpoint may lack (written before they existed): their value then.
OPTIONAL = {"max_memory": {"default": None}}
#: Inference field -> the predict flag that overrides the checkpoint's value.
FLAGS = {"batch_size": "--batch-size", "tta_flip": "--tta-flip", "max_memory": "--max-memory"}


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
    values = {field: settings.get(key, overrides.get(field), flags.get(field), **OPTIONAL.get(field, {}))
              for field, key in SETTINGS.items()}
    try:
        max_memory = parse_memory(values["max_memory"])
    except ValueError as err:
        raise DataError(None, f"--max-memory / eval.max_memory: {err}") from None
    return Inference(int(values["n_chunk"]), int(values["batch_size"]), bool(values["tta_flip"]), max_memory)


def prepare_network(module: torch.nn.Module, n_chunk: int) -> torch.nn.Module:
    """Returns `module` in eval mode, channels_last, with the BatchNorms of its `module.net` folded into the convolutions.

    The folded network gives the same logits to float rounding (`common.fold` checks it on an example) and reads
    each activation once less: a SPiN scan took 31% less CPU time with it (benchmarks/results/speed_levers.md).

    Args:
        module: a SegmentationModule (or any wrapper whose `net` maps ``[B, n_chunk, H, W]`` to logits).
        n_chunk: the network's input channels (adjacent slices).
    """
    if isinstance(getattr(module, "net", None), torch.nn.Module):
        example = torch.randn(1, n_chunk, 64, 64, generator=torch.Generator().manual_seed(0))
        fold_network(module.eval(), example)
    # channels_last weights make every convolution run (and return) channels_last: a whole scan of the folded
    # paper-size network took 19.5 s instead of 26.7 s on 2 cores (benchmarks/results/spin.json, 2026-12-07)
    return module.eval().to(memory_format=torch.channels_last)


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = predict_parser("SPiN lesion segmentation of T1 NIfTI scans", "T1 NIfTI (.nii or .nii.gz), any orientation",
                            "mask NIfTI to write (uint8, the input's grid and affine)",
                            "checkpoint written by projects/spin/train.py")
    parser.add_argument("--tta-flip", action="store_true", default=None,
                        help="average with the W-flipped prediction (default: the checkpoint's eval.tta_flip)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (at most)")
    parser.add_argument("--max-memory", default=None,
                        help="peak memory, e.g. 1.7G: fewer slices per pass (default: the checkpoint's eval.max_memory)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the network once (torch.compile, 40-100 s on a CPU): pays off on many scans")
    rename_flag(parser, "--bf16", "--precision bf16", value="bf16")
    args = parse_predict_args(parser, argv)
    cases = list_cases(args.input, args.output)
    module, run_config = module_from_checkpoint(args.ckpt)
    run = inference_of(args.ckpt, run_config, {"batch_size": args.batch_size, "tta_flip": args.tta_flip,
                                               "max_memory": args.max_memory})
    module = prepare_network(module, run.n_chunk).to(args.device)
    logits_fn = maybe_compiled(logits_function(module, run.tta_flip, args.precision == "bf16", args.device),
                               args.compile)
    predict_cases(cases, lambda case: segment_nifti(logits_fn, case.source, case.target, run.n_chunk, run.batch_size,
                                                    args.device, run.max_memory), "SPiN")
    return 0


if __name__ == "__main__":
    sys.exit(main())
