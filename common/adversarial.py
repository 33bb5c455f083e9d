"""A base LightningModule for adversarial training: one generator step, then one discriminator step, per batch.

The optimisation is manual, so the two networks take turns within a batch the way GAN papers describe it:

1. the generator step, with the discriminator's parameters frozen (`requires_grad=False`: the adversarial term
   back-propagates through the discriminator to the generator without computing its weight gradients);
2. the discriminator step, with the generator's parameters frozen, on the generator output of step 1.

Config keys, the same in every project: `optimizer` (the generator, i.e. the network) and `d_optimizer` (the
discriminator), both partial optimiser configs, and the optional partial LR schedulers `scheduler` and
`d_scheduler`, stepped once at the end of each training epoch (manual optimisation leaves scheduler stepping to
the module). The optimisers are named `generator` and `discriminator`, so their learning rates are logged as `lr/generator` and
`lr/discriminator` (`common.callbacks.LearningRates`); the generator's loss is `train/loss` (and its epoch mean
`train/loss_epoch`, `common.module.log_train_loss`). Mixed precision comes from the Trainer's
`precision`: `manual_backward` and the optimisers' `step` go through Lightning's precision plugin.

A subclass builds `self.discriminator` (or sets it to None: no adversary) and defines `generator_parameters`,
`generator_step` and `discriminator_loss`; it keeps its losses and whatever else differs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn

from common.module import log_train_loss

GENERATOR_GROUP = "generator"
DISCRIMINATOR_GROUP = "discriminator"


class GeneratorStep(NamedTuple):
    """What a subclass's `generator_step` returns.

    Attributes:
        loss: the generator's scalar loss (logged as `train/loss`).
        logs: further scalars to log, keyed by their full metric name (e.g. `train/l1`).
        batch_size: samples in the batch (for epoch means).
        output: what the discriminator step needs from this step, typically the generator's output.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    batch_size: int
    output: Any = None


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """Returns the R1 penalty `mean_b ||d sum(D(x_b)) / d x_b||^2 / 2` on real samples (scale it by gamma).

    Args:
        real_logits: discriminator outputs for `real_inputs`, any shape with the batch first.
        real_inputs: `[B, ...]` real samples that required gradients when `real_logits` were computed.

    Returns:
        A scalar, differentiable with respect to the discriminator's parameters (`create_graph=True`).
    """
    grad, = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return 0.5 * grad.float().pow(2).flatten(1).sum(dim=1).mean()


class AdversarialModule(pl.LightningModule):
    """Manual-optimisation base of the GAN modules.

    Args:
        optimizer: partial optimiser config of the generator (`_partial_: true`), or None when nothing trains.
        d_optimizer: partial optimiser config of the discriminator (needed when there is one).
        scheduler: optional partial LR scheduler config of the generator's optimiser.
        d_scheduler: optional partial LR scheduler config of the discriminator's optimiser.
    """

    discriminator: nn.Module | None

    def __init__(self, optimizer: Any = None, d_optimizer: Any = None, scheduler: Any = None,
                 d_scheduler: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # also records the subclass's arguments
        self.automatic_optimization = False
        self.optimizer_names = (GENERATOR_GROUP, DISCRIMINATOR_GROUP)  # TensorBoard: lr/generator, lr/discriminator

    # ------------------------------------------------------------------ what a subclass defines

    def generator_parameters(self) -> list[nn.Parameter]:
        """Returns the parameters the generator's optimiser updates."""
        raise NotImplementedError

    def generator_step(self, batch: Any) -> GeneratorStep:
        """Returns the generator's loss, its logs and its output on `batch`."""
        raise NotImplementedError

    def discriminator_loss(self, batch: Any, output: Any) -> torch.Tensor:
        """Returns the discriminator's scalar loss on `batch` and the generator step's `output`."""
        raise NotImplementedError

    def discriminator_trains(self) -> bool:
        """Returns whether the discriminator step runs (override to keep a discriminator untrained)."""
        return self.discriminator is not None

    # ------------------------------------------------------------------ optimisers

    def _optimiser(self, key: str, params: list[nn.Parameter], group: str) -> torch.optim.Optimizer:
        config = self.hparams.get(key)
        if config is None:
            raise ValueError(f"model.{key} is not configured")
        return instantiate(config)(params=[{"params": params, "name": group}])

    def _scheduler(self, key: str, optimizer: torch.optim.Optimizer) -> Any:
        config = self.hparams.get(key)
        return None if config is None else instantiate(config)(optimizer=optimizer)

    def configure_optimizers(self) -> Any:
        """Returns `[G, D]` optimisers (`[G]` without a discriminator, None when nothing trains) and schedulers."""
        params = [p for p in self.generator_parameters() if p.requires_grad]
        if not params:
            return None
        optimizers = [self._optimiser("optimizer", params, GENERATOR_GROUP)]
        schedulers = [self._scheduler("scheduler", optimizers[0])]
        if self.discriminator is not None:
            optimizers.append(self._optimiser("d_optimizer", list(self.discriminator.parameters()),
                                              DISCRIMINATOR_GROUP))
            schedulers.append(self._scheduler("d_scheduler", optimizers[1]))
        stepped = [s for s in schedulers if s is not None]
        return (optimizers, stepped) if stepped else optimizers

    # ------------------------------------------------------------------ steps

    def _update(self, optimizer: Any, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        # toggling freezes the parameters of the other optimiser for the duration of the step
        with self.toggled_optimizer(optimizers[0]):
            step = self.generator_step(batch)
            self._update(optimizers[0], step.loss)
        logs = {name: value.detach() for name, value in step.logs.items()}
        if len(optimizers) > 1 and self.discriminator_trains():
            with self.toggled_optimizer(optimizers[1]):
                d_loss = self.discriminator_loss(batch, step.output)
                self._update(optimizers[1], d_loss)
            logs["train/d_loss"] = d_loss.detach()
        log_train_loss(self, step.loss.detach(), step.batch_size)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=step.batch_size)
        return step.loss.detach()

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is not None:
                scheduler.step()
