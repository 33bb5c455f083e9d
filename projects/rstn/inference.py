"""RSTN testing on whole volumes: coarse planes, fusion, oracle, the coarse-to-fine loop, post-processing.

Volumes are float32 [D0, D1, D2] windowed CT in [0, 1] in the cache layout (see `prepare`); probabilities and
masks have the same shape. A plane's network sees slice triplets along its axis and returns one map per
slice of the triplet; the three maps that cover a slice are averaged (two at the volume ends).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from common.inference import predict_by_slices
from common.runtime import autocast
from projects.rstn.data import plane_axis
from projects.rstn.metrics import score_case
from projects.rstn.model import RSTN


def dsc(pred: np.ndarray, ref: np.ndarray) -> float:
    """Returns the Dice similarity of two binary volumes, 0 when both are empty (`metrics.score_case`)."""
    return score_case(pred, ref)["dice"]


def keep_large_components(mask: np.ndarray, ratio: float = 0.5) -> np.ndarray:
    """Returns uint8 `mask` with only the 6-connected components of at least `ratio` x the largest one.

    The mask is returned unchanged when it is empty or covers at least half the volume (the reference's rule).
    """
    mask = np.asarray(mask).astype(bool)
    total = int(mask.sum())
    if total == 0 or total >= mask.size / 2:
        return mask.astype(np.uint8)
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= ratio * sizes.max()
    keep[0] = False
    return keep[labels].astype(np.uint8)


def average_triplets(maps: torch.Tensor, axis: int) -> np.ndarray:
    """Returns float32 [D0, D1, D2]: each slice's mean over the (up to three) triplet outputs that cover it.

    Args:
        maps: [3, D0, D1, D2]; maps[c, ..., j, ...] is channel c (slice j - 1 + c) of the triplet centred at j.
        axis: the slicing axis of the plane.
    """
    m = maps.movedim(axis + 1, 1).float()  # [3, n, h, w]
    total = m[1].clone()
    count = torch.ones(m.shape[1])
    total[:-1] += m[0, 1:]  # channel 0 of the triplet centred at j + 1 is slice j
    total[1:] += m[2, :-1]  # channel 2 of the triplet centred at j - 1 is slice j
    count[:-1] += 1
    count[1:] += 1
    return (total / count.view(-1, 1, 1)).movedim(0, axis).numpy()


def _autocast(precision: str, model: RSTN) -> contextlib.AbstractContextManager:
    return autocast(precision, model.coarse_model.conv1_1.weight.device.type)


def predict_plane(image: np.ndarray, plane: str, model: RSTN, batch_size: int = 8,
                  precision: str = "32", max_memory: int | None = None) -> np.ndarray:
    """Returns the coarse probabilities float32 [D0, D1, D2] of one plane (3-slice averaged).

    Args:
        image: windowed CT [D0, D1, D2] in [0, 1].
        plane: "X", "Y" or "Z".
        model: the plane's RSTN (eval mode).
        batch_size: slice triplets per forward pass.
        precision: "32" or "bf16" (autocast).
        max_memory: peak resident bytes of the process: fewer triplets per pass when `batch_size` would exceed it.
    """
    def run(batch: torch.Tensor) -> torch.Tensor:
        with _autocast(precision, model):
            return model.forward_coarse(_like_model(batch, model)).float()

    axis = plane_axis(plane)
    return average_triplets(predict_by_slices(run, image, axis, context=1, batch_size=batch_size,
                                              max_memory=max_memory), axis)


def _triplets(volume: np.ndarray, axis: int, centres: Sequence[int]) -> torch.Tensor:
    """Returns float32 [len(centres), 3, h, w]: slices j - 1, j, j + 1 (clamped) along `axis` for each j."""
    index = np.clip(np.asarray(centres)[:, None] + np.arange(-1, 2)[None, :], 0, volume.shape[axis] - 1)
    data = np.take(volume, index.ravel(), axis=axis)
    data = np.moveaxis(data, axis, 0).reshape(len(centres), 3, *data.shape[:axis], *data.shape[axis + 1:])
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def _like_model(t: torch.Tensor, model: RSTN) -> torch.Tensor:
    """Returns `t` on the model's device in its weights' memory format (channels_last is faster on this CPU)."""
    weight = model.coarse_model.conv1_1.weight
    t = t.to(weight.device)
    if weight.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t


@torch.no_grad()
def _fine_plane(image: np.ndarray, axis: int, guide: np.ndarray, batch_size: int,
                step: Callable[[list[int]], torch.Tensor]) -> np.ndarray:
    """Runs `step(centres) -> [B, 3, h, w]` on the slices whose `guide` triplet is non-empty; averages triplets."""
    has = guide.any(axis=tuple(a for a in range(3) if a != axis))
    active = [j for j in range(image.shape[axis]) if has[max(j - 1, 0):j + 2].any()]
    maps = torch.zeros(3, image.shape[axis], *[image.shape[a] for a in range(3) if a != axis])
    for start in range(0, len(active), batch_size):
        centres = active[start:start + batch_size]
        maps[:, centres] = step(centres).float().cpu().movedim(1, 0)
    return average_triplets(maps.movedim(1, axis + 1), axis)


def fine_plane(image: np.ndarray, score: np.ndarray, mask: np.ndarray, plane: str, model: RSTN,
               margin: int = 20, precision: str = "32", batch_size: int = 1) -> np.ndarray:
    """Returns one coarse-to-fine round of one plane: fine probabilities float32 [D0, D1, D2].

    Each slice triplet gets the saliency of `score` and the crop box of `mask` (its three slices); slices
    whose triplet mask is empty give 0. `batch_size` > 1 runs several slices' crops together
    (see `RSTN.forward_fine`); 1 is the reference's slice-by-slice testing.
    """
    axis = plane_axis(plane)

    def step(centres: list[int]) -> torch.Tensor:
        x, p, m = (_like_model(_triplets(v, axis, centres), model) for v in (image, score, mask))
        with _autocast(precision, model):
            return model.forward_fine(x, p, m > 0, margin)

    return _fine_plane(image, axis, mask > 0, batch_size, step)


def oracle_plane(image: np.ndarray, label: np.ndarray, plane: str, model: RSTN, margin: int = 20,
                 precision: str = "32", batch_size: int = 1) -> np.ndarray:
    """Returns the oracle fine probabilities float32 [D0, D1, D2]: saliency of the coarse output, box of the label."""
    axis = plane_axis(plane)

    def step(centres: list[int]) -> torch.Tensor:
        x, y = (_like_model(_triplets(v, axis, centres), model) for v in (image, label))
        with _autocast(precision, model):
            return model.forward_fine(x, model.forward_coarse(x).float(), y > 0, margin)

    return _fine_plane(image, axis, label > 0, batch_size, step)


@dataclass
class CoarseToFine:
    """Result of the coarse-to-fine loop.

    Attributes:
        mask: uint8 [D0, D1, D2], the mask of the round where the loop stopped.
        score: float32 [D0, D1, D2], that round's fused probabilities.
        inter_dsc: DSC between consecutive rounds' masks, one per round run (round 1 first).
        dsc: DSC of each round's mask against the label (round 0 = fused coarse) when a label is given.
        rounds: rounds run (1 .. max_rounds).
    """

    mask: np.ndarray
    score: np.ndarray
    inter_dsc: list[float] = field(default_factory=list)
    dsc: list[float] = field(default_factory=list)
    rounds: int = 0


def coarse_to_fine(image: np.ndarray, models: dict[str, RSTN], coarse: dict[str, np.ndarray],
                   max_rounds: int = 10, stop_inter_dsc: float = 0.99, threshold: float = 0.5,
                   margin: int = 20, post_ratio: float = 0.5, label: np.ndarray | None = None,
                   precision: str = "32", batch_size: int = 1) -> CoarseToFine:
    """Returns the iterated fine segmentation of one volume.

    Round 0 is the plane-averaged coarse probability (mask = score >= threshold, not post-processed). Each
    round runs every plane's fine stage on the previous score and mask, averages the planes, thresholds and
    keeps the large components; it stops when the mask agrees with the previous one at DSC >= stop_inter_dsc
    or after `max_rounds`.

    Args:
        image: windowed CT [D0, D1, D2].
        models: plane -> RSTN.
        coarse: plane -> coarse probabilities [D0, D1, D2] (from `predict_plane`).
        max_rounds, stop_inter_dsc, threshold, margin, post_ratio: the testing protocol.
        label: optional ground truth, to record each round's DSC.
        precision: "32" or "bf16".
        batch_size: slices per fine forward pass (1 = the reference).
    """
    score = np.mean([coarse[p] for p in models], axis=0)
    mask = (score >= threshold).astype(np.uint8)
    result = CoarseToFine(mask=mask, score=score)
    if label is not None:
        result.dsc.append(dsc(mask, label))
    for _ in range(max_rounds):
        if not mask.any():
            break
        probs = [fine_plane(image, score, mask, p, m, margin, precision, batch_size) for p, m in models.items()]
        score = np.mean(probs, axis=0)
        new_mask = keep_large_components(score >= threshold, post_ratio)
        result.inter_dsc.append(dsc(mask, new_mask))
        mask = new_mask
        result.rounds += 1
        if label is not None:
            result.dsc.append(dsc(mask, label))
        if result.inter_dsc[-1] >= stop_inter_dsc:
            break
    result.mask, result.score = mask, score
    return result
