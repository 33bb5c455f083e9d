"""Validation panels: radiological orientation from any axis order, shared windows, overlays, sizes, selection."""

from __future__ import annotations

import csv
import itertools

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from common.callbacks import ImagePanels, LearningRates, PanelBatch, learning_rates
from common.module import writes_logs_this_step
from common.panels import (
    ABOVE_COLOUR,
    AS_STORED,
    DisplayView,
    enlargement,
    panel_row,
    pixel_aspect,
    radiological_view,
)

# What the top-left corner of each view shows: (world axis, sign) of the screen's up and left directions.
SCREEN = {"axial": ((1, +1), (0, +1)),     # anterior up, patient's right (+x) on the left
          "coronal": ((2, +1), (0, +1)),   # superior up, patient's right on the left
          "sagittal": ((2, +1), (1, +1))}  # superior up, anterior on the left
PLANE_OF_NORMAL = {2: "axial", 1: "coronal", 0: "sagittal"}


def _affine(perm: tuple[int, ...], signs: tuple[int, ...]) -> np.ndarray:
    """Returns an affine whose voxel axis i runs along world axis perm[i] in direction signs[i] (1 mm, oblique-free)."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (world, sign) in enumerate(zip(perm, signs)):
        affine[world, axis] = 2.0 * sign  # 2 mm voxels: spacing must not matter
    return affine


def _corner_slice(affine: np.ndarray, slice_axis: int, shape=(5, 6, 7)) -> torch.Tensor:
    """Returns the central slice along `slice_axis` of a volume that is 1 only at the voxel closest to the
    screen's top-left corner of that plane (e.g. right-anterior for an axial slice)."""
    normal = int(np.argmax(np.abs(affine[:3, slice_axis])))
    (up, up_sign), (left, left_sign) = SCREEN[PLANE_OF_NORMAL[normal]]
    index = []
    for axis in range(3):
        world = int(np.argmax(np.abs(affine[:3, axis])))
        grows = np.sign(affine[world, axis])
        want = up_sign if world == up else left_sign if world == left else 0
        index.append(shape[axis] // 2 if want == 0 else (shape[axis] - 1 if grows == want else 0))
    volume = torch.zeros(shape)
    volume[tuple(index)] = 1.0
    return volume.select(slice_axis, shape[slice_axis] // 2)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_radiological_view_puts_right_anterior_superior_at_the_top_left_for_every_axis_order(perm):
    for signs in itertools.product((1, -1), repeat=3):
        affine = _affine(perm, signs)
        for slice_axis in range(3):
            shown = radiological_view(affine, slice_axis).apply(_corner_slice(affine, slice_axis))
            assert shown[0, 0] == 1.0, (perm, signs, slice_axis)


def test_radiological_view_of_common_layouts():
    ras, lps = np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0])
    # RAS+ axial [X, Y]: rows must run anterior -> posterior, columns right -> left: both reversed, transposed.
    assert radiological_view(ras, 2) == DisplayView(transpose=True, flip_rows=True, flip_cols=True)
    # DICOM-ordered arrays [row, column] of an axial CT already are radiological: rows A->P, columns R->L.
    dicom = lps[:, [1, 0, 2, 3]]
    assert radiological_view(dicom, 2) == AS_STORED
    with pytest.raises(ValueError):
        radiological_view(ras, 3)
    assert radiological_view(np.zeros((4, 4)), 2) == AS_STORED


def test_enlargement_reaches_256_pixels_without_passing_the_cap():
    assert enlargement(64, 64) == (4, 4) and enlargement(16, 20) == (16, 16) and enlargement(300, 320) == (1, 1)
    assert enlargement(16, 512) == (2, 2)  # the long side stops at 1024 px
    # 32 slices of 2.5 mm by 128 pixels of 0.8 mm: 288 x 384 px, the voxels 3 times as tall as wide
    assert enlargement(32, 128, aspect=2.5 / 0.8) == (9, 3)
    assert enlargement(128, 32, aspect=0.8 / 2.5) == (3, 9)


def test_pixel_aspect_follows_the_displayed_axes():
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    coronal = radiological_view(affine, 1)  # [x, z]: z becomes the rows
    assert coronal.transpose and pixel_aspect(affine, 1, coronal) == pytest.approx(2.5 / 0.8)
    assert pixel_aspect(affine, 1, AS_STORED) == pytest.approx(0.8 / 2.5)
    assert pixel_aspect(affine, 2, radiological_view(affine, 2)) == pytest.approx(1.0)


