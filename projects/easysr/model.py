"""EasySR networks: a 3D ResNet generator that upsamples one axis, and two 3D discriminators.

Tensor layout is `[B, 1, D, H, W]`. In the reference configuration the generator upsamples H (`up_dim=-2`,
array axis 1 of a `[D, H, W]` volume) by 3 with a transposed convolution whose kernel equals its stride, so LR
voxel `i` emits HR voxels `3i, 3i+1, 3i+2`: the LR voxel covers exactly those three thin slices (the "extent"
grid correspondence used by `projects.easysr.ops.make_lr` and by `predict.py`).

Module and parameter names follow the reference checkpoints (`conv_block1.0`, `residual_block1.conv_block.0`,
..., `deup.deupblock.0`, `conv3`; discriminator `conv1.0` ... `conv5`, `fc`), so their state dicts load with
`strict=True` into `EasySRGenerator()` and `PatchDiscriminator3D(head="linear")`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

_SLOPE = 0.2


def _conv(in_ch: int, out_ch: int) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=True)


#: How the generator computes its tail, the transposed conv + LeakyReLU + the 3x3x3 conv to `out_ch` channels:
#: "conv", torch's convolution ops (the reference's arithmetic); "matmul" (`upsample_tail_matmul`), the same weights
#: as two matrix products over the channels and 27 shifted sums: the same function up to float rounding (~1e-6
#: relative), with neither the 3x-larger interleaved feature volume nor a CPU convolution kernel that runs one output
#: channel at a few percent of its usual rate. "auto" takes "matmul" for tensors on a CPU and "conv" elsewhere: on a
#: GPU cuDNN runs the convolutions at speed, and the 27 tap maps would take 27x the output's memory there.
OUTPUT_LAYERS = ("auto", "matmul", "conv")


def _channel_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Returns `weight @ x` over dim 1: `x [B, C, *S]`, `weight [O, C]` -> `[B, O, *S]`."""
    b, c, *spatial = x.shape
    # bmm writes [B, O, V] directly; matmul's broadcast of a 2-d weight would transpose its result into place
    return torch.bmm(weight.expand(b, -1, -1), x.contiguous().view(b, c, -1)).view(b, weight.shape[0], *spatial)


def _span(shift: int, size: int) -> tuple[slice, slice]:
    """Returns the (destination, source) slices of `dst[p] += src[p + shift]` over `size` voxels, zero outside."""
    return slice(max(0, -shift), size - max(0, shift)), slice(max(0, shift), size - max(0, -shift))


