"""EasySR training: every experiment composes and runs fast_dev_run; manual optimisation updates both nets;
batch norm modes; the reference's double-sigmoid and frozen-BN behaviours stay reachable."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader

from common.checkpoint import instantiate_model
from common.run import CONF_ROOT
from projects.easysr.data import SRSample

EXPERIMENTS = ["reference", "gan", "demo"]


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "easysr"), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg = _compose("train", [f"experiment={experiment}", "paths.output_dir=/tmp/unused"])
    assert cfg.experiment_name == experiment
    module = instantiate_model(cfg.model)
    assert sum(p.numel() for p in module.generator.parameters()) == 143_585
    if experiment == "reference":
        assert cfg.model.adversarial_weight == 0 and cfg.model.discriminator.head == "linear"
        assert sum(p.numel() for p in module.discriminator.parameters()) == 74_344
    if experiment == "gan":
        assert cfg.model.adversarial_weight > 0 and cfg.model.discriminator.head == "patch"


def test_eval_and_predict_configs_compose():
    assert _compose("eval", ["ckpt_path=x.ckpt", "paths.output_dir=/tmp/unused"]).ckpt_path == "x.ckpt"
    cfg = _compose("predict", ["input=a.nii.gz", "output=b.nii.gz", "weights=g.pth"])
    assert cfg.model.generator.scale == 3


def _module(**kwargs):
    cfg = _compose("train", ["paths.output_dir=/tmp/unused",
                             *[f"model.{k}={v}" for k, v in kwargs.items()]])
    return instantiate_model(cfg.model)


def _loader(n: int, lr_shape=(32, 12, 32)) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    hr_shape = (lr_shape[0], lr_shape[1] * 3, lr_shape[2])
    samples = [SRSample(torch.rand(1, *lr_shape, generator=g) * 255, torch.rand(1, *hr_shape, generator=g) * 255,
                        f"c{i}") for i in range(n)]
    return DataLoader(samples, batch_size=n)


class _BNModes(pl.Callback):
    def __init__(self) -> None:
        self.train_modes: list[bool] = []
        self.val_modes: list[bool] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.train_modes.append(module.generator.conv_block2[1].training)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_modes.append(module.generator.conv_block2[1].training)


def _fit(module, epochs: int = 1, lr_shape=(32, 12, 32)) -> _BNModes:
    modes = _BNModes()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[modes],
                         num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=_loader(2, lr_shape), val_dataloaders=_loader(1, lr_shape))
    return modes


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _changed(before: dict, net: torch.nn.Module) -> int:
    return sum(not torch.equal(before[k], v) for k, v in net.named_parameters())


def test_manual_optimisation_updates_both_nets_with_bn_modes():
    module = _module(adversarial_weight=0.5)
    g0, d0 = _snapshot(module.generator), _snapshot(module.discriminator)
    modes = _fit(module)
    assert _changed(g0, module.generator) == len(g0)
    assert _changed(d0, module.discriminator) == len(d0)
    assert modes.train_modes == [True] and modes.val_modes == [False]


def test_reference_frozen_generator_bn_from_second_epoch():
    module = _module(freeze_generator_bn_after=1, train_discriminator=False)
    d0 = _snapshot(module.discriminator)
    modes = _fit(module, epochs=2, lr_shape=(8, 4, 8))
    assert modes.train_modes == [True, False]
    assert _changed(d0, module.discriminator) == 0


def test_double_sigmoid_is_the_reference_bounded_loss():
    fixed, reference = _module(), _module(double_sigmoid=True)
    logits = torch.tensor([[20.0], [-20.0]])
    assert fixed._gan_loss(logits, real=True) > 9.0  # a confident wrong logit costs a lot
    # BCE-with-logits of sigmoid outputs never drops under log(1 + e^-1) nor exceeds log 2 + 1/2
    assert 0.31 < reference._gan_loss(logits, real=True) < 0.82


def test_checkpoints_with_the_earlier_optimiser_keys_still_load(tmp_path):
    from omegaconf import OmegaConf

    from common.checkpoint import module_from_checkpoint

    cfg = _compose("train", ["paths.output_dir=/tmp/unused", "model.optimizer.lr=3e-4"])
    module = instantiate_model(cfg.model)
    stored = OmegaConf.to_container(cfg.model, resolve=True)
    stored["optimizer_g"], stored["optimizer_d"] = stored.pop("optimizer"), stored.pop("d_optimizer")
    for key in ("scheduler", "d_scheduler"):  # earlier versions had no schedulers
        stored.pop(key)
    torch.save({"state_dict": module.state_dict(), "run_config": {"model": stored}}, tmp_path / "old.ckpt")
    loaded, _ = module_from_checkpoint(tmp_path / "old.ckpt")
    assert loaded.hparams.optimizer["lr"] == 3e-4 and loaded.hparams.d_optimizer["lr"] == 2e-4
    assert "optimizer_g" not in loaded.hparams and loaded.hparams.scheduler is None
    opt_g, opt_d = loaded.configure_optimizers()
    assert opt_g.param_groups[0]["lr"] == 3e-4 and opt_g.param_groups[0]["name"] == "generator"
    torch.testing.assert_close(loaded.generator.state_dict(), module.generator.state_dict())
    # an eval config that carries the checkpoint's stored model config is mapped the same way
    given, _ = module_from_checkpoint(tmp_path / "old.ckpt", OmegaConf.create(stored))
    assert given.hparams.optimizer == loaded.hparams.optimizer and "optimizer_d" not in given.hparams


def test_channels_last_computes_the_same_step_in_the_3d_channels_last_layout():
    torch.manual_seed(0)
    plain = _module(adversarial_weight=0.5)
    torch.manual_seed(0)
    fast = _module(adversarial_weight=0.5, channels_last=True)
    weight = fast.generator.conv_block2[0].weight  # 32 -> 32: the two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    batch = next(iter(_loader(2)))
    steps = [m.generator_step(batch) for m in (plain, fast)]
    assert steps[1].output.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(steps[1].output, steps[0].output, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(steps[1].loss, steps[0].loss, rtol=1e-4, atol=1e-3)
    d_losses = [m.discriminator_loss(batch, step.output) for m, step in zip((plain, fast), steps)]
    torch.testing.assert_close(d_losses[1], d_losses[0], rtol=1e-4, atol=1e-4)
