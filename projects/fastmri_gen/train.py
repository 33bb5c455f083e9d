"""Train a stylish-fastmri model: `python projects/fastmri_gen/train.py experiment=knee_x4 [model=generative]`."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.run import entry, train  # noqa: E402

if __name__ == "__main__":
    entry("fastmri_gen", train)()
