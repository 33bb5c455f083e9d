"""Evaluate an EasySR checkpoint with the reference's rules (PSNR, slice SSIM in [0, 255], plus the spline baseline).

`python projects/easysr/eval.py ckpt_path=outputs/easysr/gan/checkpoints/best.ckpt [experiment=gan]`
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.run import entry, evaluate  # noqa: E402

if __name__ == "__main__":
    entry("easysr", evaluate, config_name="eval")()
