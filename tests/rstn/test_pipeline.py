"""Configs, the mode schedule, learning-rate groups, fast_dev_run of the experiments, the whole test chain."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from common.checkpoint import instantiate_model
from common.io.cache import VolumeCache
from common.run import CONF_ROOT
from projects.rstn.data import file_volume
from projects.rstn.eval import evaluate_rstn
from projects.rstn.model import RSTN
from projects.rstn.module import ModeSchedule
from projects.rstn.prepare import write_split
from projects.rstn.train import train_planes

EXPERIMENTS = ("demo", "nih_pancreas", "msd_pancreas")


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "rstn"), version_base="1.3"):
        return compose(config, overrides=overrides)


@pytest.mark.parametrize("config", ["train", "eval"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(config: str, experiment: str, tmp_path) -> None:
    cfg = _compose(config, [f"experiment={experiment}", f"paths.output_dir={tmp_path}", "fold=2"])
    assert cfg.data.fold == 2 and cfg.callbacks.rstn_modes.epochs_s >= 1
    if experiment != "demo":
        assert cfg.model.net.width == 1.0 and cfg.trainer.max_epochs == 16
        assert cfg.model.optimizer.momentum == 0.99 and list(cfg.model.lr_multipliers) == [1, 2, 10, 20]
        assert cfg.data.empty_fraction == 0.0 and not cfg.model.batch_dice  # the paper: organ slices only
        assert not cfg.model.fine_batch_dice and cfg.model.bce_weight == 0.0  # the paper: soft Dice only
        assert cfg.model.margin == 20  # pixels at 512 x 512
    else:  # the 700-step recipe (README: the fine groups at x3 of 3e-4 collapse the coarse-to-fine rounds)
        assert cfg.model.optimizer.lr == 3e-4 and cfg.callbacks.rstn_modes.j_lr_decay == 1.0
        assert list(cfg.model.lr_multipliers) == [1, 1, 1, 1] and 0 < cfg.trainer.max_steps <= 700
        assert cfg.trainer.limit_train_batches == 50  # modes S and I: 50 steps on every plane
        assert cfg.data.empty_fraction > 0 and cfg.model.batch_dice and cfg.model.bce_weight > 0
        assert not cfg.model.fine_batch_dice  # the fine loss over the batch shrank the coarse-to-fine masks
        in_plane = max(cfg.data.synthetic.shape[:2])
        assert cfg.model.margin == 20 * in_plane // 512  # the paper's margin scaled to the slice size
    if config == "eval":
        assert cfg.eval.margin == cfg.model.margin
        assert cfg.eval.max_rounds == 10 and cfg.eval.stop_inter_dsc == 0.99
        assert str(cfg.checkpoints.Z).endswith(f"{experiment}_fd2/Z/checkpoints/last.ckpt")


def test_mode_schedule_and_j_decay() -> None:
    schedule = ModeSchedule(2, 6, 8, 0.5, 2)
    modes = [schedule.mode_at(e)[0] for e in range(16)]
    assert modes == ["S"] * 2 + ["I"] * 6 + ["J"] * 8
    assert [schedule.lr_factor(e) for e in (0, 7, 8, 9, 10, 12, 15)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_mode_schedule_leaves_the_rates_to_a_step_scheduler_without_j_decay() -> None:
    """j_lr_decay 1.0: the epochs' mode switches keep the rates a step schedule has set; 0.5: the J halving."""
    weight = torch.nn.Parameter(torch.zeros(2))
    for decay, expected in ((1.0, 0.25), (0.5, 0.5)):
        optimizer = torch.optim.Adam([{"params": [weight], "lr": 1.0}])
        trainer = SimpleNamespace(current_epoch=0, optimizers=[optimizer])
        schedule = ModeSchedule(1, 1, 4, decay, 1)
        schedule.on_train_epoch_start(trainer, SimpleNamespace())  # type: ignore[arg-type]
        optimizer.param_groups[0]["lr"] = 0.25  # where a step schedule has taken the rate by epoch 3
        trainer.current_epoch = 3  # J, one J epoch done
        module = SimpleNamespace()
        schedule.on_train_epoch_start(trainer, module)  # type: ignore[arg-type]
        assert module.mode == "J" and optimizer.param_groups[0]["lr"] == expected


