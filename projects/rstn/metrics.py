"""RSTN's scoring: the DSC of a binary mask, one rule for validation, test, `eval.py` and the diagnostics.

A case is scored from its voxel counts TP, FP, FN: DSC = 2 TP / (2 TP + FP + FN), 0 when both masks are empty
(the reference's rule). `score_case` applies it to two masks; `RSTNModule` applies `score_counts` to the same
counts summed slice by slice over a case (`common.metrics.SegmentationVolumeMetric(score_counts=...)`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics import confusion_counts, scores_from_counts

EMPTY_SCORE = 0.0  # both masks empty: DSC 0 (the reference's rule)


def score_counts(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Returns `{"dice"}` of one case's voxel counts."""
    return {"dice": scores_from_counts(tp, fp, fn, empty_score=EMPTY_SCORE)["dice"]}


def score_case(pred: Any, ref: Any) -> dict[str, float]:
    """Returns `{"dice"}` of a predicted mask against its reference (equal shapes; non-zero = organ)."""
    return score_counts(*confusion_counts(np.asarray(pred) > 0, np.asarray(ref) > 0))
