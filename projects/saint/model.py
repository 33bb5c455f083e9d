"""SAINT networks: the marginal super-resolution net (MSR) with its distance-conditioned upscale head, and the
residual fusion net (RFN).

Conventions. An MSR sample is a 2-D plane cut perpendicular to one in-plane axis of a CT volume: `[B, 3, H, W]`
with H an in-plane axis and W the (low-resolution) slice axis z; the 3 channels are the planes j-1, j, j+1.
Intensities are raw offset HU (HU + 1024, 0..4000), never normalised. The MSR output is phase-major
`[B, F, H, W]`: high-resolution slice `w * F + k` is phase `k` of low-resolution column `w`.

Parameter names follow the reference implementation (`SFENet1`, `RDBs.i.convs.c.conv.0`, `RDBs.i.LFF`,
`GFF.{0,1}`, `GW.meta_block.{0,2,4,6,8}`, `RFN.*`), so that its released combined checkpoint loads strictly
into `SAINT()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.inference import predict_by_slices

MAX_INTENSITY = 4000.0  # HU + 1024 clipped to [0, 4000]
# Pixels per inference pass when no batch size is given: about 1 GB of activations at the paper's width.
PIXELS_PER_PASS = 2**18


def distance_map(f: int, dz_mm: float, dxy_mm: float, n_phase: int | None = None) -> np.ndarray:
    """Returns the physical distances (mm) that condition the upscale kernel of each output phase.

    `d[k, i, j] = sqrt(((k - f * (i - 1)) * dz)^2 + ((j - 1) * dxy)^2)`: distance from high-resolution slice
    `k` (phase k of the centre low-resolution slice) to the 3x3 neighbourhood of low-resolution slices
    c-1, c, c+1 (rows i) and in-plane neighbours (columns j).

    Args:
        f: integer upsampling factor along z (>= 1).
        dz_mm: high-resolution slice spacing in mm (the low-resolution spacing divided by f).
        dxy_mm: in-plane voxel size in mm along the plane's H axis.
        n_phase: number of rows to return (>= f); rows k >= f are all zero (padding for mixed-factor batches).

    Returns:
        float32 `[n_phase, 3, 3]` distances in mm.

    Raises:
        ValueError: f < 1, n_phase < f, or a non-positive spacing.
    """
    n_phase = f if n_phase is None else n_phase
    if f < 1 or n_phase < f:
        raise ValueError(f"need 1 <= f <= n_phase, got f={f}, n_phase={n_phase}")
    if dz_mm <= 0 or dxy_mm <= 0:
        raise ValueError(f"spacings must be positive, got dz={dz_mm}, dxy={dxy_mm}")
    k = np.arange(f, dtype=np.float64)[:, None, None]
    i = np.arange(3, dtype=np.float64)[None, :, None]
    j = np.arange(3, dtype=np.float64)[None, None, :]
    dist = np.sqrt(((k - f * (i - 1)) * dz_mm) ** 2 + ((j - 1) * dxy_mm) ** 2)
    out = np.zeros((n_phase, 3, 3), dtype=np.float32)
    out[:f] = dist
    return out


def interleave(y: torch.Tensor) -> torch.Tensor:
    """Returns the phase-major MSR output laid out along z: `out[b, h, w * F + k] = y[b, k, h, w]`.

    Args:
        y: `[B, F, H, W]`.

    Returns:
        `[B, H, W * F]`, same dtype.
    """
    b, f, h, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(b, h, w * f)


def split_phases(z_line: torch.Tensor, f: int) -> torch.Tensor:
    """Returns the inverse of `interleave`: `[B, H, W * f]` -> `[B, f, H, W]`."""
    b, h, n = z_line.shape
    return z_line.reshape(b, h, n // f, f).permute(0, 3, 1, 2)


def linear_phases(centre: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Returns linear interpolation along z of a plane, phase-major: `[B, H, W]` -> `[B, F, H, W]`.

    Phase k lies at k / f of the way to the next low-resolution slice; that fraction is read off the distance
    map (`d[k, 1, 1] = k dz`, `d[k, 2, 1] = (f - k) dz`), so mixed factors in one batch need no other input.
    Beyond the last slice the last value is repeated; all-zero padding rows give phase 0's value.
    """
    to_here, to_next = dist[:, :, 1, 1], dist[:, :, 2, 1]
    frac = (to_here / (to_here + to_next).clamp_min(1e-6)).to(centre.dtype)[:, :, None, None]  # [B|1, F, 1, 1]
    following = torch.cat((centre[..., 1:], centre[..., -1:]), dim=-1)
    return centre[:, None] * (1 - frac) + following[:, None] * frac


