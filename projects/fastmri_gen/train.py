"""Train a stylish-fastmri model: `python -m projects.fastmri_gen.train experiment=knee_x4 [model=generative]`."""

from __future__ import annotations

from common.run import entry, train

if __name__ == "__main__":
    entry("fastmri_gen", train)()
