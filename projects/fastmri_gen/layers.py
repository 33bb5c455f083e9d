"""Building blocks of the stylish U-Net: convolution blocks, soft-thresholded skips, noise and modulation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.01
DRAW_SOURCES = ("torch", "numpy")


def fixed_normal(shape: tuple[int, ...], source: str, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the fixed N(0, 1) draw of `shape` used at evaluation: the same values on every call.

    Args:
        shape: output shape.
        source: "torch" (a torch generator seeded 0) or "numpy" (`np.random.RandomState(0).randn`, the
            reference's draw, in float64 then cast).
        device / dtype: of the output.

    Returns:
        `shape` tensor.
    """
    if source == "numpy":
        return torch.from_numpy(np.random.RandomState(0).randn(*shape)).to(device=device, dtype=dtype)
    if source != "torch":
        raise ValueError(f"draw source must be one of {DRAW_SOURCES}, got {source!r}")
    generator = torch.Generator(device=device).manual_seed(0)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def spectral(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Return `module` with spectral normalisation of its weight (`weight_orig`, `weight_u`, `weight_v`)."""
    return nn.utils.spectral_norm(module) if enabled else module


class ConvBNAct(nn.Sequential):
    """Spectrally normalised 3x3 convolution (no bias) -> BatchNorm -> LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, spectral_norm: bool = True) -> None:
        super().__init__(
            spectral(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), spectral_norm),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAK),
        )


class Block(nn.Sequential):
    """Two `ConvBNAct` at `channels` channels: `[B, C, H, W] -> [B, C, H, W]`."""

    def __init__(self, channels: int, spectral_norm: bool = True) -> None:
        super().__init__(ConvBNAct(channels, channels, spectral_norm), ConvBNAct(channels, channels, spectral_norm))


class FuseBlock(nn.Sequential):
    """Dropout2d -> plain 1x1 convolution `2C -> C` (with bias) -> `Block(C)`: merges upsampled and skip."""

    def __init__(self, channels: int, dropout: float = 0.5, spectral_norm: bool = True) -> None:
        super().__init__(nn.Dropout2d(dropout), nn.Conv2d(2 * channels, channels, 1), Block(channels, spectral_norm))


