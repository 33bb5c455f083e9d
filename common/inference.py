"""Whole-volume inference: batched 2.5-D prediction along one axis, and 3-D sliding windows with blending.

Both run the network on batches (never one slice at a time in a Python loop) and stitch on the CPU, so memory
is bounded by the batch or patch size, not by the volume.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from common.memory import batch_for_budget


def _neighbour_indices(n: int, centre: np.ndarray, context: int) -> np.ndarray:
    """Returns [len(centre), 2*context+1] slice indices clamped to [0, n) (edge padding)."""
    offsets = np.arange(-context, context + 1)
    return np.clip(centre[:, None] + offsets[None, :], 0, n - 1)


@torch.no_grad()
def predict_by_slices(predict_fn: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray | torch.Tensor,
                      axis: int, context: int = 0, batch_size: int = 16, pad_value: float | None = None,
                      device: torch.device | str = "cpu", out_dtype: torch.dtype = torch.float32,
                      max_memory: int | None = None) -> torch.Tensor:
    """Returns the predictions of a 2-D network for every slice of a 3-D volume along `axis`, stacked back.

    Each input is the slice and its `context` neighbours on each side as channels: `[B, 2*context+1, h, w]`,
    where (h, w) are the volume's other two axes in their original order.

    Args:
        predict_fn: maps `[B, 2*context+1, h, w]` float32 (on `device`) to `[B, h', w']` or `[B, C, h', w']`.
        volume: `[X, Y, Z]` array.
        axis: the slicing axis (0, 1 or 2).
        context: neighbours on each side (SPiN: 2, RSTN and SAINT: 1).
        batch_size: slices per forward pass (the most, when `max_memory` is given).
        pad_value: value of out-of-volume neighbours; None repeats the edge slice.
        device: where `predict_fn` runs.
        out_dtype: dtype of the stitched result (kept on the CPU).
        max_memory: a peak resident memory (bytes) for the whole process: the slices per pass are then the most
            that fit beside what the process already holds and the stitched result, from the memory that
            passes of 1 and 2 slices are measured to need (`common.memory.batch_for_budget`; CPU only).
            A `common.compiled.FixedBatch` predictor gets every batch padded to one size (its graph compiles
            once), and the budget's probes run its eager function.

    Returns:
        The predictions with the slicing axis put back in place: `[X, Y, Z]`-like (`h', w'` may differ from `h, w`)
        for 2-D outputs, or `[C, ...]` with the channel first for 3-D outputs.
    """
    vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    vol = vol.movedim(axis, 0).float()
    n = vol.shape[0]
    if pad_value is not None and context > 0:
        pad = torch.full((context, *vol.shape[1:]), float(pad_value))
        padded, shift = torch.cat([pad, vol, pad]), context
    else:
        padded, shift = vol, 0

    def batch_of(start: int, size: int) -> torch.Tensor:
        centre = np.arange(start, min(start + size, n))
        if shift:
            index = centre[:, None] + np.arange(0, 2 * context + 1)[None, :]
        else:
            index = _neighbour_indices(n, centre, context)
        return padded[torch.as_tensor(index)].to(device)

    if max_memory is not None:
        probe = getattr(predict_fn, "eager", predict_fn)
        batch_size = batch_for_budget(lambda size: probe(batch_of(n // 2, size)), max_memory, batch_size,
                                      n_items=n)
    fixed = min(batch_size, n) if getattr(predict_fn, "fixed_batch", False) else 0
    result: torch.Tensor | None = None  # [n, h', w'] or [n, C, h', w'], filled batch by batch
    for start in range(0, n, batch_size):
        batch = batch_of(start, batch_size)
        count = len(batch)
        if count < fixed:  # the compiled graph's one shape: repeat the last slice, keep `count` outputs
            batch = torch.cat([batch, batch[-1:].expand(fixed - count, *batch.shape[1:])])
        pred = predict_fn(batch)[:count].to("cpu", out_dtype)
        if result is None:  # preallocated once: no list of batches concatenated at the end
            result = torch.empty((n, *pred.shape[1:]), dtype=out_dtype)
        result[start:start + count] = pred
    assert result is not None
    if result.dim() == 3:
        return result.movedim(0, axis)
    return result.movedim(1, 0).movedim(1, axis + 1)


def _starts(size: int, patch: int, step: int) -> list[int]:
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _blend_weight(shape: Sequence[int]) -> torch.Tensor:
    """Returns a separable weight that falls off towards patch borders (never exactly zero)."""
    weight = torch.ones(())
    for n in shape:
        ramp = torch.minimum(torch.arange(n) + 1.0, n - torch.arange(n).float())
        ramp = (ramp / ramp.max()).clamp_min(1e-3)
        weight = weight[..., None] * ramp
    return weight


@torch.no_grad()
def sliding_window_3d(predict_fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                      patch: Sequence[int], overlap: float = 0.25, scale: Sequence[int] = (1, 1, 1),
                      batch_size: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """Returns `predict_fn` applied patch-wise over a 3-D volume and blended, with integer upsampling.

    Args:
        predict_fn: maps `[B, C, d, h, w]` to `[B, C', d*s0, h*s1, w*s2]`.
        volume: `[C, D, H, W]`.
        patch: input patch size (d, h, w); clipped to the volume size.
        overlap: fraction of a patch shared with its neighbour along each axis, in [0, 1).
        scale: integer output/input size ratio per axis (1 = same size).
        batch_size: patches per forward pass.
        device: where `predict_fn` runs.

    Returns:
        `[C', D*s0, H*s1, W*s2]` float32 on the CPU; overlapping outputs are averaged with weights that favour
        patch centres, so seams do not show.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    sizes = volume.shape[1:]
    patch = [min(p, s) for p, s in zip(patch, sizes)]
    steps = [max(1, int(math.floor(p * (1 - overlap)))) for p in patch]
    corners = list(itertools.product(*(_starts(s, p, st) for s, p, st in zip(sizes, patch, steps))))
    out_patch = [p * s for p, s in zip(patch, scale)]
    weight = _blend_weight(out_patch)
    result: torch.Tensor | None = None
    norm = torch.zeros([s * k for s, k in zip(sizes, scale)])
    for first in range(0, len(corners), batch_size):
        group = corners[first:first + batch_size]
        batch = torch.stack([volume[:, c[0]:c[0] + patch[0], c[1]:c[1] + patch[1], c[2]:c[2] + patch[2]]
                             for c in group]).to(device)
        pred = predict_fn(batch).float().cpu()
        if result is None:
            result = torch.zeros((pred.shape[1], *norm.shape))
        for corner, p in zip(group, pred):
            region = tuple(slice(c * k, c * k + o) for c, k, o in zip(corner, scale, out_patch))
            result[(slice(None), *region)] += p * weight
            norm[region] += weight
    assert result is not None
    return result / norm
