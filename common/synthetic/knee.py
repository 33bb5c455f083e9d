"""Knee-MRI-like magnitude images (coronal proton density), the raw material for simulated k-space.

What it mimics: the content of fastMRI single-coil knee targets: femur above and tibia below the joint
line, bright fatty marrow with trabecular texture inside a dark cortical rim, femoral condyles with an
intercondylar notch, intermediate-signal cartilage bands on both joint surfaces with a thin bright fluid
line between them, dark wedge-shaped menisci and collateral ligaments, cruciate ligaments in the notch,
striated muscle and bright subcutaneous fat; the anatomy changes smoothly from slice to slice.

What it does not: real knee shapes or sizes, fat suppression, coil shading or noise (noise and phase are
added by ``single_coil_kspace``), or fastMRI's absolute intensity scale (values here are about 0 to 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from common.synthetic._fields import smooth_noise


def knee_images(seed: int, n_slices: int = 8, size: Sequence[int] = (320, 320)) -> np.ndarray:
    """Returns a stack of knee-like magnitude images.

    Args:
        seed: seed of ``np.random.default_rng``; the same seed gives identical arrays.
        n_slices: number of slices ``S`` (>= 1), spread evenly from anterior to posterior.
        size: image size ``(H, W)`` in pixels (rows superior-inferior, columns left-right), each >= 32.

    Returns:
        float32 ``[S, H, W]`` magnitudes in about [0, 1].

    Raises:
        ValueError: if ``n_slices`` < 1 or ``size`` is not two sizes >= 32.
    """
    if n_slices < 1:
        raise ValueError(f"knee_images needs n_slices >= 1, got {n_slices}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"knee_images needs an image size (H, W) with both >= 32, got {tuple(size)}")
    rng = np.random.default_rng(seed)
    shape = (int(n_slices), int(size[0]), int(size[1]))
    p = np.linspace(-0.8, 0.8, n_slices, dtype=np.float32).reshape(-1, 1, 1) if n_slices > 1 else np.zeros((1, 1, 1), np.float32)
    y = np.linspace(-1, 1, shape[1], dtype=np.float32).reshape(1, -1, 1)
    x = np.linspace(-1, 1, shape[2], dtype=np.float32).reshape(1, 1, -1)
    joint = 0.05 + rng.uniform(-0.08, 0.08) + rng.uniform(-0.05, 0.05) * x
    image = _soft_tissue(rng, shape, x, y)
    femur, tibia, cartilage_f, cartilage_t = _bones(rng, x, y, p, joint)
    pixel = 2.0 / shape[2]
    _paint_bone(rng, image, femur | tibia, pixel, shape)
    image[np.broadcast_to(cartilage_f | cartilage_t, shape)] = 0.45
    fluid = (np.abs(y - joint) < 0.006) & (np.abs(x) < 0.45) & ~(femur | tibia)
    image[np.broadcast_to(fluid, shape)] = 0.9
    _ligaments_and_menisci(image, x, y, p, joint, shape)
    image += 0.03 * ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, 0.7, 0.7))
    image = ndimage.gaussian_filter(image, (0, 0.8, 0.8))
    return np.clip(image, 0.0, None).astype(np.float32)


def _soft_tissue(rng: np.random.Generator, shape: tuple[int, int, int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leg outline with subcutaneous fat and muscle striated along the limb (rows)."""
    half_width = 0.8 + 0.05 * np.sin(2.5 * y + rng.uniform(0, 6)) + 0.02 * smooth_noise(rng, (1, shape[1], 1), (1, 40, 1))
    leg = np.abs(x) < half_width
    fat = np.abs(x) > half_width - 0.07 - 0.02 * smooth_noise(rng, (1, shape[1], 1), (1, 30, 1))
    striation = smooth_noise(rng, shape, (1, 24, 2))
    image = np.where(leg, 0.3 + 0.05 * striation, 0.0).astype(np.float32)
    image[np.broadcast_to(leg & fat, shape)] = 0.85
    return image


def _bones(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, p: np.ndarray, joint: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Femur and tibia masks and their cartilage bands, ``[S, H, W]`` booleans (broadcast)."""
    scale = np.sqrt(1.0 - 0.5 * p**2)
    condyle = 0.25 * scale
    notch = (0.06 + 0.1 * np.clip(p, 0, None)) * np.exp(-((x / 0.07) ** 2))
    femur_bottom = joint - 0.018 - 0.1 * ((np.abs(x) - condyle) / condyle) ** 2 - notch
    femur_width = (0.22 + 0.28 * _sigmoid((y - joint + 0.45) / 0.1)) * scale + rng.uniform(-0.02, 0.02)
    femur = (y < femur_bottom) & (np.abs(x) < femur_width)
    spines = 0.04 * np.exp(-((x / 0.07) ** 2))
    tibia_top = joint + 0.018 + 0.03 * (x / 0.5) ** 2 - spines
    tibia_width = (0.27 + 0.22 * _sigmoid((joint + 0.35 - y) / 0.1)) * scale + rng.uniform(-0.02, 0.02)
    tibia = (y > tibia_top) & (np.abs(x) < tibia_width)
    thickness = 0.02 + 0.004 * rng.standard_normal()
    cartilage_f = (y >= femur_bottom) & (y < femur_bottom + thickness) & (np.abs(x) < femur_width * 0.95) & (notch < 0.02)
    cartilage_t = (y <= tibia_top) & (y > tibia_top - thickness) & (np.abs(x) < tibia_width * 0.9) & (spines < 0.01)
    patella = (((x / 0.22) ** 2 + ((y - joint + 0.3) / 0.12) ** 2) < 1) & (p < -0.5)
    fibula = ((((x - 0.45) / 0.08) ** 2 + ((y - joint - 0.28) / 0.1) ** 2) < 1) & (p > 0.2)
    return femur | patella, tibia | fibula, cartilage_f, cartilage_t


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _paint_bone(rng: np.random.Generator, image: np.ndarray, bone: np.ndarray, pixel: float, shape: tuple[int, ...]) -> None:
    """Fatty marrow with trabecular texture inside a dark cortical rim about 1.2 % of the width thick."""
    bone = np.broadcast_to(bone, shape)
    # border_value=1: bone running off the image edge has no cortex there.
    inner = ndimage.binary_erosion(
        bone, structure=np.ones((1, 3, 3), bool), iterations=max(1, round(0.012 / pixel)), border_value=1
    )
    trabecular = smooth_noise(rng, shape, (1, 2.5, 2.5))
    image[bone] = 0.06
    image[inner] = (0.7 + 0.07 * trabecular)[inner]


def _ligaments_and_menisci(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, joint: np.ndarray, shape: tuple[int, ...]
) -> None:
    """Dark menisci wedges at the joint margins, collateral ligaments and cruciates in the notch."""
    outer = np.abs(x)
    height = 0.04 * np.clip((outer - 0.3) / 0.18, 0, 1)
    menisci = (outer > 0.3) & (outer < 0.5) & (np.abs(y - joint) < height)
    image[np.broadcast_to(menisci, shape)] = 0.07
    collateral = (outer > 0.5) & (outer < 0.53) & (np.abs(y - joint) < 0.25)
    image[np.broadcast_to(collateral, shape)] = 0.1
    cruciate = (np.abs((x - 0.0) - 0.5 * (y - joint + 0.02)) < 0.018) & (np.abs(y - joint + 0.02) < 0.09) & (np.abs(p) < 0.45)
    image[np.broadcast_to(cruciate, shape)] = 0.12
