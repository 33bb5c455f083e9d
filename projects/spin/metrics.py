"""SPiN's scoring: one rule for validation, test and `eval.py` (the paper's Tables 2 and 3).

A case (a scan, or the pool of small-lesion slices) is scored from its voxel counts TP, FP, FN: Dice, IoU,
precision and recall, a zero division scoring 0 (the paper's rule). `score_case` applies the rule to two
masks; `SegmentationModule` applies `score_counts` to the same counts summed slice by slice over a scan
(`common.metrics.SegmentationVolumeMetric(score_counts=...)`), so both give the same figures for a scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics import confusion_counts, scores_from_counts
from projects.spin.data import small_lesion_slices

EMPTY_SCORE = 0.0  # a ratio with a zero denominator scores 0 (paper)
METRICS = ("dice", "iou", "precision", "recall")


def score_counts(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Returns `{"dice", "iou", "precision", "recall"}` of one case's voxel counts (zero divisions score 0)."""
    return scores_from_counts(tp, fp, fn, empty_score=EMPTY_SCORE)


def score_case(pred: Any, ref: Any) -> dict[str, float]:
    """Returns the scores of a predicted mask against its reference (any equal shapes; non-zero = lesion)."""
    return score_counts(*confusion_counts(np.asarray(pred) > 0, np.asarray(ref) > 0))


def small_lesion_counts(pred: np.ndarray, ref: np.ndarray, max_px: int = 100) -> tuple[np.ndarray, int]:
    """Returns the `(tp, fp, fn)` counts summed over the axial slices of `ref` `[X, Y, Z]` holding only small
    lesions (every 8-connected component at most `max_px` pixels), and the number of such slices.

    Pooled over scans and passed to `score_counts`, they give Table 3's scores.
    """
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    counts, slices = np.zeros(3, dtype=np.int64), 0
    for z in small_lesion_slices(ref, max_px):
        counts += np.asarray(confusion_counts(pred[:, :, z], ref[:, :, z]))
        slices += 1
    return counts, slices
