"""stylish-fastmri networks: the reduced Adaptive-CS-Net baseline and its StyleGAN-like generative extension.

Module names (the state-dict prefixes):
    StylishUNet: `init`, `encoders.{0..3}` (enc0..3), `downs.{0..3}`, `bottleneck` (dec0), `ups.{0..3}`
        (up0..3), `thresholds.{0..3}` (soft-thresholded skips), `decoders.{0..3}` (dec1..3 and final),
        `out`. Each encoder/decoder stage holds `body`, and in the generative model `noise` and `style`.
    StylishReconstructor (baseline): `blocks.{i}` (StylishUNet), `dc_weight` when learned.
    StylishGenerator (generative): `unet` (a StylishReconstructor), `z_encoder`, `mapping`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from projects.fastmri_gen.layers import (
    Block,
    FuseBlock,
    NoiseInjection,
    SoftThreshold,
    StyledStage,
    fixed_normal,
    spectral,
)
from projects.fastmri_gen.mobilenet import FEATURE_CHANNELS, MobileNetV2Features, imagenet_normalise
from projects.fastmri_gen.transforms import fft2c, ifft2c

STYLE_DIM = FEATURE_CHANNELS // 4  # 320: the trunk's 1280 channels averaged in groups of 4
PHASE_EPS = 1e-3  # in normalised units (about 1e-3 of the image's standard deviation): phase of near-zero pixels


def nearest_multiple(size: int, multiple: int) -> int:
    """Return the multiple of `multiple` nearest to `size`, the larger one at a tie (the reference's rule).

    68 -> 64, 72 -> 80 and 76 -> 80 for 16. Sizes below `multiple / 2`, which the reference would round to
    0, give `multiple`.
    """
    lower = size - size % multiple
    if lower == size:
        return size
    upper = lower + multiple
    return lower if lower > 0 and size - lower < upper - size else upper


class StylishUNet(nn.Module):
    """4-level U-Net with soft-thresholded skip connections and optional noise + style modulation.

    Args:
        in_channels: input channels (2 = image + data-consistency channel; 4 for complex images).
        out_channels: output channels.
        min_channels / max_channels: width of the first level / cap of the deepest one.
        depth: number of down-sampling levels.
        dropout: Dropout2d rate of the fusion layers.
        style_dim: texture vector length; None builds the baseline without noise or modulation.
        modulation: "reference" or "per_channel" (see `StyleModulation`).
        size_fit: "resize" (bilinear resize to the nearest multiple of 2**depth and back, as the reference)
            or "pad" (zero padding up to the next multiple).
        output: "hardsigmoid" (range [0, 1]) or "linear".
        spectral_norm: spectral normalisation of the 3x3 and down-sampling convolutions.
        threshold_init: initial soft threshold of the skips (1.0 in the reference; with unit-variance
            features it zeroes about two thirds of each skip at the start, 0.0 starts as an identity).
        attention_dim: > 0 makes every modulation a cross-attention over the texture tokens (query/key width).
        noise_init: per-channel scale of the noise inputs at the start, "normal" (N(0, 1), the reference)
            or "zero" (noise enters only as far as training asks for it).
        zero_output: start the output convolution at zero (with a residual update the block starts as
            the identity instead of adding a random image).
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, min_channels: int = 32,
                 max_channels: int = 512, depth: int = 4, dropout: float = 0.5, style_dim: int | None = None,
                 modulation: str = "per_channel", size_fit: str = "resize", output: str = "hardsigmoid",
                 spectral_norm: bool = True, threshold_init: float = 1.0, attention_dim: int = 0,
                 noise_init: str = "normal", zero_output: bool = False) -> None:
        super().__init__()
        if size_fit not in ("resize", "pad") or output not in ("hardsigmoid", "linear"):
            raise ValueError(f"size_fit must be resize|pad and output hardsigmoid|linear, got {size_fit}, {output}")
        widths = [min(min_channels * 2**i, max_channels) for i in range(depth + 1)]
        self.depth, self.size_fit, self.output = depth, size_fit, output

        def stage(body: nn.Module, channels: int) -> StyledStage:
            return StyledStage(body, channels, style_dim, modulation, attention_dim, noise_init)

        self.init = nn.Conv2d(in_channels, widths[0], 1)
        self.encoders = nn.ModuleList(stage(Block(c, spectral_norm), c) for c in widths[:-1])
        self.downs = nn.ModuleList(spectral(nn.Conv2d(widths[i], widths[i + 1], 1), spectral_norm)
                                   for i in range(depth))
        self.bottleneck = stage(Block(widths[-1], spectral_norm), widths[-1])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 3, 2, 1, output_padding=1)
                                 for i in reversed(range(depth)))
        self.thresholds = nn.ModuleList(SoftThreshold(threshold_init) for _ in range(depth))
        self.decoders = nn.ModuleList(stage(FuseBlock(widths[i], dropout, spectral_norm), widths[i])
                                      for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], out_channels, 1)
        if zero_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def _fit(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        multiple = 2**self.depth
        height, width = x.shape[-2:]
        if self.size_fit == "resize":
            target = (nearest_multiple(height, multiple), nearest_multiple(width, multiple))
        else:
            target = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
        if target == (height, width):
            return x, ()
        if self.size_fit == "resize":
            return F.interpolate(x, size=target, mode="bilinear", align_corners=False), (height, width)
        top, left = (target[0] - height) // 2, (target[1] - width) // 2
        pad = (left, target[1] - width - left, top, target[0] - height - top)
        return F.pad(x, pad), pad

    def _unfit(self, x: torch.Tensor, undo: tuple[int, ...]) -> torch.Tensor:
        if not undo:
            return x
        if self.size_fit == "resize":
            return F.interpolate(x, size=undo, mode="bilinear", align_corners=False)
        left, right, top, bottom = undo
        return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None,
                grid: tuple[int, int] = (1, 1)) -> torch.Tensor:
        """Return the network output.

        Args:
            x: `[B, in_channels, H, W]` float, any H and W.
            style: texture vectors `[B, N, S]` (generative model only).
            grid: the texture grid `(gh, gw)`, `gh * gw = N`.

        Returns:
            `[B, out_channels, H, W]`.
        """
        x, undo = self._fit(x)
        h = self.init(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            h = encoder(h, style, grid)
            skips.append(h)
            h = down(F.max_pool2d(h, 2))
        h = self.bottleneck(h, style, grid)
        for up, threshold, decoder, skip in zip(self.ups, reversed(self.thresholds), self.decoders,
                                                reversed(skips)):
            h = decoder(torch.cat([up(h), threshold(skip)], dim=1), style, grid)
        out = self._unfit(self.out(h), undo)
        return F.hardsigmoid(out) if self.output == "hardsigmoid" else out


def reference_data_consistency(image: torch.Tensor, known_freq: torch.Tensor,
                               mask_image: torch.Tensor) -> torch.Tensor:
    """Return the reference's "soft data-consistency" channel, per sample.

    `DC = Re fftshift(IFFT(ifftshift(M S - M known)))` with `S = ifftshift(|FFT(x)|)`: the un-normalised FFT of
    the magnitude image, so the measured values, on another scale, barely enter. The reference shifts over every
    dimension, but each shift of the batch and channel dimensions is undone by the inverse shift that follows
    it, so shifting the two image dimensions only gives the same values without mixing samples; the final
    `fftshift` re-centres the image.

    Args:
        image: magnitude image `[B, 1, H, W]` (zero-one normalised).
        known_freq: `[B, 1, H, W]` magnitude of the cropped measured k-space.
        mask_image: `[B, 1, H, W]` mask image.

    Returns:
        float32 `[B, 1, H, W]`.
    """
    spatial = (-2, -1)
    # the reference shifts the image before its FFT; a circular shift changes only the phase, which |.| drops
    spectrum = torch.fft.ifftshift(torch.fft.fft2(image.float()).abs(), dim=spatial)
    difference = mask_image * spectrum - mask_image * known_freq
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(difference, dim=spatial)), dim=spatial).real


