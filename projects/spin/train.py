"""Train SPiN (or the U-Net baseline): `python projects/spin/train.py experiment=atlas_traintest`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.run import entry, train  # noqa: E402

if __name__ == "__main__":
    entry("spin", train)()