def _tap_placements(axis: int, s: int, size: Sequence[int]) -> list[tuple[tuple, tuple]]:
    """Returns, for every 3x3x3 tap and output phase, the index of its block in the tap maps `[B, O, 27, s, D, H, W]`
    and of the output block `[B, O, s, D, H, W]` it adds to (zero padding: the blocks are cropped at the borders)."""
    placements = []
    for tap in range(27):
        offsets = [tap // 9 - 1, tap // 3 % 3 - 1, tap % 3 - 1]
        for r in range(s):
            source_phase, carry = (r + offsets[axis]) % s, (r + offsets[axis]) // s
            spans = [_span(carry if a == axis else offsets[a], n) for a, n in enumerate(size)]
            placements.append(((slice(None), slice(None), tap, source_phase, *(src for _, src in spans)),
                               (slice(None), slice(None), r, *(dst for dst, _ in spans))))
    return placements


class _TapSum(torch.autograd.Function):
    """The 27 tap maps of a 3x3x3 convolution shifted into place and summed, on the phase layout; its backward
    scatters the output gradient back to each tap's block once (autograd's own would build one full-size zero
    tensor per slice)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, axis: int) -> torch.Tensor:  # type: ignore[override]
        b, o, _, s, *size = z.shape
        ctx.placements = _tap_placements(axis, s, size)
        ctx.z_shape, ctx.z_dtype = z.shape, z.dtype
        out = z.new_zeros((b, o, s, *size), dtype=torch.promote_types(z.dtype, torch.float32))
        for source, target in ctx.placements:
            out[target].add_(z[source])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad_z = grad.new_zeros(ctx.z_shape, dtype=ctx.z_dtype)
        for source, target in ctx.placements:  # each (tap, source phase) block is written by exactly one phase
            grad_z[source].copy_(grad[target])
        return grad_z, None


def upsample_tail_matmul(feat: torch.Tensor, deconv: nn.ConvTranspose3d, conv: nn.Conv3d, up_dim: int,
                         slope: float) -> torch.Tensor:
    """Returns `conv(leaky_relu(deconv(feat)))` for a transposed conv whose kernel equals its stride `s` along
    `up_dim` (1 elsewhere) and a 3x3x3 conv with padding 1, computed on the "phase" layout `[B, C, s, D, H, W]`
    (HR voxel `s*i + r` of the upsampled axis is LR voxel `i`, phase `r`), interleaved only at the end.

    Args:
        feat: `[B, C, D, H, W]` LR features.
        deconv: `ConvTranspose3d(C, C', kernel=stride=s along up_dim)`.
        conv: `Conv3d(C', O, 3, padding=1)`.
        up_dim: -3, -2 or -1.
        slope: the LeakyReLU's negative slope.

    Returns:
        `[B, O, ...]` with the `up_dim` size multiplied by `s`.
    """
    c, c2 = deconv.weight.shape[:2]
    s = deconv.weight.shape[up_dim]
    b, _, *size = feat.shape
    # transposed conv: output channel o, phase r = one linear map of the LR voxel's channels
    up = _channel_matmul(feat, deconv.weight.reshape(c, c2, s).permute(1, 2, 0).reshape(c2 * s, c))
    up = up.view(b, c2, s, *size)
    if deconv.bias is not None:
        up = up.add_(deconv.bias.view(1, c2, 1, 1, 1, 1))  # in place: bmm's backward needs its inputs only
    up = F.leaky_relu(up, slope, inplace=True)
    # 3x3x3 conv: one map per (output channel, tap), then the 27 maps shifted into place and summed
    o = conv.weight.shape[0]
    z = _channel_matmul(up, conv.weight.permute(0, 2, 3, 4, 1).reshape(o * 27, c2)).view(b, o, 27, s, *size)
    axis = 3 + up_dim  # the upsampled axis among (D, H, W)
    out = _TapSum.apply(z, axis)  # float32 sums, also of bf16 maps
    if conv.bias is not None:
        out = out + conv.bias.view(1, o, 1, 1, 1, 1)
    # interleave the phases into the upsampled axis: [B, O, s, D, H, W] -> [B, O, ..., n * s, ...]
    order = [0, 1, *[2 + a + 1 for a in range(axis + 1)], 2, *[2 + a + 1 for a in range(axis + 1, 3)]]
    shape = [b, o, *size]
    shape[up_dim] *= s
    return out.permute(*order).reshape(shape)


class ResnetBlock(nn.Module):
    """Two 3x3x3 conv + BN layers with a LeakyReLU between them and an identity skip.

    Args:
        width: channels in and out.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            _conv(width, width), nn.BatchNorm3d(width), nn.LeakyReLU(_SLOPE, inplace=True),
            _conv(width, width), nn.BatchNorm3d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `x + block(x)`, same shape `[B, width, D, H, W]`."""
        return x + self.conv_block(x)


class DeUpBlock(nn.Module):
    """Learned upsampling of one spatial dimension: a transposed conv whose kernel equals its stride.

    Args:
        width: channels in and out.
        scale: integer upsampling factor.
        up_dim: spatial dimension to upsample, as a tensor dim of `[B, C, D, H, W]` (-3, -2 or -1).
    """

    def __init__(self, width: int, scale: int, up_dim: int) -> None:
        super().__init__()
        kernel = [1, 1, 1]
        kernel[up_dim] = scale
        self.deupblock = nn.Sequential(
            nn.ConvTranspose3d(width, width, kernel_size=tuple(kernel), stride=tuple(kernel), padding=0),
            nn.LeakyReLU(_SLOPE, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `[B, width, ...]` with the `up_dim` size multiplied by `scale`."""
        return self.deupblock(x)


class EasySRGenerator(nn.Module):
    """3D ResNet generator upsampling one spatial axis by an integer factor.

    conv(1->w) + LeakyReLU, `n_res` residual blocks, conv + BN with a long skip, transposed-conv upsampling along
    `up_dim`, conv(w->1) with a linear output (targets are intensities normalised to [0, 255]). 143,585
    parameters with the defaults.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        width: feature channels (the reference's `ngf`).
        n_res: number of residual blocks.
        scale: integer upsampling factor along `up_dim`.
        up_dim: upsampled tensor dim of `[B, C, D, H, W]`: -3 (D), -2 (H, the reference) or -1 (W).
        input_skip: "none" (the reference) or "nearest" / "linear": add the input, interpolated along `up_dim`
            on the same extent grid, to the output, so the network learns a residual. Adds no parameter (the
            reference checkpoints still load) but changes what they compute: keep "none" for them.
        output_layers: "auto" (default: "matmul" on a CPU, "conv" on a GPU), "matmul" or "conv": how the
            transposed conv and `conv3` are computed (`OUTPUT_LAYERS`; the same parameters and function, "conv" is
            the reference's arithmetic).

    Raises:
        ValueError: scale < 1, up_dim not in (-3, -2, -1), unknown input_skip or output_layers.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1, width: int = 32, n_res: int = 2, scale: int = 3,
                 up_dim: int = -2, input_skip: str = "none", output_layers: str = "auto") -> None:
        super().__init__()
        if scale < 1 or up_dim not in (-3, -2, -1):
            raise ValueError(f"need scale >= 1 and up_dim in (-3, -2, -1), got scale={scale}, up_dim={up_dim}")
        if output_layers not in OUTPUT_LAYERS:
            raise ValueError(f"output_layers must be one of {OUTPUT_LAYERS}, got {output_layers!r}")
        self.output_layers = output_layers
        if input_skip not in ("none", "nearest", "linear") or (input_skip != "none" and in_ch != out_ch):
            raise ValueError(f"input_skip must be none, nearest or linear (with in_ch == out_ch), got {input_skip!r}")
        self.scale = int(scale)
        self.up_dim = int(up_dim)
        self.input_skip = input_skip
        self.conv_block1 = nn.Sequential(_conv(in_ch, width), nn.LeakyReLU(_SLOPE, inplace=True))
        # Named residual_block1, residual_block2, ... like the reference checkpoints.
        self.n_res = int(n_res)
        for i in range(self.n_res):
            self.add_module(f"residual_block{i + 1}", ResnetBlock(width))
        self.conv_block2 = nn.Sequential(_conv(width, width), nn.BatchNorm3d(width))
        self.deup = DeUpBlock(width, self.scale, self.up_dim)
        self.conv3 = _conv(width, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the super-resolved volume.

        Args:
            x: float `[B, in_ch, D, H, W]`, intensities normalised to [0, 255].

        Returns:
            float `[B, out_ch, D, H * scale, W]` (for `up_dim=-2`; the `up_dim` size is multiplied by `scale`).
        """
        first = self.conv_block1(x)
        feat = first
        for i in range(self.n_res):
            feat = getattr(self, f"residual_block{i + 1}")(feat)
        feat = self.conv_block2(feat) + first
        if self.output_layers == "conv" or (self.output_layers == "auto" and feat.device.type != "cpu"):
            out = self.conv3(self.deup(feat))
        else:
            deconv, act = self.deup.deupblock
            out = upsample_tail_matmul(feat, deconv, self.conv3, self.up_dim, act.negative_slope)
        if self.input_skip != "none":
            factors = [1.0, 1.0, 1.0]
            factors[self.up_dim] = float(self.scale)
            mode = "trilinear" if self.input_skip == "linear" else "nearest"
            # align_corners=False is the extent grid of the transposed conv (LR voxel i -> HR scale*i ...).
            kwargs = {"align_corners": False} if mode == "trilinear" else {}
            out = out + F.interpolate(x, scale_factor=tuple(factors), mode=mode, **kwargs)
        return out


def _down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, kernel_size=4, stride=2, padding=1),
                         nn.BatchNorm3d(out_ch), nn.LeakyReLU(_SLOPE, inplace=True))