class SoftThreshold(nn.Module):
    """Learnable soft-thresholding `sign(u) * max(|u| - lambda, 0)` with one scalar lambda (init 1)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * F.relu(x.abs() - self.threshold)


class NoiseInjection(nn.Module):
    """Adds one N(0, 1) map `[B, 1, H, W]` scaled per channel (scale initialised N(0, 1), or 0).

    In eval mode, or whenever `fixed_draws` is set (the reference validates in train mode with fixed
    draws), the map is `fixed_normal` of its shape, so inference is deterministic; `enabled=False` turns
    the layer into the identity (the parameter stays, so checkpoints keep their shape).

    Args:
        channels: feature channels C.
        init: scale initialisation, "normal" or "zero".
        draw_source: source of the fixed maps, "torch" or "numpy" (the reference's RandomState(0)).
    """

    def __init__(self, channels: int, init: str = "normal", draw_source: str = "torch") -> None:
        super().__init__()
        if init not in ("normal", "zero"):
            raise ValueError(f"noise scale init must be 'normal' or 'zero', got {init!r}")
        scale = torch.randn(1, channels, 1, 1) if init == "normal" else torch.zeros(1, channels, 1, 1)
        self.scale = nn.Parameter(scale)
        self.enabled, self.fixed_draws, self.draw_source = True, False, draw_source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        shape = (x.shape[0], 1, *x.shape[2:])
        if self.training and not self.fixed_draws:
            noise = torch.randn(shape, device=x.device, dtype=x.dtype)
        else:
            noise = fixed_normal(shape, self.draw_source, x.device, x.dtype)
        return x + self.scale.to(x.dtype) * noise


class TextureAttention(nn.Module):
    """Cross-attention weights of feature pixels (queries) over texture tokens (keys).

    Queries are a 1x1 convolution of the instance-normalised features, keys a linear map of the
    tokens; the weights are a softmax over the tokens of the scaled dot products.

    Args:
        channels: feature channels C.
        style_dim: token length S.
        dim: query/key width d.
    """

    def __init__(self, channels: int, style_dim: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, dim, 1)
        self.key = nn.Linear(style_dim, dim)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Return the attention weights `[B, H*W, N]` (rows sum to 1).

        Args:
            x: features `[B, C, H, W]`.
            tokens: `[B, N, S]`.
        """
        queries = self.query(F.instance_norm(x)).flatten(2).transpose(1, 2)  # [B, HW, d]
        keys = self.key(tokens.to(queries.dtype))  # [B, N, d]
        return torch.softmax(queries @ keys.transpose(1, 2) * self.scale, dim=-1)


class StyleModulation(nn.Module):
    """AdaIN-style modulation of a feature map by texture vectors.

    `gamma` and `beta` come from spectrally normalised linear maps of each texture vector. The
    texture is a grid of `N = gh * gw` vectors `[B, N, S]`: one vector (global AdaIN), K bands
    (several texture vectors) or a G x G grid (spatially adaptive, SPADE-like per-pixel scale and
    shift after bilinear upsampling to the feature size). With `attention_dim > 0` the N vectors are
    tokens instead: each pixel attends over them (`TextureAttention`) and gets the attention-weighted
    gamma and beta, whatever the grid.

    Args:
        channels: feature channels C.
        style_dim: texture vector length S (320).
        mode: "reference": normalise over (C, H, W) jointly, divide by sqrt(std) and scale by gamma
            (the reference layer); "per_channel": instance norm per channel, `x * (1 + gamma) + beta`.
        eps: added under the square roots.
        attention_dim: query/key width of the cross-attention over texture tokens (0: no attention).
    """

    def __init__(self, channels: int, style_dim: int, mode: str = "per_channel", eps: float = 1e-5,
                 attention_dim: int = 0) -> None:
        super().__init__()
        if mode not in ("reference", "per_channel"):
            raise ValueError(f"modulation mode must be 'reference' or 'per_channel', got {mode!r}")
        self.mode, self.eps = mode, eps
        self.gamma = spectral(nn.Linear(style_dim, channels))
        self.beta = spectral(nn.Linear(style_dim, channels))
        self.attention = TextureAttention(channels, style_dim, attention_dim) if attention_dim > 0 else None

    def _maps(self, style: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
              x: torch.Tensor | None = None) -> tuple:
        batch = style.shape[0]
        if self.attention is not None:
            # every pixel picks its own mixture of the token's (gamma, beta): [B, HW, N] @ [B, N, C]
            weights = self.attention(x, style)
            gamma = (weights @ self.gamma(style)).transpose(1, 2).reshape(batch, -1, *size)
            beta = (weights @ self.beta(style)).transpose(1, 2).reshape(batch, -1, *size)
            return gamma, beta
        gamma = self.gamma(style).transpose(1, 2).reshape(batch, -1, *grid)
        beta = self.beta(style).transpose(1, 2).reshape(batch, -1, *grid)
        if grid != (1, 1):
            gamma = F.interpolate(gamma, size=size, mode="bilinear", align_corners=False)
            beta = F.interpolate(beta, size=size, mode="bilinear", align_corners=False)
        return gamma, beta

    def forward(self, x: torch.Tensor, style: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Return the modulated features.

        Args:
            x: features `[B, C, H, W]`.
            style: texture vectors `[B, N, S]`, N = gh * gw, row-major over the grid.
            grid: `(gh, gw)`.

        Returns:
            `[B, C, H, W]`.
        """
        gamma, beta = self._maps(style.to(x.dtype), grid, tuple(x.shape[-2:]), x)
        if self.mode == "reference":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            return gamma * (x - mean) / torch.sqrt(std + self.eps) + beta
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * (1 + gamma) + beta


class StyledStage(nn.Module):
    """A `Block` (or `FuseBlock`) followed by optional noise injection and style modulation."""

    def __init__(self, body: nn.Module, channels: int, style_dim: int | None, modulation: str,
                 attention_dim: int = 0, noise_init: str = "normal") -> None:
        super().__init__()
        self.body = body
        self.noise = NoiseInjection(channels, noise_init) if style_dim else None
        self.style = StyleModulation(channels, style_dim, modulation, attention_dim=attention_dim) if style_dim else None

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None,
                grid: tuple[int, int] = (1, 1)) -> torch.Tensor:
        x = self.body(x)
        if self.noise is not None:
            x = self.noise(x)
        if self.style is not None:
            if style is None:
                raise ValueError("this stage is modulated: a texture `style` [B, N, S] is required")
            x = self.style(x, style, grid)
        return x
