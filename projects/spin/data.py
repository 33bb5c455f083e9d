"""ATLAS slices from the volume cache: training sampler, whole-scan evaluation slices, the DataModule.

The cache (written by ``projects.spin.prepare``) holds per scan ``t1`` float32 ``[Z, X, Y]`` (raw intensities)
and ``lesion`` uint8 ``[Z, X, Y]``, axial slices first so that a 5-slice window is one contiguous read
(``LAYOUT``, ``common.io.layout``); the stored affine is that of the cached array, ``meta["axes"]`` maps it back
to the canonical (RAS+) NIfTI array ``[X, Y, Z]`` (:func:`volume_xyz`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from common.errors import DataError
from common.io.cache import VolumeCache
from common.io.layout import CacheLayout
from common.loaders import CachedCaseAffines, loader_options
from common.prepare import not_prepared
from projects.spin.splits import resolve_split

#: The cache order: ``[Z, X, Y]`` of the RAS+ array (axial slices first).
LAYOUT = CacheLayout(order=(2, 0, 1), canonical=True)
#: The order the network segments a scan in (predict): the RAS+ array ``[X, Y, Z]``, slices along Z.
RAS = CacheLayout(canonical=True)
#: The raw data: what `--raw` points at, where it comes from (named when scans are not cached).
RAW_HINT = "<ATLAS R1.2 standard_MNI folder>"
SOURCE = "ATLAS R1.2, https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html"

#: Fixed ATLAS R1.2 intensity statistics used for normalisation (x - mean) / std.
ATLAS_MEAN = 30.20063
ATLAS_STD = 35.221165
#: 8-connectivity in 2-D.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def ras_volume(cache: VolumeCache, scan: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns a cached array in the RAS+ NIfTI order ``[X, Y, Z]`` and the affine of that array.

    Raises:
        DataError: the cache entry has no ``meta["axes"]`` (written by an earlier prepare) or no affine.
    """
    axes = LAYOUT.stored_axes(cache.meta(scan), cache.root / scan)
    affine = cache.affine(scan)
    if affine is None:
        raise DataError(cache.root, f"the cache holds no affine for {scan}")
    return axes.to_file(np.asarray(cache.load(scan, key)), affine)


def volume_xyz(cache: VolumeCache, scan: str, key: str) -> np.ndarray:
    """Returns a cached array in the RAS+ NIfTI order ``[X, Y, Z]`` (see :func:`ras_volume`)."""
    return ras_volume(cache, scan, key)[0]


class SliceSample(NamedTuple):
    """One training or evaluation sample (batched by the default collate).

    Attributes:
        image: float32 ``[n_chunk, H, W]`` normalised slices centred on ``slice_index``.
        label: int64 ``[1, H, W]`` lesion mask of the centre slice.
        case_id: the scan id.
        slice_index: axial index of the centre slice.
        small: True when the slice's lesions are all small (see :func:`is_small_lesion_slice`).
    """

    image: torch.Tensor
    label: torch.Tensor
    case_id: str
    slice_index: int
    small: bool


def normalise(t1: np.ndarray, mean: float = ATLAS_MEAN, std: float = ATLAS_STD) -> np.ndarray:
    """Returns ``(t1 - mean) / std`` as float32 (any shape)."""
    return ((np.asarray(t1, dtype=np.float32) - mean) / std).astype(np.float32, copy=False)


def slice_window(t1_axial: np.ndarray, z: int, n_chunk: int = 5) -> np.ndarray:
    """Returns the normalised slices ``z - n_chunk//2 .. z + n_chunk//2`` as float32 ``[n_chunk, X, Y]``.

    Out-of-volume neighbours are the dataset mean (0 after normalisation).
    """
    half = n_chunk // 2
    depth = t1_axial.shape[0]
    lo, hi = max(z - half, 0), min(z + half + 1, depth)
    out = np.zeros((n_chunk, *t1_axial.shape[1:]), dtype=np.float32)
    out[lo - (z - half): hi - (z - half)] = normalise(t1_axial[lo:hi])
    return out