def conv_trunk_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Returns the spatial size after the discriminator's four stride-2 convs and its stride-1 conv5.

    Args:
        input_shape: spatial input size `(D, H, W)`.

    Returns:
        `(d, h, w)`; `(7, 11, 7)` for the reference's 128 x 192 x 128.
    """
    out = []
    for size in input_shape:
        for _ in range(4):
            size = (size + 2 - 4) // 2 + 1
        out.append(size + 2 - 4 + 1)
    return out[0], out[1], out[2]


class PatchDiscriminator3D(nn.Module):
    """3D discriminator: four conv(4, stride 2) + BN + LeakyReLU blocks, conv5, then a logit head.

    Heads:
        * ``"patch"`` (default): a 3x3x3 conv to one channel, giving one logit per receptive-field patch,
          `[B, 1, d, h, w]`; any input of at least 32 voxels per side works.
        * ``"linear"``: the reference's flatten + Linear to one logit `[B, 1]`; accepts only `input_shape`
          (74,344 parameters for the reference 128 x 192 x 128). No Sigmoid in either head: losses take logits.

    Args:
        in_ch: input channels.
        ndf: channels of the first conv (doubled in each of the next three).
        head: ``"patch"`` or ``"linear"``.
        input_shape: spatial input size the ``"linear"`` head is built for.

    Raises:
        ValueError: unknown head, or an input_shape too small for the trunk.
    """

    def __init__(self, in_ch: int = 1, ndf: int = 3, head: str = "patch",
                 input_shape: Sequence[int] = (128, 192, 128)) -> None:
        super().__init__()
        if head not in ("patch", "linear"):
            raise ValueError(f"head must be 'patch' or 'linear', got {head!r}")
        self.head = head
        self.input_shape = tuple(int(s) for s in input_shape)
        self.conv1 = _down_block(in_ch, ndf)
        self.conv2 = _down_block(ndf, ndf * 2)
        self.conv3 = _down_block(ndf * 2, ndf * 4)
        self.conv4 = _down_block(ndf * 4, ndf * 8)
        self.conv5 = nn.Conv3d(ndf * 8, ndf * 8, kernel_size=4, stride=1, padding=1)
        if head == "linear":
            trunk = conv_trunk_shape(self.input_shape)
            if min(trunk) < 1:
                raise ValueError(f"input_shape {self.input_shape} is too small for the discriminator")
            self.fc = nn.Linear(ndf * 8 * trunk[0] * trunk[1] * trunk[2], 1)
        else:
            self.patch_head = nn.Conv3d(ndf * 8, 1, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns real/fake logits.

        Args:
            x: float `[B, in_ch, D, H, W]`.

        Returns:
            `[B, 1, d, h, w]` patch logits (``"patch"``) or `[B, 1]` (``"linear"``).

        Raises:
            ValueError: the ``"linear"`` head got a spatial size other than `input_shape`.
        """
        if self.head == "linear" and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"the linear-head discriminator accepts only {self.input_shape}, "
                             f"got {tuple(x.shape[2:])}; use head='patch' for other sizes")
        feat = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        if self.head == "linear":
            return self.fc(torch.flatten(feat, 1))
        return self.patch_head(feat)


def count_parameters(module: nn.Module) -> int:
    """Returns the number of trainable parameters of `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
