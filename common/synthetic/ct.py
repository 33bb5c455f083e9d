"""CT-like abdomen: Hounsfield units, organ labels and a small, low-contrast pancreas-like organ.

What it mimics: a contrast-enhanced (portal venous) axial abdominal CT: air around an elliptical body,
subcutaneous fat, a muscle wall, soft tissue with visceral fat, a large liver with enhancing vessels and
occasional hypodense lesions, spleen, kidneys (bright cortex), aorta and vena cava, a spine whose vertebral
bodies alternate with discs along z, rib arcs in the upper slices, gas and fluid in stomach and bowel, and
a thin, curved pancreas-like organ (0.6-1.3 % of the body volume, +15..30 HU above the surrounding soft
tissue before partial-volume blur, about +10..25 HU after it) whose course changes with the seed. Anatomy
changes non-linearly along z (discs, ribs, organs appearing and vanishing), so through-plane
super-resolution has something to recover.

What it does not: real organ shapes, scanner physics (beam hardening, streaks, reconstruction kernels),
true noise power spectra, arterial/venous phase timing, or the millimetre scale of a real abdomen: the
anatomy is laid out in coordinates normalised to the field of view, so a small array holds a whole
(miniature) abdomen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from common.synthetic._fields import (
    centred_affine,
    ellipsoid,
    normalised_grid,
    polyline_distance,
    smooth_noise,
)

CT_LABELS: dict[str, int] = {
    "background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4, "vessel": 5, "bone": 6, "liver_tumour": 7,
}


@dataclass
class _Scene:
    rng: np.random.Generator
    shape: tuple[int, int, int]
    u: np.ndarray  # in-plane coordinates in units of the smaller half field of view (+R)
    v: np.ndarray  # (+A)
    w: np.ndarray  # -1 .. 1 along z (+S)
    hu: np.ndarray
    organ: np.ndarray
    # Set by _body: body mask, visceral cavity, normalised radius (1 at the skin), fat thickness.
    body: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    visceral: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    body_radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fat_depth: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spine_v: float = 0.0

    def paint(self, where: np.ndarray, value: float | np.ndarray, label: int | None = None) -> None:
        where = np.broadcast_to(where, self.hu.shape)
        self.hu[where] = np.broadcast_to(value, self.hu.shape)[where] if isinstance(value, np.ndarray) else value
        if label is not None:
            self.organ[where] = label


def ct_abdomen(
    seed: int, shape: Sequence[int] = (96, 96, 40), spacing: Sequence[float] = (0.8, 0.8, 2.5)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns a CT-like abdomen volume, its organ label map and its affine.

    Args:
        seed: seed of ``np.random.default_rng``; the same seed gives identical arrays.
        shape: array shape ``(X, Y, Z)``, axis 2 the slice (through-plane) axis; each at least 8.
        spacing: voxel size in mm ``(sx, sy, sz)``.

    Returns:
        ``(hu, organ, affine)``: float32 ``[X, Y, Z]`` in Hounsfield units >= -1024 (air -1000, fat about -100,
        soft tissue about 40, bone 300-1200); uint8 ``[X, Y, Z]`` labels coded as in ``CT_LABELS``
        (``organ == CT_LABELS["pancreas"]`` is the small organ); float64 ``[4, 4]`` RAS affine (mm).

    Raises:
        ValueError: if ``shape`` or ``spacing`` is not three positive numbers (``shape`` entries >= 8).
    """
    shape3, spacing3 = _check_grid(shape, spacing)
    scene = _make_scene(np.random.default_rng(seed), shape3, spacing3)
    _body(scene)
    _spine_and_ribs(scene)
    _abdominal_organs(scene)
    _liver(scene)
    _gut(scene)
    _pancreas(scene)
    hu = ndimage.gaussian_filter(scene.hu, sigma=(0.6, 0.6, 0.35))
    grain = ndimage.gaussian_filter(scene.rng.standard_normal(shape3, dtype=np.float32), sigma=(0.7, 0.7, 0.3))
    hu += 14.0 * grain / max(float(grain.std()), 1e-6)
    # Scanners report nothing below -1024 HU (the lowest value of a 12-bit range offset by 1024).
    hu = np.maximum(hu, -1024.0)
    return hu.astype(np.float32), scene.organ, centred_affine(shape3, spacing3)


