"""Reconstruct fastMRI single-coil volumes with a trained checkpoint, in the official reconstruction layout.

    python -m projects.fastmri_gen.predict --ckpt CKPT -i DATA/singlecoil_test -o OUT [--acceleration 8]
    python -m projects.fastmri_gen.predict --ckpt CKPT -i file1000001.h5 -o recon1000001.h5

`-i` is a split folder or one `.h5` file: a folder gives `OUT/<fname>.h5` per volume, a file the one file `-o`.
In the test split each file's own `mask` is used; in the other splits the k-space is undersampled with the
per-file seeded mask of `--acceleration` (default: the checkpoint's validation acceleration). Each output holds
dataset `reconstruction` float32 `[S, 320, 320]` (raw magnitude units). The network and its settings (fidelity
switches, mask type, centre fractions, mask seed, acceleration) come from the configuration stored in the
checkpoint, as in `eval.py`; `--acceleration` overrides it with a note. The former `--out` is `--output`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.evaluate import HDF5_SUFFIXES
from common.io import write_reconstructions
from common.predict_cli import (
    Case,
    list_cases,
    parse_predict_args,
    predict_cases,
    predict_parser,
    rename_flag,
)
from common.settings import CheckpointSettings
from projects.fastmri_gen.data import FastMRIDataModule
from projects.fastmri_gen.eval import load_checkpoint_module, reconstruct_split

#: Data settings the slice transform depends on; each is read from the checkpoint's `data` config.
MASK_SETTINGS = ("mask_type", "center_fractions", "seed")


def acceleration_of(settings: CheckpointSettings, override: int | None = None) -> int:
    """Returns the acceleration to undersample with: the checkpoint's first validation (else training) one."""
    key = "data.val_accelerations" if settings.stored("data.val_accelerations", None) else "data.accelerations"
    return int(settings.choose(f"{key}[0]", settings.stored(key)[0], override, "--acceleration"))


def reconstruct_file(module: Any, settings: CheckpointSettings, path: Path, acceleration: int | None = None,
                     batch_size: int = 8, device: str = "cpu", precision: str = "32") -> np.ndarray:
    """Returns the reconstruction float32 `[S, h, w]` of one fastMRI file with the checkpoint's data settings.

    Raises:
        DataError: an unreadable file (naming it as given).
    """
    masks = {key: value for key in MASK_SETTINGS if (value := settings.stored(f"data.{key}", None)) is not None}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / path.parent.name
        folder.mkdir()
        (folder / path.name).symlink_to(path.resolve())
        datamodule = FastMRIDataModule(str(folder.parent), test_split=folder.name,
                                       val_accelerations=[acceleration_of(settings, acceleration)],
                                       val_batch_size=batch_size, num_workers=0,
                                       fidelity=settings.stored("data.fidelity", {}), **masks)
        try:
            recons, _ = reconstruct_split(module, datamodule, device, precision)
        except DataError as err:  # a file of the scratch folder is the user's own file
            if err.path is None or not err.path.startswith(scratch):
                raise
            raise DataError(path, err.problem) from err
    return next(iter(recons.values()))


def predict(ckpt: str | Path, input_path: str | Path, output: str | Path, acceleration: int | None = None,
            batch_size: int = 8, device: str = "cpu", precision: str = "32") -> list[Path]:
    """Reconstructs one file (to the file `output`) or every `.h5` file of a folder (into the folder `output`).

    The mask type, centre fractions, mask seed, fidelity switches and (unless `acceleration` is given) the
    acceleration are the checkpoint's own, as `eval.py` uses them.

    Returns:
        The written files.

    Raises:
        DataError: unreadable checkpoint or input (naming the file as given), or an unwritable output.
    """
    cases = list_cases(input_path, output, HDF5_SUFFIXES)
    module, run_config = load_checkpoint_module(ckpt)
    module = module.to(device)
    settings = CheckpointSettings(ckpt, run_config)
    acceleration_of(settings, acceleration)  # the override note once, not once per file

    def one(case: Case) -> Path:
        volume = reconstruct_file(module, settings, case.source, acceleration, batch_size, device, precision)
        return write_reconstructions(case.target.parent, {case.target.name: volume})[0]

    return predict_cases(cases, one, "fastmri_gen")


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = predict_parser(__doc__.splitlines()[0], "fastMRI single-coil .h5 file",
                            "reconstruction .h5 to write", "checkpoint written by projects/fastmri_gen/train.py")
    rename_flag(parser, "--out", "--output")
    parser.add_argument("--acceleration", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parse_predict_args(parser, argv)
    predict(args.ckpt, args.input, args.output, args.acceleration, args.batch_size, args.device, args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
