"""The SAINT LightningModule: stage 1 trains the MSR, stage 2 the RFN on the frozen MSR's outputs.

Stage 1 (`stage: msr`): L1 between the phase-major MSR output and the HR phases, counted only over the f real
phases of each sample (the zero padding of mixed-factor batches is masked out); the RFN is frozen.
Stage 2 (`stage: rfn`): the MSR weights come from `msr_ckpt` and are frozen; L1 of the fused axial slice.
Validation and test run whole-volume inference and score it with the paper's protocol (`evaluation.score_case`,
as `eval.py` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from common.callbacks import PanelBatch
from common.module import ConfiguredModule, log_train_loss
from projects.saint.checkpoint import load_weights
from projects.saint.evaluation import score_case
from projects.saint.model import SAINT


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the mean absolute error over the elements where `mask` is 1 (all tensors the same shape)."""
    return ((pred.float() - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, unit: float = 4000.0) -> torch.Tensor:
    """Returns the mean squared error over the elements where `mask` is 1, in units of `unit` squared.

    The metric of the protocol is PSNR, i.e. the MSE of intensities / 4000: an MSE loss optimises it directly.
    """
    return (((pred.float() - target) / unit) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


LOSSES = {"l1": masked_l1, "mse": masked_mse}
# TensorBoard panels: the abdominal window (width 400 HU, level 40 HU) in cached units (HU + 1024), where the
# soft-tissue detail the synthesised slices must restore is visible; air and bone saturate.
CT_PANEL_WINDOW = (1024.0 - 160.0, 1024.0 + 240.0)


class SaintModule(ConfiguredModule):
    """SAINT training and evaluation.

    Args:
        net: config of `projects.saint.model.SAINT`.
        optimizer, scheduler, scheduler_interval, monitor: see `ConfiguredModule`.
        stage: "msr" (stage 1) or "rfn" (stage 2).
        msr_ckpt: stage 2: checkpoint whose MSR weights are loaded (and frozen) when fitting starts.
        init_ckpt: optional weights (e.g. the reference's `model_comb.pt`) loaded into the whole net at fitting.
        eval_fuse: how validation and test fuse the two views: "mean" or "rfn".
        eval_factors: factors scored at validation and test (one metric per factor).
        plane_batch: planes per inference pass (None: by pixel budget, see `model.PIXELS_PER_PASS`).
        crop_fraction: central fraction of x and y scored by the protocol.
        channels_last: keep weights and training inputs channels-last (faster 2-D convolutions on CPU).
        loss: "l1" (paper) or "mse" (the metric's own error; see `masked_mse`).
        gw_lr_scale: learning-rate multiplier of the kernel generator `GW` (paper: 1). Every Adam step moves
            all GW weights by about the learning rate and the generated kernels multiply every feature, so the
            output moves by hundreds of HU per step at the trunk's rate; 0.01 keeps the two in step.
    """

    def __init__(self, net: DictConfig | dict, optimizer: DictConfig | dict | None = None,
                 scheduler: DictConfig | dict | None = None, scheduler_interval: str = "epoch",
                 monitor: str = "val/psnr", stage: str = "msr", msr_ckpt: str | None = None,
                 init_ckpt: str | None = None, eval_fuse: str = "mean", eval_factors: Sequence[int] = (4, 6),
                 plane_batch: int | None = None, crop_fraction: float = 0.5, channels_last: bool = False,
                 loss: str = "l1", gw_lr_scale: float = 1.0) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor)
        if stage not in ("msr", "rfn"):
            raise ValueError(f"stage must be 'msr' or 'rfn', got {stage!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if stage == "rfn" and not msr_ckpt:
            raise ValueError("stage 'rfn' needs msr_ckpt (the stage-1 checkpoint)")
        self.net: SAINT
        for name, param in self.net.named_parameters():
            param.requires_grad_(name.startswith("RFN.") == (stage == "rfn"))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        names = ["psnr", "ssim"] + [f"{m}_x{f}" for m in ("psnr", "ssim") for f in eval_factors]
        self.scores = torch.nn.ModuleDict({n: MeanMetric() for n in names})

    def param_groups(self) -> list[dict[str, Any]]:
        """Returns the trainable parameters in two groups: the kernel generator (lr * gw_lr_scale), the rest."""
        trainable = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        gw = [p for n, p in trainable if n.startswith("GW.")]
        rest = [p for n, p in trainable if not n.startswith("GW.")]
        if not gw or self.hparams.gw_lr_scale == 1.0:
            return [{"params": rest + gw}]
        lr = float(self.hparams.optimizer["lr"]) * self.hparams.gw_lr_scale
        return [{"params": rest, "name": "trunk"}, {"params": gw, "lr": lr, "name": "kernel_generator"}]

    def network_parameter_counts(self) -> dict[str, int]:
        """Returns the parameter counts of the two networks (frozen ones included): `msr`, `rfn`."""
        rfn = sum(p.numel() for p in self.net.RFN.parameters())
        return {"msr": sum(p.numel() for p in self.net.parameters()) - rfn, "rfn": rfn}

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.hparams.init_ckpt:
            load_weights(self.net, self.hparams.init_ckpt, "all")
        if self.hparams.stage == "rfn":
            load_weights(self.net, self.hparams.msr_ckpt, "msr")

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.hparams.stage == "msr":
            pred = self.net(self._layout(batch["lr"]), batch["dist"])
        else:
            pred = self.net.RFN(self._layout(batch["views"]))
        loss = LOSSES[self.hparams.loss](pred, batch["target"], batch["mask"])
        log_train_loss(self, loss, len(batch["target"]))
        return loss

    def synthesise(self, item: dict[str, Any], fuse: str | None = None) -> tuple[torch.Tensor, ...]:
        """Returns `(fused, view_x, view_y)` `[X, Y, Z']` for an evaluation item (precomputed views if present)."""
        if "views" in item:
            view_x, view_y = item["views"][0], item["views"][1]
        else:
            view_x, view_y = self.net.infer_views(item["lr"], item["spacing"], item["f"], self.hparams.plane_batch)
        fused = self.net.fuse(view_x, view_y, fuse or self.hparams.eval_fuse)
        return fused, view_x, view_y

    def _score(self, item: dict[str, Any], with_ssim: bool) -> PanelBatch:
        fused, _, _ = self.synthesise(item)
        f, hr = item["f"], item["hr"]
        weight = float(hr.shape[2])  # per-volume scores are weighted by the number of slices
        values = score_case(fused, hr, f, self.hparams.crop_fraction, with_ssim)
        for name, value in values.items():
            for key in (name, f"{name}_x{f}"):
                if key in self.scores:
                    self.scores[key].update(torch.tensor(value), weight)
        return self._panels(item, fused)

    @staticmethod
    def _panels(item: dict[str, Any], fused: torch.Tensor) -> PanelBatch:
        """Returns the plane of constant y through the volume's centre (the through-plane axis z in view)."""
        f, hr, centre = item["f"], item["hr"], item["hr"].shape[1] // 2
        lr_plane = item["lr"][:, centre].repeat_interleave(f, dim=-1)  # each thick slice repeated: nearest along z
        return PanelBatch(input=lr_plane[None], prediction=fused[:, centre][None], reference=hr[:, centre][None],
                          case_ids=[item["case_id"]], slice_index=[centre], slice_axis=1, axis_name="y",
                          names=[f"{item['case_id']}_x{f}"], window=CT_PANEL_WINDOW)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"panels": self._score(batch, with_ssim=False)}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, with_ssim=True)

    def _log_scores(self, prefix: str) -> None:
        for name, metric in self.scores.items():
            if metric.update_count:
                self.log(f"{prefix}/{name}", metric.compute(), sync_dist=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