def test_panel_row_shares_one_window_so_a_bias_shows():
    reference = torch.linspace(0, 1, 32 * 40).reshape(32, 40)
    prediction = reference + 0.2
    row = panel_row(reference, prediction, reference)
    assert row.shape[0] == 3 and row.shape[1] >= 256 and row.shape[2] > 4 * 256
    body, width = row[:, -32 * 8:], 40 * 8  # 8x enlarged; the caption strip sits above
    columns = [body[:, :, k * (width + 4): k * (width + 4) + width] for k in range(4)]
    assert columns[1].mean() > columns[2].mean() + 0.1  # brighter on the reference's window
    assert torch.allclose(columns[0], columns[2])  # input == reference here: the same grey values
    red, _, blue = columns[3].mean(dim=(1, 2))
    assert red > 0.5 and blue < 0.1 and ABOVE_COLOUR[0] > ABOVE_COLOUR[2]  # positive error: red


def test_segmentation_panels_draw_masks_over_the_image():
    image = torch.rand(16, 16)
    reference = torch.zeros(16, 16)
    reference[4:8, 4:8] = 1
    prediction = torch.zeros(16, 16)
    prediction[6:10, 6:10] = 0.9
    row = panel_row(image, prediction, reference, segmentation=True)
    body = row[:, -256:]
    columns = [body[:, :, k * 260: k * 260 + 256] for k in range(4)]
    assert torch.equal(columns[1][:, :96, :96], columns[0][:, :96, :96])  # untouched outside the mask
    assert not torch.equal(columns[1], columns[0]) and not torch.equal(columns[2], columns[1])
    fp = columns[3][:, 9 * 16 + 8, 9 * 16 + 8]  # predicted, not in the reference: red
    fn = columns[3][:, 4 * 16 + 8, 4 * 16 + 8]  # in the reference, missed: blue
    assert fp[0] > fp[2] and fn[2] > fn[0]
    with pytest.raises(ValueError):
        panel_row(image, prediction[:8], reference)


def test_image_panels_keep_the_best_slice_of_the_first_cases():
    callback = ImagePanels(max_panels=2)
    for case, scores in (("a", [1.0, 5.0]), ("b", [2.0, 0.0]), ("c", [9.0, 9.0]), ("a", [3.0, 4.0])):
        callback.offer(PanelBatch(input=torch.zeros(2, 4, 4), prediction=torch.zeros(2, 4, 4),
                                  reference=torch.full((2, 4, 4), scores[1]), case_ids=[case, case],
                                  slice_index=torch.tensor([10, 11]), score=torch.tensor(scores)))
    assert {k: v.tag for k, v in callback._chosen.items()} == {"a": "val/a/z11", "b": "val/b/z10"}
    assert callback._chosen["a"].slices[2].max() == 5.0


def test_learning_rate_tags_name_optimisers_and_groups():
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(4)]
    adam = torch.optim.Adam([w[0]], lr=1e-3)
    groups = torch.optim.SGD([{"params": [w[1]], "name": "trunk"}, {"params": [w[2]], "lr": 0.5}], lr=0.1)
    assert learning_rates([adam, groups]) == {"lr/adam": 1e-3, "lr/sgd/trunk": 0.1, "lr/sgd/1": 0.5}
    second = torch.optim.Adam([w[3]], lr=2e-3)
    assert learning_rates([adam, second], ("generator", "discriminator")) == {"lr/generator": 1e-3,
                                                                               "lr/discriminator": 2e-3}
    assert set(learning_rates([adam, second])) == {"lr/adam", "lr/adam_1"}


class _StepRecorder(pl.LightningModule):
    """A one-weight model whose steps log `train/every` each step and `train/gated` when the loggers write."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.gated_steps: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = (self.weight * batch).square().mean()
        self.log("train/every", loss, on_step=True, on_epoch=False)
        if writes_logs_this_step(self._trainer):
            self.gated_steps.append(self.global_step)
            self.log("train/gated", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_values_logged_only_when_written_reach_the_logger_as_every_step_values(tmp_path):
    """Skipping `on_step` logs on the steps no logger writes (7 batches, a write every 3 steps, 2 epochs, the run
    stopped at step 13) writes the same rows as logging them every step."""
    module = _StepRecorder()
    trainer = pl.Trainer(max_epochs=2, max_steps=13, accelerator="cpu", log_every_n_steps=3,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         logger=CSVLogger(tmp_path, name="run"), callbacks=[LearningRates()])
    trainer.fit(module, train_dataloaders=DataLoader(torch.arange(7.0), batch_size=1))
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    every = {int(r["step"]): r["train/every"] for r in rows if r.get("train/every")}
    gated = {int(r["step"]): r["train/gated"] for r in rows if r.get("train/gated")}
    rates = {int(r["step"]) for r in rows if r.get("lr/sgd")}
    assert gated == every and rates == set(every)
    assert set(every) == {2, 5, 8, 11} and len(module.gated_steps) < 8  # 13 steps: every third, epoch ends, the last
