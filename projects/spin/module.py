"""The LightningModule of SPiN and of the U-Net baseline: BCE training, per-scan and small-lesion metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from common.callbacks import PanelBatch
from common.metrics import SegmentationVolumeMetric, case_key
from common.module import ConfiguredModule, log_train_loss
from projects.spin.augment import augment_batch
from projects.spin.data import SliceSample
from projects.spin.metrics import score_counts

SMALL_POOL = "small-lesion-pool"
# Slice keys of the pooled small-lesion metric: (stable scan hash mod 2**31) * this + axial index, identical on
# every DDP rank so that duplicated slices are dropped once.
_SLICE_KEY_STRIDE = 100_000


def piecewise_constant_lr(optimizer: torch.optim.Optimizer, milestones: Sequence[int] = (400, 1400),
                          factors: Sequence[float] = (1.0, 1 / 3, 1 / 6)) -> torch.optim.lr_scheduler.LambdaLR:
    """Returns a LambdaLR whose factor is ``factors[i]`` from epoch ``milestones[i-1]`` on.

    With base lr 3e-4 and the defaults: 3e-4 for epochs 0-399, 1e-4 for 400-1399, 5e-5 from 1400.
    """
    if len(factors) != len(milestones) + 1:
        raise ValueError(f"need one factor more than milestones, got {len(factors)} and {len(milestones)}")

    def factor(epoch: int) -> float:
        return float(factors[sum(epoch >= m for m in milestones)])

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SegmentationModule(ConfiguredModule):
    """Trains a slice segmentation network (SPiN or U-Net) with pos-weighted BCE on its 1x logits.

    Validation and test report per-scan Dice, IoU, precision and recall averaged over scans (``metrics.score_counts``:
    zero divisions score 0, as in the paper) plus the same scores pooled over the small-lesion slices
    (``small_*``).

    Args:
        net: network config (``projects.spin.model.SPiN`` or ``UNet``).
        optimizer: partial optimiser config (one persistent Adam).
        scheduler: partial LR-scheduler config (``piecewise_constant_lr``).
        pos_weight: BCE weight of lesion pixels.
        augment: apply the paper's augmentation to training batches.
        augment_gate: probability of the geometric augmentation per sample, before ``gate_switch_epoch``.
        augment_gate_late: that probability from ``gate_switch_epoch`` on.
        gate_switch_epoch: epoch at which the gate changes (1400 in the paper).
        noise_prob: probability of Gaussian noise per sample.
        zoom: range of the resize-and-centre-crop factor (below 1: zoom out and pad).
        channels_last: run the network in channels-last memory format (faster 2-D convs on CPU).
        **kwargs: forwarded to ``ConfiguredModule`` (scheduler_interval, monitor).
    """

    def __init__(self, net: Any, optimizer: Any = None, scheduler: Any = None, pos_weight: float = 1.5,
                 augment: bool = True, augment_gate: float = 1.0, augment_gate_late: float = 0.5,
                 gate_switch_epoch: int = 1400, noise_prob: float = 0.5, zoom: Sequence[float] = (1.0, 1.1),
                 channels_last: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **kwargs)
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(pos_weight)]))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # The counts of each scan (and of the small-lesion pool) are scored by eval.py's rule (`metrics.py`).
        self.scan_metric = SegmentationVolumeMetric(from_logits=True, score_counts=score_counts)
        self.small_metric = SegmentationVolumeMetric(from_logits=True, score_counts=score_counts)

    def forward(self, image: Tensor) -> Tensor:
        """Returns the 1x logits ``[N, 1, H, W]`` of normalised slices ``[N, C, H, W]``."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)["logits"]

    def _gate(self) -> float:
        late = self.current_epoch >= self.hparams.gate_switch_epoch
        return self.hparams.augment_gate_late if late else self.hparams.augment_gate

    def training_step(self, batch: SliceSample, batch_idx: int) -> Tensor:
        image, label = batch.image, batch.label
        if self.hparams.augment:
            image, label = augment_batch(image, label, self._gate(), self.hparams.noise_prob,
                                         zoom=tuple(self.hparams.zoom))
        logits = self(image)
        loss = self.loss_fn(logits.float(), label.float())
        log_train_loss(self, loss, image.shape[0])
        return loss

    @staticmethod
    def _slice_keys(case_ids: Sequence[str], slice_index: Tensor) -> Tensor:
        scans = torch.tensor([case_key(c) % 2**31 for c in case_ids], dtype=torch.int64)
        return scans * _SLICE_KEY_STRIDE + slice_index.cpu().to(torch.int64)

    def _evaluate(self, batch: SliceSample, stage: str) -> dict[str, PanelBatch]:
        logits = self(batch.image).float()
        label = batch.label
        self.scan_metric.update(logits[:, 0], label[:, 0], list(batch.case_id), batch.slice_index)
        small = batch.small.bool()
        if bool(small.any()):
            keys = self._slice_keys(batch.case_id, batch.slice_index)[small.cpu()]
            self.small_metric.update(logits[small, 0], label[small, 0], [SMALL_POOL] * int(small.sum()), keys)
        self.log(f"{stage}/loss", self.loss_fn(logits, label.float()), batch_size=label.shape[0])
        # Axial slices [X, Y] of the RAS+ volume (the cache layout): the datamodule's affine orients them.
        reference, centre = label[:, 0].float(), batch.image.shape[1] // 2
        return {"panels": PanelBatch(input=batch.image[:, centre], prediction=(logits[:, 0] > 0).float(),
                                     reference=reference, case_ids=list(batch.case_id),
                                     slice_index=batch.slice_index, slice_axis=2, axis_name="z", segmentation=True,
                                     score=reference.sum(dim=(1, 2)))}

    def _log_epoch(self, stage: str) -> None:
        scores = {f"{stage}/{k}": v.float() for k, v in self.scan_metric.compute().items()}
        # NaN when no slice qualifies; computed on every rank since compute() is collective under DDP.
        scores.update({f"{stage}/small_{k}": v.float() for k, v in self.small_metric.compute().items()})
        self.log_dict(scores)
        self.scan_metric.reset()
        self.small_metric.reset()

    def validation_step(self, batch: SliceSample, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: SliceSample, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