def measured_residual(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
                      widths: torch.Tensor | None = None) -> torch.Tensor:
    """Return `F^-1 M (F x - y)`: the image-space error of `x` on the measured columns.

    Samples of one batch may have different k-space widths; each is zero-padded symmetrically to the
    batch width and the FFTs run on its own `widths[b]` centre columns.

    Args:
        image: complex `[B, H, Wpad]` estimate.
        kspace: complex `[B, H, Wpad]` measured (masked) k-space, same scaling as `image`.
        mask: `[B, Wpad]` sampled columns (0 on padding).
        widths: `[B]` int k-space widths, or None when every sample spans `Wpad`.

    Returns:
        complex `[B, H, Wpad]` (zero on padding columns).
    """
    full = image.shape[-1]
    if widths is None:
        widths = torch.full((image.shape[0],), full, dtype=torch.int64)
    out = torch.zeros_like(image)
    for width in torch.unique(widths).tolist():
        rows = (widths == width).nonzero().flatten().to(image.device)
        left = (full - width) // 2
        cols = slice(left, left + width)
        error = fft2c(image[rows, :, cols]) - kspace[rows, :, cols]
        out[rows, :, cols] = ifft2c(error * mask[rows, None, cols])
    return out


class StylishReconstructor(nn.Module):
    """The baseline: `num_blocks` stylish U-Nets applied in sequence, `iterations` times.

    Args:
        num_blocks / iterations: blocks in the cascade and passes over it (1 / 1 in the reference).
        data_consistency: "reference" (magnitude image + reference DC channel) or "complex" (complex
            image as 2 channels, orthonormal DC on the measured k-space, 4 input channels).
        residual: `x + unet(...)` instead of `unet(...)`.
        output_dc: after each block, "none", "hard" (measured columns replaced) or "learned" (weighted).
        update: complex mode only: "complex" (the block outputs a complex update, 2 channels) or
            "magnitude" (the block also sees the magnitude and outputs one real update of it, applied
            along the current phase: `x + delta * x / |x|`; a magnitude correction needs no product of
            the network's outputs with the phase, which a convolutional network learns slowly).
        **unet: keyword arguments of `StylishUNet` (channels, style_dim, modulation, size_fit, output).
    """

    def __init__(self, num_blocks: int = 1, iterations: int = 1, data_consistency: str = "reference",
                 residual: bool = False, output_dc: str = "none", update: str = "complex", **unet: object) -> None:
        super().__init__()
        if data_consistency not in ("reference", "complex") or output_dc not in ("none", "hard", "learned"):
            raise ValueError(f"bad data_consistency={data_consistency!r} or output_dc={output_dc!r}")
        if update not in ("complex", "magnitude"):
            raise ValueError(f"update must be 'complex' or 'magnitude', got {update!r}")
        complex_mode = data_consistency == "complex"
        self.magnitude_update = complex_mode and update == "magnitude"
        channels = {"in_channels": 4, "out_channels": 2} if complex_mode else {"in_channels": 2, "out_channels": 1}
        if self.magnitude_update:
            channels = {"in_channels": 5, "out_channels": 1}
        self.blocks = nn.ModuleList(StylishUNet(**channels, **unet) for _ in range(num_blocks))
        self.iterations, self.complex_mode, self.residual, self.output_dc = iterations, complex_mode, residual, output_dc
        self.dc_weight = nn.Parameter(torch.ones(num_blocks)) if output_dc == "learned" else None

    def forward(self, image: torch.Tensor, kspace: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                widths: torch.Tensor | None = None, known_freq: torch.Tensor | None = None,
                style: torch.Tensor | None = None, grid: tuple[int, int] = (1, 1)) -> torch.Tensor:
        """Return the reconstructed image.

        Args:
            image: reference mode: `[B, 1, H, W]` zero-one magnitude; complex mode: `[B, 2, H, Wpad]`
                real/imaginary of the normalised zero-filled image.
            kspace: complex mode: complex `[B, H, Wpad]` measured k-space (normalised like `image`).
            mask: reference mode: `[B, 1, H, W]` mask image; complex mode: `[B, Wpad]` columns.
            widths: complex mode: `[B]` k-space widths (None = all `Wpad`).
            known_freq: reference mode: `[B, 1, H, W]`.
            style / grid: texture vectors for the generative model.

        Returns:
            Same layout as `image`.
        """
        x = image
        for _ in range(self.iterations):
            for index, block in enumerate(self.blocks):
                if self.complex_mode:
                    x = self._complex_block(index, block, x, kspace, mask, widths, style, grid)
                else:
                    dc = reference_data_consistency(x, known_freq, mask).to(x.dtype)
                    update = block(torch.cat([x, dc], dim=1), style, grid)
                    x = x + update if self.residual else update
        return x

    def _complex_block(self, index: int, block: StylishUNet, x: torch.Tensor, kspace: torch.Tensor,
                       mask: torch.Tensor, widths: torch.Tensor | None, style: torch.Tensor | None,
                       grid: tuple[int, int]) -> torch.Tensor:
        def as_complex(t: torch.Tensor) -> torch.Tensor:
            return torch.complex(t[:, 0].float(), t[:, 1].float())

        def as_channels(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t.real, t.imag], dim=1)

        dc = as_channels(measured_residual(as_complex(x), kspace, mask, widths)).to(x.dtype)
        if self.magnitude_update:
            current = as_complex(x)
            magnitude = current.abs()
            delta = block(torch.cat([x, dc, magnitude[:, None].to(x.dtype)], dim=1), style, grid)[:, 0].float()
            phase = current / torch.sqrt(magnitude**2 + PHASE_EPS**2)
            x = as_channels(((magnitude if self.residual else 0) + delta) * phase).to(x.dtype)
        else:
            update = block(torch.cat([x, dc], dim=1), style, grid)
            x = x + update if self.residual else update
        if self.output_dc == "none":
            return x
        weight = 1.0 if self.dc_weight is None else self.dc_weight[index]
        estimate = as_complex(x)
        return as_channels(estimate - weight * measured_residual(estimate, kspace, mask, widths))


