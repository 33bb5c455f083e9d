"""Volume-level torchmetrics classes fed slice by slice, safe under DDP.

Validation usually runs on 2-D slices while the metrics that papers report are per volume (case),
then averaged over cases. The classes here store, for every slice seen, its case key, its slice index
and a few sufficient statistics (a float64 row of K numbers). ``compute()`` gathers the rows of all
ranks (``dist_reduce_fx="cat"``), drops duplicated ``(case, slice)`` pairs (a padded
``DistributedSampler`` may feed one slice to two ranks, or twice to one), groups the rows by case,
reduces each case and returns the mean over cases.

Case ids are strings; the tensor states hold a stable 64-bit hash of them (``case_key``, BLAKE2b)
plus the UTF-8 bytes of each name once per rank, so that ``compute_per_case()`` can report the real
names after a DDP sync without any extra collective call.

Typical use in a LightningModule::

    self.val_metric = ReconstructionVolumeMetric()
    ...  # validation_step
    self.val_metric.update(output, target, batch.fname, batch.slice_num, data_range=batch.max_value)
    ...  # on_validation_epoch_end
    self.log_dict({f"val/{k}": v for k, v in self.val_metric.compute().items()})
    self.val_metric.reset()
"""

from __future__ import annotations

import hashlib
import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from common.metrics.functional import K1, K2
from common.metrics.segmentation import scores_from_counts

_NAME_SEPARATOR = 0  # NUL cannot occur inside a case id


def case_key(case_id: str) -> int:
    """Return a stable signed 64-bit key for a case id (BLAKE2b, 8 bytes, little endian).

    Args:
        case_id: the case name, e.g. a file name without extension.

    Returns:
        An int in [-2**63, 2**63), identical on every process, run and platform.
    """
    digest = hashlib.blake2b(case_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def ssim_uniform(pred: Tensor, ref: Tensor, data_range: Tensor | float, win_size: int = 7) -> Tensor:
    """Return the mean SSIM of each 2-D image pair with a uniform window, in float64.

    Own torch implementation of scikit-image's default SSIM: a ``win_size`` x ``win_size`` uniform
    window, sample covariance (``N / (N - 1)``), K1 = 0.01, K2 = 0.03, averaged over the window
    positions that lie fully inside the image (a "valid" pooling, so no border padding is involved).
    It agrees with ``skimage.metrics.structural_similarity`` to about 1e-12 in float64.

    Args:
        pred: predictions ``[B, H, W]``, any real dtype.
        ref: references ``[B, H, W]``.
        data_range: intensity range per image, a float or a ``[B]`` tensor (same units as the images).
        win_size: odd window side, at most ``min(H, W)``.

    Returns:
        float64 tensor ``[B]`` of SSIM values.

    Raises:
        ValueError: wrong shapes or a window larger than the images.
    """
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(
            f"ssim_uniform expects two [B, H, W] tensors, got {tuple(pred.shape)}, {tuple(ref.shape)}"
        )
    if win_size % 2 == 0 or min(pred.shape[-2:]) < win_size:
        raise ValueError(
            f"SSIM window {win_size} must be odd and fit in images of shape {tuple(pred.shape[-2:])}"
        )
    x = pred.detach().to(torch.float64).unsqueeze(1)
    y = ref.detach().to(torch.float64).unsqueeze(1)
    peak = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)
    mean_x, mean_y = F.avg_pool2d(x, win_size, stride=1), F.avg_pool2d(y, win_size, stride=1)
    cov_norm = win_size**2 / (win_size**2 - 1)
    var_x = cov_norm * (F.avg_pool2d(x * x, win_size, stride=1) - mean_x**2)
    var_y = cov_norm * (F.avg_pool2d(y * y, win_size, stride=1) - mean_y**2)
    cov_xy = cov_norm * (F.avg_pool2d(x * y, win_size, stride=1) - mean_x * mean_y)
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(dim=(1, 2, 3))


