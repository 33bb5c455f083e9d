"""Evaluate an EasySR checkpoint with the reference's rules (PSNR, slice SSIM in [0, 255], plus the spline baseline).

`python projects/easysr/eval.py ckpt_path=outputs/easysr/gan/checkpoints/best.ckpt [experiment=gan]`
"""

from __future__ import annotations

from common.run import entry, evaluate

if __name__ == "__main__":
    entry("easysr", evaluate, config_name="eval")()