@contextmanager
def fixed_draws(net: nn.Module) -> Iterator[None]:
    """Within the block the latent and the noise maps take their fixed evaluation draws, even in train mode.

    The reference validates in train mode (dropout, batch statistics) yet with fixed draws.
    """
    modules = [m for m in net.modules() if hasattr(m, "fixed_draws")]
    previous = [m.fixed_draws for m in modules]
    for module in modules:
        module.fixed_draws = True
    try:
        yield
    finally:
        for module, value in zip(modules, previous):
            module.fixed_draws = value


def pooled_texture(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return `[B, gh*gw, 320]`: trunk features average-pooled to the grid, channels averaged in fours."""
    pooled = F.adaptive_avg_pool2d(features.float(), grid).flatten(2).transpose(1, 2)
    return pooled.reshape(*pooled.shape[:2], STYLE_DIM, -1).mean(-1)


def to_three_channels(image: torch.Tensor, imagenet_norm: bool) -> torch.Tensor:
    """Return a `[B, 1, H, W]` image in [0, 1] repeated to 3 channels (optionally ImageNet-normalised)."""
    rgb = image.repeat(1, 3, 1, 1)
    return imagenet_normalise(rgb) if imagenet_norm else rgb


class ZEncoder(nn.Module):
    """VAE-style texture encoder: MobileNetV2 trunk -> pooled 320-vectors -> (mu, log sigma^2)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = MobileNetV2Features()
        self.mu = spectral(nn.Linear(STYLE_DIM, STYLE_DIM))
        self.logvar = spectral(nn.Linear(STYLE_DIM, STYLE_DIM))

    def forward(self, rgb: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(mu, logvar)`, each `[B, gh*gw, 320]`, from a `[B, 3, H, W]` image."""
        texture = pooled_texture(self.trunk(rgb), grid)
        return self.mu(texture), self.logvar(texture)


class MappingNetwork(nn.Sequential):
    """z -> w: spectrally normalised Linear(320, 320), then 3 x [LeakyReLU(0.01), Linear(320, 320)]."""

    def __init__(self, dim: int = STYLE_DIM, layers: int = 4) -> None:
        modules: list[nn.Module] = [spectral(nn.Linear(dim, dim))]
        for _ in range(layers - 1):
            modules += [nn.LeakyReLU(0.01), spectral(nn.Linear(dim, dim))]
        super().__init__(*modules)


class TextureProxy(nn.Module):
    """Frozen MobileNetV2 trunk giving the texture target of w: `[B, 3, H, W] -> [B, gh*gw, 320]`."""

    def __init__(self, trainable: bool = False) -> None:
        super().__init__()
        self.trunk = MobileNetV2Features()
        self.trunk.requires_grad_(trainable)

    def forward(self, rgb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return pooled_texture(self.trunk(rgb), grid)


def texture_grid(mode: str, vectors: int = 4, spatial: int = 8) -> tuple[int, int]:
    """Return the texture grid of a mode: global (1, 1); multi_vector and attention (vectors, 1) bands;
    spatial (G, G). In attention mode the band vectors are tokens that every pixel attends over."""
    grids = {"global": (1, 1), "multi_vector": (int(vectors), 1), "spatial": (int(spatial), int(spatial)),
             "attention": (int(vectors), 1)}
    if mode not in grids:
        raise ValueError(f"texture mode must be one of {sorted(grids)}, got {mode!r}")
    return grids[mode]


class StylishGenerator(nn.Module):
    """The generative model: z-encoder + mapping network + a noise- and style-modulated reconstructor.

    Args:
        texture_mode: "global" (one vector, the reference), "multi_vector", "spatial" or "attention"
            (cross-attention of the features over `texture_vectors` tokens).
        texture_vectors / spatial_grid: size of the multi-vector (and attention) / spatial texture grids.
        attention_dim: query/key width of the attention mode.
        noise: enable the noise inputs.
        imagenet_norm: ImageNet-normalise the encoder input (the reference does not).
        test_latent: at eval, "mean" uses z = mu; "fixed_noise" uses z = mu + eps sigma with a fixed eps
            (the reference).
        draw_source: where the fixed eps and noise maps come from, "torch" (a generator seeded 0) or "numpy"
            (`RandomState(0)`, as the reference draws them).
        **reconstructor: keyword arguments of `StylishReconstructor` (modulation, channels, ...).
    """

    def __init__(self, texture_mode: str = "global", texture_vectors: int = 4, spatial_grid: int = 8,
                 noise: bool = True, imagenet_norm: bool = False, test_latent: str = "mean",
                 attention_dim: int = 32, draw_source: str = "torch", **reconstructor: object) -> None:
        super().__init__()
        self.grid = texture_grid(texture_mode, texture_vectors, spatial_grid)
        self.imagenet_norm, self.test_latent = imagenet_norm, test_latent
        self.draw_source, self.fixed_draws = draw_source, False
        attention = int(attention_dim) if texture_mode == "attention" else 0
        self.unet = StylishReconstructor(style_dim=STYLE_DIM, attention_dim=attention, **reconstructor)
        self.z_encoder = ZEncoder()
        self.mapping = MappingNetwork()
        for module in self.unet.modules():
            if isinstance(module, NoiseInjection):
                module.enabled, module.draw_source = noise, draw_source

    def latent(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Return z: reparameterised sample in training, `mu` or a fixed-eps sample at eval (or fixed draws)."""
        fixed = not self.training or self.fixed_draws
        if fixed and self.test_latent == "mean":
            return mu
        eps = fixed_normal(tuple(mu.shape), self.draw_source, mu.device, mu.dtype) if fixed else torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, image: torch.Tensor, texture_image: torch.Tensor, **inputs: torch.Tensor) -> tuple:
        """Return `(reconstruction, mu, logvar, w)`.

        Args:
            image: the reconstructor input (see `StylishReconstructor.forward`).
            texture_image: `[B, 1, H, W]` zero-filled magnitude in [0, 1] for the z-encoder.
            **inputs: `kspace`, `mask`, `widths`, `known_freq` for the reconstructor.

        Returns:
            reconstruction like `image`; mu, logvar, w `[B, 320]` (global) or `[B, N, 320]`.
        """
        mu, logvar = self.z_encoder(to_three_channels(texture_image, self.imagenet_norm), self.grid)
        w = self.mapping(self.latent(mu, logvar))
        out = self.unet(image, style=w, grid=self.grid, **inputs)
        if self.grid == (1, 1):
            mu, logvar, w = mu[:, 0], logvar[:, 0], w[:, 0]
        return out, mu, logvar, w
