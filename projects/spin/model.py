"""SPiN (subpixel embedding + learnable downsampler) and the VGG-13 U-Net baseline, as pure torch modules.

Every convolution is bias-free with padding ``k // 2``; "BN + act" means BatchNorm2d then LeakyReLU(0.1).
All networks take ``[N, C, H, W]`` float32 slices of any size (odd sizes included: decoder upsampling
targets the exact size of each skip) and return a dict whose ``"logits"`` entry is ``[N, 1, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_SLOPE = 0.1


class ConvNormAct(nn.Module):
    """Conv2d (no bias) optionally followed by BatchNorm2d and LeakyReLU(0.1).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: square kernel size; padding is ``kernel // 2``.
        stride: convolution stride.
        norm: add BatchNorm2d.
        act: add LeakyReLU(0.1); False gives a linear output.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, norm: bool = True,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_ch) if norm else nn.Identity()
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class ResBlock(nn.Module):
    """Two 3x3 ConvNormAct layers plus a shortcut, then LeakyReLU.

    The shortcut is a 1x1 strided conv (no BN, no act) when the stride or channel count changes, else the
    identity. ``build_unused_shortcut=True`` also builds the 1x1 conv when it is not used, as the reference
    does, so that reference checkpoints load by name; it never takes part in the forward pass.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first conv (and of the shortcut).
        build_unused_shortcut: build the 1x1 projection even for identity blocks.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, build_unused_shortcut: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, stride)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, 1)
        self.projects = stride != 1 or in_ch != out_ch
        if self.projects or build_unused_shortcut:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x) if self.projects else x
        return self.act(self.conv2(self.conv1(x)) + identity)


class SubpixelEmbedding(nn.Module):
    """Maps ``[N, in_ch, H, W]`` to a subpixel embedding ``[N, out_ch, 2H, 2W]`` (scale = 2).

    conv0 (5x5) -> ``n_res`` ResBlocks -> conv1 (3x3), residual sum with conv0, 1x1 expansion to
    ``width * scale**2`` channels, depth-to-space, 3x3 linear output conv.

    Args:
        in_ch: input channels (adjacent slices).
        width: filters of every layer before depth-to-space.
        n_res: number of ResBlocks.
        out_ch: embedding channels.
        scale: depth-to-space factor.
        build_unused_shortcut: see :class:`ResBlock`.
    """

    def __init__(self, in_ch: int = 5, width: int = 16, n_res: int = 2, out_ch: int = 8, scale: int = 2,
                 build_unused_shortcut: bool = False) -> None:
        super().__init__()
        self.conv0 = ConvNormAct(in_ch, width, 5)
        self.blocks = nn.Sequential(*[ResBlock(width, width, 1, build_unused_shortcut) for _ in range(n_res)])
        self.conv1 = ConvNormAct(width, width, 3)
        self.expand = ConvNormAct(width, width * scale * scale, 1)
        self.shuffle = nn.PixelShuffle(scale)
        self.output = ConvNormAct(width, out_ch, 3, norm=False, act=False)

    def forward(self, x: Tensor) -> Tensor:
        conv0 = self.conv0(x)
        latent = self.conv1(self.blocks(conv0)) + conv0
        return self.output(self.shuffle(self.expand(latent)))


class SubpixelGuidance(nn.Module):
    """Turns the embedding into guidance features at 2x (identity) and 1x (space-to-depth) resolution.

    Args:
        emb_ch: embedding channels.
        out_ch: guidance channels at (2x, 1x).
        scale: space-to-depth factor of the 1x level.
    """

    def __init__(self, emb_ch: int = 8, out_ch: Sequence[int] = (8, 8), scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.level2x = ConvNormAct(emb_ch, out_ch[0], 3)
        self.level1x = ConvNormAct(emb_ch * scale * scale, out_ch[1], 3)

    def forward(self, embedding: Tensor, size1x: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Returns (guidance ``[N, C0, 2H, 2W]``, guidance ``[N, C1, H, W]``) for a 1x size ``(H, W)``."""
        low = F.pixel_unshuffle(embedding, self.scale)
        if tuple(low.shape[-2:]) != tuple(size1x):
            low = F.interpolate(low, size=size1x, mode="nearest")
        return self.level2x(embedding), self.level1x(low)


