"""RSTN networks: FCN-8s (VGG16) x2 joined by the saliency transformation module.

State-dict names follow the reference PyTorch port (`coarse_model.conv1_1.weight`, ..., `saliency1.weight`,
`saliency2.weight`, `fine_model.upscore8.weight`), so its checkpoints load unchanged. At width 1 the RSTN has
268,555,786 parameters (2 x 134,277,737 for the FCNs, 84 + 228 for the saliency module), of which the three
bilinear deconvolutions of each FCN (2,592 weights) are frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

Mode = Literal["S", "I", "J"]
Margins = tuple[int, int, int, int]

# (name, output channels at width 1) of the VGG16 convolutions, block by block.
VGG_BLOCKS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
# Index of each VGG16 convolution in torchvision's `features` Sequential.
TORCHVISION_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
UNCROP_FILL = -9_999_999.0  # logit written outside the fine crop box: sigmoid gives exactly 0


def bilinear_kernel(size: int) -> np.ndarray:
    """Returns the [size, size] float32 bilinear upsampling kernel of a stride-(size // 2) transposed conv."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp).astype(np.float32)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def score_in_fp32(conv: nn.Conv2d, h: Tensor) -> Tensor:
    """Applies a score layer (a 1x1 convolution to a few channels) in float32, also inside a bf16 autocast region.

    On CPUs with AMX (Intel Sapphire Rapids and later), the bf16 weight gradient of a 1x1 convolution from about
    3,000 or more input channels to fewer than 16 outputs corrupts the heap in the oneDNN that torch 2.13 ships
    (`free(): invalid next size`, then an abort, in the first backward pass of the paper-width FCN's score_fr,
    4096 -> 3). In float32 the same layer is fine, and the score layers are about 0.01% of the network's work.
    """
    with torch.autocast(h.device.type, enabled=False):
        return conv(h.float())


class FCN8s(nn.Module):
    """FCN-8s on a VGG16 trunk, with the Caffe padding of 100 and the 5 / 9 / 31 crop offsets.

    Args:
        in_channels: input channels (3 adjacent slices).
        n_out: output maps (one per input slice).
        width: channel multiplier of every layer (1 = the paper: 64 ... 512 convs, 4096-wide fc6/fc7).
        dropout: Dropout2d rate after fc6 and fc7.
    """

    def __init__(self, in_channels: int = 3, n_out: int = 3, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        self.width = width
        previous = in_channels
        for block in VGG_BLOCKS:
            for name, channels in block:
                out = _scaled(channels, width)
                setattr(self, name, nn.Conv2d(previous, out, 3, padding=100 if name == "conv1_1" else 1))
                previous = out
        fc = _scaled(4096, width)
        self.fc6 = nn.Conv2d(previous, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(fc, n_out, 1)
        self.score_pool3 = nn.Conv2d(_scaled(256, width), n_out, 1)
        self.score_pool4 = nn.Conv2d(_scaled(512, width), n_out, 1)
        self.upscore2 = nn.ConvTranspose2d(n_out, n_out, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_out, n_out, 16, stride=8, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_out, n_out, 4, stride=2, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-initialises the trunk, zeroes the score layers (as the reference) and fixes the deconvs."""
        for name, module in self.named_children():
            if isinstance(module, nn.ConvTranspose2d):
                kernel = torch.from_numpy(bilinear_kernel(module.kernel_size[0]))
                with torch.no_grad():
                    module.weight.zero_()
                    for c in range(min(module.in_channels, module.out_channels)):
                        module.weight[c, c] = kernel
                module.weight.requires_grad_(False)
            elif isinstance(module, nn.Conv2d):
                if name.startswith("score"):
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def trunk_convs(self) -> list[nn.Conv2d]:
        """Returns the 13 VGG16 convolutions in order."""
        return [getattr(self, name) for block in VGG_BLOCKS for name, _ in block]

    def forward(self, x: Tensor) -> Tensor:
        """Returns logits [N, n_out, H, W] for an input [N, in_channels, H, W], any H, W >= 1."""
        h = x
        pools = []
        for block in VGG_BLOCKS:
            for name, _ in block:
                h = F.relu(getattr(self, name)(h), inplace=True)
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            pools.append(h)
        pool3, pool4 = pools[2], pools[3]
        h = self.drop(F.relu(self.fc6(h), inplace=True))
        h = self.drop(F.relu(self.fc7(h), inplace=True))
        up2 = self.upscore2(score_in_fp32(self.score_fr, h))
        h = up2 + score_in_fp32(self.score_pool4, pool4)[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
        up4 = self.upscore_pool4(h)
        h = up4 + score_in_fp32(self.score_pool3, pool3)[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
        return self.upscore8(h)[:, :, 31:31 + x.shape[2], 31:31 + x.shape[3]]


def load_vgg16(fcn: FCN8s, state_dict: Mapping[str, Tensor]) -> None:
    """Copies a torchvision-style VGG16 state dict into an FCN8s of width 1 (fc6 -> 7x7 conv, fc7 -> 1x1 conv).

    Args:
        fcn: the network to fill in place; its score layers and deconvolutions are left untouched.
        state_dict: `features.{0,2,...,28}.{weight,bias}`, `classifier.{0,3}.{weight,bias}` of VGG16.

    Raises:
        KeyError: a key is missing. ValueError: a shape does not fit (e.g. width != 1).
    """
    pairs = [(conv, f"features.{i}") for conv, i in zip(fcn.trunk_convs(), TORCHVISION_FEATURES, strict=True)]
    pairs += [(fcn.fc6, "classifier.0"), (fcn.fc7, "classifier.3")]
    with torch.no_grad():
        for conv, key in pairs:
            weight, bias = state_dict[f"{key}.weight"], state_dict[f"{key}.bias"]
            if weight.numel() != conv.weight.numel() or bias.shape != conv.bias.shape:
                raise ValueError(f"{key}: shape {tuple(weight.shape)} does not fit {tuple(conv.weight.shape)}")
            conv.weight.copy_(weight.reshape(conv.weight.shape))
            conv.bias.copy_(bias)


class SaliencyTransform(nn.Module):
    """conv3x3 -> ReLU -> conv5x5: maps a probability map to a spatial weight of the image.

    Args:
        channels: maps in and out (3).
        init: "pytorch" (reference port: saliency2 W = 0, bias 1.0/1.5/2.0) or "caffe" (xavier, bias 1).
    """

    def __init__(self, channels: int = 3, init: Literal["pytorch", "caffe"] = "pytorch") -> None:
        super().__init__()
        self.saliency1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.saliency2 = nn.Conv2d(channels, channels, 5, padding=2)
        init_saliency(self.saliency1, self.saliency2, init)

    def forward(self, prob: Tensor) -> Tensor:
        """Returns the saliency [N, C, H, W] of probabilities [N, C, H, W] in [0, 1]."""
        return self.saliency2(F.relu(self.saliency1(prob)))


def init_saliency(first: nn.Conv2d, second: nn.Conv2d, init: str) -> None:
    """Initialises the two saliency convolutions as the PyTorch port ("pytorch") or the Caffe original."""
    if init not in ("pytorch", "caffe"):
        raise ValueError(f"saliency init must be 'pytorch' or 'caffe', got {init!r}")
    nn.init.xavier_normal_(first.weight)
    nn.init.ones_(first.bias)
    if init == "caffe":
        nn.init.xavier_normal_(second.weight)
        nn.init.ones_(second.bias)
        return
    nn.init.zeros_(second.weight)
    with torch.no_grad():
        second.bias.copy_(torch.linspace(1.0, 2.0, second.out_channels) if second.out_channels > 1
                          else torch.ones(1))


def as_margins(margin: int | Sequence[int]) -> Margins:
    """Returns (before_row, after_row, before_col, after_col) from one int or four."""
    if isinstance(margin, int):
        return (margin,) * 4  # type: ignore[return-value]
    values = tuple(int(m) for m in margin)
    if len(values) != 4:
        raise ValueError(f"margin must be an int or 4 ints, got {margin!r}")
    return values  # type: ignore[return-value]


def sample_margins(margin: int = 20, jitter_prob: float = 0.5, generator: torch.Generator | None = None) -> Margins:
    """Returns training crop margins: all `margin` with probability 1 - jitter_prob, else each in [0, 2*margin].

    Args:
        margin: the test-time margin (pixels).
        jitter_prob: probability of drawing the four margins independently and uniformly.
        generator: torch random generator (the global one if None).
    """
    if torch.rand((), generator=generator).item() >= jitter_prob:
        return (margin,) * 4  # type: ignore[return-value]
    draws = torch.randint(0, 2 * margin + 1, (4,), generator=generator)
    return tuple(int(v) for v in draws)  # type: ignore[return-value]


def crop_box(mask: Tensor, margin: int | Sequence[int] = 20) -> tuple[int, int, int, int]:
    """Returns the half-open box (y0, y1, x0, x1) around all true pixels of `mask`, widened and clipped.

    Args:
        mask: bool [N, C, H, W]; the box covers every channel and sample.
        margin: int or (before_row, after_row, before_col, after_col) in pixels; the reference calls these
            (left, right, top, bottom).

    Returns:
        The box; the whole image (0, H, 0, W) if the mask is empty.
    """
    height, width = mask.shape[-2:]
    rows = mask.flatten(0, -3).any(dim=0).any(dim=1).nonzero()
    cols = mask.flatten(0, -3).any(dim=0).any(dim=0).nonzero()
    if rows.numel() == 0:
        return 0, height, 0, width
    before_r, after_r, before_c, after_c = as_margins(margin)
    return (max(int(rows[0]) - before_r, 0), min(int(rows[-1]) + after_r + 1, height),
            max(int(cols[0]) - before_c, 0), min(int(cols[-1]) + after_c + 1, width))


def crop_boxes(mask: Tensor, margin: int | Sequence[int] = 20) -> list[tuple[int, int, int, int]]:
    """Returns `crop_box(mask[n:n + 1], margin)` of every sample n, computed for the whole batch at once.

    Args:
        mask: bool [N, C, H, W]; each sample's box covers all its channels.
        margin: as in `crop_box`.

    Returns:
        N half-open boxes (y0, y1, x0, x1); the whole image for a sample whose mask is empty.
    """
    count, height, width = mask.shape[0], mask.shape[-2], mask.shape[-1]
    plane = mask.reshape(count, -1, height, width).any(dim=1)
    rows, cols = plane.any(dim=2), plane.any(dim=1)
    row_index = torch.arange(height, device=mask.device)
    col_index = torch.arange(width, device=mask.device)
    extent = torch.stack([rows.any(dim=1).long(),
                          torch.where(rows, row_index, height).amin(dim=1),
                          torch.where(rows, row_index, -1).amax(dim=1),
                          torch.where(cols, col_index, width).amin(dim=1),
                          torch.where(cols, col_index, -1).amax(dim=1)], dim=1).tolist()  # one host copy
    before_r, after_r, before_c, after_c = as_margins(margin)
    return [(max(top - before_r, 0), min(bottom + after_r + 1, height),
             max(left - before_c, 0), min(right + after_c + 1, width)) if present else (0, height, 0, width)
            for present, top, bottom, left, right in extent]


def soft_dice_loss(prob: Tensor, target: Tensor, eps: float = 1e-6, batch: bool = False) -> Tensor:
    """Returns 1 - soft Dice of [N, ...] probabilities against [N, ...] targets.

    Args:
        prob: probabilities [N, ...] in [0, 1].
        target: 0/1 targets [N, ...].
        eps: smoothing of numerator and denominator.
        batch: False: the mean over samples of each sample's Dice (the reference). True: one Dice over the
            whole batch, so the probability mass of a sample with an empty target still counts as false
            positives (a per-sample Dice on an empty target is eps / (sum p + eps): flat, no useful gradient).

    Returns:
        Scalar loss in [0, 1].
    """
    p, g = prob.flatten(1), target.flatten(1).to(prob.dtype)
    if batch:
        p, g = p.reshape(1, -1), g.reshape(1, -1)
    dsc = (2 * (p * g).sum(1) + eps) / ((p + g).sum(1) + eps)
    return 1 - dsc.mean()


def stage_losses(p_coarse: Tensor, p_fine: Tensor, target: Tensor, batch: bool = False,
                 bce_weight: float = 0.0, fine_batch: bool = False, from_logits: bool = False
                 ) -> tuple[Tensor, Tensor]:
    """Returns the (coarse, fine) losses of probabilities [N, C, H, W] against 0/1 targets [N, C, H, W].

    Args:
        p_coarse, p_fine: probabilities [N, C, H, W], or logits with `from_logits`.
        target: 0/1 targets [N, C, H, W].
        batch: False: both losses are the reference's per-sample soft Dice. True (training on organ-free slices
            too): the coarse loss is one Dice over the whole batch, and the fine loss the per-sample Dice of
            the samples holding organ only (0 if none): the fine stage only ever runs inside a box.
        bce_weight: weight of a pixel-wise binary cross-entropy added to both losses (0: none).
        from_logits: the inputs are logits (`RSTN.forward_train(..., logits=True)`): the BCE term is computed
            from them, so its gradient on a pixel is sigmoid(z) - target and stays -1 on an organ pixel with a
            saturated logit (from probabilities, sigmoid'(z) underflows to 0 there, and no loss can pull the
            pixel back). Pixels outside the fine box (logit `UNCROP_FILL`) add no BCE.
        fine_batch: with `batch`, the fine loss is one Dice over the whole batch too, so the fine probabilities
            inside a coarse false-positive box of an organ-free slice (mode J) count as false positives.
    """
    z_coarse, z_fine = (p_coarse, p_fine) if from_logits else (None, None)
    if from_logits:
        p_coarse, p_fine = torch.sigmoid(p_coarse), torch.sigmoid(p_fine)
    if not batch:
        coarse, fine = soft_dice_loss(p_coarse, target), soft_dice_loss(p_fine, target)
    else:
        organ = target.flatten(1).any(dim=1)
        if fine_batch:
            fine = soft_dice_loss(p_fine, target, batch=True)
        else:
            fine = soft_dice_loss(p_fine[organ], target[organ]) if bool(organ.any()) else p_fine.sum() * 0.0
        coarse = soft_dice_loss(p_coarse, target, batch=True)
    if bce_weight and z_coarse is not None and z_fine is not None:
        coarse = coarse + bce_weight * _bce_logits(z_coarse, target)
        fine = fine + bce_weight * _bce_logits(z_fine, target)
    elif bce_weight:
        coarse = coarse + bce_weight * _bce(p_coarse, target)
        fine = fine + bce_weight * _bce(p_fine, target)
    return coarse, fine


def _bce_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Returns the mean binary cross-entropy of logits against 0/1 targets; pixels at `UNCROP_FILL` add 0."""
    z = logits.float()
    loss = F.binary_cross_entropy_with_logits(z, target.float(), reduction="none")
    return torch.where(z <= UNCROP_FILL / 2, torch.zeros_like(loss), loss).mean()


def _bce(prob: Tensor, target: Tensor) -> Tensor:
    """Returns the mean binary cross-entropy of probabilities (clamped to [1e-6, 1 - 1e-6]) against 0/1 targets."""
    p, g = prob.float().clamp(1e-6, 1 - 1e-6), target.float()
    return -(g * p.log() + (1 - g) * (1 - p).log()).mean()


def rstn_loss(p_coarse: Tensor, p_fine: Tensor, target: Tensor, coarse_weight: float = 1 / 3,
              batch: bool = False) -> Tensor:
    """Returns coarse_weight * Dice loss(coarse) + (1 - coarse_weight) * Dice loss(fine); inputs [N, 3, H, W].

    `batch` selects the losses for batches with organ-free slices (see `stage_losses`).
    """
    loss_coarse, loss_fine = stage_losses(p_coarse, p_fine, target, batch)
    return coarse_weight * loss_coarse + (1 - coarse_weight) * loss_fine


class RSTN(nn.Module):
    """Recurrent saliency transformation network: coarse FCN-8s, saliency module, fine FCN-8s.

    Args:
        in_channels: stacked slices per sample (3); the network outputs one map per slice.
        width: channel multiplier of both FCNs (1 = the paper).
        dropout: FCN dropout rate.
        saliency_init: "pytorch" or "caffe" (see `SaliencyTransform`).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, dropout: float = 0.5,
                 saliency_init: Literal["pytorch", "caffe"] = "pytorch") -> None:
        super().__init__()
        self.coarse_model = FCN8s(in_channels, in_channels, width, dropout)
        self.saliency1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.saliency2 = nn.Conv2d(in_channels, in_channels, 5, padding=2)
        self.fine_model = FCN8s(in_channels, in_channels, width, dropout)
        init_saliency(self.saliency1, self.saliency2, saliency_init)

    def load_vgg16(self, state_dict: Mapping[str, Tensor]) -> None:
        """Initialises both FCN trunks from one torchvision-style VGG16 state dict (width 1 only)."""
        load_vgg16(self.coarse_model, state_dict)
        load_vgg16(self.fine_model, state_dict)

    def saliency(self, prob: Tensor) -> Tensor:
        """Returns the saliency weight [N, C, H, W] of coarse probabilities [N, C, H, W]."""
        return self.saliency2(F.relu(self.saliency1(prob)))

    def forward_coarse(self, x: Tensor) -> Tensor:
        """Returns coarse probabilities [N, C, H, W] of images [N, C, H, W] in [0, 1]."""
        return torch.sigmoid(self.coarse_model(x))

    def _fine(self, weighted: Tensor, mask: Tensor, margins: Margins, return_logits: bool = False) -> Tensor:
        """Returns fine probabilities [N, C, H, W] of `weighted`, each sample in the box of its own `mask`.

        Every sample's crop is zero-padded at the bottom and right to the largest box of the batch and the
        crops run as one batch; outside its own box a sample's probability is exactly 0. With N = 1 this is
        the reference's crop (no padding, no resizing).
        """
        boxes = crop_boxes(mask, margins)
        rows = max(y1 - y0 for y0, y1, _, _ in boxes)
        cols = max(x1 - x0 for _, _, x0, x1 in boxes)
        crops = torch.stack([F.pad(weighted[n, :, y0:y1, x0:x1], (0, cols - x1 + x0, 0, rows - y1 + y0))
                             for n, (y0, y1, x0, x1) in enumerate(boxes)])
        first = self.fine_model.conv1_1.weight
        if first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
            # `stack` gives the crops the default layout: a channels-last network would convert them (and
            # their gradient) in its first convolution, the slowest of the backward pass.
            crops = crops.contiguous(memory_format=torch.channels_last)
        logits = self.fine_model(crops)
        height, width = weighted.shape[-2:]
        out = [F.pad(logits[n, :, :y1 - y0, :x1 - x0], (x0, width - x1, y0, height - y1), value=UNCROP_FILL)
               for n, (y0, y1, x0, x1) in enumerate(boxes)]
        return torch.stack(out) if return_logits else torch.sigmoid(torch.stack(out))

    def _fine_boxed(self, weighted: Tensor, mask: Tensor, margins: Margins, return_logits: bool = False) -> Tensor:
        """Returns `_fine` of the samples whose `mask` is not empty, and exactly 0 for the others (no box).

        With `return_logits`, logits, `UNCROP_FILL` where a probability would be exactly 0.
        """
        kept = mask.flatten(1).any(dim=1)
        if bool(kept.all()):
            return self._fine(weighted, mask, margins, return_logits)
        fill = UNCROP_FILL if return_logits else 0.0
        if not bool(kept.any()):
            return torch.full_like(weighted, fill)
        fine = self._fine(weighted[kept], mask[kept], margins, return_logits)
        # Under autocast the fine output's dtype (bf16 or float32) need not be the input's.
        out = torch.full(weighted.shape, fill, dtype=fine.dtype, device=fine.device)
        out[kept] = fine
        return out

    def forward_train(self, x: Tensor, y: Tensor, mode: Mode, margins: int | Sequence[int] = 20,
                      logits: bool = False) -> tuple[Tensor, Tensor]:
        """Returns (coarse, fine) probabilities [N, C, H, W] of one training step (logits with `logits`).

        Args:
            x: images [N, C, H, W] float32 in [0, 1].
            y: labels [N, C, H, W] (0/1).
            mode: "S" (box from y, raw image to the fine net), "I" (box from y, saliency-weighted image) or
                "J" (box from the coarse mask >= 0.5, from y for a sample whose coarse mask is empty;
                saliency-weighted image). Each sample is cropped to its own box; a sample without any box
                (an organ-free slice with an empty coarse mask) gets fine probabilities 0, as in testing.
            margins: crop margins (see `crop_box`).
        """
        if mode not in ("S", "I", "J"):
            raise ValueError(f"mode must be S, I or J, got {mode!r}")
        z_coarse = self.coarse_model(x)
        p_coarse = torch.sigmoid(z_coarse)
        first = z_coarse if logits else p_coarse
        label_mask = y >= 0.5
        if mode == "S":
            return first, self._fine_boxed(x, label_mask, as_margins(margins), logits)
        weighted = x * self.saliency(p_coarse)
        mask = label_mask
        if mode == "J":
            coarse_mask = p_coarse.detach() >= 0.5
            found = coarse_mask.flatten(1).any(dim=1).view(-1, 1, 1, 1)
            mask = torch.where(found, coarse_mask, label_mask)
        return first, self._fine_boxed(weighted, mask, as_margins(margins), logits)

    def forward_fine(self, x: Tensor, score: Tensor, mask: Tensor, margin: int | Sequence[int] = 20) -> Tensor:
        """Returns fine probabilities [N, C, H, W], each sample cropped to its own box; 0 where `mask` is empty.

        Args:
            x: images [N, C, H, W] in [0, 1].
            score: previous probabilities [N, C, H, W] in [0, 1], input of the saliency module.
            mask: bool [N, C, H, W] giving each sample's crop box.
            margin: crop margin (pixels).

        With N > 1 the crops are zero-padded at the bottom and right to a common size, so a sample sees the
        same pixels as alone, and only the far context beyond the network's 100-pixel padding can differ
        (nothing differs when all boxes have the same size).
        """
        kept = mask.flatten(1).any(dim=1)
        if not bool(kept.any()):
            return torch.zeros_like(x)
        return self._fine_boxed(x * self.saliency(score), mask, as_margins(margin))

    def forward_oracle(self, x: Tensor, y: Tensor, margin: int = 20) -> Tensor:
        """Returns fine probabilities with the saliency of the coarse output and the box of the labels `y`."""
        return self.forward_fine(x, self.forward_coarse(x), y >= 0.5, margin)

    def forward(self, x: Tensor) -> Tensor:
        """Returns coarse probabilities (the coarse-testing pass); see `forward_train` for training."""
        return self.forward_coarse(x)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Returns the number of parameters of `module` (all, or only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

