"""Callbacks shared by every project: validation image panels and learning rates in TensorBoard.

Tags every project shares (besides the `train/loss`, `val/<metric>` scalars the modules log):
- `lr/<optimizer>` (one parameter group) or `lr/<optimizer>/<group>`, at every logged training step;
- `val/<case>/<axis><index>` images: input | prediction | reference | error of one slice of a validation case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from common.panels import AS_STORED, DisplayView, panel_row, pixel_aspect, radiological_view


@dataclass
class PanelBatch:
    """The panels of one validation batch: what a module returns under `"panels"` from `validation_step`.

    Attributes:
        input: `[B, H, W]` the input slice on the reference's grid (e.g. nearest-upsampled for super-resolution).
        prediction: `[B, H, W]` the output (for segmentation a mask or probability, >= 0.5 is foreground).
        reference: `[B, H, W]` the ground truth.
        case_ids: the case of each slice (the datamodule's `case_affine(case_id)` gives its orientation).
        slice_index: `[B]` the index of each slice along `slice_axis`.
        slice_axis: the array axis of the case's cached volume the slices were cut along.
        axis_name: the letter the tag gives that axis (`val/<case>/<axis_name><index>`).
        names: how the tags name the cases (default `case_ids`), e.g. with a factor: `liver_3_x4`.
        segmentation: draw prediction and reference as masks over the input.
        window: fixed intensity window `(lo, hi)` (e.g. a CT window); default: from the reference.
        score: `[B]` which slice of a case to show, the highest over the validation epoch; it must depend on the
            reference only (e.g. foreground pixels), so that the same slice is shown every epoch. Default: the
            first slice seen.
    """

    input: torch.Tensor
    prediction: torch.Tensor
    reference: torch.Tensor
    case_ids: Sequence[str]
    slice_index: Sequence[int] | torch.Tensor
    slice_axis: int = 2
    axis_name: str = "z"
    names: Sequence[str] | None = None
    segmentation: bool = False
    window: tuple[float, float] | None = None
    score: torch.Tensor | None = field(default=None)

    def __len__(self) -> int:
        return len(self.case_ids)


@dataclass
class _Chosen:
    """One slice kept for display: its slices on the CPU, the score it won with, how to draw it."""

    score: float
    slices: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    case_id: str
    tag: str
    slice_axis: int
    segmentation: bool
    window: tuple[float, float] | None


def logging_step(trainer: pl.Trainer) -> int:
    """Returns the step Lightning logs scalars at (optimiser steps of a GAN count once per batch here too)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _image_writers(trainer: pl.Trainer) -> list[Any]:
    """Returns the `add_image` methods of the trainer's loggers (TensorBoard's SummaryWriter)."""
    writers = (getattr(getattr(lg, "experiment", None), "add_image", None) for lg in trainer.loggers)
    return [w for w in writers if w is not None]


class ImagePanels(pl.Callback):
    """Logs input | prediction | reference | error panels of fixed validation slices to TensorBoard.

    A module opts in by returning `{"panels": PanelBatch(...)}` from `validation_step`. Over each validation
    epoch the callback keeps, for each of the first `max_panels` cases it meets, the slice with the highest
    `score`, and logs it at the end of the epoch as `val/<case>/<axis><index>`, in radiological orientation
    when the datamodule offers `case_affine(case_id)` (an affine of the cached volume), else as stored. Validation
    is not shuffled and the score depends on the reference only, so the tags are the same every epoch. Rank 0
    only; nothing is drawn during the sanity check or without a TensorBoard logger.

    Args:
        max_panels: cases shown.
        min_size: slices are enlarged (integer factors, nearest neighbour, voxels in proportion) until their
            shorter side reaches this ...
        max_size: ... as long as their longer side stays within this.
    """

    def __init__(self, max_panels: int = 4, min_size: int = 256, max_size: int = 1024) -> None:
        self.max_panels = max_panels
        self.min_size = min_size
        self.max_size = max_size
        self._chosen: dict[str, _Chosen] = {}

    def _active(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking and bool(_image_writers(trainer))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._chosen = {}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        panels = outputs.get("panels") if isinstance(outputs, dict) else None
        if isinstance(panels, PanelBatch) and self._active(trainer):
            self.offer(panels)

    def offer(self, panels: PanelBatch) -> None:
        """Keeps the slices of `panels` that belong to a shown case and beat its current slice's score."""
        names = list(panels.names or panels.case_ids)
        scores = panels.score.detach().float().cpu().tolist() if panels.score is not None else [0.0] * len(names)
        for b, name in enumerate(names):
            kept = self._chosen.get(name)
            if (kept is None and len(self._chosen) >= self.max_panels) or (kept is not None and scores[b] <= kept.score):
                continue
            index = int(panels.slice_index[b])
            slices = tuple(t[b].detach().float().cpu().clone() for t in (panels.input, panels.prediction,
                                                                            panels.reference))
            self._chosen[name] = _Chosen(scores[b], slices, str(panels.case_ids[b]),  # type: ignore[arg-type]
                                         f"val/{name}/{panels.axis_name}{index}", panels.slice_axis,
                                         panels.segmentation, panels.window)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._chosen or not self._active(trainer):
            return
        step = logging_step(trainer)
        for chosen in self._chosen.values():
            view, aspect = _geometry(trainer, chosen)
            row = panel_row(*chosen.slices, view=view, segmentation=chosen.segmentation, window=chosen.window,
                            aspect=aspect, min_size=self.min_size, max_size=self.max_size)
            for add_image in _image_writers(trainer):
                add_image(chosen.tag, row, step, dataformats="CHW")
        self._chosen = {}


def _geometry(trainer: pl.Trainer, chosen: _Chosen) -> tuple[DisplayView, float]:
    """Returns the radiological view of a chosen slice and its voxels' aspect, from its case's affine (else the
    slice as stored, square voxels)."""
    case_affine = getattr(getattr(trainer, "datamodule", None), "case_affine", None)
    affine = case_affine(chosen.case_id) if case_affine is not None else None
    if affine is None:
        return AS_STORED, 1.0
    view = radiological_view(np.asarray(affine), chosen.slice_axis)
    return view, pixel_aspect(affine, chosen.slice_axis, view)


def learning_rates(optimizers: Sequence[torch.optim.Optimizer], names: Sequence[str] | None = None
                   ) -> dict[str, float]:
    """Returns `{"lr/<optimizer>[/<group>]": rate}` of every parameter group.

    Args:
        optimizers: the trainer's optimisers, in order.
        names: their names (e.g. `("generator", "discriminator")`); default the class name in lower case,
            with `_1`, `_2` appended to repeats.

    A group is named by its `"name"` key, else by its position; an optimiser with one group gets no group name.
    """
    tags: dict[str, float] = {}
    seen: dict[str, int] = {}
    for i, optimizer in enumerate(optimizers):
        name = names[i] if names is not None and i < len(names) else type(optimizer).__name__.lower()
        count = seen.get(name, 0)
        seen[name] = count + 1
        name = f"{name}_{count}" if count else name
        groups = optimizer.param_groups
        for g, group in enumerate(groups):
            tag = f"lr/{name}" if len(groups) == 1 else f"lr/{name}/{group.get('name', g)}"
            tags[tag] = float(group["lr"])
    return tags


class LearningRates(pl.Callback):
    """Logs the learning rate of every optimiser as `lr/<name>` at every logged training step.

    Names come from the module's `optimizer_names` attribute when it has one (`("generator", "discriminator")`),
    else from the optimiser's class (`lr/adam`); see `learning_rates`. Logged through the module, so the values
    land at the steps and cadence (`trainer.log_every_n_steps`) of the training scalars.
    """

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Lightning writes step scalars every `log_every_n_steps` only and drops what other steps log; skipping
        # those steps saves a `log` call per optimiser group and step (as Lightning's LearningRateMonitor does)
        connector = getattr(trainer, "_logger_connector", None)
        if not trainer.loggers or (connector is not None and not connector.should_update_logs):
            return
        names = getattr(pl_module, "optimizer_names", None)
        for tag, rate in learning_rates(trainer.optimizers, names).items():
            pl_module.log(tag, rate, on_step=True, on_epoch=False, batch_size=1)