class DenseLayer(nn.Module):
    """3x3 conv + ReLU whose output is concatenated to its input (`[B, C, H, W]` -> `[B, C + G, H, W]`)."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, growth, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class ResidualDenseBlock(nn.Module):
    """`n_layers` dense layers, a 1x1 local fusion back to `g0` channels, plus the block input."""

    def __init__(self, g0: int, growth: int, n_layers: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(g0 + c * growth, growth) for c in range(n_layers)])
        self.LFF = nn.Conv2d(g0 + n_layers * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDNFeatures(nn.Module):
    """Residual dense network trunk: shallow features, `n_rdb` blocks, global fusion, global skip.

    Args:
        in_ch: input channels.
        g0: feature width.
        n_rdb: number of residual dense blocks.
        n_layers: dense layers per block.
        growth: channels added by each dense layer.
    """

    def __init__(self, in_ch: int, g0: int, n_rdb: int, n_layers: int, growth: int) -> None:
        super().__init__()
        self.g0 = g0
        self.SFENet1 = nn.Conv2d(in_ch, g0, 3, padding=1)
        self.SFENet2 = nn.Conv2d(g0, g0, 3, padding=1)
        self.RDBs = nn.ModuleList([ResidualDenseBlock(g0, growth, n_layers) for _ in range(n_rdb)])
        self.GFF = nn.Sequential(nn.Conv2d(n_rdb * g0, g0, 1), nn.Conv2d(g0, g0, 3, padding=1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `[B, g0, H, W]` features of `x` `[B, in_ch, H, W]`."""
        shallow = self.SFENet1(x)
        h = self.SFENet2(shallow)
        block_outputs = []
        for block in self.RDBs:
            h = block(h)
            block_outputs.append(h)
        return self.GFF(torch.cat(block_outputs, 1)) + shallow


