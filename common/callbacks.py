"""Callbacks shared by every project."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

PANEL_ORDER = ("input", "prediction", "reference", "error")


def _to_unit(image: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """Returns a [H, W] float image scaled to [0, 1] (errors: |x| / max|x|)."""
    image = image.detach().float().cpu()
    while image.dim() > 2:
        image = image[0]
    if symmetric:
        image = image.abs()
        return image / image.max().clamp_min(1e-12)
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo).clamp_min(1e-12)


def panel_strip(panels: dict[str, torch.Tensor], sample: int = 0) -> torch.Tensor:
    """Returns one [1, H, sum(W)] image: the panels of one sample side by side, each scaled to [0, 1].

    Args:
        panels: name -> tensor [B, H, W] or [B, C, H, W] (the first channel is shown). Known names are put in the
            order input, prediction, reference, error; others follow. "error" is shown as |error| / max.
        sample: which batch element to show.
    """
    names = [n for n in PANEL_ORDER if n in panels] + [n for n in panels if n not in PANEL_ORDER]
    images = [_to_unit(panels[n][sample], symmetric=(n == "error")) for n in names]
    height = max(im.shape[0] for im in images)
    padded = [torch.nn.functional.pad(im, (0, 2, 0, height - im.shape[0])) for im in images]
    return torch.cat(padded, dim=1).unsqueeze(0)


class ImagePanels(pl.Callback):
    """Logs input / prediction / reference / error panels of fixed validation batches to TensorBoard.

    A module opts in by returning `{"panels": {"input": x, "prediction": p, "reference": y, "error": p - y}}`
    (tensors [B, H, W] or [B, C, H, W]) from `validation_step`. The first `n_batches` validation batches are
    used; validation data is not shuffled, so they are the same cases every epoch. Rank 0 only.
    """

    def __init__(self, n_batches: int = 2) -> None:
        self.n_batches = n_batches

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx >= self.n_batches or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not isinstance(outputs, dict) or "panels" not in outputs:
            return
        strip = panel_strip(outputs["panels"])
        for logger in trainer.loggers:
            add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
            if add_image is not None:
                add_image(f"val/panels/{dataloader_idx}_{batch_idx}", strip, trainer.global_step)
