"""Configs compose; the demo and paper experiments run one step; eval matches the official scoring."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from common.run import CONF_ROOT, REPO_ROOT, train
from projects.fastmri_gen.eval import evaluate

EXPERIMENTS = ["knee_x4", "knee_x8", "knee_x16", "knee_x32", "knee_mixed", "knee_reference", "demo"]


def compose_cfg(overrides: list[str], name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "fastmri_gen"), version_base="1.3"):
        return compose(name, overrides=overrides)


def tiny(root, out, *extra: str) -> list[str]:
    return [f"data.data_dir={root}", f"paths.output_dir={out}", "data.cache_dir=null", "data.num_workers=0",
            "data.batch_size=2", "data.val_batch_size=3", "logger=none", "callbacks=minimal", *extra]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "paths.output_dir=/tmp/unused"])
    assert cfg.experiment_name == experiment
    reference = experiment == "knee_reference"
    assert all(bool(v) == reference for v in cfg.fidelity.values())
    accelerations = list(cfg.data.accelerations)
    if experiment.startswith("knee_x"):
        assert accelerations == [int(experiment[6:])]
    if experiment in ("knee_mixed", "knee_reference"):
        assert accelerations == [4, 8, 16, 32]
    if reference:
        assert cfg.data.sample_rate == 0.2 and cfg.trainer.max_epochs == 9


@pytest.mark.parametrize("model", ["baseline", "generative"])
def test_reference_params_match_the_reference_build(model):
    cfg = compose_cfg(["experiment=knee_reference", f"model={model}", "paths.output_dir=/tmp/unused"])
    module = instantiate(cfg.model, _recursive_=False)
    live = {name: sum(p.numel() for p in getattr(module, name).parameters()) for name in cfg.reference_params}
    assert live == dict(cfg.reference_params)
    if model == "generative":
        assert not any(p.requires_grad for p in module.proxy.parameters())  # the texture proxy stays frozen


def test_demo_fast_dev_run(fastmri_root, tmp_path):
    cfg = compose_cfg(["experiment=demo", "debug=fdr", *tiny(fastmri_root, tmp_path)])
    results = train(cfg)
    assert math.isfinite(results["train/loss"]) and 0 < results["val/ssim"] <= 1


@pytest.mark.parametrize("experiment,model", [("knee_x4", "generative_small"), ("knee_reference", "generative_small"),
                                              ("knee_x8", "unet_small")])
def test_paper_experiments_fast_dev_run(fastmri_root, tmp_path, experiment, model):
    cfg = compose_cfg([f"experiment={experiment}", f"model={model}", "debug=fdr", "data.sample_rate=1.0",
                       "data.val_sample_rate=1.0", "model.loss.r1=1.0", *tiny(fastmri_root, tmp_path)])
    results = train(cfg)
    assert math.isfinite(results["train/loss"]) and math.isfinite(results["val/psnr"])
    if model.startswith("generative"):
        assert math.isfinite(results["train/kl"]) and math.isfinite(results["train/proxy"])


def test_eval_writes_fastmri_layout_and_matches_official_and_module_metrics(fastmri_root, tmp_path):
    cfg = compose_cfg(["experiment=demo", "model=zero_filled", "eval.accelerations=[4]",
                       *tiny(fastmri_root, tmp_path)], name="eval")
    results = evaluate(cfg)["x4"]
    out = tmp_path / "reconstructions" / "x4"
    assert sorted(p.name for p in out.glob("*.h5")) == sorted(p.name for p in (fastmri_root / "singlecoil_val").glob("*.h5"))
    official = subprocess.run([sys.executable, "-m", "common.evaluate", "recon", "--pred", str(out), "--ref",
                               str(fastmri_root / "singlecoil_val"), "--json"], cwd=REPO_ROOT, check=True,
                              capture_output=True, text=True)
    official = json.loads(official.stdout)
    for case, scores in results["cases"].items():
        for key, value in scores.items():
            assert official["cases"][case][key] == pytest.approx(value, rel=1e-9, abs=1e-12)
    # the DDP-safe volume metric of the LightningModule gives the same numbers
    module = instantiate(cfg.model, _recursive_=False)
    datamodule = instantiate(cfg.data, _recursive_=False, val_accelerations=[4])
    tested = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(module, datamodule=datamodule)
    for key in ("nmse", "psnr", "ssim"):
        assert tested[0][f"test/{key}"] == pytest.approx(results["mean"][key], rel=1e-5)
        assert tested[0][f"test/x4/{key}"] == pytest.approx(results["mean"][key], rel=1e-5)


def test_short_training_checkpoint_then_predict(fastmri_root, tmp_path):
    from common.errors import DataError
    from common.io import read_reconstruction
    from projects.fastmri_gen.predict import predict

    cfg = compose_cfg(["experiment=demo", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                       "+trainer.limit_val_batches=1", "test_after_fit=false", "model.loss.adv=0",
                       *tiny(fastmri_root, tmp_path)])
    train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    # eval rebuilds the model from the checkpoint's stored config (no discriminator here) without the override
    scored = evaluate(compose_cfg(["experiment=demo", f"ckpt_path={ckpt}", "eval.accelerations=[8]",
                                   *tiny(fastmri_root, tmp_path / "eval")], name="eval"))
    assert len(scored["x8"]["cases"]) == 3 and math.isfinite(scored["x8"]["mean"]["psnr"])
    written = predict(ckpt, fastmri_root / "singlecoil_test", tmp_path / "pred")
    assert [p.name for p in written] == ["file1200001.h5"]
    assert read_reconstruction(written[0]).shape == (2, 32, 32)
    one = predict(ckpt, fastmri_root / "singlecoil_val" / "file1100001.h5", tmp_path / "one", acceleration=8)
    assert read_reconstruction(one[0]).shape == (3, 32, 32)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.ckpt"):
        predict(tmp_path / "bad.ckpt", fastmri_root / "singlecoil_test", tmp_path / "x")
