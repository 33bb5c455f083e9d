"""Configs compose; demo and the paper experiment run fast_dev_run on the fixture; eval writes the protocols."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from common.run import CONF_ROOT, train
from projects.spin.eval import PAPER, evaluate_spin
from projects.spin.module import piecewise_constant_lr

TINY_SPIN = ["model.net.embedding_width=4", "model.net.encoder_widths=[8,8,8,8,8]",
             "model.net.decoder_widths=[8,8,8,8,8,8]", "model.net.downsampler_widths=[4,4]"]


def _compose(overrides: list[str], config: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "spin"), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _fixture_data(atlas_fixture: dict) -> list[str]:
    return ["data=atlas", f"data.cache_dir={atlas_fixture['cache']}", f"data.split={atlas_fixture['split']}",
            "data.val_fraction=0.2", "data.num_workers=0", "data.eval_batch_size=24", "logger=none",
            "callbacks=minimal"]


@pytest.mark.parametrize("experiment", ["atlas_traintest", "atlas_6fold", "unet_atlas_traintest", "demo", "demo_unet"])
def test_experiments_compose(experiment: str, tmp_path: Path) -> None:
    cfg = _compose([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert cfg.monitor.metric == "val/dice"
    if experiment == "atlas_traintest":
        assert cfg.trainer.max_epochs == 1600 and cfg.data.batch_size == 8
        assert cfg.model.optimizer.lr == 3e-4 and cfg.model.pos_weight == 1.5
        assert cfg.reference_params.net == 5_165_984
    if experiment in ("unet_atlas_traintest", "demo_unet"):
        assert cfg.model.net.in_ch == 1 and cfg.model.net._target_.endswith("UNet")


def test_demo_fit_then_eval_writes_both_protocols(tmp_path: Path) -> None:
    data = tmp_path / "synthetic"
    common = ["experiment=demo", f"data.root={data}", "data.n_train=5", "data.n_test=2", "data.shape=[32,40,24]",
              "data.samples_per_scan=1", "data.batch_size=4", "logger=none", *TINY_SPIN]
    cfg = _compose([*common, f"paths.output_dir={tmp_path}", "trainer.max_epochs=1",
                    "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1", "test_after_fit=false"])
    results = train(cfg)
    assert 0.0 <= results["val/dice"] <= 1.0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cfg = _compose([*common, f"paths.output_dir={tmp_path}", f"ckpt_path={ckpt}"], config="eval")
    out = evaluate_spin(cfg)
    saved = json.loads((tmp_path / "eval_spin.json").read_text())
    test_ids = json.loads((data / "split.json").read_text())["test"]
    assert saved["n_scans"] == 2 and set(saved["cases"]) == set(test_ids)
    assert (data / "raw" / test_ids[0][:5] / test_ids[0] / f"{test_ids[0]}_t1w_stx.nii.gz").is_file()
    assert all(0.0 <= v <= 1.0 for v in out["mean"].values())
    assert saved["protocol"]["paper"]["SPiN"]["scans"]["dice"] == PAPER["SPiN"]["scans"][0]
    assert saved["n_small_slices"] > 0


def test_learning_rate_schedule_and_persistent_adam() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam(params, lr=3e-4)
    schedule = piecewise_constant_lr(optimizer)
    lrs = {}
    for epoch in range(1600):
        lrs[epoch] = optimizer.param_groups[0]["lr"]
        params[0].grad = torch.ones(1)
        optimizer.step()
        schedule.step()
    assert lrs[0] == lrs[399] == pytest.approx(3e-4)
    assert lrs[400] == lrs[1399] == pytest.approx(1e-4)
    assert lrs[1400] == lrs[1599] == pytest.approx(5e-5)
    # One optimiser for the whole run: its moments accumulate over all 1600 steps.
    assert optimizer.state[params[0]]["step"] == 1600