class ResNetEncoder(nn.Module):
    """ResNet-18-like encoder: 7x7/2 conv, 3x3/2 max-pool, four stages of ResBlocks.

    Args:
        in_ch: input channels.
        widths: filters of conv1 and the four stages.
        blocks: ResBlocks per stage.
        build_unused_shortcut: see :class:`ResBlock`.
    """

    def __init__(self, in_ch: int = 5, widths: Sequence[int] = (32, 64, 128, 196, 196),
                 blocks: Sequence[int] = (2, 2, 2, 2), build_unused_shortcut: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, widths[0], 7, stride=2)
        self.max_pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        for stage, n_blocks in enumerate(blocks):
            in_ch, out_ch = widths[stage], widths[stage + 1]
            stride = 1 if stage == 0 else 2
            stages.append(nn.Sequential(*[
                ResBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, build_unused_shortcut)
                for i in range(n_blocks)]))
        self.blocks2, self.blocks3, self.blocks4, self.blocks5 = stages

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns (latent ``[N, C4, ~H/32, ~W/32]``, skips at 1/2, 1/4, 1/8, 1/16 from fine to coarse)."""
        conv1 = self.conv1(x)
        b2 = self.blocks2(self.max_pool(conv1))
        b3 = self.blocks3(b2)
        b4 = self.blocks4(b3)
        return self.blocks5(b4), [conv1, b2, b3, b4]


class DecoderBlock(nn.Module):
    """Nearest upsampling to the skip's size (or 2x) -> 3x3 conv -> concat skip -> 3x3 conv.

    Args:
        in_ch: input channels.
        skip_ch: skip channels (0: no skip).
        out_ch: output channels.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up_conv = ConvNormAct(in_ch, out_ch, 3)
        self.fuse_conv = ConvNormAct(out_ch + skip_ch, out_ch, 3)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        """Returns ``[N, out_ch, h, w]`` at the skip's size, else at ``size``, else at twice the input size."""
        if skip is not None:
            size = skip.shape[-2:]
        elif size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        size = (int(size[0]), int(size[1]))
        x = self.up_conv(F.interpolate(x, size=size, mode="nearest"))
        return self.fuse_conv(x if skip is None else torch.cat([x, skip], dim=1))


