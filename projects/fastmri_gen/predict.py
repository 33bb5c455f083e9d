"""Reconstruct fastMRI single-coil volumes with a trained checkpoint, in the official reconstruction layout.

    python -m projects.fastmri_gen.predict --ckpt CKPT --input DATA/singlecoil_test --out OUT [--acceleration 8]

`--input` is a split folder (or one `.h5` file). In the test split each file's own `mask` is used; in the
other splits the k-space is undersampled with the per-file seeded mask of `--acceleration` (default: the
checkpoint's validation acceleration). Each volume is
written to `OUT/<fname>.h5` with dataset `reconstruction` float32 `[S, 320, 320]` (raw magnitude units).
The network and its settings (fidelity switches, mask type, centre fractions, mask seed, acceleration) come
from the configuration stored in the checkpoint, as in `eval.py`; `--acceleration` overrides it with a note.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io import write_reconstructions
from common.settings import CheckpointSettings
from projects.fastmri_gen.data import FastMRIDataModule
from projects.fastmri_gen.eval import load_checkpoint_module, reconstruct_split

#: Data settings the slice transform depends on; each is read from the checkpoint's `data` config.
MASK_SETTINGS = ("mask_type", "center_fractions", "seed")


def acceleration_of(settings: CheckpointSettings, override: int | None = None) -> int:
    """Returns the acceleration to undersample with: the checkpoint's first validation (else training) one."""
    key = "data.val_accelerations" if settings.stored("data.val_accelerations", None) else "data.accelerations"
    return int(settings.choose(f"{key}[0]", settings.stored(key)[0], override, "--acceleration"))


def predict(ckpt: str | Path, input_path: str | Path, out_dir: str | Path, acceleration: int | None = None,
            batch_size: int = 8) -> list[Path]:
    """Reconstruct every volume of `input_path` (a folder or one file); returns the written files.

    The mask type, centre fractions, mask seed, fidelity switches and (unless `acceleration` is given) the
    acceleration are the checkpoint's own, as `eval.py` uses them.

    Raises:
        DataError: unreadable checkpoint or input (naming the file as given), or an unwritable `out_dir`.
    """
    module, run_config = load_checkpoint_module(ckpt)
    settings = CheckpointSettings(ckpt, run_config)
    masks = {key: value for key in MASK_SETTINGS if (value := settings.stored(f"data.{key}", None)) is not None}
    input_path = Path(input_path)
    with tempfile.TemporaryDirectory() as scratch:
        if input_path.is_file():
            folder = Path(scratch) / input_path.parent.name
            folder.mkdir()
            (folder / input_path.name).symlink_to(input_path.resolve())
        else:
            folder = input_path
        datamodule = FastMRIDataModule(str(folder.parent), test_split=folder.name,
                                       val_accelerations=[acceleration_of(settings, acceleration)],
                                       val_batch_size=batch_size, num_workers=0,
                                       fidelity=settings.stored("data.fidelity", {}), **masks)
        try:
            recons, _ = reconstruct_split(module, datamodule)
        except DataError as err:  # a file of the scratch folder is the user's own file
            if err.path is None or not err.path.startswith(scratch):
                raise
            raise DataError(input_path, err.problem) from err
    return write_reconstructions(out_dir, recons)


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--acceleration", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    written = predict(args.ckpt, args.input, args.out, args.acceleration, args.batch_size)
    print(f"{len(written)} reconstruction(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