def is_small_lesion_slice(mask: np.ndarray, max_px: int = 100) -> bool:
    """Returns True when a 2-D mask has lesion pixels and every 8-connected component has at most ``max_px``."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=EIGHT_CONNECTED)
    if count == 0:
        return False
    return int(np.bincount(labels.ravel())[1:].max()) <= max_px


def small_lesion_slices(gt: np.ndarray, max_px: int = 100, axis: int = 2) -> list[int]:
    """Returns the indices along ``axis`` (axial = 2 for ``[X, Y, Z]``) of the small-lesion slices of a mask."""
    moved = np.moveaxis(np.asarray(gt), axis, 0)
    return [z for z in range(moved.shape[0]) if is_small_lesion_slice(moved[z], max_px)]


class _CachedScans:
    """Lazily memory-maps the cached arrays of a list of scans (opened again in each worker)."""

    def __init__(self, cache_dir: str | os.PathLike, case_ids: list[str]) -> None:
        self.cache_dir = str(cache_dir)
        self.case_ids = list(case_ids)
        self._cache: VolumeCache | None = None
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        missing = [c for c in self.case_ids if c not in self.cache]
        if missing:
            raise not_prepared(self.cache_dir, f"{len(missing)} scans of the split are not in the cache, e.g. "
                                               f"{missing[:3]}", "spin", RAW_HINT, SOURCE)

    @property
    def cache(self) -> VolumeCache:
        if self._cache is None:
            self._cache = VolumeCache(self.cache_dir)
        return self._cache

    def array(self, case_id: str, key: str) -> np.ndarray:
        if (case_id, key) not in self._arrays:
            self._arrays[(case_id, key)] = self.cache.load(case_id, key, mmap=True)
        return self._arrays[(case_id, key)]

    def lesion_px(self, case_id: str) -> np.ndarray:
        """Lesion pixels per axial slice (from the cache metadata when present)."""
        meta = self.cache.meta(case_id)
        if "lesion_px" in meta:
            return np.asarray(meta["lesion_px"], dtype=np.int64)
        return self.array(case_id, "lesion").reshape(self.cache.shape(case_id, "lesion")[0], -1).sum(1)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None, "_arrays": {}}


class ATLASSliceDataset(Dataset):
    """Training samples: each item draws one axial slice of one scan (an epoch = one slice per scan).

    With probability ``pos_rate`` the slice is drawn uniformly among those with more than ``pos_min_px``
    lesion pixels, else among the others. Draws use torch's RNG, which Lightning seeds per worker.

    Args:
        cache_dir: the volume cache.
        case_ids: training scans.
        n_chunk: adjacent slices per sample.
        pos_rate: probability of a lesion slice.
        pos_min_px: lesion pixels a slice needs to count as positive.
        samples_per_scan: items per scan in one epoch.
    """

    def __init__(self, cache_dir: str | os.PathLike, case_ids: list[str], n_chunk: int = 5, pos_rate: float = 0.95,
                 pos_min_px: int = 0, samples_per_scan: int = 1) -> None:
        self.scans = _CachedScans(cache_dir, case_ids)
        self.n_chunk, self.pos_rate, self.samples_per_scan = n_chunk, pos_rate, samples_per_scan
        self.positive, self.negative = [], []
        for case_id in case_ids:
            px = self.scans.lesion_px(case_id)
            self.positive.append(np.flatnonzero(px > pos_min_px))
            self.negative.append(np.flatnonzero(px <= pos_min_px))

    def __len__(self) -> int:
        return len(self.scans.case_ids) * self.samples_per_scan

    def _draw(self, scan: int) -> int:
        pos, neg = self.positive[scan], self.negative[scan]
        pool = pos if (float(torch.rand(())) < self.pos_rate and len(pos)) or not len(neg) else neg
        return int(pool[int(torch.randint(len(pool), ()))])

    def __getitem__(self, index: int) -> SliceSample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        scan = index % len(self.scans.case_ids)
        case_id = self.scans.case_ids[scan]
        z = self._draw(scan)
        t1 = self.scans.array(case_id, "t1")
        label = np.asarray(self.scans.array(case_id, "lesion")[z] > 0, dtype=np.int64)[None]
        return SliceSample(torch.from_numpy(slice_window(t1, z, self.n_chunk)), torch.from_numpy(label),
                           case_id, z, False)


class ATLASScanSlices(Dataset):
    """Every axial slice of every scan, in order (validation and test; the metrics regroup them per scan).

    Args:
        cache_dir: the volume cache.
        case_ids: the scans.
        n_chunk: adjacent slices per sample.
        small_max_px: component size limit of the small-lesion rule.
        slice_stride: keep every n-th slice (1 = all; larger values give a cheaper, approximate validation).
        lesion_first: move this many items to the front: each scan's slice with the largest lesion, in turn
            (the image panels show the cases met first; the metrics do not depend on the order).
    """

    def __init__(self, cache_dir: str | os.PathLike, case_ids: list[str], n_chunk: int = 5,
                 small_max_px: int = 100, slice_stride: int = 1, lesion_first: int = 0) -> None:
        self.scans = _CachedScans(cache_dir, case_ids)
        self.n_chunk, self.small_max_px = n_chunk, small_max_px
        self.items = [(c, z) for c in case_ids
                      for z in range(0, self.scans.cache.shape(c, "t1")[0], slice_stride)]
        if lesion_first:
            kept = set(self.items)
            peaks = [(c, int(np.argmax(self.scans.lesion_px(c)))) for c in case_ids]
            front = [item for item in peaks if item in kept][:lesion_first]
            self.items = front + [item for item in self.items if item not in set(front)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SliceSample:
        case_id, z = self.items[index]
        mask = np.asarray(self.scans.array(case_id, "lesion")[z] > 0)
        image = slice_window(self.scans.array(case_id, "t1"), z, self.n_chunk)
        return SliceSample(torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64)[None]), case_id, z,
                           is_small_lesion_slice(mask, self.small_max_px))


class ATLASDataModule(CachedCaseAffines, pl.LightningDataModule):
    """Train / validation / test loaders of a subject-disjoint split of the cached scans.

    Args:
        cache_dir: the volume cache written by ``prepare.py``.
        split: a split name in ``projects/spin/splits/`` or a JSON path.
        fold: fold index for split files with ``folds``.
        val_fraction: share of training subjects held out for model selection.
        val_seed: seed of that hold-out.
        batch_size: training batch size.
        eval_batch_size: validation / test batch size.
        num_workers: DataLoader workers.
        n_chunk: adjacent slices per sample (5 for SPiN, 1 for the U-Net baseline).
        pos_rate: probability of drawing a lesion slice in training.
        pos_min_px: lesion pixels a positive slice needs.
        samples_per_scan: training items per scan per epoch.
        val_slice_stride: keep every n-th validation slice.
        small_max_px: small-lesion component size limit.
    """

    def __init__(self, cache_dir: str, split: str = "atlas_traintest", fold: int | None = None,
                 val_fraction: float = 0.1, val_seed: int = 0, batch_size: int = 8, eval_batch_size: int = 16,
                 num_workers: int | str = 0, n_chunk: int = 5, pos_rate: float = 0.95, pos_min_px: int = 0,
                 samples_per_scan: int = 1, val_slice_stride: int = 1, small_max_px: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self._sets: dict[str, list[str]] | None = None

    @property
    def sets(self) -> dict[str, list[str]]:
        """``{"train", "val", "test"}`` scan ids (resolved on first use, after ``prepare_data``)."""
        if self._sets is None:
            hp = self.hparams
            self._sets = resolve_split(hp.split, hp.fold, hp.val_fraction, hp.val_seed)
        return self._sets

    def check_data(self, stage: str | None = None) -> None:
        """Raises `DataError` naming the prepare command when scans of the split are not in the cache.

        Every scan of the split is checked whatever the stage: `prepare --split` caches them together.
        """
        hp = self.hparams
        cache = VolumeCache(hp.cache_dir)
        missing = [c for ids in self.sets.values() for c in ids if c not in cache]
        if missing:
            raise not_prepared(hp.cache_dir, f"{len(missing)} scans of {hp.split} are not in the cache, e.g. "
                                             f"{missing[:3]}", "spin", RAW_HINT, SOURCE, extra=f" --split {hp.split}")

    def _eval_set(self, name: str, stride: int = 1, lesion_first: int = 0) -> ATLASScanSlices:
        hp = self.hparams
        return ATLASScanSlices(hp.cache_dir, self.sets[name], hp.n_chunk, hp.small_max_px, stride, lesion_first)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                          **loader_options(self.hparams.num_workers, self.trainer))

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = ATLASSliceDataset(hp.cache_dir, self.sets["train"], hp.n_chunk, hp.pos_rate, hp.pos_min_px,
                                    hp.samples_per_scan)
        return self._loader(dataset, hp.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # The image panels show the cases met first: put each scan's largest-lesion slice at the front.
        val = self._eval_set("val", self.hparams.val_slice_stride, lesion_first=self.hparams.eval_batch_size)
        return self._loader(val, self.hparams.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._eval_set("test"), self.hparams.eval_batch_size, False)
