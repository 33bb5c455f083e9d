"""k-space transforms of the fastMRI single-coil pipeline: centred FFTs, crops and undersampling masks.

Complex tensors are either native complex (`torch.complex64`) or the fastMRI "real view" with a trailing
dimension of size 2 (real, imaginary). Images are indexed `[..., rows, columns]`; the phase-encoding
direction (the one that is undersampled) is the columns, the readout the rows (640 in the raw files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CENTER_FRACTIONS = {4: 0.08, 8: 0.04, 16: 0.02, 32: 0.01}


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Return the centred orthonormal 2-D FFT over the last two dimensions.

    Args:
        image: complex tensor `[..., H, W]` (any complex dtype; computed in complex64 at least, so
            it stays float32 inside a bf16 autocast region).

    Returns:
        complex tensor `[..., H, W]`: ifftshift -> fftn(norm="ortho") -> fftshift.
    """
    image = image.to(torch.promote_types(image.dtype, torch.complex64))
    shifted = torch.fft.ifftshift(image, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fftn(shifted, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Return the centred orthonormal inverse 2-D FFT over the last two dimensions.

    Args:
        kspace: complex tensor `[..., H, W]`.

    Returns:
        complex tensor `[..., H, W]`.
    """
    kspace = kspace.to(torch.promote_types(kspace.dtype, torch.complex64))
    shifted = torch.fft.ifftshift(kspace, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifftn(shifted, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def to_real_view(x: torch.Tensor) -> torch.Tensor:
    """Return complex `[..., H, W]` as float `[..., H, W, 2]` (the fastMRI convention)."""
    return torch.view_as_real(x.contiguous())


def from_real_view(x: torch.Tensor) -> torch.Tensor:
    """Return float `[..., H, W, 2]` as complex64 `[..., H, W]`."""
    return torch.view_as_complex(x.float().contiguous())


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Return the centre `shape = (h, w)` of the last two dimensions (offset `(H - h) // 2`).

    Raises:
        ValueError: the crop is larger than the input.
    """
    h, w = int(shape[0]), int(shape[1])
    rows, cols = x.shape[-2], x.shape[-1]
    if h > rows or w > cols:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {(h, w)}")
    top, left = (rows - h) // 2, (cols - w) // 2
    return x[..., top : top + h, left : left + w]


def crop_readout(kspace: torch.Tensor, rows: int) -> torch.Tensor:
    """Return the k-space of the image cropped to `rows` readout rows, all columns kept.

    Cropping in image space along the fully sampled readout keeps every phase-encoding column
    intact, so a column mask stays exact on the result (cropping the k-space grid would not).

    Args:
        kspace: complex `[..., H, W]`.
        rows: output rows (e.g. 320).

    Returns:
        complex `[..., rows, W]`.
    """
    image = ifft2c(kspace)
    return fft2c(center_crop(image, (rows, image.shape[-1])))


def complex_abs(x: torch.Tensor) -> torch.Tensor:
    """Return the magnitude of a complex tensor as float32 (same shape)."""
    return x.abs().float()


# ----------------------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class ColumnMask:
    """One sampled-column pattern.

    Attributes:
        mask: float32 `[W]`, 1 for a sampled phase-encoding column.
        num_low_frequencies: number of fully sampled centre columns.
        acceleration: the nominal acceleration it was drawn for.
    """

    mask: np.ndarray
    num_low_frequencies: int
    acceleration: int


def seed_from_name(name: str) -> tuple[int, ...]:
    """Return the per-file validation seed: the character codes of the file name (official rule)."""
    return tuple(ord(c) for c in name)


class MaskFunc:
    """Base of the column masks: picks an acceleration and its centre fraction, then samples columns.

    Args:
        accelerations: e.g. `[4]` or `[4, 8, 16, 32]` (one is drawn per call).
        center_fractions: matching centre fractions; default from `CENTER_FRACTIONS`.

    Raises:
        ValueError: the two lists differ in length or an acceleration has no default fraction.
    """

    def __init__(self, accelerations: Sequence[int], center_fractions: Sequence[float] | None = None) -> None:
        self.accelerations = [int(a) for a in accelerations]
        if center_fractions is None:
            missing = [a for a in self.accelerations if a not in CENTER_FRACTIONS]
            if missing:
                raise ValueError(f"no default centre fraction for accelerations {missing}")
            center_fractions = [CENTER_FRACTIONS[a] for a in self.accelerations]
        if len(center_fractions) != len(self.accelerations):
            raise ValueError("center_fractions and accelerations must have the same length")
        self.center_fractions = [float(c) for c in center_fractions]

    def __call__(self, num_cols: int, rng: np.random.RandomState) -> ColumnMask:
        """Return a mask over `num_cols` columns drawn with `rng` (acceleration first, then columns)."""
        choice = rng.randint(len(self.accelerations))
        acceleration, fraction = self.accelerations[choice], self.center_fractions[choice]
        num_low = int(round(num_cols * fraction))
        mask = self.outer_columns(num_cols, num_low, acceleration, rng).astype(np.float32)
        start = (num_cols - num_low + 1) // 2
        mask[start : start + num_low] = 1.0
        return ColumnMask(mask, num_low, acceleration)

    def outer_columns(self, num_cols: int, num_low: int, acceleration: int,
                      rng: np.random.RandomState) -> np.ndarray:
        """Return a bool `[num_cols]` of the sampled columns besides the centre block."""
        raise NotImplementedError


class RandomMaskFunc(MaskFunc):
    """Each outer column is kept with probability `(N / acc - n_low) / (N - n_low)`."""

    def outer_columns(self, num_cols: int, num_low: int, acceleration: int,
                      rng: np.random.RandomState) -> np.ndarray:
        prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
        return rng.uniform(size=num_cols) < prob


class EquispacedMaskFractionFunc(MaskFunc):
    """Outer columns on a regular grid whose spacing makes the overall fraction `1 / acc`."""

    def outer_columns(self, num_cols: int, num_low: int, acceleration: int,
                      rng: np.random.RandomState) -> np.ndarray:
        spacing = acceleration * (num_low - num_cols) / (num_low * acceleration - num_cols)
        offset = rng.randint(0, round(spacing))
        mask = np.zeros(num_cols, dtype=bool)
        mask[np.around(np.arange(offset, num_cols - 1, spacing)).astype(np.int64)] = True
        return mask


MASK_TYPES = {"random": RandomMaskFunc, "equispaced": EquispacedMaskFractionFunc}


def make_mask_func(kind: str, accelerations: Sequence[int],
                   center_fractions: Sequence[float] | None = None) -> MaskFunc:
    """Return the mask function `kind` ("random" or "equispaced").

    Raises:
        ValueError: unknown kind.
    """
    if kind not in MASK_TYPES:
        raise ValueError(f"mask type must be one of {sorted(MASK_TYPES)}, got {kind!r}")
    return MASK_TYPES[kind](accelerations, center_fractions)


def apply_column_mask(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return `kspace * mask` with the mask broadcast along the columns (last dimension).

    Args:
        kspace: complex `[..., H, W]`.
        mask: `[W]` (0/1).

    Returns:
        complex `[..., H, W]`, zero on the unsampled columns.
    """
    return kspace * mask.to(kspace.real.dtype).reshape(*([1] * (kspace.dim() - 1)), -1)
