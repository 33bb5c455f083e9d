"""Segmentation metrics on masks of any dimension, numpy in, python float out.

Anything non-zero is foreground. Functions: ``dice``, ``iou``, ``precision``, ``recall``, ``hd95``
(mm), ``seg_scores`` (all five for one case) and ``pooled_seg_scores`` (micro-average over a list).

Empty-mask rule (the same everywhere in ``common.metrics``, including the torchmetrics classes):
    A ratio whose denominator is zero takes the value ``empty_score``; a ratio with a positive
    denominator is computed as usual. Hence

    ============================  ============  ===========  ===========  ======
    case                          Dice, IoU     precision    recall       HD95
    ============================  ============  ===========  ===========  ======
    both masks empty              empty_score   empty_score  empty_score  0.0
    prediction empty only         0.0           empty_score  0.0          inf
    reference empty only          0.0           0.0          empty_score  inf
    ============================  ============  ===========  ===========  ======

    ``empty_score`` defaults to 1.0 (an empty prediction of an empty reference is perfect); protocols
    that score zero divisions as 0 pass ``empty_score=0.0``. HD95 is never NaN: it is 0.0 when both
    surfaces are empty and ``inf`` when only one is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from common.metrics._arrays import pair


def _ratio(numerator: float, denominator: float, empty_score: float) -> float:
    return float(empty_score) if denominator == 0 else float(numerator) / float(denominator)


def confusion_counts(pred: Any, ref: Any) -> tuple[int, int, int]:
    """Return the voxel counts (TP, FP, FN) of two masks (non-zero = foreground).

    Args:
        pred: predicted mask, any shape and dtype.
        ref: reference mask of the same shape.

    Returns:
        ``(true_positives, false_positives, false_negatives)`` as python ints.

    Raises:
        ValueError: shapes differ.
    """
    pred_np, ref_np = pair(pred, ref, "segmentation")
    pred_b, ref_b = pred_np.astype(bool), ref_np.astype(bool)
    tp = int(np.count_nonzero(pred_b & ref_b))
    return tp, int(np.count_nonzero(pred_b)) - tp, int(np.count_nonzero(ref_b)) - tp


def scores_from_counts(tp: float, fp: float, fn: float, empty_score: float = 1.0) -> dict[str, float]:
    """Return Dice, IoU, precision and recall from confusion counts, with the module's empty rule.

    Args:
        tp: true-positive count.
        fp: false-positive count.
        fn: false-negative count.
        empty_score: value of a ratio whose denominator is zero (see the module docstring).

    Returns:
        ``{"dice", "iou", "precision", "recall"}`` as floats in [0, 1] (or ``empty_score``).
    """
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty_score),
        "iou": _ratio(tp, tp + fp + fn, empty_score),
        "precision": _ratio(tp, tp + fp, empty_score),
        "recall": _ratio(tp, tp + fn, empty_score),
    }


def dice(pred: Any, ref: Any, empty_score: float = 1.0) -> float:
    """Return the Dice coefficient ``2|P & G| / (|P| + |G|)`` in [0, 1].

    Two empty masks score ``empty_score``; exactly one empty mask scores 0.0. ``pred`` and ``ref``
    are masks of one shape (non-zero = foreground).
    """
    tp, fp, fn = confusion_counts(pred, ref)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty_score)


def iou(pred: Any, ref: Any, empty_score: float = 1.0) -> float:
    """Return the Jaccard index ``|P & G| / |P or G|`` in [0, 1] (same empty rule as ``dice``)."""
    tp, fp, fn = confusion_counts(pred, ref)
    return _ratio(tp, tp + fp + fn, empty_score)


def precision(pred: Any, ref: Any, empty_score: float = 1.0) -> float:
    """Return ``|P & G| / |P|``; an empty prediction scores ``empty_score`` whatever the reference."""
    tp, fp, _ = confusion_counts(pred, ref)
    return _ratio(tp, tp + fp, empty_score)


def recall(pred: Any, ref: Any, empty_score: float = 1.0) -> float:
    """Return the sensitivity ``|P & G| / |G|``; an empty reference scores ``empty_score``."""
    tp, _, fn = confusion_counts(pred, ref)
    return _ratio(tp, tp + fn, empty_score)


def surface(mask: np.ndarray) -> np.ndarray:
    """Return the boundary voxels of a mask: foreground voxels with a background face-neighbour.

    Voxels on the array border count as boundary (outside the array is background).

    Args:
        mask: boolean array of any dimension.

    Returns:
        Boolean array of the same shape, True on the boundary.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred: Any, ref: Any, spacing: Sequence[float] | None = None) -> float:
    """Return the 95th percentile of the symmetric surface distances between two masks, in mm.

    Surfaces are the boundary voxels (``surface``). The distances from every prediction surface
    voxel to the nearest reference surface voxel and from every reference surface voxel to the
    nearest prediction surface voxel are pooled into one set, whose 95th percentile (linear
    interpolation) is returned. Distances come from a Euclidean distance transform with
    ``sampling=spacing``.

    Args:
        pred: predicted mask, any dimension (non-zero = foreground).
        ref: reference mask of the same shape.
        spacing: voxel size in mm along each array axis; None means 1.0 per axis (voxel units).

    Returns:
        HD95 in mm: 0.0 when both masks are empty, ``inf`` when exactly one is.

    Raises:
        ValueError: shapes differ or ``spacing`` has the wrong length.
    """
    pred_np, ref_np = pair(pred, ref, "hd95")
    sampling = _spacing(spacing, pred_np.ndim)
    pred_b, ref_b = pred_np.astype(bool), ref_np.astype(bool)
    if not pred_b.any() and not ref_b.any():
        return 0.0
    if not pred_b.any() or not ref_b.any():
        return float("inf")
    box = _union_box(pred_b, ref_b)
    pred_s, ref_s = surface(pred_b[box]), surface(ref_b[box])
    to_ref = ndimage.distance_transform_edt(~ref_s, sampling=sampling)[pred_s]
    to_pred = ndimage.distance_transform_edt(~pred_s, sampling=sampling)[ref_s]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by one voxel (clipped to the array).

    Cropping to it changes neither the surfaces (the added rim is background, and the array border
    counts as background anyway) nor the distances between them, and it makes the distance
    transforms of small structures in large volumes cheap.
    """
    union = a | b
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, union.shape[axis])))
    return tuple(box)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"spacing {values} must give {ndim} positive voxel sizes")
    return values


def seg_scores(
    pred: Any, ref: Any, spacing: Sequence[float] | None = None, empty_score: float = 1.0
) -> dict[str, float]:
    """Return Dice, IoU, precision, recall and HD95 of one prediction (empty rule: module docstring).

    Args:
        pred: predicted mask, any dimension (non-zero = foreground).
        ref: reference mask of the same shape.
        spacing: voxel size in mm per array axis for HD95; None means voxel units.
        empty_score: value of a ratio whose denominator is zero.

    Returns:
        ``{"dice", "iou", "precision", "recall", "hd95"}`` (HD95 in mm, possibly ``inf``).

    Raises:
        ValueError: shapes differ or ``spacing`` is invalid.
    """
    scores = scores_from_counts(*confusion_counts(pred, ref), empty_score)
    scores["hd95"] = hd95(pred, ref, spacing)
    return scores


def pooled_seg_scores(
    preds: Sequence[Any], refs: Sequence[Any], empty_score: float = 1.0
) -> dict[str, float]:
    """Return micro-averaged Dice, IoU, precision and recall over a list of mask pairs.

    TP, FP and FN are summed over all pairs first, then the ratios are formed once (so large masks
    weigh more than small ones). The arrays may differ in shape from pair to pair.

    Args:
        preds: predicted masks (non-zero = foreground).
        refs: reference masks, one per prediction, each of its prediction's shape.
        empty_score: value of a ratio whose pooled denominator is zero.

    Returns:
        ``{"dice", "iou", "precision", "recall"}`` of the pool.

    Raises:
        ValueError: the lists differ in length or a pair differs in shape.
    """
    if len(preds) != len(refs):
        raise ValueError(f"pooled_seg_scores: {len(preds)} predictions but {len(refs)} references")
    totals = np.zeros(3, dtype=np.int64)
    for pred, ref in zip(preds, refs, strict=True):
        totals += np.asarray(confusion_counts(pred, ref), dtype=np.int64)
    tp, fp, fn = (int(t) for t in totals)
    return scores_from_counts(tp, fp, fn, empty_score)
