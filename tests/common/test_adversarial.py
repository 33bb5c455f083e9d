"""The adversarial base on a toy GAN: both optimisers step, D is frozen during G's step, D's step leaves G alone."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from common.adversarial import AdversarialModule, GeneratorStep, r1_penalty
from common.callbacks import LearningRates

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2}


class ToyGAN(AdversarialModule):
    """G maps noise to 2-D points; D scores points. Records what it sees inside each step."""

    def __init__(self, optimizer=None, d_optimizer=None, scheduler=None, d_scheduler=None, width: int = 2,
                 train_d: bool = True) -> None:
        super().__init__(optimizer, d_optimizer, scheduler, d_scheduler)
        self.generator = torch.nn.Linear(width, 2)
        self.discriminator = torch.nn.Linear(2, 1)
        self.seen: dict[str, object] = {}

    def generator_parameters(self):
        return list(self.generator.parameters())

    def discriminator_trains(self) -> bool:
        return bool(self.hparams.train_d)

    def generator_step(self, batch):
        noise, _ = batch
        fake = self.generator(noise)
        logits = self.discriminator(fake)
        self.seen["d_requires_grad_in_g_step"] = [p.requires_grad for p in self.discriminator.parameters()]
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return GeneratorStep(loss, {"train/mean_x": fake[:, 0].mean()}, len(noise), fake)

    def discriminator_loss(self, batch, fake):
        _, real = batch
        self.seen["d_grads_after_g_step"] = [p.grad for p in self.discriminator.parameters()]
        self.seen["g_requires_grad_in_d_step"] = [p.requires_grad for p in self.generator.parameters()]
        self.seen["g_after_g_step"] = [p.detach().clone() for p in self.generator.parameters()]
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake.detach())
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def _fit(module: ToyGAN, epochs: int = 1, **trainer_options) -> pl.Trainer:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, module.hparams.width, generator=g), torch.randn(4, 2, generator=g) + 3)]
    options = {"logger": False, **trainer_options}
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **options)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def _params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _all_changed(before: list[torch.Tensor], net: torch.nn.Module) -> bool:
    return all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_both_optimisers_step_and_each_step_freezes_the_other_network():
    module = ToyGAN(ADAM, ADAM)
    g0, d0 = _params(module.generator), _params(module.discriminator)
    trainer = _fit(module)
    assert _all_changed(g0, module.generator) and _all_changed(d0, module.discriminator)
    assert module.seen["d_requires_grad_in_g_step"] == [False, False]
    assert module.seen["d_grads_after_g_step"] == [None, None]  # G's backward computed no D gradient
    assert module.seen["g_requires_grad_in_d_step"] == [False, False]
    # D's step leaves G where G's own step put it; after the batch every parameter trains again
    for after_g, final in zip(module.seen["g_after_g_step"], module.generator.parameters()):
        assert torch.equal(after_g, final)
    assert all(p.requires_grad for p in module.parameters())
    assert {"train/loss", "train/d_loss", "train/mean_x"} <= set(trainer.callback_metrics)


def test_untrained_discriminator_keeps_its_weights_and_arguments_are_hyper_parameters():
    module = ToyGAN(ADAM, ADAM, train_d=False, width=3)
    d0 = _params(module.discriminator)
    trainer = _fit(module)
    assert all(torch.equal(b, p) for b, p in zip(d0, module.discriminator.parameters()))
    assert "train/d_loss" not in trainer.callback_metrics
    assert module.hparams.width == 3 and module.hparams.optimizer == ADAM and not module.hparams.train_d


def test_optimisers_are_named_and_both_schedulers_step_once_per_epoch(tmp_path):
    step = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1, "gamma": 0.5}
    module = ToyGAN(ADAM, {**ADAM, "lr": 4e-2}, step, step)
    trainer = _fit(module, epochs=2, logger=CSVLogger(tmp_path), callbacks=[LearningRates()], log_every_n_steps=1)
    groups = [opt.param_groups[0] for opt in trainer.optimizers]
    assert [g["name"] for g in groups] == ["generator", "discriminator"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2 / 4, 4e-2 / 4])
    # TensorBoard's names say which network: lr/generator, lr/discriminator, logged with the training scalars
    logged = trainer.logged_metrics
    assert {"lr/generator", "lr/discriminator"} <= set(logged)
    assert float(logged["lr/generator"]) == pytest.approx(1e-2 / 2)  # epoch 2, before its scheduler step
    assert float(logged["lr/discriminator"]) == pytest.approx(4e-2 / 2)


def test_missing_discriminator_optimiser_is_named():
    with pytest.raises(ValueError, match="model.d_optimizer is not configured"):
        ToyGAN(ADAM, None).configure_optimizers()


def test_r1_penalty_of_a_linear_critic_is_half_its_squared_weight_norm():
    critic = torch.nn.Linear(3, 1)
    real = torch.randn(5, 3, requires_grad=True)
    penalty = r1_penalty(critic(real), real)
    assert penalty.item() == pytest.approx(0.5 * critic.weight.pow(2).sum().item())
    penalty.backward()  # differentiable in the critic's weights: d/dw (|w|^2 / 2) = w
    torch.testing.assert_close(critic.weight.grad, critic.weight.detach())


def test_learning_rates_are_logged_at_the_logged_steps_only(tmp_path, monkeypatch):
    calls = []
    log = pl.LightningModule.log

    def counting_log(self, name, *args, **kwargs):
        calls.append(name)
        return log(self, name, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", counting_log)
    module = ToyGAN(ADAM, ADAM)
    logger = CSVLogger(tmp_path)
    _fit(module, epochs=7, logger=logger, callbacks=[LearningRates()], log_every_n_steps=3)
    rows = list(csv.DictReader(open(f"{logger.log_dir}/metrics.csv")))
    lr_steps = [int(r["step"]) for r in rows if r.get("lr/generator")]
    loss_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert lr_steps == loss_steps == [2, 5]  # 7 one-batch epochs, every third step
    assert calls.count("lr/generator") == calls.count("lr/discriminator") == 2
