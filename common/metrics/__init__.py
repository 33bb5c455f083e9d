"""Metrics shared by every project: numpy functions and DDP-safe volume-level torchmetrics classes.

The functions (``common.metrics.functional``) need numpy, scipy and scikit-image only. The
torchmetrics classes (``common.metrics.volume``) are imported on first access, so that command-line
tools that only score files do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.metrics.functional import (
    as_numpy,
    confusion_counts,
    dice,
    fastmri_volume_metrics,
    hd95,
    iou,
    nmse,
    pooled_seg_scores,
    precision,
    psnr,
    recall,
    scores_from_counts,
    seg_scores,
    ssim2d,
    ssim3d,
    ssim_slices,
    surface,
)

_VOLUME_CLASSES = ("CaseSliceMetric", "ReconstructionVolumeMetric", "SegmentationVolumeMetric", "case_key")

__all__ = [
    "as_numpy",
    "confusion_counts",
    "dice",
    "fastmri_volume_metrics",
    "hd95",
    "iou",
    "nmse",
    "pooled_seg_scores",
    "precision",
    "psnr",
    "recall",
    "scores_from_counts",
    "seg_scores",
    "ssim2d",
    "ssim3d",
    "ssim_slices",
    "surface",
    *_VOLUME_CLASSES,
]


def __getattr__(name: str) -> Any:
    if name in _VOLUME_CLASSES:
        return getattr(importlib.import_module("common.metrics.volume"), name)
    raise AttributeError(f"module 'common.metrics' has no attribute {name!r}")
