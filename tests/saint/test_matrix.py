"""Run matrix, second axis: every SAINT experiment runs `fast_dev_run` on the CPU in fp32 and in bf16 autocast.

Experiments are found in conf/saint/experiment/, so a new one joins the matrix by existing. Widths are shrunk;
the module, the data path (the MSD cache, or stage-1 views for the RFN stage) and the losses are the experiment's.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from common.model_card import compose_experiment, experiments
from projects.saint.model import SAINT

TINY = {"g0": 8, "n_rdb": 1, "n_layers": 2, "growth": 4, "gw_hidden": "[4,8,8,8]"}
TINY_RFN = {"g0": 8, "n_rdb": 1, "n_layers": 2, "growth": 4}
SHRINK = [*(f"model.net.{k}={v}" for k, v in TINY.items()), *(f"model.net.rfn.{k}={v}" for k, v in TINY_RFN.items())]


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage-1 checkpoint of the shrunk network, as the RFN experiments expect in `model.msr_ckpt`."""
    cfg = compose_experiment("saint", "msd_msr", SHRINK)
    torch.manual_seed(0)
    net_cfg = OmegaConf.to_container(cfg.model.net)  # plain containers: checkpoints load with weights_only
    net = SAINT(**{k: v for k, v in net_cfg.items() if k != "_target_"})
    path = tmp_path_factory.mktemp("saint_stage1") / "best.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "run_config": {"model": {"net": net_cfg, "stage": "msr"}}}, path)
    return path


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("experiment", experiments("saint"))
def test_fast_dev_run(experiment: str, precision: str, cache_dir: Path, stage1_checkpoint: Path, tmp_path: Path,
                      fast_dev_run) -> None:
    overrides = [f"data.cache_dir={cache_dir}", "data.batch_size=2", *SHRINK]
    if compose_experiment("saint", experiment).model.stage == "rfn":
        overrides += [f"model.msr_ckpt={stage1_checkpoint}", f"data.stage1_dir={tmp_path / 'stage1'}",
                      "data.patch=8"]
    metrics = fast_dev_run("saint", experiment, tmp_path / "run", overrides, precision)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    psnr = [v for k, v in metrics.items() if k.startswith("val/psnr")]
    assert psnr and all(0 < v < 100 for v in psnr), metrics
