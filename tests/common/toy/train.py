"""Entry point of the toy project (tests only): the same shape as projects/<p>/train.py."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common.run import cli, train  # noqa: E402


@hydra.main(config_path=str(HERE / "toyconf"), config_name="train", version_base="1.3")
def main(cfg):
    return cli(train, cfg)


if __name__ == "__main__":
    main()
