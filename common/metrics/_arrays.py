"""Conversions shared by the metric functions: anything array-like in, numpy out."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a numpy array (torch tensors are detached and copied to the CPU).

    Args:
        array: a numpy array, a torch tensor or anything ``np.asarray`` accepts.

    Returns:
        The same values as an ``np.ndarray`` (no copy when it already is one).
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def pair(pred: Any, ref: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred, ref)`` as numpy arrays after checking that their shapes agree.

    Args:
        pred: prediction (numpy array or torch tensor).
        ref: reference (numpy array or torch tensor).
        name: the calling metric, for the error message.

    Returns:
        The two arrays.

    Raises:
        ValueError: the shapes differ.
    """
    pred_np, ref_np = as_numpy(pred), as_numpy(ref)
    if pred_np.shape != ref_np.shape:
        raise ValueError(f"{name}: prediction shape {pred_np.shape} != reference shape {ref_np.shape}")
    return pred_np, ref_np