class CaseSliceMetric(Metric):
    """Base class: per-slice statistics gathered per case, deduplicated, reduced per case.

    Subclasses set ``metric_names`` and ``num_stats`` and implement ``slice_stats`` and
    ``reduce_case``. When one ``(case, slice)`` pair arrives more than once, the first row received
    (after the rank-ordered DDP gather) is kept and the others are dropped.

    Args:
        **kwargs: forwarded to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).
    """

    full_state_update = False
    # list states (tensors after a DDP sync), declared for type checkers
    case_key: list[Tensor]
    slice_index: list[Tensor]
    stats: list[Tensor]
    case_names: list[Tensor]
    is_differentiable = False
    higher_is_better: bool | None = None
    metric_names: tuple[str, ...] = ()
    num_stats: int = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("case_key", default=[], dist_reduce_fx="cat")
        self.add_state("slice_index", default=[], dist_reduce_fx="cat")
        self.add_state("stats", default=[], dist_reduce_fx="cat")
        self.add_state("case_names", default=[], dist_reduce_fx="cat")
        self._named_keys: set[int] = set()
        self._per_case: dict[str, dict[str, float]] = {}

    @abstractmethod
    def slice_stats(self, pred: Tensor, ref: Tensor, **kwargs: Any) -> Tensor:
        """Return the sufficient statistics of each slice, float64 ``[B, num_stats]``."""

    @abstractmethod
    def reduce_case(self, stats: Tensor) -> dict[str, Tensor]:
        """Return the metrics of one case from its deduplicated rows ``[n_slices, num_stats]``."""

    def update(
        self,
        pred: Tensor,
        ref: Tensor,
        case_ids: Sequence[str],
        slice_index: Tensor | Sequence[int],
        **kwargs: Any,
    ) -> None:
        """Add a batch of slices.

        Args:
            pred: predictions ``[B, ...]`` (the subclass says which trailing shape).
            ref: references, same shape as ``pred``.
            case_ids: the case name of each sample, length B.
            slice_index: the index of each slice inside its case, ``[B]`` ints.
            **kwargs: extra per-sample inputs of the subclass (e.g. ``data_range``).

        Raises:
            ValueError: the batch sizes of the arguments disagree.
        """
        batch = pred.shape[0]
        index = torch.as_tensor(slice_index, dtype=torch.int64, device=self.device).reshape(-1)
        if pred.shape != ref.shape or len(case_ids) != batch or index.numel() != batch:
            raise ValueError(
                f"{type(self).__name__}.update: pred {tuple(pred.shape)}, ref {tuple(ref.shape)}, "
                f"{len(case_ids)} case ids and {index.numel()} slice indices do not agree"
            )
        stats = self.slice_stats(pred, ref, **kwargs).detach().to(device=self.device, dtype=torch.float64)
        if stats.shape != (batch, self.num_stats):
            raise ValueError(
                f"slice_stats returned {tuple(stats.shape)}, expected ({batch}, {self.num_stats})"
            )
        keys = [case_key(str(case_id)) for case_id in case_ids]
        self.case_key.append(torch.tensor(keys, dtype=torch.int64, device=self.device))
        self.slice_index.append(index)
        self.stats.append(stats)
        self._remember_names(case_ids, keys)

    def _remember_names(self, case_ids: Sequence[str], keys: list[int]) -> None:
        new_names = []
        for case_id, key in zip(case_ids, keys, strict=True):
            if key not in self._named_keys:
                self._named_keys.add(key)
                new_names.append(str(case_id))
        if new_names:
            encoded = b"".join(name.encode("utf-8") + bytes([_NAME_SEPARATOR]) for name in new_names)
            self.case_names.append(torch.tensor(list(encoded), dtype=torch.uint8, device=self.device))

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        # A rank that saw no data would otherwise send a 1-D float32 placeholder, which cannot be
        # gathered with the int64 keys or the 2-D float64 statistics of the other ranks.
        empty = {
            "case_key": torch.zeros(0, dtype=torch.int64, device=self.device),
            "slice_index": torch.zeros(0, dtype=torch.int64, device=self.device),
            "stats": torch.zeros(0, self.num_stats, dtype=torch.float64, device=self.device),
            "case_names": torch.zeros(0, dtype=torch.uint8, device=self.device),
        }
        for name, placeholder in empty.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [placeholder])
        kwargs = {} if dist_sync_fn is None else {"dist_sync_fn": dist_sync_fn}
        super()._sync_dist(process_group=process_group, **kwargs)

    def _case_names_by_key(self) -> dict[int, str]:
        raw = (
            dim_zero_cat(self.case_names).to(torch.uint8).cpu().numpy().tobytes()
            if len(self.case_names) > 0
            else b""
        )
        names = [part.decode("utf-8") for part in raw.split(bytes([_NAME_SEPARATOR])) if part]
        return {case_key(name): name for name in names}

    def _deduplicated_rows(self) -> tuple[Tensor, Tensor]:
        """Return (case keys [U], stats [U, K]) with one row per (case, slice), sorted by case."""
        keys = dim_zero_cat(self.case_key).to(torch.int64)
        index = dim_zero_cat(self.slice_index).to(torch.int64)
        stats = dim_zero_cat(self.stats).to(torch.float64).reshape(-1, self.num_stats)
        pairs, inverse = torch.unique(torch.stack([keys, index], dim=1), dim=0, return_inverse=True)
        position = torch.arange(keys.numel(), device=keys.device)
        first = torch.full((pairs.shape[0],), keys.numel(), dtype=torch.int64, device=keys.device)
        first = first.scatter_reduce(0, inverse, position, reduce="amin")
        return pairs[:, 0], stats[first]

    def compute(self) -> dict[str, Tensor]:
        """Return the mean over cases of each metric, float64 scalars keyed by ``metric_names``.

        Under DDP this is a collective call (like any torchmetrics ``compute``). With no data at
        all every value is NaN.
        """
        per_case: dict[str, dict[str, float]] = {}
        totals: dict[str, list[Tensor]] = {name: [] for name in self.metric_names}
        if len(self.case_key) > 0:
            names = self._case_names_by_key()
            keys, stats = self._deduplicated_rows()
            case_keys, counts = torch.unique_consecutive(keys, return_counts=True)
            for key, rows in zip(case_keys.tolist(), torch.split(stats, counts.tolist()), strict=True):
                values = self.reduce_case(rows)
                per_case[names.get(key, f"#{key & (2**64 - 1):016x}")] = {
                    k: float(v) for k, v in values.items()
                }
                for name in self.metric_names:
                    totals[name].append(values[name].to(torch.float64))
        self._per_case = per_case
        return {
            name: torch.stack(vals).mean() if vals else torch.tensor(math.nan, dtype=torch.float64)
            for name, vals in totals.items()
        }

    def compute_per_case(self) -> dict[str, dict[str, float]]:
        """Return ``{case id: {metric: value}}`` for every case seen (collective under DDP)."""
        self.compute()
        return dict(sorted(self._per_case.items()))

    def reset(self) -> None:
        """Clear the states, the per-case results and the record of names already stored."""
        super().reset()
        self._named_keys = set()
        self._per_case = {}


