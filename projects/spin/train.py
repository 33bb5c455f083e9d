"""Train SPiN (or the U-Net baseline): `python -m projects.spin.train experiment=atlas_traintest`."""

from __future__ import annotations

from common.run import entry, train

if __name__ == "__main__":
    entry("spin", train)()
