"""Emulated single-coil k-space from magnitude images, with fastMRI's conventions.

What it mimics: fastMRI single-coil knee data: a readout-oversampled encoding grid (640 rows for
320-row targets), a wider phase-encoding grid (368 columns for 320), a smooth spatially varying phase,
thermal noise, and ``reconstruction_esc`` targets equal to the magnitude of the centre crop of the
inverse centred orthonormal 2-D FFT of the stored k-space.

What it does not: coil sensitivities, partial Fourier, zero-padded k-space edges, or the readout
asymmetries of the real scanner data. No installable package ships real k-space, so this is the
closest honest substitute: real-looking magnitudes with a plausible phase.
"""

from __future__ import annotations

import numpy as np

from common.synthetic._fields import smooth_noise


def fft2c(image: np.ndarray) -> np.ndarray:
    """Returns the centred orthonormal 2-D FFT over the last two axes.

    Args:
        image: complex or real array ``[..., H, W]``.

    Returns:
        complex array ``[..., H, W]`` (ifftshift -> fft2(norm="ortho") -> fftshift).
    """
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Returns the centred orthonormal inverse 2-D FFT over the last two axes.

    Args:
        kspace: complex array ``[..., H, W]``.

    Returns:
        complex array ``[..., H, W]`` (ifftshift -> ifft2(norm="ortho") -> fftshift).
    """
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Returns the centre ``size`` crop of the last two axes (offsets ``(H - h) // 2``, as fastMRI).

    Args:
        array: array ``[..., H, W]``.
        size: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
        view ``[..., h, w]``.

    Raises:
        ValueError: if the crop is larger than the array.
    """
    height, width = array.shape[-2:]
    if size[0] > height or size[1] > width:
        raise ValueError(f"cannot crop {size} out of an image of size {(height, width)}")
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return array[..., top : top + size[0], left : left + size[1]]


def single_coil_kspace(
    image: np.ndarray, seed: int, readout_oversampling: int = 2, width: int | None = None, noise: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Returns emulated single-coil k-space and its ``reconstruction_esc``-style target.

    The magnitude is extended beyond the target field of view by mirrored, tapered anatomy (the real
    readout field of view is twice the reconstructed one), multiplied by a smooth phase, given complex
    white noise (``noise`` times the image maximum), and Fourier transformed. The target is then
    recomputed from the stored complex64 k-space, so ``abs(center_crop(ifft2c(kspace))) == target``.

    Args:
        image: float ``[S, h, w]`` (or ``[h, w]``) non-negative magnitudes.
        seed: seed of ``np.random.default_rng`` for the phase and the noise.
        readout_oversampling: encoded rows per target row (``H_enc = h * readout_oversampling``).
        width: encoded columns ``W_enc`` (>= w); default ``w * 1.15`` rounded to a multiple of 8
            (368 for 320, as in fastMRI knee data).
        noise: noise standard deviation per real channel, relative to the image maximum.

    Returns:
        ``(kspace, target)``: complex64 ``[S, H_enc, W_enc]`` and float32 ``[S, h, w]``.

    Raises:
        ValueError: on a bad image rank, negative values, or an encoding grid smaller than the image.
    """
    stack = np.asarray(image, dtype=np.float32)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3 or min(stack.shape) < 1:
        raise ValueError(f"single_coil_kspace needs an image [S, h, w] or [h, w], got shape {np.shape(image)}")
    if float(stack.min()) < 0:
        raise ValueError("single_coil_kspace needs non-negative magnitudes")
    _, height, img_width = stack.shape
    enc_width = int(width) if width is not None else max(img_width, int(round(img_width * 1.15 / 8)) * 8)
    enc_height = int(height * readout_oversampling)
    if enc_width < img_width or enc_height < height:
        raise ValueError(f"encoding grid {(enc_height, enc_width)} is smaller than the image {(height, img_width)}")
    rng = np.random.default_rng(seed)
    magnitude = _extend(stack, (enc_height, enc_width))
    phase = _smooth_phase(rng, magnitude.shape)
    scale = noise * max(float(stack.max()), 1e-12)
    complex_image = (magnitude * np.exp(1j * phase)).astype(np.complex64)
    complex_image.real += scale * rng.standard_normal(magnitude.shape, dtype=np.float32)
    complex_image.imag += scale * rng.standard_normal(magnitude.shape, dtype=np.float32)
    kspace = fft2c(complex_image).astype(np.complex64)
    target = np.abs(center_crop(ifft2c(kspace), (height, img_width))).astype(np.float32)
    return kspace, target


def _extend(stack: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Centres ``stack`` on the encoding grid, filling the margin with mirrored anatomy fading to zero."""
    _, height, width = stack.shape
    top, left = (grid[0] - height) // 2, (grid[1] - width) // 2
    pads = ((0, 0), (top, grid[0] - height - top), (left, grid[1] - width - left))
    extended = np.pad(stack, pads, mode="symmetric")
    for axis, (before, after), size in ((1, pads[1], height), (2, pads[2], width)):
        ramp = np.ones(before + size + after, dtype=np.float32)
        if before:
            ramp[:before] = np.cos(0.5 * np.pi * np.arange(before, 0, -1) / (before + 1)) ** 2
        if after:
            ramp[before + size :] = np.cos(0.5 * np.pi * np.arange(1, after + 1) / (after + 1)) ** 2
        shape = [1, 1, 1]
        shape[axis] = ramp.size
        extended = extended * ramp.reshape(shape)
    return extended


def _smooth_phase(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A low-order polynomial phase (radians) plus a smooth random field, drifting slowly over slices."""
    slices, height, width = shape
    y = np.linspace(-1, 1, height).reshape(1, -1, 1)
    x = np.linspace(-1, 1, width).reshape(1, 1, -1)
    s = np.linspace(-1, 1, slices).reshape(-1, 1, 1) if slices > 1 else np.zeros((1, 1, 1))
    c = rng.normal(0, 1, 7) * np.array([np.pi, 1.2, 1.2, 0.6, 0.8, 0.8, 0.3])
    phase = c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x**2 + c[5] * y**2 + c[6] * s * (x + y)
    field = smooth_noise(rng, (slices, height, width), (max(slices, 2), height / 6, width / 6))
    return (phase + 0.5 * field).astype(np.float32)
