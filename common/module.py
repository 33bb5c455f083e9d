"""A small base LightningModule: builds its network, optimiser and scheduler from config."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def writes_logs_this_step(trainer: pl.Trainer | None) -> bool:
    """Returns whether the loggers receive this training step's `on_step` values.

    They do every `log_every_n_steps` steps, on the last batch of an epoch (whose step values are written with
    the epoch's) and on the last step of the run. A value logged `on_step` only (not `on_epoch`, not on the
    progress bar) reaches no logger on the other steps, so skipping its `self.log` there changes nothing that is
    written, and each call costs about a millisecond of Lightning bookkeeping. True when the trainer cannot
    tell (no trainer, or a Lightning without the check).
    """
    connector = getattr(trainer, "_logger_connector", None)
    if trainer is None or connector is None or not hasattr(connector, "should_update_logs"):
        return True
    progress = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    last_batch = bool(getattr(getattr(progress, "batch_progress", None), "is_last_batch", True))
    last_step = 0 < trainer.max_steps <= trainer.global_step + 1
    return bool(connector.should_update_logs) or last_batch or last_step


def log_train_loss(module: pl.LightningModule, loss: torch.Tensor, batch_size: int) -> None:
    """Logs the training loss under the names every project shares.

    `train/loss` is the value of each logged step (and the progress bar's), `train/loss_epoch` its mean over the
    epoch. Logging one key with both `on_step` and `on_epoch` would instead rename it `train/loss_step`.
    """
    module.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
    module.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=batch_size)


class ConfiguredModule(pl.LightningModule):
    """Base class: `net`, `optimizer` (partial) and `scheduler` (partial) are Hydra configs.

    Args:
        net: config of the `torch.nn.Module` to build (`_target_` + arguments).
        optimizer: partial optimiser config (`_partial_: true`), called with the parameters.
        scheduler: optional partial LR-scheduler config, called with the optimiser.
        scheduler_interval: "epoch" or "step".
        monitor: metric a ReduceLROnPlateau-style scheduler watches.
    """

    def __init__(self, net: DictConfig | dict, optimizer: DictConfig | dict | None = None,
                 scheduler: DictConfig | dict | None = None, scheduler_interval: str = "epoch",
                 monitor: str = "val/loss") -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = instantiate(net)

    def param_groups(self) -> Any:
        """Returns what the optimiser is given; override for per-group learning rates."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp["optimizer"] is None:
            raise ValueError("model.optimizer is not configured")
        optimizer = instantiate(hp["optimizer"])(params=self.param_groups())
        if hp["scheduler"] is None:
            return optimizer
        scheduler = instantiate(hp["scheduler"])(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": hp["monitor"],
                                                         "interval": hp["scheduler_interval"]}}

    def count_parameters(self) -> dict[str, int]:
        """Returns the trainable parameter count of each top-level sub-network."""
        return {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
                for name, child in self.named_children()}

