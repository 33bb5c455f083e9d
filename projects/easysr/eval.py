"""Evaluate an EasySR checkpoint with the reference's rules (PSNR, slice SSIM in [0, 255], plus the spline baseline).

`python projects/easysr/eval.py ckpt_path=outputs/easysr/gan/checkpoints/best.ckpt [experiment=gan]`

The module is the checkpoint's own (its generator, scale and `model.eval_patch`), and the test volumes are made
thick along the checkpoint's `data.axis` by its `data.scale`: the eval config only says where the data is.
`eval.patch=[d,h,w]` overrides the sliding-window patch with a one-line note, as `--patch` does in `predict.py`.

Writes `<run dir>/eval_metrics.json` (`common.eval_report`): per test volume the PSNR and SSIM of
`metrics.score_case` (the rules validation logs), their means, the `protocol` (no paper: no published figure),
`spline` (the same scores of the cubic-spline baseline per volume) and `logged` (the test metrics as logged).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from common.checkpoint import read_checkpoint
from common.errors import DataError
from common.eval_report import write_eval_report
from common.run import entry, output_dir, resolve_ckpt_path, test_checkpoint
from common.runtime import choose_precision
from common.settings import CheckpointSettings, given_settings


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
        # the test loop's forward passes run at the machine's inference precision
        bf16 = choose_precision(cfg.get("inference_precision")) == "bf16"
        out.trainer.precision = "bf16-mixed" if bf16 else "32-true"
    return out


PROTOCOL = {"name": "EasySR reference rules: PSNR over all voxels with the HR range as peak; mean 2-D SSIM over "
                    "axis-0 slices, each with its own HR range (network scale [0, 255])",
            "paper": None}  # no paper and no published metrics


def evaluate_easysr(cfg: DictConfig) -> dict[str, Any]:
    """Tests the checkpoint with its own settings (see the module docstring); writes and returns the report."""
    cfg = with_checkpoint_settings(cfg)
    module, logged = test_checkpoint(cfg)
    scores = module.test_scores
    ours = {case: {k: s[k] for k in ("psnr", "ssim")} for case, s in scores.items()}
    spline = {case: {k: s[f"{k}_spline"] for k in ("psnr", "ssim")} for case, s in scores.items()}
    return write_eval_report(output_dir(cfg) / "eval_metrics.json", ours,
                             {**PROTOCOL, "scale": cfg.data.scale, "axis": cfg.data.axis}, spline=spline,
                             logged=logged, checkpoint=str(cfg.ckpt_path))


if __name__ == "__main__":
    entry("easysr", evaluate_easysr, config_name="eval")()
