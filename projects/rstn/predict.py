"""CT (NIfTI or DICOM series) in -> pancreas mask NIfTI out, on the input's grid with its affine (coarse-to-fine).

    python -m projects.rstn.predict -i ct.nii.gz -o mask.nii.gz --ckpt outputs/rstn/nih_pancreas_fd0
    python -m projects.rstn.predict -i CT_FOLDER -o MASK_FOLDER --ckpt X=.../X/checkpoints/last.ckpt --ckpt Y=...

`--ckpt` names a run folder holding `X/`, `Y/`, `Z/` (each plane's `checkpoints/last.ckpt`, the weights eval.py
tests), or one plane's checkpoint as `PLANE=PATH`, repeated (any subset of X, Y, Z). A folder in gives a folder
out: one mask per case, named like its input (a DICOM series folder `case/` gives `case.nii.gz`). The testing
protocol is the first plane checkpoint's (its `model.margin`, conf/rstn/eval.yaml's rounds); `--margin`,
`--max-rounds`, ... override it with a note. The former `--checkpoint` is `--ckpt`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.nifti import save_nifti
from common.memory import parse_memory
from common.predict_cli import (
    Case,
    list_cases,
    load_ct,
    parse_predict_args,
    predict_cases,
    predict_parser,
    rename_flag,
)
from projects.rstn.data import LAYOUT, window
from projects.rstn.eval import Protocol, load_plane_model, protocol_of
from projects.rstn.inference import coarse_to_fine, predict_plane
from projects.rstn.model import RSTN


def predict_volume(hu: np.ndarray, affine: np.ndarray, models: dict[str, RSTN], protocol: Protocol,
                   max_memory: int | None = None) -> np.ndarray:
    """Returns the uint8 mask [X, Y, Z] of a HU volume indexed like its NIfTI file (eval's coarse2fine stage).

    Args:
        hu: CT in Hounsfield units, NIfTI array order [X, Y, Z].
        affine: its [4, 4] affine (only used to keep the layout round trip exact).
        models: plane -> RSTN (any subset of X, Y, Z).
        protocol: the coarse-to-fine settings (see `protocol_of`).
        max_memory: peak resident bytes of the process: fewer coarse slices per pass when needed (None: no budget).
    """
    image, cache_affine, axes = LAYOUT.to_cache(window(hu).astype(np.float32), affine)
    with torch.no_grad():
        coarse = {p: predict_plane(image, p, m, protocol.batch_size, protocol.precision, max_memory)
                  for p, m in models.items()}
        result = coarse_to_fine(image, models, coarse, protocol.max_rounds, protocol.stop_inter_dsc,
                                protocol.threshold, protocol.margin, protocol.post_ratio,
                                precision=protocol.precision, batch_size=protocol.fine_batch_size)
    return axes.to_file(result.mask, cache_affine)[0]


#: Protocol field -> command-line flag that overrides the checkpoint's value.
FLAGS = {"margin": "--margin", "max_rounds": "--max-rounds", "stop_inter_dsc": "--stop-inter-dsc",
         "threshold": "--threshold", "post_ratio": "--post-ratio", "fine_batch_size": "--fine-batch-size"}
PLANES = ("X", "Y", "Z")
RUN_CHECKPOINT = "checkpoints/last.ckpt"  # in <run>/<plane>/: the weights eval.py tests


def plane_checkpoints(items: Sequence[str]) -> dict[str, Path]:
    """Returns plane -> checkpoint of `--ckpt` values: one run folder (its X/, Y/, Z/), or PLANE=PATH items.

    Raises:
        DataError: a run folder without any plane checkpoint, or values that are neither form.
    """
    if len(items) == 1 and "=" not in items[0]:
        run = Path(items[0])
        if not run.is_dir():
            raise DataError(run, "--ckpt takes a run folder holding X/, Y/, Z/ or PLANE=PATH; this is no folder")
        found = {p: run / p / RUN_CHECKPOINT for p in PLANES if (run / p / RUN_CHECKPOINT).is_file()}
        if not found:
            raise DataError(run, f"no plane checkpoint <plane>/{RUN_CHECKPOINT} for any plane of {', '.join(PLANES)}")
        return found
    pairs = dict(item.split("=", 1) for item in items if "=" in item)
    if not pairs or set(pairs) - set(PLANES) or len(pairs) != len(items):
        raise DataError(None, f"--ckpt takes a run folder or PLANE=PATH with PLANE in X, Y, Z; got {list(items)}")
    return {plane: Path(path) for plane, path in pairs.items()}


def predict_case(case: Case, models: dict[str, RSTN], protocol: Protocol, max_memory: int | None = None) -> Path:
    """Writes the uint8 mask of one case (NIfTI file or DICOM series) to `case.target`; returns it."""
    volume = load_ct(case)
    mask = predict_volume(volume.data, volume.affine, models, protocol, max_memory)
    return save_nifti(case.target, mask, volume.affine, header=volume.header, dtype=np.uint8)


@exit_code_on_data_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 on bad input)."""
    parser = predict_parser(__doc__.split("\n", 1)[0], "CT in HU: NIfTI or DICOM series folder",
                            "mask NIfTI to write (uint8, the input's grid and affine)",
                            "run folder holding X/, Y/, Z/, or PLANE=PATH (repeat per plane)", ckpt_action="append")
    rename_flag(parser, "--checkpoint", "--ckpt")
    overrides = "overrides the checkpoint's eval.{} (conf/rstn/eval.yaml; margin: its model.margin)"
    parser.add_argument("--max-rounds", type=int, default=None, help=overrides.format("max_rounds"))
    parser.add_argument("--stop-inter-dsc", type=float, default=None, help=overrides.format("stop_inter_dsc"))
    parser.add_argument("--fine-batch-size", type=int, default=None, help=overrides.format("fine_batch_size"))
    parser.add_argument("--margin", type=int, default=None, help="fine-stage crop margin (pixels); "
                        + overrides.format("margin"))
    parser.add_argument("--threshold", type=float, default=None, help=overrides.format("threshold"))
    parser.add_argument("--post-ratio", type=float, default=None, help=overrides.format("post_ratio"))
    parser.add_argument("--max-memory", default=None,
                        help="peak memory, e.g. 4G: fewer coarse slices per pass when needed (default: no budget)")
    args = parse_predict_args(parser, argv)
    try:
        max_memory = parse_memory(args.max_memory)
    except ValueError as err:
        raise DataError(None, f"--max-memory: {err}") from None
    cases = list_cases(args.input, args.output, dicom=True)
    checkpoints = plane_checkpoints(args.ckpt)
    models = {p: load_plane_model(path).to(args.device) for p, path in checkpoints.items()}
    protocol = protocol_of(next(iter(checkpoints.values())), {name: getattr(args, name) for name in FLAGS}, FLAGS,
                           precision=args.precision)
    predict_cases(cases, lambda case: predict_case(case, models, protocol, max_memory), "RSTN")
    return 0


if __name__ == "__main__":
    sys.exit(main())
