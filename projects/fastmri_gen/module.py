"""LightningModule of stylish-fastmri: baseline, generative model and comparators, manual GAN optimisation."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.adversarial import AdversarialModule, GeneratorStep, r1_penalty
from common.callbacks import PanelBatch
from common.io import save_json
from common.metrics import ReconstructionVolumeMetric
from projects.fastmri_gen.data import Sample
from projects.fastmri_gen.mobilenet import load_trunk_weights
from projects.fastmri_gen.model import (
    StylishGenerator,
    StylishReconstructor,
    TextureProxy,
    fixed_draws,
    to_three_channels,
)
from projects.fastmri_gen.transforms import fft2c, ifft2c

log = logging.getLogger(__name__)

RANDOM_TRUNKS_WARNING = (
    "model.proxy.weights is null: the texture proxy and the z-encoder start from RANDOM MobileNetV2 weights "
    "(the reference uses ImageNet weights); pass a local torchvision mobilenet_v2 state dict with "
    "model.proxy.weights=PATH (unless model.init_weights supplies both trunks)")


@dataclass(frozen=True)
class ModuleFidelity:
    """Module-side switches of the reference behaviour (True = as the reference code does it; default: fixed).

    The network's side of each defect is an argument of `model.net`; the data side is `DataFidelity`.

    Attributes:
        train_mode_validation: defect 5, validation with dropout and batch statistics active.
        kl_sum: defect 10, KL summed over batch and dimensions (False: mean).
        proxy_reference: defect 11, texture proxy in train mode on inputs without ImageNet normalisation; with the
            reference data consistency the z-encoder and the proxy see the network's zero-one images (False:
            proxy in eval mode, ImageNet-normalised, images from the zero-filled k-space and the raw target).
        single_logit: defect 12, the discriminator's patch map averaged to one logit per sample.
    """

    train_mode_validation: bool = False
    kl_sum: bool = False
    proxy_reference: bool = False
    single_logit: bool = False


def module_fidelity(fidelity: dict | DictConfig | None) -> ModuleFidelity:
    """Return the module switches of `model.fidelity` (missing keys: the fixed side).

    Raises:
        ValueError: a key that is no module switch (the network's switches are arguments of `model.net`).
    """
    given = OmegaConf.to_container(fidelity) if isinstance(fidelity, DictConfig) else dict(fidelity or {})
    known = {f.name for f in fields(ModuleFidelity)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"model.fidelity has no switch {unknown} (module switches: {sorted(known)}); the network's "
                         "reference-vs-fixed choices are arguments of model.net (model/net/<model>_<fidelity>.yaml)")
    return ModuleFidelity(**{key: bool(value) for key, value in given.items()})


def crop_columns(image: torch.Tensor, widths: torch.Tensor, out_width: int) -> torch.Tensor:
    """Return the centre `out_width` columns of each sample's own grid inside a padded batch.

    Args:
        image: `[B, C, H, Wpad]`, sample b centred on its `widths[b]` columns.
        widths: `[B]` ints.
        out_width: output columns w.

    Returns:
        `[B, C, H, w]`.
    """
    padded = image.shape[-1]
    starts = [(padded - int(w)) // 2 + (int(w) - out_width) // 2 for w in widths.tolist()]
    return torch.stack([image[b, ..., s : s + out_width] for b, s in enumerate(starts)])


class ReconstructionModule(AdversarialModule):
    """Trains and evaluates one reconstruction network on fastMRI single-coil slices.

    The generator loss is `l1 * L1 + kl * KL + proxy * L1(w, proxy(GT)) + adv * BCE(D(R | I), 1)` on
    normalised images; the discriminator loss `BCE(D(GT | I), 1) + BCE(D(R | I), 0) (+ R1)`. One
    generator then one discriminator step per batch (`common.adversarial`). Metrics are computed on
    de-normalised magnitudes with the fastMRI volume rules, per acceleration.

    Args:
        net: config of the network (`StylishReconstructor`, `StylishGenerator`, `FastMRIUnet`, `ZeroFilled`)
            with every constructor argument (`conf/fastmri_gen/model/net/<model>_<fidelity>.yaml`).
        optimizer / d_optimizer: partial optimiser configs of the generator / discriminator.
        discriminator: config of the `PatchDiscriminator`, or None (no adversarial term).
        scheduler / d_scheduler: optional partial LR schedulers of the generator / discriminator (stepped every
            epoch).
        loss: weights `l1`, `kl`, `proxy`, `adv`, `r1`.
        fidelity: the module-side reference switches (`ModuleFidelity` fields; default: all fixed).
        proxy: `{"weights": local MobileNetV2 file or None, "highpass_sigma": 0 (off) or pixels,
            "trainable": False}`; the same weights initialise the z-encoder trunk.
        accelerations: accelerations reported separately in validation and test.
        paper_params: the paper's parameter counts of the reference build (the paper experiment copies them
            to the top-level `reference_params` read by the model card).
        channels_last: keep the network's and the discriminator's weights channels-last (faster 2-D
            convolutions on CPU: a demo-size baseline step 0.8x the time); the convolutions' outputs follow.
    """

    def __init__(self, net: Any, optimizer: Any = None, d_optimizer: Any = None, discriminator: Any = None,
                 scheduler: Any = None, d_scheduler: Any = None, loss: dict | None = None,
                 fidelity: dict | None = None, proxy: dict | None = None,
                 accelerations: list[int] | tuple[int, ...] = (4, 8, 16, 32), paper_params: dict | None = None,
                 channels_last: bool = False) -> None:
        super().__init__(optimizer, d_optimizer, scheduler, d_scheduler)
        self.fidelity = module_fidelity(fidelity)
        self.weights = {"l1": 1.0, "kl": 0.01, "proxy": 1.0, "adv": 0.01, "r1": 0.0, **(loss or {})}
        self.net = instantiate(net)
        self.generative = isinstance(self.net, StylishGenerator)
        self.stylish = isinstance(self.net, (StylishReconstructor, StylishGenerator))
        self.trainable = any(p.requires_grad for p in self.net.parameters())
        use_d = discriminator is not None and self.weights["adv"] > 0 and self.trainable
        self.discriminator = instantiate(discriminator) if use_d else None
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            if self.discriminator is not None:
                self.discriminator = self.discriminator.to(memory_format=torch.channels_last)
        self.proxy_cfg = {"weights": None, "highpass_sigma": 0.0, "trainable": False, **(proxy or {})}
        self.proxy = TextureProxy(trainable=bool(self.proxy_cfg["trainable"])) if self.generative else None
        if self.generative and self.proxy_cfg["weights"]:
            load_trunk_weights(self.proxy.trunk, self.proxy_cfg["weights"])
            load_trunk_weights(self.net.z_encoder.trunk, self.proxy_cfg["weights"])
        self.metric_keys = [f"x{int(a)}" for a in accelerations]
        self.metrics = nn.ModuleDict({k: ReconstructionVolumeMetric(psnr_range="ref_max")
                                      for k in ["all", *self.metric_keys]})

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Returns a model config stored by an earlier version in today's layout (see `legacy`)."""
        from projects.fastmri_gen.legacy import upgrade_model_config

        return upgrade_model_config(config)

    def on_fit_start(self) -> None:
        if self.generative and not self.proxy_cfg["weights"] and getattr(self._trainer, "is_global_zero", True):
            log.warning(RANDOM_TRUNKS_WARNING)

    # ------------------------------------------------------------------------------------ forward

    def complex_mode(self) -> bool:
        """Whether the network works on the complex image with data consistency on the measured k-space."""
        if not self.stylish:
            return False
        return bool((self.net.unet if self.generative else self.net).complex_mode)

    def _texture_images(self, batch: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the z-encoder input (zero-filled) and the proxy input (target), `[B, 1, h, w]` in [0, 1]."""
        if self.fidelity.proxy_reference and not self.complex_mode():
            return batch.image.clamp(0, 1), batch.target_norm.clamp(0, 1)
        peak = batch.zero_filled.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        target = batch.target[:, None]
        return (batch.zero_filled / peak).clamp(0, 1), (target / target.amax((1, 2, 3), True).clamp_min(1e-12))

    def forward(self, batch: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the prediction in normalised units `[B, 1, h, w]` (like `batch.target_norm`) and extras."""
        if not self.stylish:
            return self.net(batch.image), {}
        if self.complex_mode():
            inputs = {"kspace": torch.view_as_complex(batch.kspace.float().contiguous()),
                      "mask": batch.mask, "widths": batch.width}
            image = batch.image_complex
        else:
            inputs = {"known_freq": batch.known_freq, "mask": batch.mask_image}
            image = batch.image
        extras: dict[str, torch.Tensor] = {}
        if self.generative:
            texture, _ = self._texture_images(batch)
            out, extras["mu"], extras["logvar"], extras["w"] = self.net(image, texture, **inputs)
        else:
            out = self.net(image, **inputs)
        if not self.complex_mode():
            return out, extras
        magnitude = torch.sqrt(out[:, 0:1].float() ** 2 + out[:, 1:2].float() ** 2 + 1e-12)
        magnitude = crop_columns(magnitude, batch.width, batch.target.shape[-1])
        return magnitude - (batch.offset / batch.scale).reshape(-1, 1, 1, 1), extras

    @staticmethod
    def to_raw(pred: torch.Tensor, batch: Sample) -> torch.Tensor:
        """Return normalised predictions `[B, 1, h, w]` as raw magnitudes `[B, h, w]` (target units)."""
        return (pred[:, 0].float() * batch.scale.reshape(-1, 1, 1) + batch.offset.reshape(-1, 1, 1))

    # ------------------------------------------------------------------------------------ losses

    def _highpass(self, image: torch.Tensor) -> torch.Tensor:
        sigma = float(self.proxy_cfg["highpass_sigma"])
        if sigma <= 0:
            return image
        rows, cols = image.shape[-2:]
        fy = torch.fft.fftshift(torch.fft.fftfreq(rows, device=image.device))[:, None]
        fx = torch.fft.fftshift(torch.fft.fftfreq(cols, device=image.device))[None, :]
        lowpass = torch.exp(-2 * (torch.pi * sigma) ** 2 * (fx**2 + fy**2))
        high = ifft2c(fft2c(image) * (1 - lowpass)).real
        return (high - high.amin((2, 3), True)) / (high.amax((2, 3), True) - high.amin((2, 3), True) + 1e-12)

    def _texture_losses(self, batch: Sample, extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu, logvar, w = (extras[k].float() for k in ("mu", "logvar", "w"))
        terms = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
        kl = terms.sum() if self.fidelity.kl_sum else terms.mean()
        _, target_image = self._texture_images(batch)
        self.proxy.train(self.fidelity.proxy_reference or bool(self.proxy_cfg["trainable"]))
        rgb = to_three_channels(self._highpass(target_image), imagenet_norm=not self.fidelity.proxy_reference)
        with torch.set_grad_enabled(bool(self.proxy_cfg["trainable"])):
            proxy_w = self.proxy(rgb, self.net.grid)
        proxy_w = proxy_w[:, 0] if proxy_w.shape[1] == 1 and w.dim() == 2 else proxy_w
        return {"kl": kl, "proxy": F.l1_loss(w, proxy_w)}

    def _logits(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(image, condition).float()
        return logits.mean(dim=(1, 2, 3)) if self.fidelity.single_logit else logits

    def _bce(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))

    def generator_loss(self, batch: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Return (total loss, its terms, the normalised prediction)."""
        pred, extras = self(batch)
        terms = {"l1": F.l1_loss(pred.float(), batch.target_norm)}
        if self.generative:
            terms.update(self._texture_losses(batch, extras))
        if self.discriminator is not None:
            terms["adv"] = self._bce(self._logits(pred, batch.image), True)
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms, pred

    def discriminator_loss(self, batch: Sample, pred: torch.Tensor) -> torch.Tensor:
        """Return the discriminator loss on real targets and detached predictions (+ R1 on reals)."""
        real = batch.target_norm.detach().requires_grad_(self.weights["r1"] > 0)
        real_logits = self._logits(real, batch.image)
        loss = self._bce(real_logits, True) + self._bce(self._logits(pred.detach(), batch.image), False)
        if self.weights["r1"] > 0:
            loss = loss + self.weights["r1"] * r1_penalty(real_logits, real)
        return loss

    # ------------------------------------------------------------------------------------ steps

    def generator_parameters(self) -> list[nn.Parameter]:
        params = list(self.net.parameters())
        if self.proxy is not None and self.proxy_cfg["trainable"]:
            params += list(self.proxy.parameters())
        return params

    def generator_step(self, batch: Sample) -> GeneratorStep:
        total, terms, pred = self.generator_loss(batch)
        return GeneratorStep(total, {f"train/{k}": v for k, v in terms.items()}, pred.shape[0], pred)

    @property
    def evaluates_in_train_mode(self) -> bool:
        """Whether reconstructions use dropout and batch statistics (defect 5 of the reference fidelity)."""
        return self.fidelity.train_mode_validation and self.stylish

    def reconstruct(self, batch: Sample) -> torch.Tensor:
        """Return the raw-scale reconstructions `[B, h, w]` (in train mode under defect 5, as the reference)."""
        if self.evaluates_in_train_mode:
            self.net.train()
        with fixed_draws(self.net):
            pred, _ = self(batch)
        return self.to_raw(pred, batch)

    def _evaluate(self, batch: Sample) -> dict[str, Any]:
        raw = self.reconstruct(batch)
        peak = torch.where(batch.max_value > 0, batch.max_value, batch.target.amax(dim=(1, 2)))
        groups: dict[str, list[int]] = {"all": list(range(raw.shape[0]))}
        for row, acceleration in enumerate(batch.acceleration.tolist()):
            groups.setdefault(f"x{acceleration}", []).append(row)
        for key, rows in groups.items():
            if key in self.metrics:
                self.metrics[key].update(raw[rows], batch.target[rows], [batch.fname[i] for i in rows],
                                         batch.slice_num[rows], data_range=peak[rows])
        # Slices as stored (fastMRI images are displayed as read); the slice with the most signal of each volume.
        panels = PanelBatch(input=batch.zero_filled[:, 0], prediction=raw, reference=batch.target,
                            case_ids=list(batch.fname), slice_index=batch.slice_num, axis_name="z",
                            score=batch.target.float().mean(dim=(1, 2)))
        return {"prediction": raw, "panels": panels}

    def _log_metrics(self, stage: str) -> None:
        # every rank computes every metric (a collective call under DDP); accelerations not seen are NaN
        per_volume: dict[str, dict[str, dict[str, float]]] = {}
        for key, metric in self.metrics.items():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*compute.*before the ``update``.*")
                values = metric.compute()
                cases = metric.compute_per_case()  # cached by the call above: no second collective
            metric.reset()
            if cases:
                per_volume[key] = cases
            prefix = f"{stage}/" if key == "all" else f"{stage}/{key}/"
            finite = {f"{prefix}{name}": v.float() for name, v in values.items() if bool(torch.isfinite(v))}
            if finite or key == "all":
                self.log_dict(finite or {f"{prefix}{name}": v.float() for name, v in values.items()})
        self.log(f"{stage}/volumes", float(len(per_volume.get("all", {}))))
        self._write_per_volume(stage, per_volume)

    def _write_per_volume(self, stage: str, per_volume: dict) -> None:
        """Write `<default_root_dir>/volume_metrics/<stage>.json` (rank 0): `{"all"|"x4"|...: {fname: scores}}`."""
        trainer = self._trainer
        if trainer is None or trainer.global_rank != 0 or trainer.sanity_checking:
            return
        save_json(Path(trainer.default_root_dir) / "volume_metrics" / f"{stage}.json", per_volume)

    def validation_step(self, batch: Sample, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: Sample, batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Sample, batch_idx: int) -> dict[str, Any]:
        return {"reconstruction": self.reconstruct(batch).float().cpu(), "fname": list(batch.fname),
                "slice_num": batch.slice_num.cpu(), "acceleration": batch.acceleration.cpu()}
