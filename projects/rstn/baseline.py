"""A classical baseline: an intensity window inside a spatial prior box, then the large 6-connected components.

The window (in the cached [0, 1] units) and the box (the union of the training labels' boxes, widened) are
tuned on the training cases by a grid search on the mean DSC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from projects.rstn.inference import dsc, keep_large_components


@dataclass
class WindowRule:
    """mask = keep_large_components(low <= image <= high inside `box`)."""

    low: float
    high: float
    box: tuple[slice, slice, slice]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Returns the uint8 mask of a windowed CT [D0, D1, D2] in [0, 1]."""
        inside = np.zeros(image.shape, bool)
        inside[self.box] = True
        return keep_large_components(inside & (image >= self.low) & (image <= self.high), 0.5)


def prior_box(labels: Sequence[np.ndarray], margin: int = 2) -> tuple[slice, slice, slice]:
    """Returns the box holding every training label, widened by `margin` voxels."""
    union = np.any(np.stack([lbl > 0 for lbl in labels]), axis=0)
    box = []
    for axis in range(3):
        hits = np.nonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    return tuple(box)  # type: ignore[return-value]


def tune_window_rule(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                     steps: int = 18) -> tuple[WindowRule, float]:
    """Returns the rule with the best mean training DSC over a grid of windows, and that DSC."""
    box = prior_box(labels)
    grid = np.linspace(0.2, 0.9, steps)
    best: tuple[float, WindowRule] = (-1.0, WindowRule(0.0, 1.0, box))
    for i, low in enumerate(grid):
        for high in grid[i + 1:]:
            rule = WindowRule(float(low), float(high), box)
            score = float(np.mean([dsc(rule(img), lbl > 0) for img, lbl in zip(images, labels, strict=True)]))
            if score > best[0]:
                best = (score, rule)
    return best[1], best[0]