def test_mode_s_restart_rule(tmp_path) -> None:
    """The Caffe check: a mode S whose loss stays high goes back to the initial weights and runs again."""
    cfg = _compose("train", ["experiment=demo", f"paths.output_dir={tmp_path}"])
    module = instantiate_model(cfg.model)
    schedule = ModeSchedule(1, 1, 2, s_restart={"window": 2, "fraction": 0.5, "max_restarts": 1})
    optimizer = module.configure_optimizers()
    trainer = SimpleNamespace(current_epoch=0, optimizers=[optimizer], fit_loop=SimpleNamespace(max_epochs=4))
    weight = module.net.fine_model.score_fr.weight
    initial = weight.detach().clone()
    schedule.on_train_start(trainer, module)  # type: ignore[arg-type]
    for epoch, losses in ((0, [0.9, 0.8, 0.7, 0.6]), (1, [0.9, 0.8, 0.7, 0.6])):
        trainer.current_epoch = epoch
        schedule.on_train_epoch_start(trainer, module)  # type: ignore[arg-type]
        assert module.mode == "S"
        for loss in losses:
            schedule.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, 0)  # type: ignore[arg-type]
        with torch.no_grad():
            weight.add_(1.0)
        optimizer.state[weight]["momentum_buffer"] = torch.ones_like(weight)
        schedule.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
        if epoch == 0:  # running means 0.85, 0.75, 0.65: the last two average 0.7 >= 0.4 -> restart
            assert schedule.restarts == 1 and trainer.fit_loop.max_epochs == 5
            assert torch.equal(weight, initial) and not optimizer.state
    assert schedule.restarts == 1 and not torch.equal(weight, initial)  # max_restarts reached: S is kept
    assert [schedule.mode_at(e)[0] for e in range(2, 5)] == ["I", "J", "J"]
    schedule.s_losses = [0.5, 0.3, 0.3, 0.2]
    assert schedule.s_mode_ok()
    assert ModeSchedule(1, 1, 1).state_dict() == {"shift": 0, "restarts": 0}


def test_four_learning_rate_groups(tmp_path) -> None:
    cfg = _compose("train", ["experiment=nih_pancreas", f"paths.output_dir={tmp_path}", "model.net.width=0.0625"])
    module = instantiate_model(cfg.model)
    groups = module.param_groups()
    lr = cfg.model.optimizer.lr
    assert [g["lr"] for g in groups] == pytest.approx([lr, 2 * lr, 10 * lr, 20 * lr])
    assert groups[0]["weight_decay"] == groups[2]["weight_decay"] == cfg.model.optimizer.weight_decay > 0
    assert groups[1]["weight_decay"] == 0.0 and groups[3]["weight_decay"] == 0.0
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    assert n_trainable == sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    names = {id(p): n for n, p in module.net.named_parameters()}
    assert all(names[id(p)].startswith("coarse_model.") for p in groups[0]["params"])
    assert any(names[id(p)].startswith("saliency") for p in groups[2]["params"])


def _checkpoint(path, model_cfg, seed: int) -> None:
    torch.manual_seed(seed)
    net = RSTN(width=0.0625, dropout=0.0)
    with torch.no_grad():
        for conv in net.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 0.05)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "run_config": {"model": OmegaConf.to_container(model_cfg, resolve=True)}}, path)


def test_the_whole_test_chain_on_two_cases(synthetic_cache, tmp_path) -> None:
    cache = VolumeCache(synthetic_cache)
    split = tmp_path / "split.json"
    write_split(split, [["synth000", "synth001"], ["synth002"]], "test")
    out = tmp_path / "eval"
    overrides = ["experiment=demo", f"paths.output_dir={tmp_path}", f"data.cache_dir={synthetic_cache}",
                 f"data.split_file={split}", "eval.max_rounds=2", "eval.fine_batch_size=4", f"eval.out_dir={out}"]
    overrides += [f"checkpoints.{p}={tmp_path}/{p}/last.ckpt" for p in "XYZ"]
    cfg = _compose("eval", overrides)
    for i, plane in enumerate("XYZ"):
        _checkpoint(tmp_path / plane / "last.ckpt", cfg.model, i)
    result = evaluate_rstn(cfg)
    stages = result["stages"]
    for stage in ("coarse_X", "coarse_Y", "coarse_Z", "fusion", "oracle", "coarse2fine"):
        assert stages[stage]["n"] == 2 and 0 <= stages[stage]["min"] <= stages[stage]["max"] <= 1
        per_case = json.loads((out / f"{stage}_dsc.json").read_text())
        assert set(per_case) == {"synth000", "synth001"}
    for case in ("synth000", "synth001"):
        assert 1 <= result["details"][case]["rounds"] <= 2
        assert result["cases"][case]["dice"] == result["cases"][case]["dice_coarse2fine"]
        written = nib.load(out / "coarse2fine" / f"{case}.nii.gz")
        data, affine = file_volume(cache, case, "label")
        assert written.shape == data.shape and np.allclose(written.affine, affine, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["fusion"]["mean"] == pytest.approx(stages["fusion"]["mean"])


def test_last_checkpoint_follows_the_last_epoch(synthetic_cache, tmp_path) -> None:
    cfg = _compose("train", ["experiment=demo", "plane=Z", "logger=none", f"paths.output_dir={tmp_path}",
                             f"data.cache_dir={synthetic_cache}", f"data.split_file={synthetic_cache}/splits.json",
                             "data.synthetic=null", "trainer.max_epochs=3", "++trainer.limit_train_batches=1",
                             "trainer.limit_val_batches=1", "+trainer.enable_progress_bar=false",
                             "+trainer.enable_model_summary=false", "test_after_fit=false"])
    train_planes(cfg)
    final = torch.load(tmp_path / "Z" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 2 and final["global_step"] == 3 and final["rstn_mode"] == "J"