def _binarise(pred: Tensor, threshold: float, from_logits: bool) -> Tensor:
    if pred.dtype == torch.bool:
        return pred
    if not pred.is_floating_point():
        return pred != 0
    return (torch.sigmoid(pred) if from_logits else pred) > threshold


class SegmentationVolumeMetric(CaseSliceMetric):
    """Per-case Dice, IoU, precision and recall of binary masks, averaged over cases.

    Per slice it stores TP, FP, FN; per case it sums them and applies the empty-mask rule of
    ``common.metrics.segmentation`` (a ratio with a zero denominator scores ``empty_score``).

    Args:
        threshold: foreground when probability > threshold (float predictions).
        from_logits: float predictions are logits; a sigmoid is applied before thresholding.
        empty_score: score of a ratio whose denominator is zero (1.0 default; 0.0 for protocols that
            score zero divisions as 0).
        score_counts: a project's own scores of one case from its summed ``(tp, fp, fn)``, the function its
            ``score_case`` applies to a whole volume's counts, so that validation and ``eval.py`` share one
            rule; its keys become ``metric_names``. None: Dice, IoU, precision, recall with ``empty_score``.
        **kwargs: forwarded to ``torchmetrics.Metric``.

    ``update(pred, ref, case_ids, slice_index)``: ``pred`` ``[B, ...]`` bool, int (non-zero =
    foreground), probabilities or logits; ``ref`` ``[B, ...]`` any dtype, non-zero = foreground.
    """

    higher_is_better = True
    metric_names: tuple[str, ...] = ("dice", "iou", "precision", "recall")
    num_stats = 3

    def __init__(
        self,
        threshold: float = 0.5,
        from_logits: bool = False,
        empty_score: float = 1.0,
        score_counts: Callable[[float, float, float], dict[str, float]] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self.empty_score = float(empty_score)
        self.score_counts = score_counts
        if score_counts is not None:
            self.metric_names = tuple(score_counts(0.0, 0.0, 0.0))

    def slice_stats(self, pred: Tensor, ref: Tensor, **kwargs: Any) -> Tensor:
        """Return ``[B, 3]`` float64 counts (TP, FP, FN) per slice."""
        pred_mask = _binarise(pred, self.threshold, self.from_logits).reshape(pred.shape[0], -1)
        ref_mask = (ref != 0).reshape(ref.shape[0], -1)
        tp = (pred_mask & ref_mask).sum(dim=1)
        fp = (pred_mask & ~ref_mask).sum(dim=1)
        fn = (~pred_mask & ref_mask).sum(dim=1)
        return torch.stack([tp, fp, fn], dim=1).to(torch.float64)

    def reduce_case(self, stats: Tensor) -> dict[str, Tensor]:
        """Return Dice, IoU, precision, recall of one case from its ``[n, 3]`` counts."""
        tp, fp, fn = (float(v) for v in stats.sum(dim=0))
        if self.score_counts is not None:
            scores = self.score_counts(tp, fp, fn)
        else:
            scores = scores_from_counts(tp, fp, fn, self.empty_score)
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in scores.items()}


