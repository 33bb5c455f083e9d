"""EasySR LightningModule: generator + discriminator, one step each per batch (`common.adversarial`).

Per training step: the generator minimises `voxel_loss(G(lr), hr) + adversarial_weight * BCE(D(G(lr)), real)`,
then (if `train_discriminator`) the discriminator minimises `(BCE(D(hr), real) + BCE(D(G(lr).detach()), fake))/2`.
D returns logits and the losses apply the sigmoid once (`binary_cross_entropy_with_logits`). The optimisers are
`optimizer` (G) and `d_optimizer` (D); checkpoints that stored them as `optimizer_g` / `optimizer_d` are mapped
when read. Lightning puts the module in train mode for training and in eval mode for validation, so BN uses
batch statistics while training and running statistics while evaluating.

Reference behaviours kept as options (`experiment=reference`): `adversarial_weight=0` (the reference never feeds
D back to G), `double_sigmoid=true` (its D loss applies BCE-with-logits to sigmoid outputs), and
`freeze_generator_bn_after=1` (its G stays in eval mode from the second epoch on).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.adversarial import AdversarialModule, GeneratorStep
from common.callbacks import PanelBatch
from projects.easysr.data import SRSample
from projects.easysr.infer import upsample_normalised
from projects.easysr.metrics import score_case
from projects.easysr.ops import spline_upsample

_VOXEL_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}
# optimiser keys of checkpoints written before every project used `optimizer` / `d_optimizer`
_RENAMED_KEYS = {"optimizer_g": "optimizer", "optimizer_d": "d_optimizer"}


class EasySRModule(AdversarialModule):
    """Trains the EasySR generator (and its discriminator) on (LR, HR) pairs in [0, 255].

    Args:
        generator: config of the generator (`projects.easysr.model.EasySRGenerator`).
        discriminator: config of the discriminator (`projects.easysr.model.PatchDiscriminator3D`).
        optimizer: partial optimiser config for G (Adam 2e-4, betas 0.5/0.999 in the reference).
        d_optimizer: partial optimiser config for D.
        scheduler / d_scheduler: optional partial LR schedulers of G / D, stepped every epoch.
        voxel_loss: "mse" (reference) or "l1".
        adversarial_weight: weight of the adversarial term in G's loss (0 = the reference's plain regression).
        train_discriminator: run the D step (the reference does, although D never reaches G's loss).
        double_sigmoid: reference D loss, BCE-with-logits of sigmoid(D) (only for reproducing it).
        freeze_generator_bn_after: epoch from which G's BN layers stay in eval mode (reference: 1), or None.
        eval_patch: LR patch for sliding-window validation of large volumes, or None for whole volumes.
        eval_ssim: compute the slice-wise SSIM during validation (slow on big volumes; always on in test).
        channels_last: keep both networks' weights and the training inputs channels-last (`channels_last_3d`):
            faster 3-D convolutions on CPU (a demo-size generator step 1.2x faster, fp32 and bf16).
    """


    def __init__(self, generator: DictConfig | dict, discriminator: DictConfig | dict,
                 optimizer: DictConfig | dict, d_optimizer: DictConfig | dict,
                 scheduler: DictConfig | dict | None = None, d_scheduler: DictConfig | dict | None = None,
                 voxel_loss: str = "mse", adversarial_weight: float = 0.0, train_discriminator: bool = True,
                 double_sigmoid: bool = False, freeze_generator_bn_after: int | None = None,
                 eval_patch: list[int] | None = None, eval_ssim: bool = True, channels_last: bool = False) -> None:
        super().__init__(optimizer, d_optimizer, scheduler, d_scheduler)
        if voxel_loss not in _VOXEL_LOSSES:
            raise ValueError(f"voxel_loss must be one of {sorted(_VOXEL_LOSSES)}, got {voxel_loss!r}")
        self.generator = instantiate(generator)
        self.discriminator = instantiate(discriminator)
        if channels_last:  # the convolutions' outputs follow the weights' layout, whatever the input's
            self.generator = self.generator.to(memory_format=torch.channels_last_3d)
            self.discriminator = self.discriminator.to(memory_format=torch.channels_last_3d)
        self.test_scores: dict[str, dict[str, float]] = {}  # case -> the last test run's scores

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Returns a stored model config with the optimiser keys of earlier versions renamed."""
        return {_RENAMED_KEYS.get(key, key): value for key, value in config.items()}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Returns G(lr): `[B, 1, D, H * scale, W]` from `[B, 1, D, H, W]`."""
        return self.generator(lr)

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_trains(self) -> bool:
        return bool(self.hparams.train_discriminator)

    def _gan_loss(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        logits = logits.float()
        if self.hparams.double_sigmoid:
            logits = torch.sigmoid(logits)
        target = torch.full_like(logits, 1.0 if real else 0.0)
        return F.binary_cross_entropy_with_logits(logits, target)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        after = self.hparams.freeze_generator_bn_after
        if after is not None and self.current_epoch >= after:
            for layer in self.generator.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def generator_step(self, batch: SRSample) -> GeneratorStep:
        lr, hr = batch.lr, batch.hr
        if self.hparams.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last_3d)
        sr = self.generator(lr)
        voxel = _VOXEL_LOSSES[self.hparams.voxel_loss](sr.float(), hr)
        logs = {"train/voxel_loss": voxel}
        weight = float(self.hparams.adversarial_weight)
        loss = voxel
        if weight > 0:
            adversarial = self._gan_loss(self.discriminator(sr), real=True)
            loss = voxel + weight * adversarial
            logs["train/adv_loss"] = adversarial
        return GeneratorStep(loss, logs, len(lr), sr)

    def discriminator_loss(self, batch: SRSample, sr: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self._gan_loss(self.discriminator(batch.hr), real=True)
                      + self._gan_loss(self.discriminator(sr.detach()), real=False))

    def _evaluate(self, batch: SRSample, stage: str, with_ssim: bool) -> dict[str, PanelBatch]:
        lr, hr = batch.lr, batch.hr
        scale = int(self.generator.scale)
        sr = upsample_normalised(self.generator, lr[0, 0], self.hparams.eval_patch)
        sr_np, hr_np, lr_np = sr.numpy(), hr[0, 0].cpu().numpy(), lr[0, 0].cpu().numpy()
        spline = spline_upsample(lr_np, axis=1, scale=scale)
        scores = {**score_case(sr_np, hr_np, with_ssim), "mse": float(((sr_np - hr_np) ** 2).mean()),
                  **{f"{k}_spline": v for k, v in score_case(spline, hr_np, with_ssim).items()}}
        if stage == "test":  # eval.py reports them per case
            self.test_scores[str(batch.case_id[0])] = scores
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, on_epoch=True, batch_size=1, sync_dist=True)
        # The centre slice along array axis 0: the thick axis (1) lies in the slice, so the panel shows it.
        mid = hr.shape[2] // 2
        lr_view = lr[:, 0, mid].repeat_interleave(scale, dim=1)  # each thick slice repeated: nearest
        return {"panels": PanelBatch(input=lr_view, prediction=sr[None, mid], reference=hr[:, 0, mid],
                                     case_ids=list(batch.case_id), slice_index=[mid], slice_axis=0,
                                     axis_name="d")}

    def validation_step(self, batch: SRSample, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val", self.hparams.eval_ssim)

    def test_step(self, batch: SRSample, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test", True)
