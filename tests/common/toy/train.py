"""Entry point of the toy project (tests only): the same shape as projects/<p>/train.py.

Run as a script, its own folder is first on `sys.path`, so the toy module of the config's `_target_` imports.
"""

from __future__ import annotations

from pathlib import Path

import hydra

from common.run import cli, train

HERE = Path(__file__).resolve().parent


@hydra.main(config_path=str(HERE / "toyconf"), config_name="train", version_base="1.3")
def main(cfg):
    return cli(train, cfg)


if __name__ == "__main__":
    main()