class KernelGenerator(nn.Module):
    """Maps a 3x3 distance image to a 3x3 convolution kernel over `g0` feature channels (Meta-SR style).

    Args:
        g0: feature channels the kernel reads (output channels of the last conv).
        hidden: widths of the four hidden convs (ReLU after each).
    """

    def __init__(self, g0: int = 64, hidden: Sequence[int] = (32, 64, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for h in hidden:
            layers += [nn.Conv2d(width, h, 3, padding=1), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Conv2d(width, g0, 3, padding=1))
        self.meta_block = nn.Sequential(*layers)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """Returns kernels `[N, F, g0, 3, 3]` for distance maps `[N, F, 3, 3]` (mm)."""
        n, f = dist.shape[:2]
        kernels = self.meta_block(dist.reshape(n * f, 1, 3, 3))
        return kernels.reshape(n, f, -1, 3, 3)


class MSRNet(RDNFeatures):
    """Marginal super-resolution net: 3 adjacent planes in, the centre plane at F times the z-resolution out.

    Args:
        g0: feature width (64 in the paper).
        n_rdb: residual dense blocks (6).
        n_layers: dense layers per block (8).
        growth: growth rate (32).
        in_ch: adjacent planes given as channels (3).
        gw_hidden: hidden widths of the kernel generator (32, 64, 64, 64).
        intensity_scale: the trunk sees `lr * intensity_scale` and its output is divided by it (paper: 1, raw
            intensities; 1/4000 conditions training better). No effect on the parameters.
        skip: "none" (paper: phase 0 re-predicts the observed slice) or "linear": the network predicts a
            residual on linear interpolation of the centre plane along z (weights k/f read off `dist`); the
            last layer of the kernel generator then starts at zero, so training starts from the interpolation.
    """

    def __init__(self, g0: int = 64, n_rdb: int = 6, n_layers: int = 8, growth: int = 32, in_ch: int = 3,
                 gw_hidden: Sequence[int] = (32, 64, 64, 64), intensity_scale: float = 1.0,
                 skip: str = "none") -> None:
        super().__init__(in_ch, g0, n_rdb, n_layers, growth)
        if skip not in ("none", "linear"):
            raise ValueError(f"skip must be 'none' or 'linear', got {skip!r}")
        self.GW = KernelGenerator(g0, tuple(gw_hidden))
        self.intensity_scale, self.skip = float(intensity_scale), skip
        if skip == "linear":  # start exactly at the interpolation: the residual head predicts zero
            nn.init.zeros_(self.GW.meta_block[-1].weight)
            nn.init.zeros_(self.GW.meta_block[-1].bias)

    def upscale(self, feats: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """Returns `[B, F, H, W]`: feature `[B, g0, H, W]` convolved with the kernel of each phase (no bias).

        `dist` is `[B, F, 3, 3]` (one map per sample) or `[1, F, 3, 3]` (shared by the whole batch, the
        inference case: one plain convolution).
        """
        kernels = self.GW(dist.to(feats.dtype))
        b, g0, h, w = feats.shape
        n_phase = kernels.shape[1]
        if kernels.shape[0] == 1:
            return F.conv2d(feats, kernels[0], padding=1)
        # One kernel set per sample: a grouped convolution with one group per sample.
        out = F.conv2d(feats.reshape(1, b * g0, h, w), kernels.reshape(b * n_phase, g0, 3, 3), padding=1, groups=b)
        return out.reshape(b, n_phase, h, w)

    def forward(self, lr: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """Returns the phase-major super-resolved centre plane.

        Args:
            lr: `[B, 3, H, W]` float32, raw intensities (0..4000), W along z at low resolution.
            dist: `[B, F, 3, 3]` or `[1, F, 3, 3]` distance maps in mm (`distance_map`).

        Returns:
            `[B, F, H, W]` float32, phase k of column w = high-resolution slice `w * F + k`.
        """
        if self.intensity_scale == 1.0:
            out = self.upscale(self.features(lr), dist)
        else:
            out = self.upscale(self.features(lr * self.intensity_scale), dist) / self.intensity_scale
        return out + linear_phases(lr[:, lr.shape[1] // 2], dist) if self.skip == "linear" else out


class RFN(RDNFeatures):
    """Residual fusion net: predicts a residual on the mean of the two marginal views of one axial slice.

    Args:
        g0: feature width (64).
        n_rdb: residual dense blocks (4).
        n_layers: dense layers per block (6).
        growth: growth rate (12).
        zero_init: zero the output layer, so that training starts from the mean of the views (paper: False).
    """

    def __init__(self, g0: int = 64, n_rdb: int = 4, n_layers: int = 6, growth: int = 12,
                 zero_init: bool = False) -> None:
        super().__init__(2, g0, n_rdb, n_layers, growth)
        self.UPNet = nn.Sequential(nn.Conv2d(g0, 1, 3, padding=1))
        if zero_init:  # start at the mean of the views
            nn.init.zeros_(self.UPNet[0].weight)
            nn.init.zeros_(self.UPNet[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `[B, 1, X, Y]`: residual + channel mean of `x` `[B, 2, X, Y]` (the two views, raw units)."""
        return self.UPNet(self.features(x)) + x.mean(1, keepdim=True)


class SAINT(MSRNet):
    """MSR (its parameters at the top level, as in the reference) plus the fusion net `RFN`.

    Args:
        g0, n_rdb, n_layers, growth, in_ch, gw_hidden, intensity_scale, skip: the MSR (see `MSRNet`).
        rfn: keyword arguments of `RFN` (paper: g0 64, 4 blocks of 6 layers, growth 12).
    """

    def __init__(self, g0: int = 64, n_rdb: int = 6, n_layers: int = 8, growth: int = 32, in_ch: int = 3,
                 gw_hidden: Sequence[int] = (32, 64, 64, 64), intensity_scale: float = 1.0, skip: str = "none",
                 rfn: dict | None = None) -> None:
        super().__init__(g0, n_rdb, n_layers, growth, in_ch, gw_hidden, intensity_scale, skip)
        self.RFN = RFN(**(rfn or {}))

    def msr_parameters(self) -> list[nn.Parameter]:
        """Returns the parameters of the MSR stage (everything but `RFN`)."""
        return [p for name, p in self.named_parameters() if not name.startswith("RFN.")]

    def _marginal(self, vol: torch.Tensor, axis: int, dist: torch.Tensor, plane_batch: int,
                  max_memory: int | None = None) -> torch.Tensor:
        """Returns `[X, Y, Z * F]`: the MSR applied to every plane perpendicular to `axis` (0 or 1), in batches.

        Neighbours beyond the first and last plane are zero, as in the reference.
        """
        def predict(planes: torch.Tensor) -> torch.Tensor:  # [b, 3, H, Z] -> [b, H, Z * F]
            return interleave(self(planes, dist).float()).clamp_(0.0, MAX_INTENSITY)

        return predict_by_slices(predict, vol, axis=axis, context=1, batch_size=plane_batch, pad_value=0.0,
                                 device=dist.device, max_memory=max_memory)

    @torch.no_grad()
    def infer_views(self, vol: torch.Tensor, spacing: Sequence[float], f: int,
                    plane_batch: int | None = None, max_memory: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the two marginal super-resolutions of a thick-slice volume.

        Args:
            vol: `[X, Y, Z_lr]` float32, raw intensities (0..4000), z the slice axis.
            spacing: `(sx, sy, sz_hr)` in mm, sz_hr = the low-resolution slice spacing / f.
            f: integer factor; high-resolution slice `z * f + k` is phase k of low-resolution slice z.
            plane_batch: planes per forward pass (memory: about `plane_batch * H * Z_lr * 4 kB` at g0=64);
                None: as many as fit in `PIXELS_PER_PASS` pixels.
            max_memory: peak resident bytes of the process: fewer planes per pass when the batch above would
                exceed it (`common.inference.predict_by_slices`).

        Returns:
            `(view_x, view_y)`, each `[X, Y, Z_lr * f]` float32 clamped to [0, 4000]: from planes of
            constant x (H = y) and from planes of constant y (H = x).
        """
        device = next(self.parameters()).device
        sx, sy, sz = (float(s) for s in spacing)
        vol = vol.to(device=device, dtype=torch.float32)
        dist_x = torch.from_numpy(distance_map(f, sz, sy))[None].to(device)
        dist_y = torch.from_numpy(distance_map(f, sz, sx))[None].to(device)
        x_count, y_count, z_lr = vol.shape
        batch_x = plane_batch or max(1, PIXELS_PER_PASS // (y_count * z_lr))
        batch_y = plane_batch or max(1, PIXELS_PER_PASS // (x_count * z_lr))
        view_x = self._marginal(vol, 0, dist_x, batch_x, max_memory)
        return view_x, self._marginal(vol, 1, dist_y, batch_y, max_memory)

    @torch.no_grad()
    def fuse(self, view_x: torch.Tensor, view_y: torch.Tensor, mode: str = "rfn",
             slice_batch: int | None = None) -> torch.Tensor:
        """Returns the fused volume `[X, Y, Z]` float32 in [0, 4000] from the two views `[X, Y, Z]`.

        Args:
            view_x, view_y: outputs of `infer_views`.
            mode: "rfn" (residual fusion net over axial slices, in batches) or "mean".
            slice_batch: axial slices per RFN pass (None: as many as fit in `PIXELS_PER_PASS` pixels).

        Raises:
            ValueError: unknown mode.
        """
        if mode == "mean":
            return ((view_x + view_y) * 0.5).clamp_(0.0, MAX_INTENSITY)
        if mode != "rfn":
            raise ValueError(f"fuse must be 'rfn' or 'mean', got {mode!r}")
        out = torch.empty_like(view_x)
        slice_batch = slice_batch or max(1, PIXELS_PER_PASS // (view_x.shape[0] * view_x.shape[1]))
        for start in range(0, view_x.shape[2], slice_batch):
            stop = min(start + slice_batch, view_x.shape[2])
            pair = torch.stack([view_x[:, :, start:stop], view_y[:, :, start:stop]], dim=0)  # [2, X, Y, b]
            fused = self.RFN(pair.permute(3, 0, 1, 2).contiguous()).float()  # [b, 1, X, Y]
            out[:, :, start:stop] = fused[:, 0].permute(1, 2, 0).clamp_(0.0, MAX_INTENSITY)
        return out

    def infer_volume(self, vol: torch.Tensor, spacing: Sequence[float], f: int, fuse: str = "rfn",
                     plane_batch: int | None = None, max_memory: int | None = None) -> torch.Tensor:
        """Returns the thin-slice volume `[X, Y, Z_lr * f]` float32 in [0, 4000] (see `infer_views`, `fuse`)."""
        view_x, view_y = self.infer_views(vol, spacing, f, plane_batch, max_memory)
        return self.fuse(view_x, view_y, fuse)


def reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns `state` with the wrapper prefixes of Lightning (`net.`) or DataParallel (`module.`) removed."""
    out = {}
    for key, value in state.items():
        for prefix in ("net.", "module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out
