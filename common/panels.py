"""Validation image panels: radiological orientation, one intensity window per row, mask overlays, readable size.

A panel row shows one slice as input | prediction | reference | error. The input, prediction and reference share
one intensity window (a bias of the prediction shows as a brighter or darker middle column); the error is drawn
on a window symmetric around 0 (red: prediction above the reference, blue: below). For segmentation the
prediction and the reference are masks drawn over the input image, and the error column marks false positives
red and false negatives blue. Small slices are enlarged by integer factors, nearest neighbour, so that each
voxel stays a sharp rectangle in the proportions of its size in mm.

Orientation: `radiological_view(affine, slice_axis)` reads the affine of the volume a slice was cut from and
returns the transpose / flips that put it on screen the way a radiology viewer does (patient's right on the
image's left; anterior up for axial slices, superior up for coronal and sagittal ones, anterior on the left for
sagittal ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from nibabel import orientations
from PIL import Image, ImageDraw, ImageFont

# RGB colours: prediction and reference overlays, the two signs of the error, the gaps between columns.
PREDICTION_COLOUR = (1.0, 0.85, 0.0)
REFERENCE_COLOUR = (0.1, 0.9, 0.3)
ABOVE_COLOUR = (1.0, 0.25, 0.1)
BELOW_COLOUR = (0.15, 0.55, 1.0)
GAP_GREY = 0.35
OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class DisplayView:
    """Turns a slice `[..., A, B]` (its two in-plane array axes in the volume's order) into screen rows, columns.

    Attributes:
        transpose: swap the two axes first (A becomes the columns).
        flip_rows: then reverse the rows (screen top = the last index).
        flip_cols: then reverse the columns.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """Returns `image` `[..., A, B]` as displayed: `[..., rows, cols]`."""
        if self.transpose:
            image = image.transpose(-1, -2)
        dims = [d for d, flip in ((-2, self.flip_rows), (-1, self.flip_cols)) if flip]
        return image.flip(dims) if dims else image


AS_STORED = DisplayView()


def radiological_view(affine: np.ndarray | Sequence[Sequence[float]], slice_axis: int) -> DisplayView:
    """Returns the view that shows a slice cut along `slice_axis` of a volume in radiological orientation.

    The plane is named by the world axis closest to the slice normal (nibabel's `io_orientation`, so oblique
    volumes take their nearest canonical plane): axial (normal along S) shows anterior up and the patient's
    right on the image's left; coronal (normal along A) superior up, right on the left; sagittal (normal along
    R) superior up, anterior on the left.

    Args:
        affine: `[4, 4]` voxel -> RAS+ mm of the volume the slice comes from (its array axes in stored order).
        slice_axis: the array axis (0, 1, 2) the slice was cut along; the slice's axes are the other two, in order.

    Returns:
        The `DisplayView`; `AS_STORED` for an affine without a usable orientation (a zero column).

    Raises:
        ValueError: `slice_axis` is not 0, 1 or 2.
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    ornt = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    if not np.isfinite(ornt).all():
        return AS_STORED
    in_plane = [a for a in range(3) if a != slice_axis]
    normal = int(ornt[slice_axis, 0])
    up = 1 if normal == 2 else 2  # world axis pointing up on screen: A for axial slices, S otherwise
    right = 1 if normal == 0 else 0  # world axis along the screen's columns: y for sagittal slices, x otherwise
    # (slice dimension, +1 if its index grows towards +world) of each in-plane world axis
    along = {int(ornt[a, 0]): (dim, float(ornt[a, 1])) for dim, a in enumerate(in_plane)}
    (row_dim, row_sign), (_, col_sign) = along[up], along[right]
    # Rows grow downwards, i.e. towards -up; columns grow towards the patient's left (-x) or posterior (-y).
    return DisplayView(transpose=row_dim == 1, flip_rows=row_sign > 0, flip_cols=col_sign > 0)


def intensity_window(image: torch.Tensor, low: float = 0.005, high: float = 0.995) -> tuple[float, float]:
    """Returns `(lo, hi)`: the `low` and `high` quantiles of `image` (any shape), `hi > lo` guaranteed."""
    values = image.detach().float().flatten()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in torch.quantile(values, torch.tensor([low, high])))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def error_limit(error: torch.Tensor, quantile: float = 0.99) -> float:
    """Returns the half-width of the symmetric error window: the `quantile` of |error| (> 0)."""
    values = error.detach().float().abs().flatten()
    values = values[torch.isfinite(values)]
    limit = float(torch.quantile(values, quantile)) if values.numel() else 0.0
    return limit if limit > 0 else max(float(values.max()) if values.numel() else 0.0, 1e-6)


def grey_rgb(image: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Returns `[3, H, W]` in [0, 1]: `image` `[H, W]` mapped linearly from `window` to black..white."""
    lo, hi = window
    grey = ((image.float() - lo) / (hi - lo)).clamp(0, 1)
    return grey.expand(3, *grey.shape).clone()


def overlay(rgb: torch.Tensor, mask: torch.Tensor, colour: Sequence[float], alpha: float = OVERLAY_ALPHA
            ) -> torch.Tensor:
    """Returns `rgb` `[3, H, W]` with `colour` blended in (weight `alpha`) where `mask` `[H, W]` is true."""
    tint = torch.tensor(colour, dtype=rgb.dtype).view(3, 1, 1).expand_as(rgb)
    return torch.where(mask.bool().expand_as(rgb), (1 - alpha) * rgb + alpha * tint, rgb)


def signed_rgb(error: torch.Tensor, limit: float) -> torch.Tensor:
    """Returns `[3, H, W]`: black at 0, `ABOVE_COLOUR` at +limit, `BELOW_COLOUR` at -limit (linear, clipped)."""
    scaled = (error.float() / limit).clamp(-1, 1)
    above = torch.tensor(ABOVE_COLOUR).view(3, 1, 1) * scaled.clamp(min=0)
    below = torch.tensor(BELOW_COLOUR).view(3, 1, 1) * (-scaled).clamp(min=0)
    return above + below


def pixel_aspect(affine: np.ndarray | Sequence[Sequence[float]], slice_axis: int, view: DisplayView) -> float:
    """Returns the height / width in mm of one voxel of a slice cut along `slice_axis`, as `view` displays it."""
    sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    first, second = (float(sizes[a]) for a in range(3) if a != slice_axis)
    rows, cols = (second, first) if view.transpose else (first, second)
    return rows / cols if rows > 0 and cols > 0 else 1.0


def enlargement(height: int, width: int, min_size: int = 256, max_size: int = 1024, aspect: float = 1.0
                ) -> tuple[int, int]:
    """Returns the integer (row, column) repeat factors that draw a `height` x `width` slice with voxels
    `aspect` times as tall as wide (e.g. 2.5 mm slices in a coronal view of 0.8 mm pixels), its shorter side at
    >= `min_size` pixels and its longer side within `max_size` where both can hold (1 when already that large)."""
    stretch_rows, stretch_cols = (aspect, 1.0) if aspect >= 1 else (1.0, 1.0 / aspect)
    rows, cols = height * stretch_rows, width * stretch_cols  # in units of the finer voxel side
    factor = max(1, math.ceil(min_size / max(min(rows, cols), 1e-6)))
    factor = max(1, min(factor, math.floor(max_size / max(rows, cols, 1.0))))
    return max(1, round(factor * stretch_rows)), max(1, round(factor * stretch_cols))


def enlarge(rgb: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """Returns `rgb` `[3, H, W]` with each row repeated `factors[0]` and each column `factors[1]` times."""
    return rgb.repeat_interleave(factors[0], dim=1).repeat_interleave(factors[1], dim=2)


def _caption_strip(texts: Sequence[str], widths: Sequence[int], gap: int, height: int = 18) -> torch.Tensor:
    """Returns `[3, height, sum(widths) + gaps]`: each text at the top left of its column, white on dark grey."""
    total = sum(widths) + gap * (len(widths) - 1)
    canvas = Image.new("RGB", (total, height), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    x = 0
    for text, width in zip(texts, widths):
        draw.text((x + 4, 2), text, fill=(235, 235, 235), font=font)
        x += width + gap
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _columns(image: torch.Tensor, prediction: torch.Tensor, reference: torch.Tensor, segmentation: bool,
             window: tuple[float, float] | None) -> tuple[list[torch.Tensor], list[str]]:
    """Returns the four RGB columns `[3, H, W]` of one slice and their captions."""
    if segmentation:
        window = window or intensity_window(image)
        base = grey_rgb(image, window)
        pred, ref = prediction >= 0.5, reference >= 0.5
        error = overlay(overlay(base * 0.6, pred & ~ref, ABOVE_COLOUR, 0.9), ref & ~pred, BELOW_COLOUR, 0.9)
        columns = [base, overlay(base, pred, PREDICTION_COLOUR), overlay(base, ref, REFERENCE_COLOUR), error]
        return columns, ["input", "prediction", "reference", "error: red FP, blue FN"]
    window = window or intensity_window(reference)
    limit = error_limit(prediction.float() - reference.float())
    columns = [grey_rgb(image, window), grey_rgb(prediction, window), grey_rgb(reference, window),
               signed_rgb(prediction.float() - reference.float(), limit)]
    return columns, [f"input [{window[0]:.4g}, {window[1]:.4g}]", "prediction", "reference", f"error ±{limit:.3g}"]


def panel_row(image: torch.Tensor, prediction: torch.Tensor, reference: torch.Tensor, *,
              view: DisplayView = AS_STORED, segmentation: bool = False,
              window: tuple[float, float] | None = None, aspect: float = 1.0, min_size: int = 256,
              max_size: int = 1024, gap: int = 4) -> torch.Tensor:
    """Returns one panel row `[3, H', W']` in [0, 1]: captions above input | prediction | reference | error.

    Args:
        image: the input slice `[H, W]` (the network's input on the reference's grid, e.g. nearest-upsampled).
        prediction: `[H, W]`: an image, or for segmentation a mask / probability (>= 0.5 is foreground).
        reference: `[H, W]`, same kind as `prediction`.
        view: orientation applied to all three (see `radiological_view`).
        segmentation: draw `prediction` and `reference` as masks over `image`.
        window: intensity window `(lo, hi)` shared by the grey columns; default the 0.5 and 99.5 % quantiles of
            the reference (of the input for segmentation).
        aspect: voxel height / width in mm as displayed (`pixel_aspect`): anisotropic voxels are drawn in
            proportion.
        min_size, max_size: see `enlargement`.
        gap: grey pixels between columns.

    Raises:
        ValueError: the three slices differ in shape.
    """
    if not image.shape == prediction.shape == reference.shape or image.dim() != 2:
        raise ValueError(f"panel slices must be three [H, W] of one shape, got {tuple(image.shape)}, "
                         f"{tuple(prediction.shape)}, {tuple(reference.shape)}")
    image, prediction, reference = (view.apply(t.detach().float().cpu()) for t in (image, prediction, reference))
    columns, captions = _columns(image, prediction, reference, segmentation, window)
    factors = enlargement(image.shape[0], image.shape[1], min_size=min_size, max_size=max_size, aspect=aspect)
    columns = [enlarge(c, factors) for c in columns]
    height, width = columns[0].shape[1:]
    separator = torch.full((3, height, gap), GAP_GREY)
    body = torch.cat([part for c in columns for part in (c, separator)][:-1], dim=2)
    return torch.cat([_caption_strip(captions, [width] * len(columns), gap), body], dim=1)
