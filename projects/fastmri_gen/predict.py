"""Reconstruct fastMRI single-coil volumes with a trained checkpoint, in the official reconstruction layout.

    python -m projects.fastmri_gen.predict --ckpt CKPT --input DATA/singlecoil_test --out OUT [--acceleration 4]

`--input` is a split folder (or one `.h5` file). In the test split each file's own `mask` is used; in the
other splits the k-space is undersampled with the per-file seeded mask of `--acceleration`. Each volume is
written to `OUT/<fname>.h5` with dataset `reconstruction` float32 `[S, 320, 320]` (raw magnitude units).
The network and its settings come from the configuration stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common.cli import exit_code_on_data_error
from common.io import write_reconstructions
from projects.fastmri_gen.data import FastMRIDataModule
from projects.fastmri_gen.eval import load_checkpoint_module, reconstruct_split


def predict(ckpt: str | Path, input_path: str | Path, out_dir: str | Path, acceleration: int = 4,
            batch_size: int = 8) -> list[Path]:
    """Reconstruct every volume of `input_path` (a folder or one file); returns the written files."""
    module, run_config = load_checkpoint_module(ckpt)
    input_path = Path(input_path)
    with tempfile.TemporaryDirectory() as scratch:
        if input_path.is_file():
            folder = Path(scratch) / input_path.parent.name
            folder.mkdir()
            (folder / input_path.name).symlink_to(input_path.resolve())
        else:
            folder = input_path
        fidelity = run_config.get("fidelity", {})
        datamodule = FastMRIDataModule(str(folder.parent), test_split=folder.name, val_accelerations=[acceleration],
                                       val_batch_size=batch_size, num_workers=0, fidelity=fidelity)
        recons, _ = reconstruct_split(module, datamodule)
    return write_reconstructions(out_dir, recons)


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--acceleration", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    written = predict(args.ckpt, args.input, args.out, args.acceleration, args.batch_size)
    print(f"{len(written)} reconstruction(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
