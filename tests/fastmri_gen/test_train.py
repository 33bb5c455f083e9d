"""Configs compose; the demo and paper experiments run one step; eval matches the official scoring."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from common.checkpoint import instantiate_model
from common.run import CONF_ROOT, REPO_ROOT, train
from projects.fastmri_gen.eval import evaluate

EXPERIMENTS = ["knee_x4", "knee_x8", "knee_x16", "knee_x32", "knee_mixed", "knee_reference", "demo",
               "knee_generative_x4", "knee_reference_generative", "knee_unet_x4"]


def compose_cfg(overrides: list[str], name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "fastmri_gen"), version_base="1.3"):
        return compose(name, overrides=overrides)


def net_of(model: str, fidelity: str, *net_overrides: str):
    """Return the network of `model=<model> fidelity=<fidelity>` built from the composed config (with `key=value`
    overrides of `model.net`)."""
    cfg = compose_cfg([f"model={model}", f"fidelity={fidelity}", "paths.output_dir=/tmp/unused",
                       *(f"model.net.{override}" for override in net_overrides)])
    return instantiate(cfg.model.net)


def tiny(root, out, *extra: str) -> list[str]:
    return [f"data.data_dir={root}", f"paths.output_dir={out}", "data.cache_dir=null", "data.num_workers=0",
            "data.batch_size=2", "data.val_batch_size=3", "logger=none", "callbacks=minimal", *extra]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "paths.output_dir=/tmp/unused"])
    assert cfg.experiment_name == experiment
    reference = experiment.startswith("knee_reference")
    switches = {**cfg.data.fidelity, **cfg.model.fidelity}
    assert len(switches) == 8 and all(bool(v) == reference for v in switches.values())
    if "Stylish" in cfg.model.net._target_:  # the network's side: its resolved arguments
        assert cfg.model.net.data_consistency == ("reference" if reference else "complex")
        assert cfg.model.net.spectral_norm == reference and cfg.model.net.threshold_init == float(reference)
    accelerations = list(cfg.data.accelerations)
    if "_x" in experiment:
        assert accelerations == [int(experiment.rpartition("_x")[2])]
    if experiment in ("knee_mixed", "knee_reference", "knee_reference_generative"):
        assert accelerations == [4, 8, 16, 32]
    if reference:
        assert cfg.data.sample_rate == 0.2 and cfg.trainer.max_epochs == 9


@pytest.mark.parametrize("model", ["baseline", "generative"])
def test_reference_params_match_the_reference_build(model):
    cfg = compose_cfg(["experiment=knee_reference", f"model={model}", "paths.output_dir=/tmp/unused"])
    module = instantiate_model(cfg.model)
    live = {name: sum(p.numel() for p in getattr(module, name).parameters()) for name in cfg.reference_params}
    assert live == dict(cfg.reference_params)
    if model == "generative":
        assert not any(p.requires_grad for p in module.proxy.parameters())  # the texture proxy stays frozen


@pytest.mark.parametrize("experiment,model,extra", [
    ("knee_x4", "generative_small", []), ("knee_reference", "generative_small", []), ("knee_x8", "unet_small", []),
    ("knee_x8", "generative_small", ["model.net.texture_mode=attention", "model.net.texture_vectors=2"])])
def test_paper_experiments_fast_dev_run(fastmri_root, tmp_path, experiment, model, extra):
    cfg = compose_cfg([f"experiment={experiment}", f"model={model}", "debug=fdr", "data.sample_rate=1.0",
                       "data.val_sample_rate=1.0", "model.loss.r1=1.0", *extra, *tiny(fastmri_root, tmp_path)])
    results = train(cfg)
    assert math.isfinite(results["train/loss"]) and math.isfinite(results["val/psnr"])
    if model.startswith("generative"):
        assert math.isfinite(results["train/kl"]) and math.isfinite(results["train/proxy"])


@pytest.mark.parametrize("experiment,target", [
    ("knee_generative_x4", "StylishGenerator"), ("knee_reference_generative", "StylishGenerator"),
    ("knee_unet_x4", "FastMRIUnet")])
def test_network_experiments_fast_dev_run_at_paper_width(fastmri_root, tmp_path, experiment, target):
    cfg = compose_cfg([f"experiment={experiment}", "debug=fdr", "data.sample_rate=1.0", "data.val_sample_rate=1.0",
                       *tiny(fastmri_root, tmp_path)])
    assert cfg.model.net._target_.endswith(target)
    results = train(cfg)
    assert math.isfinite(results["train/loss"]) and math.isfinite(results["val/psnr"])


def test_eval_writes_fastmri_layout_and_matches_official_and_module_metrics(fastmri_root, tmp_path):
    cfg = compose_cfg(["experiment=demo", "model=zero_filled", "eval.accelerations=[4]", "inference_precision=32",
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
    module = instantiate_model(cfg.model)
    datamodule = instantiate(cfg.data, _recursive_=False, val_accelerations=[4])
    tested = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path).test(module, datamodule=datamodule)
    for key in ("nmse", "psnr", "ssim"):
        assert tested[0][f"test/{key}"] == pytest.approx(results["mean"][key], rel=1e-5)
        assert tested[0][f"test/x4/{key}"] == pytest.approx(results["mean"][key], rel=1e-5)
    per_volume = json.loads((tmp_path / "volume_metrics" / "test.json").read_text())
    for case, scores in results["cases"].items():
        assert per_volume["x4"][f"{case}.h5"]["psnr"] == pytest.approx(scores["psnr"], rel=1e-5)


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


def test_ddp_two_cpu_processes_score_every_volume_once(fastmri_root, tmp_path):
    """`trainer=ddp_cpu` in a subprocess: validation volumes are split over 2 ranks and gathered, none doubled."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "projects" / "fastmri_gen" / "train.py"), "experiment=demo",
         "trainer=ddp_cpu", "threads=1", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
         f"hydra.run.dir={run_dir}", *tiny(fastmri_root, run_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    volumes = sorted(p.name for p in (fastmri_root / "singlecoil_val").glob("*.h5"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/volumes"] == len(volumes) == 3 and metrics["test/volumes"] == 3
    for stage in ("val", "test"):  # val: gathered from the 2 ranks; test: one process after the fit
        per_volume = json.loads((run_dir / "volume_metrics" / f"{stage}.json").read_text())
        assert sorted(per_volume["all"]) == sorted(per_volume["x4"]) == volumes
        assert all(0 < scores["ssim"] <= 1 for scores in per_volume["all"].values())


def test_channels_last_computes_the_same_step(fastmri_root, tmp_path):
    cfg = compose_cfg(["experiment=demo", *tiny(fastmri_root, tmp_path)])
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    modules = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        modules.append(instantiate_model(compose_cfg(["experiment=demo", *tiny(fastmri_root, tmp_path),
                                                      f"model.channels_last={channels_last}"]).model))
    plain, fast = modules
    weights = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert any(not w.is_contiguous() for w in weights)
    steps = [m.generator_step(batch) for m in (plain, fast)]
    torch.testing.assert_close(steps[1].output, steps[0].output, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steps[1].loss, steps[0].loss, rtol=1e-4, atol=1e-5)
    d_losses = [m.discriminator_loss(batch, s.output) for m, s in zip(modules, steps)]
    torch.testing.assert_close(d_losses[1], d_losses[0], rtol=1e-4, atol=1e-5)