def _check_grid(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, ...]]:
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"ct_abdomen needs a 3-D shape with every size >= 8, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"ct_abdomen needs three positive voxel sizes in mm, got {tuple(spacing)}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), tuple(float(s) for s in spacing)


def _make_scene(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, ...]) -> _Scene:
    half = [(n - 1) * s / 2.0 for n, s in zip(shape, spacing)]
    in_plane = min(half[0], half[1])
    x, y, z = normalised_grid(shape)
    return _Scene(
        rng=rng, shape=shape, u=x * half[0] / in_plane, v=y * half[1] / in_plane, w=z,
        hu=np.full(shape, -1000.0, dtype=np.float32), organ=np.zeros(shape, dtype=np.uint8),
    )


def _body(s: _Scene) -> None:
    """Body outline, subcutaneous fat, muscle wall and soft tissue with visceral fat."""
    rng = s.rng
    ph = rng.uniform(0, 2 * np.pi, 2)
    b0 = 0.7 * rng.uniform(0.93, 1.03)
    a = 0.9 * rng.uniform(0.95, 1.03) * (1 + 0.05 * np.sin(2.3 * s.w + ph[0]))
    b = b0 * (1 + 0.05 * np.cos(1.7 * s.w + ph[1]))
    radius = np.sqrt((s.u / a) ** 2 + (s.v / b) ** 2)
    fat = 0.09 + 0.03 * smooth_noise(rng, s.shape, (12, 12, 6))
    body = radius < 1.0
    s.paint(body, -100.0 + 15.0 * smooth_noise(rng, s.shape, 3))
    s.paint(body & (radius < 1.0 - fat), 50.0)
    s.visceral = radius < 1.0 - fat - 0.05
    tissue = 40.0 + 8.0 * smooth_noise(rng, s.shape, (4, 4, 2))
    s.paint(s.visceral, tissue)
    mesentery = s.visceral & (smooth_noise(rng, s.shape, (6, 6, 3)) > 1.0)
    s.paint(mesentery, -90.0)
    s.body, s.body_radius, s.fat_depth, s.spine_v = body, radius, fat, -0.5 * b0


def _spine_and_ribs(s: _Scene) -> None:
    """Vertebral bodies alternating with discs along z, posterior elements, paraspinal muscles, ribs."""
    rng, u, v, w, sv = s.rng, s.u, s.v, s.w, s.spine_v
    for side in (-1.0, 1.0):
        s.paint(ellipsoid((u, v), (0.16 * side, sv - 0.19), (0.11, 0.085)) < 1, 55.0)
        psoas = ellipsoid((u, v), (0.17 * side, sv + 0.03), (0.05, 0.05)) < 1 + 0.6 * np.clip(-w, 0, 1)
        s.paint(psoas & s.visceral, 50.0)
    period, offset = rng.uniform(0.45, 0.6), rng.uniform(0, 1)
    disc = ((w - offset) / period) % 1.0 < 0.2
    body_r = ellipsoid((u, v), (0.0, sv), (0.12, 0.105))
    trabecular = 320.0 + 60.0 * smooth_noise(rng, s.shape, 1.5)
    s.paint((body_r < 1) & ~disc, trabecular, CT_LABELS["bone"])
    s.paint((body_r < 1) & (body_r > 0.8) & ~disc, 1100.0, CT_LABELS["bone"])
    s.paint((body_r < 1) & disc, 90.0)
    canal_v = sv - 0.105 - 0.06
    arch = ellipsoid((u, v), (0.0, canal_v), (0.085, 0.08))
    spinous = ellipsoid((u, v), (0.0, canal_v - 0.1), (0.025, 0.06))
    transverse = ellipsoid((np.abs(u), v), (0.13, canal_v + 0.02), (0.08, 0.025))
    upper_half = ((w - offset) / period) % 1.0 > 0.55
    posterior = ((arch < 1) | (spinous < 1) | ((transverse < 1) & upper_half)) & ~disc
    s.paint(posterior, 900.0, CT_LABELS["bone"])
    s.paint(arch < 0.65, 15.0, 0)
    radius, fat = s.body_radius, s.fat_depth
    angle = np.arctan2(s.v, s.u)
    drift, n_ribs, start = rng.uniform(0.5, 0.9), rng.integers(9, 12), rng.uniform(-0.5, 0.2)
    shell = (radius < 1.0 - fat) & (radius > 1.0 - fat - 0.035)
    ribs = shell & (np.cos(n_ribs * (angle - drift * w)) > 0.55) & (w > start)
    s.paint(ribs, 850.0, CT_LABELS["bone"])


