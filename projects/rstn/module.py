"""The RSTN LightningModule (one plane) and the callback that switches the training modes S -> I -> J."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import Tensor

from common.callbacks import PanelBatch
from common.errors import DataError
from common.metrics import SegmentationVolumeMetric
from common.module import ConfiguredModule, log_train_loss, writes_logs_this_step
from common.weights import load_third_party, require_keys
from projects.rstn.data import SliceSample, plane_axis
from projects.rstn.metrics import score_counts
from projects.rstn.model import RSTN, rstn_loss, sample_margins, stage_losses

MODES = ("S", "I", "J")
log = logging.getLogger(__name__)


RANDOM_TRUNKS = ("both FCN-8s trunks start from random (Kaiming) weights: no model.vgg16_weights (a local "
                 "torchvision VGG16 file) or model.init_weights was given, while the reference starts from "
                 "PASCAL FCN-8s weights; expect slower training and lower Dice than the paper")


def load_vgg16_file(path: str | Path) -> dict[str, Tensor]:
    """Returns a torchvision-style VGG16 state dict (`features.N.*`, `classifier.N.*`) read from a local file
    with `weights_only=True` (never downloaded; `state_dict` wrappers and DataParallel's `module.` removed).

    Raises:
        DataError: the file is missing, unreadable, refused, or has no VGG16 `features` / `classifier` weights.
    """
    state = load_third_party(path)
    require_keys(state, ["features.0.", "classifier.0.", "classifier.3."], path, "a torchvision VGG16 state dict")
    return state


class RSTNModule(ConfiguredModule):
    """Trains one plane's RSTN with the reference's losses, learning-rate groups and crop jitter.

    Args:
        net: config of `projects.rstn.model.RSTN`.
        optimizer: partial SGD config (lr = the coarse-weight rate, momentum, weight_decay).
        scheduler: unused by the paper (the J-mode halving is done by `ModeSchedule`); kept for options.
        lr_multipliers: rate multipliers of (coarse weights, coarse biases, saliency+fine weights, biases).
        margin: crop margin (pixels) at test time and the centre of the training jitter.
        margin_jitter_prob: probability that a training step draws its four margins in [0, 2 * margin].
        coarse_weight: weight of the coarse Dice loss (the fine loss gets 1 - coarse_weight).
        vgg16_weights: optional path of a torchvision VGG16 state dict to initialise both FCN trunks.
        mode: the starting mode (the `ModeSchedule` callback sets it every epoch).
        channels_last: run the convolutions in channels-last memory format (same results, faster on CPU).
        batch_dice: the coarse loss is one soft Dice over the whole batch, the fine loss the per-sample Dice
            of the samples holding organ (for training on organ-free slices too, `data.empty_fraction` > 0;
            see `stage_losses`).
        bce_weight: weight of a pixel-wise binary cross-entropy added to the coarse loss (0: the paper).
    """

    def __init__(self, net: DictConfig | dict, optimizer: DictConfig | dict | None = None,
                 scheduler: DictConfig | dict | None = None, lr_multipliers: tuple[float, ...] = (1, 2, 10, 20),
                 margin: int = 20, margin_jitter_prob: float = 0.5, coarse_weight: float = 1 / 3,
                 vgg16_weights: str | None = None, mode: str = "S", channels_last: bool = False,
                 batch_dice: bool = False, bce_weight: float = 0.0, fine_batch_dice: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **kwargs)
        self.net: RSTN
        if vgg16_weights:
            try:
                self.net.load_vgg16(load_vgg16_file(vgg16_weights))
            except KeyError as err:
                raise DataError(vgg16_weights, f"does not fit the FCN trunks: no tensor {err}") from err
            except ValueError as err:  # e.g. a width other than the network's
                raise DataError(vgg16_weights, f"does not fit the FCN trunks: {err}") from err
        self.mode = mode
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Each case's summed counts are scored by eval.py's rule (`metrics.score_counts`).
        self.metrics = torch.nn.ModuleDict({k: SegmentationVolumeMetric(score_counts=score_counts)
                                            for k in ("coarse", "fine")})

    def setup(self, stage: str) -> None:
        """Warns once, before fitting, when the trunks start from random weights (see `RANDOM_TRUNKS`)."""
        resuming = getattr(self._trainer, "ckpt_path", None) is not None
        initialised = self.hparams.get("vgg16_weights") or getattr(self, "initialised_from", None)
        if stage == "fit" and not initialised and not resuming:
            log.warning("RSTN: %s", RANDOM_TRUNKS)

    def param_groups(self) -> list[dict[str, Any]]:
        """Returns the four groups: coarse W (x1), coarse b (x2, no decay), saliency+fine W (x10), b (x20)."""
        base = float(self.hparams.optimizer["lr"])
        decay = float(self.hparams.optimizer.get("weight_decay", 0.0))
        groups: dict[str, list[Tensor]] = {"coarse_w": [], "coarse_b": [], "fine_w": [], "fine_b": []}
        for name, param in self.net.named_parameters():
            if not param.requires_grad:  # the frozen bilinear deconvolutions
                continue
            stage = "coarse" if name.startswith("coarse_model.") else "fine"
            groups[f"{stage}_{'b' if name.endswith('bias') else 'w'}"].append(param)
        mult = self.hparams.lr_multipliers
        return [{"params": groups[key], "lr": base * m, "weight_decay": 0.0 if key.endswith("_b") else decay,
                 "name": key} for key, m in zip(("coarse_w", "coarse_b", "fine_w", "fine_b"), mult, strict=True)]

    def _layout(self, batch: SliceSample) -> SliceSample:
        """Returns the batch with its images in the network's memory format."""
        if self.hparams.channels_last:
            return batch._replace(image=batch.image.contiguous(memory_format=torch.channels_last))
        return batch

    def training_step(self, batch: SliceSample, batch_idx: int) -> Tensor:
        batch = self._layout(batch)
        margins = sample_margins(self.hparams.margin, self.hparams.margin_jitter_prob)
        z_coarse, z_fine = self.net.forward_train(batch.image, batch.label, self.mode, margins, logits=True)
        loss_coarse, loss_fine = stage_losses(z_coarse, z_fine, batch.label, self.hparams.batch_dice,
                                             self.hparams.bce_weight, self.hparams.fine_batch_dice, from_logits=True)
        w = self.hparams.coarse_weight
        loss = w * loss_coarse + (1 - w) * loss_fine
        size = batch.image.shape[0]
        log_train_loss(self, loss, size)
        if writes_logs_this_step(self._trainer):
            self.log("train/loss_coarse", loss_coarse, on_step=True, on_epoch=False, batch_size=size)
            self.log("train/loss_fine", loss_fine, on_step=True, on_epoch=False, batch_size=size)
        if batch_idx == 0:  # constant over the epoch: its epoch value is that of any one step
            self.log("train/mode", float(MODES.index(self.mode)), on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _evaluate(self, batch: SliceSample, stage: str) -> dict[str, PanelBatch]:
        """One round of coarse-to-fine on each slice triplet: coarse mask, then the fine stage in its box."""
        batch = self._layout(batch)
        p_coarse = self.net.forward_coarse(batch.image)
        mask = p_coarse >= 0.5
        p_fine = self.net.forward_fine(batch.image, p_coarse, mask, self.hparams.margin)
        centre = batch.image.shape[1] // 2
        for key, prob in (("coarse", p_coarse), ("fine", p_fine)):
            self.metrics[key].update(prob[:, centre] >= 0.5, batch.label[:, centre], batch.case_id, batch.slice_index)
        self.log(f"{stage}/loss", rstn_loss(p_coarse, p_fine, batch.label, self.hparams.coarse_weight,
                                                 self.hparams.batch_dice),
                 batch_size=batch.image.shape[0])
        label = batch.label[:, centre]
        plane = self._plane()
        return {"panels": PanelBatch(input=batch.image[:, centre], prediction=p_fine[:, centre], reference=label,
                                     case_ids=list(batch.case_id), slice_index=batch.slice_index,
                                     slice_axis=plane_axis(plane), axis_name=plane.lower(), segmentation=True,
                                     window=(0.0, 1.0), score=label.sum(dim=(1, 2)))}

    def _plane(self) -> str:
        """Returns the plane of the validation slices: the datamodule's (the module itself serves any plane)."""
        datamodule = getattr(self._trainer, "datamodule", None)
        return str(getattr(datamodule, "hparams", {}).get("plane", "Z"))

    def _log_volume_scores(self, stage: str) -> None:
        for key, metric in self.metrics.items():
            scores = metric.compute()
            name = "dice" if key == "fine" else "dice_coarse"
            self.log(f"{stage}/{name}", scores["dice"])
            metric.reset()

    def validation_step(self, batch: SliceSample, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_volume_scores("val")

    def test_step(self, batch: SliceSample, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_volume_scores("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rstn_mode"] = self.mode

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.mode = checkpoint.get("rstn_mode", self.mode)


class ModeSchedule(pl.Callback):
    """Sets the module's mode each epoch (S for `epochs_s`, then I, then J) and halves the rates in J.

    Optionally checks mode S as the Caffe original does: at the end of mode S, the training loss (a running
    mean over `window` steps) over the last `fraction` of the S steps must have a mean below `mean_below`
    and a minimum below `min_below`; otherwise the network goes back to its initial weights, the optimiser
    state is cleared and mode S starts again (at most `max_restarts` times; the run gets `epochs_s` more
    epochs each time).

    Args:
        epochs_s: epochs of mode S (reference 2).
        epochs_i: epochs of mode I (6).
        epochs_j: epochs of mode J (8); training stays in J if it runs longer.
        j_lr_decay: factor applied to every group's rate after each `j_lr_every` J epochs; 1.0 leaves the rates
            to the optimiser and the module's scheduler.
        j_lr_every: J epochs between two decays (2: the rates halve after J-epochs 2, 4, 6).
        s_restart: None (no check, as the PyTorch port) or a dict with `mean_below` (0.4), `min_below`
            (0.35), `fraction` (0.02), `window` (20) and `max_restarts`.
    """

    def __init__(self, epochs_s: int = 2, epochs_i: int = 6, epochs_j: int = 8, j_lr_decay: float = 0.5,
                 j_lr_every: int = 2, s_restart: dict[str, Any] | None = None) -> None:
        self.epochs = (epochs_s, epochs_i, epochs_j)
        self.j_lr_decay = j_lr_decay
        self.j_lr_every = j_lr_every
        self.s_restart = dict(s_restart) if s_restart else None
        self.shift = 0  # epochs spent in failed S attempts
        self.restarts = 0
        self.s_losses: list[float] = []
        self._initial: dict[str, Tensor] | None = None

    def mode_at(self, epoch: int) -> tuple[str, int]:
        """Returns (mode, epochs already spent in that mode) at a 0-based training epoch."""
        s, i, _ = self.epochs
        epoch -= self.shift
        if epoch < s:
            return "S", max(epoch, 0)
        if epoch < s + i:
            return "I", epoch - s
        return "J", epoch - s - i

    def lr_factor(self, epoch: int) -> float:
        """Returns the rate factor at `epoch`: j_lr_decay ** (completed J epochs // j_lr_every)."""
        mode, spent = self.mode_at(epoch)
        return 1.0 if mode != "J" else self.j_lr_decay ** (spent // self.j_lr_every)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.s_restart and self.mode_at(trainer.current_epoch)[0] == "S":
            self._initial = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        mode, spent = self.mode_at(epoch)
        pl_module.mode = mode
        if mode == "S" and spent == 0:
            self.s_losses = []
        if self.j_lr_decay == 1.0:
            return  # the rates stay as they are, so a `model.scheduler` (a step schedule) is left in charge
        factor = self.lr_factor(epoch)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.s_restart and pl_module.mode == "S":
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.s_losses.append(float(loss))

    def s_mode_ok(self) -> bool:
        """Returns whether the recorded S losses pass the Caffe check (running mean, then tail mean and min)."""
        cfg = {"mean_below": 0.4, "min_below": 0.35, "fraction": 0.02, "window": 20, **(self.s_restart or {})}
        losses = torch.tensor(self.s_losses or [1.0], dtype=torch.float64)
        window = max(1, min(int(cfg["window"]), losses.numel()))
        smooth = losses.unfold(0, window, 1).mean(dim=1)
        tail = smooth[-max(1, int(round(len(self.s_losses) * float(cfg["fraction"])))):]
        return bool(tail.mean() < cfg["mean_below"]) and bool(tail.min() < cfg["min_below"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mode, spent = self.mode_at(trainer.current_epoch)
        if not self.s_restart or mode != "S" or spent != self.epochs[0] - 1 or self._initial is None:
            return
        if self.s_mode_ok() or self.restarts >= int(self.s_restart.get("max_restarts", 3)):
            self._initial = None  # S is done: the copy is no longer needed
            return
        pl_module.net.load_state_dict(self._initial)
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        self.shift += self.epochs[0]
        self.restarts += 1
        if trainer.fit_loop.max_epochs is not None and trainer.fit_loop.max_epochs >= 0:
            trainer.fit_loop.max_epochs += self.epochs[0]
        log.warning("mode S failed the loss check (restart %d): back to the initial weights", self.restarts)

    def state_dict(self) -> dict[str, Any]:
        return {"shift": self.shift, "restarts": self.restarts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shift = int(state_dict.get("shift", 0))
        self.restarts = int(state_dict.get("restarts", 0))