class SPGDecoder(nn.Module):
    """Decoder from 1/32 to 2x resolution, guided by the subpixel guidance at 1x and 2x.

    Args:
        latent_ch: channels of the encoder latent.
        widths: outputs of deconv4 .. deconv0 and deconv_super_resolution.
        skip_ch: channels of the skips in decoding order (1/16, 1/8, 1/4, 1/2, SPG 1x, SPG 2x).
        out_ch: output (logit) channels.
    """

    def __init__(self, latent_ch: int = 196, widths: Sequence[int] = (196, 128, 64, 32, 16, 16),
                 skip_ch: Sequence[int] = (196, 128, 64, 32, 8, 8), out_ch: int = 1) -> None:
        super().__init__()
        ins = [latent_ch, *widths[:-1]]
        names = ("deconv4", "deconv3", "deconv2", "deconv1", "deconv0", "deconv_super_resolution")
        for name, c_in, c_skip, c_out in zip(names, ins, skip_ch, widths, strict=True):
            self.add_module(name, DecoderBlock(c_in, c_skip, c_out))
        self.block_names = names
        self.output = ConvNormAct(widths[-1], out_ch, 3, norm=False, act=False)

    def forward(self, latent: Tensor, skips: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns (features ``[N, widths[-1], 2H, 2W]``, logits ``[N, out_ch, 2H, 2W]``).

        ``skips`` are in decoding order: 1/16, 1/8, 1/4, 1/2, guidance 1x, guidance 2x.
        """
        x = latent
        for name, skip in zip(self.block_names, skips, strict=True):
            x = getattr(self, name)(x, skip)
        return x, self.output(x)


class LearnableDownsampler(nn.Module):
    """Returns 1x logits as a learned convex combination of each pixel's 2x2 (scale x scale) subpixel logits.

    Args:
        latent_ch: channels of the 2x decoder features.
        out_ch: logit channels.
        widths: filters of the hidden convs (LeakyReLU, no BN).
        kernels: kernel sizes of the hidden convs.
        scale: subpixel factor.
    """

    def __init__(self, latent_ch: int = 16, out_ch: int = 1, widths: Sequence[int] = (16, 16),
                 kernels: Sequence[int] = (3, 3), scale: int = 2) -> None:
        super().__init__()
        self.scale, self.out_ch = scale, out_ch
        layers, c_in = [], latent_ch * scale * scale
        for width, kernel in zip(widths, kernels, strict=True):
            layers.append(ConvNormAct(c_in, width, kernel, norm=False))
            c_in = width
        layers.append(ConvNormAct(c_in, out_ch * scale * scale, 1, norm=False, act=False))
        self.weights = nn.Sequential(*layers)

    def subpixel_weights(self, features: Tensor) -> Tensor:
        """Returns softmax weights ``[N, out_ch, scale**2, H, W]`` from features ``[N, C, sH, sW]``."""
        logits = self.weights(F.pixel_unshuffle(features, self.scale))
        n, _, h, w = logits.shape
        return torch.softmax(logits.reshape(n, self.out_ch, self.scale ** 2, h, w), dim=2)

    def forward(self, features: Tensor, logits_2x: Tensor) -> Tensor:
        """Returns ``[N, out_ch, H, W]`` logits from features and logits at ``[sH, sW]``."""
        weights = self.subpixel_weights(features)
        subpixels = F.pixel_unshuffle(logits_2x, self.scale)
        n, _, h, w = subpixels.shape
        subpixels = subpixels.reshape(n, self.out_ch, self.scale ** 2, h, w)
        return (weights * subpixels.to(weights.dtype)).sum(dim=2)


class SPiN(nn.Module):
    """The SPiN network: subpixel embedding, ResNet encoder, SPG decoder and learnable downsampler.

    Args:
        in_ch: adjacent slices given as channels.
        embedding_width: filters of the subpixel embedding.
        embedding_res_blocks: ResBlocks of the subpixel embedding.
        embedding_ch: channels of the embedding.
        guidance_ch: guidance channels at (2x, 1x).
        encoder_widths: conv1 and the four encoder stages.
        encoder_blocks: ResBlocks per encoder stage.
        decoder_widths: deconv4 .. deconv_super_resolution outputs.
        downsampler_widths: hidden filters of the learnable downsampler.
        downsampler_kernels: hidden kernel sizes of the learnable downsampler.
        out_ch: logit channels.
        build_unused_shortcut: build the reference's never-used 1x1 shortcuts (97,824 parameters in the
            paper configuration) so reference checkpoints load by name; they change no output.
    """

    def __init__(self, in_ch: int = 5, embedding_width: int = 16, embedding_res_blocks: int = 2,
                 embedding_ch: int = 8, guidance_ch: Sequence[int] = (8, 8),
                 encoder_widths: Sequence[int] = (32, 64, 128, 196, 196), encoder_blocks: Sequence[int] = (2, 2, 2, 2),
                 decoder_widths: Sequence[int] = (196, 128, 64, 32, 16, 16),
                 downsampler_widths: Sequence[int] = (16, 16), downsampler_kernels: Sequence[int] = (3, 3),
                 out_ch: int = 1, build_unused_shortcut: bool = False) -> None:
        super().__init__()
        self.embedding = SubpixelEmbedding(in_ch, embedding_width, embedding_res_blocks, embedding_ch, 2,
                                           build_unused_shortcut)
        self.guidance = SubpixelGuidance(embedding_ch, guidance_ch, 2)
        self.encoder = ResNetEncoder(in_ch, encoder_widths, encoder_blocks, build_unused_shortcut)
        skip_ch = (*list(encoder_widths[1:4])[::-1], encoder_widths[0], guidance_ch[1], guidance_ch[0])
        self.decoder = SPGDecoder(encoder_widths[-1], decoder_widths, skip_ch, out_ch)
        self.downsampler = LearnableDownsampler(decoder_widths[-1], out_ch, downsampler_widths,
                                                downsampler_kernels, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Segments ``[N, in_ch, H, W]`` slices.

        Returns:
            ``{"logits": [N, 1, H, W], "logits_2x": [N, 1, 2H, 2W], "embedding": [N, 8, 2H, 2W]}``.
        """
        embedding = self.embedding(x)
        guide2x, guide1x = self.guidance(embedding, tuple(x.shape[-2:]))
        latent, (conv1, b2, b3, b4) = self.encoder(x)
        features, logits_2x = self.decoder(latent, [b4, b3, b2, conv1, guide1x, guide2x])
        logits = self.downsampler(features, logits_2x)
        return {"logits": logits, "logits_2x": logits_2x, "embedding": embedding}