def _abdominal_organs(s: _Scene) -> None:
    """Spleen, kidneys, aorta and inferior vena cava."""
    rng, u, v, w, sv = s.rng, s.u, s.v, s.w, s.spine_v
    spleen_c = (-0.55 + rng.uniform(-0.04, 0.04), -0.2 + rng.uniform(-0.05, 0.05), 0.45 + rng.uniform(-0.1, 0.1))
    wob = 0.06 * smooth_noise(rng, s.shape, (10, 10, 5))
    s.paint((ellipsoid((u, v, w), spleen_c, (0.16, 0.25, 0.4), wob) < 1) & s.visceral, 48.0, CT_LABELS["spleen"])
    for side in (-1.0, 1.0):
        centre = (0.33 * side, sv + 0.09, -0.1 - 0.1 * (side > 0) + rng.uniform(-0.12, 0.12))
        kidney = ellipsoid((u, v, w), centre, (0.11, 0.15, 0.45), wob)
        s.paint((kidney < 1) & s.visceral, 150.0, CT_LABELS["kidney"])
        s.paint((kidney < 0.55) & s.visceral, 30.0, CT_LABELS["kidney"])
    aorta = ellipsoid((u, v), (-0.05, sv + 0.18), (0.055, 0.055)) < 1
    ivc = ellipsoid((u, v), (0.14, sv + 0.17), (0.065, 0.045)) < 1
    s.paint(aorta, 180.0, CT_LABELS["vessel"])
    s.paint(ivc, 130.0, CT_LABELS["vessel"])


def _liver(s: _Scene) -> None:
    """A large right-upper organ with enhancing vessels and 0-2 hypodense lesions."""
    rng, u, v, w = s.rng, s.u, s.v, s.w
    centre = (0.4 + rng.uniform(-0.04, 0.04), rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.1, 0.1))
    wob = 0.08 * smooth_noise(rng, s.shape, (8, 8, 4))
    medial_edge = -0.15 + 0.6 * (centre[2] - w)
    liver = (ellipsoid((u, v, w), centre, (0.45, 0.5, 0.95), wob) < 1) & (u > medial_edge) & s.visceral
    liver &= s.organ == 0
    s.paint(liver, 58.0 + 6.0 * smooth_noise(rng, s.shape, 3), CT_LABELS["liver"])
    hilum = np.array([0.12, -0.05, centre[2] - 0.2])
    for _ in range(int(rng.integers(3, 6))):
        tip = np.array(centre) + rng.uniform(-1, 1, 3) * np.array([0.35, 0.35, 0.6])
        bend = (hilum + tip) / 2 + rng.normal(0, 0.08, 3)
        t = np.linspace(0, 1, 64)[:, None]
        curve = (1 - t) ** 2 * hilum + 2 * t * (1 - t) * bend + t**2 * tip
        dist, _, box = polyline_distance(_to_index(s, curve), s.shape, _index_scale(s), 0.1)
        vessel = (dist < rng.uniform(0.02, 0.035)) & liver[box]
        s.hu[box][vessel] = 160.0
        s.organ[box][vessel] = CT_LABELS["vessel"]
    for _ in range(int(rng.integers(0, 3))):
        inside = np.argwhere(s.organ == CT_LABELS["liver"])
        if len(inside) == 0:
            break
        c = inside[rng.integers(len(inside))]
        r = rng.uniform(0.05, 0.1)
        lesion = (ellipsoid((u, v, w), (u.flat[c[0]], v.flat[c[1]], w.flat[c[2]]), (r, r, r * 1.6)) < 1) & liver
        s.paint(lesion, 28.0, CT_LABELS["liver_tumour"])


