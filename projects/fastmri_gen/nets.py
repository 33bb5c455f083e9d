"""The conditional patch discriminator and the comparators: the fastMRI U-Net and zero-filling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN critic on `cat[image, zero-filled]`.

    Conv4 s2 (64, bias) + LeakyReLU(0.2), then [Conv4 (no bias) + BatchNorm + LeakyReLU(0.2)] at 128 (s2),
    256 (s2), 512 (s1), then Conv4 s1 -> 1; reflect padding 1. A 320 x 320 input gives a 38 x 38 patch map.
    2,764,609 parameters with the defaults.

    Args:
        in_channels: 2 (image and condition).
        base_channels: width of the first layer.
        layers: number of strided/normalised layers after the first.
    """

    def __init__(self, in_channels: int = 2, base_channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2)]
        channels = base_channels
        for i in range(1, layers + 1):
            out = base_channels * 2 ** min(i, 3)
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(channels, out, 4, stride, 1, bias=False, padding_mode="reflect"),
                        nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            channels = out
        modules.append(nn.Conv2d(channels, 1, 4, 1, 1, padding_mode="reflect"))
        self.model = nn.Sequential(*modules)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Return the patch logits `[B, 1, h, w]` of `image` `[B, 1, H, W]` given `condition` `[B, 1, H, W]`."""
        return self.model(torch.cat([image, condition], dim=1))


class ConvBlock(nn.Module):
    """Two [3x3 convolution (no bias), InstanceNorm, LeakyReLU(0.2), Dropout2d]."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), nn.InstanceNorm2d(out_channels),
                       nn.LeakyReLU(0.2), nn.Dropout2d(dropout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransposeConvBlock(nn.Module):
    """2x2 stride-2 transposed convolution (no bias), InstanceNorm, LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, 2, bias=False),
                                    nn.InstanceNorm2d(out_channels), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FastMRIUnet(nn.Module):
    """The fastMRI baseline U-Net (Ronneberger-style, average-pool down, transposed-conv up).

    7,756,097 parameters at `chans=32`, 4 pools. Works on any H, W (reflect padding before concat).

    Args:
        in_chans / out_chans: image channels.
        chans: width of the first level.
        num_pool_layers: number of down-sampling levels.
        drop_prob: dropout rate.
    """

    def __init__(self, in_chans: int = 1, out_chans: int = 1, chans: int = 32, num_pool_layers: int = 4,
                 drop_prob: float = 0.0) -> None:
        super().__init__()
        self.down_sample_layers = nn.ModuleList([ConvBlock(in_chans, chans, drop_prob)])
        ch = chans
        for _ in range(num_pool_layers - 1):
            self.down_sample_layers.append(ConvBlock(ch, ch * 2, drop_prob))
            ch *= 2
        self.conv = ConvBlock(ch, ch * 2, drop_prob)
        self.up_transpose_conv = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for _ in range(num_pool_layers - 1):
            self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
            self.up_conv.append(ConvBlock(ch * 2, ch, drop_prob))
            ch //= 2
        self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
        self.up_conv.append(nn.Sequential(ConvBlock(ch * 2, ch, drop_prob), nn.Conv2d(ch, out_chans, 1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return `[B, out_chans, H, W]` from `[B, in_chans, H, W]`."""
        stack = []
        x = image
        for layer in self.down_sample_layers:
            x = layer(x)
            stack.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.conv(x)
        for transpose, conv in zip(self.up_transpose_conv, self.up_conv):
            skip = stack.pop()
            x = transpose(x)
            pad = (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2])
            if any(pad):
                x = F.pad(x, pad, mode="reflect")
            x = conv(torch.cat([x, skip], dim=1))
        return x


class ZeroFilled(nn.Module):
    """The classical comparator: returns its input (the zero-filled magnitude) unchanged."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image