class VGGEncoder(nn.Module):
    """VGG-13-style encoder: a 5x5 conv, then five stages of ``convs`` 3x3 convs, each halving the size.

    The first stage has one 5x5 conv at full resolution and ``convs - 1`` strided 3x3 convs; the other
    stages start with a strided conv. No pooling.

    Args:
        in_ch: input channels.
        widths: filters per stage.
        convs: convolutions per stage.
    """

    def __init__(self, in_ch: int = 1, widths: Sequence[int] = (64, 128, 256, 512, 512), convs: int = 2) -> None:
        super().__init__()
        stages, c_in = [], in_ch
        for stage, width in enumerate(widths):
            if stage == 0:
                layers = [ConvNormAct(c_in, width, 5)]
                layers += [ConvNormAct(width, width, 3, stride=2 if i == 0 else 1) for i in range(convs - 1)]
            else:
                layers = [ConvNormAct(c_in if i == 0 else width, width, 3, stride=2 if i == 0 else 1)
                          for i in range(convs)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns (latent at ~1/32, skips at 1/2, 1/4, 1/8, 1/16 from fine to coarse)."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[-1], feats[:-1]


class UNet(nn.Module):
    """The U-Net baseline: VGG-13-style encoder (64-128-256-512-512) and a nearest-upsampling decoder.

    The decoder climbs 1/32 -> 1/2 through the encoder skips, then one skip-free block to full resolution,
    and ends with a linear 3x3 conv.

    Args:
        in_ch: input channels (1 slice in the paper's baseline).
        encoder_widths: filters per encoder stage.
        convs_per_stage: convolutions per encoder stage (2 = VGG-13).
        decoder_widths: outputs of the five decoder blocks.
        out_ch: logit channels.
    """

    def __init__(self, in_ch: int = 1, encoder_widths: Sequence[int] = (64, 128, 256, 512, 512),
                 convs_per_stage: int = 2, decoder_widths: Sequence[int] = (512, 256, 128, 64, 32),
                 out_ch: int = 1) -> None:
        super().__init__()
        self.encoder = VGGEncoder(in_ch, encoder_widths, convs_per_stage)
        skips = [*list(encoder_widths[:-1])[::-1], 0]
        ins = [encoder_widths[-1], *decoder_widths[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_widths,
                                                                                  strict=True))
        self.output = ConvNormAct(decoder_widths[-1], out_ch, 3, norm=False, act=False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Segments ``[N, in_ch, H, W]`` slices; returns ``{"logits": [N, out_ch, H, W]}``."""
        features, skips = self.encoder(x)
        targets = [*skips[::-1], None]
        for block, skip in zip(self.decoder, targets, strict=True):
            features = block(features, skip, size=x.shape[-2:])
        return {"logits": self.output(features)}


def count_parameters(module: nn.Module) -> int:
    """Returns the number of trainable parameters of ``module`` (BN running statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