def _gut(s: _Scene) -> None:
    """Stomach with an anterior air-fluid level, and gas- or fluid-filled bowel in the lower abdomen."""
    rng, u, v, w = s.rng, s.u, s.v, s.w
    centre = (-0.3, 0.3 + rng.uniform(-0.05, 0.05), 0.55 + rng.uniform(-0.1, 0.1))
    stomach = (ellipsoid((u, v, w), centre, (0.22, 0.18, 0.35)) < 1) & s.visceral & (s.organ == 0)
    s.paint(stomach, 15.0)
    s.paint(stomach & (v > centre[1] + 0.08), -1000.0)
    loops = smooth_noise(rng, s.shape, (5, 5, 3))
    lower = s.visceral & (s.organ == 0) & (w < 0.2) & (v > s.spine_v + 0.3)
    s.paint(lower & (loops > 1.3), 20.0)
    s.paint(lower & (loops > 2.0), -950.0)


def _pancreas(s: _Scene) -> None:
    """A thin, curved tube from the spleen (tail, superior) to the duodenum (head, thicker), low contrast.

    The tube's radius is chosen so that the organ fills a seeded 0.6-1.3 % of the body; it only takes
    voxels not already claimed by another organ, so it wraps around its neighbours.
    """
    rng = s.rng
    t = np.linspace(0.0, 1.0, 160)
    phases, amps = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.01, 0.04, 3)
    centreline = np.stack([
        -0.58 + rng.uniform(-0.05, 0.05) + (0.85 + rng.uniform(-0.08, 0.08)) * t,
        s.spine_v + 0.38 + rng.uniform(-0.04, 0.04) + rng.uniform(0.06, 0.16) * np.sin(np.pi * t)
        - 0.12 * (1 - t) ** 3,
        rng.uniform(-0.3, 0.1) + rng.uniform(0.05, 0.25) * (1 - t) ** 1.3,
    ], axis=1)
    centreline += amps * np.sin(2 * np.pi * np.array([1.5, 2.5, 3.5]) * t[:, None] + phases)
    profile = (0.55 + 0.9 * t**1.5) * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + phases[0]))
    # z distances count 0.6x: the organ is thicker across slices than within a slice, so an axial
    # slice shows a long thin band rather than a round blob.
    metric = _index_scale(s) * np.array([1.0, 1.0, 0.6])
    dist, nearest, box = polyline_distance(_to_index(s, centreline), s.shape, metric, 0.45)
    relative = dist / profile[nearest].astype(np.float32)
    free = s.visceral[box] & (s.organ[box] == 0) & (s.hu[box] > -200)
    candidates = np.sort(relative[free])
    wanted = int(rng.uniform(0.006, 0.013) * np.count_nonzero(s.body))
    if candidates.size == 0 or wanted == 0:
        return
    inside = free & (relative <= candidates[min(wanted, candidates.size) - 1])
    # Neighbouring organs can pinch off a few voxels; the organ itself is one piece.
    parts, count = ndimage.label(inside)
    if count > 1:
        inside = parts == 1 + int(np.argmax(ndimage.sum_labels(inside, parts, range(1, count + 1))))
    lobules = 40.0 + rng.uniform(15.0, 30.0) + 6.0 * smooth_noise(rng, dist.shape, 1.5)
    s.hu[box][inside] = lobules[inside]
    s.organ[box][inside] = CT_LABELS["pancreas"]


def _index_scale(s: _Scene) -> np.ndarray:
    """Normalised units per voxel along each axis."""
    return np.array([float(s.u.ravel()[1] - s.u.ravel()[0]), float(s.v.ravel()[1] - s.v.ravel()[0]),
                     float(s.w.ravel()[1] - s.w.ravel()[0])])


def _to_index(s: _Scene, points: np.ndarray) -> np.ndarray:
    """Converts ``[N, 3]`` normalised (u, v, w) points to voxel index coordinates."""
    origin = np.array([float(s.u.ravel()[0]), float(s.v.ravel()[0]), float(s.w.ravel()[0])])
    return (points - origin) / _index_scale(s)
