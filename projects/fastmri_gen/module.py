"""LightningModule of stylish-fastmri: baseline, generative model and comparators, manual GAN optimisation."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.callbacks import PanelBatch
from common.io import save_json
from common.metrics import ReconstructionVolumeMetric
from common.module import log_train_loss
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

# Module-side switches of the reference behaviour (True = as the reference code does it); see README.
MODULE_FIDELITY = {
    "dc_reference": True,  # 3: magnitude FFT, un-normalised, real part; else complex orthonormal DC
    "unet_reference": True,  # 4: no residual, hardsigmoid, bilinear resize, Dropout2d 0.5
    "train_mode_validation": True,  # 5: validation with dropout / batch statistics active
    "adain_reference": True,  # 9: joint (C, H, W) statistics, / sqrt(std), gamma without +1
    "kl_sum": True,  # 10: KL summed over batch and dimensions
    "proxy_reference": True,  # 11: proxy in train mode, no ImageNet normalisation, RandomState(0) z and noise at test
    "single_logit": True,  # 12: patch map averaged to one logit per sample
    # measured causes of slow learning beyond the spec's table (see README)
    "threshold_init_reference": True,  # 14: skip soft thresholds start at 1 (zeroing most skip features), else 0
    "noise_init_reference": True,  # 15: noise-input scales start N(0, 1) (noise as strong as the features), else 0
    "spectral_norm_reference": True,  # 16: spectral normalisation of the U-Net convolutions, else plain
}


def fidelity_flags(fidelity: dict | DictConfig | None) -> dict[str, bool]:
    """Return the module-side switches, defaults = reference behaviour, overridden by `fidelity`."""
    given = OmegaConf.to_container(fidelity) if isinstance(fidelity, DictConfig) else dict(fidelity or {})
    return {key: bool(given.get(key, default)) for key, default in MODULE_FIDELITY.items()}


def stylish_kwargs(flags: dict[str, bool]) -> dict[str, Any]:
    """Return the StylishReconstructor / StylishGenerator keyword arguments implied by the switches."""
    magnitude = flags["dc_reference"]
    reference_unet = flags["unet_reference"]
    return {
        "data_consistency": "reference" if magnitude else "complex",
        "residual": not reference_unet,
        "output": "hardsigmoid" if reference_unet and magnitude else "linear",
        "size_fit": "resize" if reference_unet else "pad",
        "output_dc": "none" if reference_unet or magnitude else "hard",
        "dropout": 0.5 if reference_unet else 0.0,
        "modulation": "reference" if flags["adain_reference"] else "per_channel",
        "update": "complex" if magnitude else "magnitude",
        "threshold_init": 1.0 if flags["threshold_init_reference"] else 0.0,
        "noise_init": "normal" if flags["noise_init_reference"] else "zero",
        "spectral_norm": flags["spectral_norm_reference"],
    }


def build_net(net: DictConfig | dict, flags: dict[str, bool]) -> nn.Module:
    """Instantiate the network; stylish networks get the switch-derived defaults under their config."""
    cfg = OmegaConf.to_container(net, resolve=True) if isinstance(net, DictConfig) else dict(net)
    cls = get_class(cfg["_target_"])
    if issubclass(cls, (StylishReconstructor, StylishGenerator)):
        defaults = stylish_kwargs(flags)
        if issubclass(cls, StylishGenerator):
            defaults.update(imagenet_norm=not flags["proxy_reference"],
                            test_latent="fixed_noise" if flags["proxy_reference"] else "mean",
                            draw_source="numpy" if flags["proxy_reference"] else "torch")
        cfg = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}  # null: from the switches
    return instantiate(cfg)


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


class ReconstructionModule(pl.LightningModule):
    """Trains and evaluates one reconstruction network on fastMRI single-coil slices.

    The generator loss is `l1 * L1 + kl * KL + proxy * L1(w, proxy(GT)) + adv * BCE(D(R | I), 1)` on
    normalised images; the discriminator loss `BCE(D(GT | I), 1) + BCE(D(R | I), 0) (+ R1)`. One
    generator then one discriminator step per batch (manual optimisation). Metrics are computed on
    de-normalised magnitudes with the fastMRI volume rules, per acceleration.

    Args:
        net: config of the network (`StylishReconstructor`, `StylishGenerator`, `FastMRIUnet`, `ZeroFilled`).
        optimizer / d_optimizer: partial optimiser configs of the generator / discriminator.
        discriminator: config of the `PatchDiscriminator`, or None (no adversarial term).
        scheduler: optional partial LR scheduler of the generator (stepped every epoch).
        loss: weights `l1`, `kl`, `proxy`, `adv`, `r1`.
        fidelity: reference switches (`MODULE_FIDELITY` keys; the data keys are ignored here).
        proxy: `{"weights": local MobileNetV2 file or None, "highpass_sigma": 0 (off) or pixels,
            "trainable": False}`; the same weights initialise the z-encoder trunk.
        accelerations: accelerations reported separately in validation and test.
        paper_params: the paper's parameter counts of the reference build (the paper experiment copies them
            to the top-level `reference_params` read by the model card).
    """

    def __init__(self, net: Any, optimizer: Any = None, d_optimizer: Any = None, discriminator: Any = None,
                 scheduler: Any = None, loss: dict | None = None, fidelity: dict | None = None,
                 proxy: dict | None = None, accelerations: list[int] | tuple[int, ...] = (4, 8, 16, 32),
                 paper_params: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.optimizer_names = ("generator", "discriminator")  # TensorBoard: lr/generator, lr/discriminator
        self.flags = fidelity_flags(fidelity)
        self.weights = {"l1": 1.0, "kl": 0.01, "proxy": 1.0, "adv": 0.01, "r1": 0.0, **(loss or {})}
        self.net = build_net(net, self.flags)
        self.generative = isinstance(self.net, StylishGenerator)
        self.stylish = isinstance(self.net, (StylishReconstructor, StylishGenerator))
        self.trainable = any(p.requires_grad for p in self.net.parameters())
        use_d = discriminator is not None and self.weights["adv"] > 0 and self.trainable
        self.discriminator = instantiate(discriminator) if use_d else None
        self.proxy_cfg = {"weights": None, "highpass_sigma": 0.0, "trainable": False, **(proxy or {})}
        self.proxy = TextureProxy(trainable=bool(self.proxy_cfg["trainable"])) if self.generative else None
        if self.generative and self.proxy_cfg["weights"]:
            load_trunk_weights(self.proxy.trunk, self.proxy_cfg["weights"])
            load_trunk_weights(self.net.z_encoder.trunk, self.proxy_cfg["weights"])
        self.metric_keys = [f"x{int(a)}" for a in accelerations]
        self.metrics = nn.ModuleDict({k: ReconstructionVolumeMetric(psnr_range="ref_max")
                                      for k in ["all", *self.metric_keys]})

    def on_fit_start(self) -> None:
        if self.generative and not self.proxy_cfg["weights"] and getattr(self._trainer, "is_global_zero", True):
            log.warning(RANDOM_TRUNKS_WARNING)

    # ------------------------------------------------------------------------------------ forward

    def complex_mode(self) -> bool:
        return self.stylish and not self.flags["dc_reference"]

    def _texture_images(self, batch: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the z-encoder input (zero-filled) and the proxy input (target), `[B, 1, h, w]` in [0, 1]."""
        if self.flags["dc_reference"] and self.flags["proxy_reference"]:
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
        kl = terms.sum() if self.flags["kl_sum"] else terms.mean()
        _, target_image = self._texture_images(batch)
        self.proxy.train(self.flags["proxy_reference"] or bool(self.proxy_cfg["trainable"]))
        rgb = to_three_channels(self._highpass(target_image), imagenet_norm=not self.flags["proxy_reference"])
        with torch.set_grad_enabled(bool(self.proxy_cfg["trainable"])):
            proxy_w = self.proxy(rgb, self.net.grid)
        proxy_w = proxy_w[:, 0] if proxy_w.shape[1] == 1 and w.dim() == 2 else proxy_w
        return {"kl": kl, "proxy": F.l1_loss(w, proxy_w)}

    def _logits(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(image, condition).float()
        return logits.mean(dim=(1, 2, 3)) if self.flags["single_logit"] else logits

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
            grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.weights["r1"] * grad.pow(2).sum(dim=(1, 2, 3)).mean()
        return loss

    # ------------------------------------------------------------------------------------ steps

    def training_step(self, batch: Sample, batch_idx: int) -> torch.Tensor:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        # toggling freezes the other optimiser's parameters, so the G step computes no D gradients
        self.toggle_optimizer(optimizers[0])
        total, terms, pred = self.generator_loss(batch)
        optimizers[0].zero_grad(set_to_none=True)
        self.manual_backward(total)
        optimizers[0].step()
        self.untoggle_optimizer(optimizers[0])
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        if self.discriminator is not None:
            self.toggle_optimizer(optimizers[1])
            d_loss = self.discriminator_loss(batch, pred)
            optimizers[1].zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            optimizers[1].step()
            self.untoggle_optimizer(optimizers[1])
            logs["train/d_loss"] = d_loss.detach()
        log_train_loss(self, total.detach(), pred.shape[0])
        self.log_dict(logs, batch_size=pred.shape[0])
        return total.detach()

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def reconstruct(self, batch: Sample) -> torch.Tensor:
        """Return the raw-scale reconstructions `[B, h, w]` (in train mode under defect 5, as the reference)."""
        if self.flags["train_mode_validation"] and self.stylish:
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

    # ------------------------------------------------------------------------------------ optimisers

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            return None
        if self.proxy is not None and self.proxy_cfg["trainable"]:
            params += list(self.proxy.parameters())
        optimizers = [instantiate(self.hparams.optimizer)(params=params)]
        if self.discriminator is not None:
            optimizers.append(instantiate(self.hparams.d_optimizer)(params=self.discriminator.parameters()))
        if self.hparams.scheduler is None:
            return optimizers
        return optimizers, [instantiate(self.hparams.scheduler)(optimizer=optimizers[0])]
