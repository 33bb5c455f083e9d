"""Train EasySR: `python -m projects.easysr.train experiment=gan` (see conf/easysr/)."""

from __future__ import annotations

from common.run import entry, train

if __name__ == "__main__":
    entry("easysr", train)()
