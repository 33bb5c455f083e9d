"""MobileNetV2 feature trunk (Sandler et al. 2018), built here so that torchvision is not needed.

Parameter names follow the common layout of MobileNetV2 checkpoints (`features.0.0.weight`,
`features.1.conv.0.0.weight`, ...), so ImageNet weights saved from another implementation with that
layout load with `load_trunk_weights` from a local file. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import read_checkpoint
from common.errors import DataError

# (expansion t, output channels c, repeats n, first stride s) of the 1.0-width network
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
FEATURE_CHANNELS = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU6(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> ReLU6, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear projection (1x1), residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expansion))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    """The convolutional trunk of MobileNetV2 (width 1.0): `[B, 3, H, W] -> [B, 1280, H/32, W/32]`.

    2,223,872 parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        channels = 32
        for expansion, out_channels, repeats, stride in INVERTED_RESIDUAL_SETTING:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
        layers.append(ConvBNReLU6(channels, FEATURE_CHANNELS, kernel=1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """Return a `[B, 3, H, W]` image in [0, 1] normalised with the ImageNet channel statistics."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x - mean) / std


def load_trunk_weights(trunk: MobileNetV2Features, path: str | os.PathLike) -> None:
    """Load MobileNetV2 weights from a local file into `trunk`.

    Accepts a plain state dict or one nested under `state_dict`; keys may carry a `model.` or
    `module.` prefix, and classifier keys are ignored.

    Raises:
        DataError: missing/unreadable file, or feature weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "MobileNetV2 weight file not found (weights are never downloaded)")
    state = read_checkpoint(path)
    state = state.get("state_dict", state)
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            key = key.removeprefix(prefix)
        if key.startswith("features."):
            cleaned[key] = value
    try:
        trunk.load_state_dict(cleaned, strict=True)
    except RuntimeError as err:
        raise DataError(path, f"weights do not fit MobileNetV2 features: {err}") from err
