"""SPiN's training augmentation applied to a whole batch in torch (one random draw per sample).

Per sample, with probability ``gate`` the geometric group is applied; inside it each op has probability 0.5:
horizontal flip (W), vertical flip (H), rotation by U(-30, 30) degrees, and a zoom by U(1.0, 1.1) followed by
a true centre crop back to H x W. Gaussian noise (sigma 0.01, on normalised images) is added with its own
probability 0.5. Image and label share the geometry; both are resampled with nearest neighbours and areas
rotated in from outside the slice are 0 (the normalised dataset mean) and background.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _coin(n: int, p: float, device: torch.device) -> Tensor:
    return torch.rand(n, device=device) < p


def _sample_matrices(n: int, gate: Tensor, max_degrees: float, zoom: tuple[float, float],
                     device: torch.device) -> Tensor:
    """Returns [n, 2, 3] sampling matrices (output -> input coordinates) of flips, rotation and zoom."""
    flip_w = torch.where(gate & _coin(n, 0.5, device), -1.0, 1.0)
    flip_h = torch.where(gate & _coin(n, 0.5, device), -1.0, 1.0)
    angle = torch.where(gate & _coin(n, 0.5, device),
                        (torch.rand(n, device=device) * 2 - 1) * math.radians(max_degrees), torch.zeros(n, device=device))
    scale = torch.where(gate & _coin(n, 0.5, device),
                        zoom[0] + torch.rand(n, device=device) * (zoom[1] - zoom[0]), torch.ones(n, device=device))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    # Flips act on the input grid first, then rotation and zoom about the centre.
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_w, -sin * flip_w
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip_h, cos * flip_h
    return theta


def augment_batch(image: Tensor, label: Tensor, gate_prob: float = 1.0, noise_prob: float = 0.5,
                  noise_std: float = 0.01, max_degrees: float = 30.0,
                  zoom: tuple[float, float] = (1.0, 1.1)) -> tuple[Tensor, Tensor]:
    """Returns an augmented copy of a batch.

    Args:
        image: float ``[N, C, H, W]`` normalised slices.
        label: integer ``[N, 1, H, W]`` masks.
        gate_prob: probability that a sample gets the geometric group at all.
        noise_prob: probability of additive Gaussian noise per sample.
        noise_std: its standard deviation (normalised units).
        max_degrees: rotation range (degrees, symmetric).
        zoom: zoom-factor range (>= 1 zooms in, then the centre H x W is kept).

    Returns:
        ``(image, label)`` with the input shapes and dtypes.
    """
    n, device = image.shape[0], image.device
    noisy = _coin(n, noise_prob, device).to(image.dtype).view(n, 1, 1, 1)
    image = image + noisy * noise_std * torch.randn_like(image)
    gate = _coin(n, gate_prob, device)
    if not bool(gate.any()):
        return image, label
    theta = _sample_matrices(n, gate, max_degrees, zoom, device)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    moved_image = F.grid_sample(image, grid.to(image.dtype), mode="nearest", padding_mode="zeros",
                                align_corners=False)
    moved_label = F.grid_sample(label.to(image.dtype), grid.to(image.dtype), mode="nearest", padding_mode="zeros",
                                align_corners=False)
    keep = gate.view(n, 1, 1, 1)
    return torch.where(keep, moved_image, image), torch.where(keep, moved_label.round().to(label.dtype), label)