class ReconstructionVolumeMetric(CaseSliceMetric):
    """Per-case NMSE, PSNR and SSIM of 2-D slices, averaged over cases (fastMRI volume rules).

    Per slice it stores the sum of squared errors, the reference energy, the pixel count, the SSIM
    of the slice (``ssim_uniform``: 7 x 7 uniform window, sample covariance, computed in float64 on
    the tensors), the ``data_range`` passed for it and the reference maximum and minimum. Per case:
    NMSE = sum SSE / sum energy; PSNR = 20 log10(peak) - 10 log10(volume MSE); SSIM = mean over the
    slices. ``peak`` is the largest ``data_range`` passed for the case (``psnr_range="given"``, e.g.
    the volume max stored in a fastMRI file), the maximum of the reference over the whole case
    (``"ref_max"``, what the offline fastMRI evaluator uses) or its max - min over the whole case
    (``"ref_range"``), the last two being known only once every slice has been gathered.

    Args:
        psnr_range: which peak PSNR uses, ``"given"``, ``"ref_max"`` or ``"ref_range"``.
        win_size: SSIM window side.
        **kwargs: forwarded to ``torchmetrics.Metric``.

    ``update(pred, ref, case_ids, slice_index, data_range)``: ``pred``/``ref`` ``[B, H, W]`` or
    ``[B, 1, H, W]`` real images in the same units; ``data_range`` a float or ``[B]`` tensor.
    """

    metric_names = ("nmse", "psnr", "ssim")
    num_stats = 7

    def __init__(
        self, psnr_range: Literal["given", "ref_max", "ref_range"] = "given", win_size: int = 7, **kwargs: Any
    ):
        super().__init__(**kwargs)
        if psnr_range not in ("given", "ref_max", "ref_range"):
            raise ValueError(f"psnr_range must be 'given', 'ref_max' or 'ref_range', got {psnr_range!r}")
        self.psnr_range = psnr_range
        self.win_size = int(win_size)

    def slice_stats(
        self, pred: Tensor, ref: Tensor, data_range: Tensor | float | None = None, **kwargs: Any
    ) -> Tensor:
        """Return ``[B, 7]`` float64 rows (SSE, energy, count, SSIM, data_range, ref max, ref min)."""
        if data_range is None:
            raise ValueError("ReconstructionVolumeMetric.update needs data_range (a float or a [B] tensor)")
        batch = pred.shape[0]
        if pred.ndim < 3 or pred[0].numel() != pred.shape[-2] * pred.shape[-1]:
            raise ValueError(f"expected [B, H, W] or [B, 1, H, W] images, got {tuple(pred.shape)}")
        pred64 = pred.detach().to(torch.float64).reshape(batch, *pred.shape[-2:])
        ref64 = ref.detach().to(torch.float64).reshape(batch, *ref.shape[-2:])
        peak = (
            torch.as_tensor(data_range, dtype=torch.float64, device=pred64.device)
            .reshape(-1)
            .expand(batch)
            .clone()
        )
        if bool((peak <= 0).any()):
            raise ValueError(f"data_range must be positive, got {peak.tolist()}")
        sse = ((pred64 - ref64) ** 2).sum(dim=(1, 2))
        energy = (ref64**2).sum(dim=(1, 2))
        count = torch.full_like(sse, float(pred64[0].numel()))
        ssim = ssim_uniform(pred64, ref64, peak, self.win_size)
        ref_max, ref_min = ref64.amax(dim=(1, 2)), ref64.amin(dim=(1, 2))
        return torch.stack([sse, energy, count, ssim, peak, ref_max, ref_min], dim=1)

    def reduce_case(self, stats: Tensor) -> dict[str, Tensor]:
        """Return NMSE, PSNR (dB) and SSIM of one case from its ``[n, 7]`` rows."""
        sse, energy, count = stats[:, 0].sum(), stats[:, 1].sum(), stats[:, 2].sum()
        peak = {
            "given": lambda: stats[:, 4].max(),
            "ref_max": lambda: stats[:, 5].max(),
            "ref_range": lambda: stats[:, 5].max() - stats[:, 6].min(),
        }[self.psnr_range]()
        if energy > 0:
            nmse = sse / energy
        else:
            nmse = torch.tensor(0.0 if sse == 0 else math.inf, dtype=torch.float64)
        mse = sse / count
        psnr = 20 * torch.log10(peak) - 10 * torch.log10(mse) if mse > 0 else torch.tensor(math.inf)
        return {"nmse": nmse, "psnr": psnr.to(torch.float64), "ssim": stats[:, 3].mean()}
