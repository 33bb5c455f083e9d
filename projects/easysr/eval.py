"""Evaluate an EasySR checkpoint with the reference's rules (PSNR, slice SSIM in [0, 255], plus the spline baseline).

`python projects/easysr/eval.py ckpt_path=outputs/easysr/gan/checkpoints/best.ckpt [experiment=gan]`

The module is the checkpoint's own (its generator, scale and `model.eval_patch`), and the test volumes are made
thick along the checkpoint's `data.axis` by its `data.scale`: the eval config only says where the data is.
`eval.patch=[d,h,w]` overrides the sliding-window patch with a one-line note, as `patch=` does in `predict.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from common.checkpoint import read_checkpoint  # noqa: E402
from common.errors import DataError  # noqa: E402
from common.run import entry, evaluate, resolve_ckpt_path  # noqa: E402
from common.settings import CheckpointSettings, given_settings  # noqa: E402


def with_checkpoint_settings(cfg: DictConfig) -> DictConfig:
    """Returns a copy of the eval config whose model is the checkpoint's and whose data axis and scale are its own.

    Raises:
        DataError: no checkpoint, or one without a run config.
    """
    ckpt = resolve_ckpt_path(cfg)
    if ckpt is None:
        raise DataError(cfg.get("ckpt_path"), "no checkpoint to evaluate")
    run_config = read_checkpoint(ckpt).get("run_config") or {}
    if "model" not in run_config:
        raise DataError(ckpt, "the checkpoint carries no run config (import plain weights with import_weights)")
    settings = CheckpointSettings(ckpt, run_config, project="easysr")
    given = given_settings(cfg.eval, "easysr")
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(out):
        out.ckpt_path = str(ckpt)
        out.model = {**run_config["model"], "eval_patch": settings.get("eval.patch", given.get("patch"),
                                                                       "eval.patch", None)}
        out.data.axis, out.data.scale = settings.stored("data.axis"), settings.stored("data.scale")
    return out


def evaluate_easysr(cfg: DictConfig) -> dict[str, float]:
    """Tests the checkpoint with its own settings (see the module docstring); returns the test metrics."""
    return evaluate(with_checkpoint_settings(cfg))


if __name__ == "__main__":
    entry("easysr", evaluate_easysr, config_name="eval")()
