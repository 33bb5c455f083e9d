"""Slice-triplet datasets read from the memory-mapped volume cache, and the fold-aware DataModule.

A sample is the slices [j - 1, j, j + 1] of one plane of a cached case (indices clamped at the volume ends),
with the labels of the same three slices. Planes are array axes of the cache layout (`LAYOUT`):
X = axis 0, Y = axis 1, Z = axis 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from common.errors import DataError
from common.io.cache import VolumeCache
from common.io.layout import CacheLayout
from common.loaders import CachedCaseAffines, loader_options
from common.prepare import not_prepared
from common.splits import load_split

PLANE_AXIS = {"X": 0, "Y": 1, "Z": 2}
#: The cache order: the reference's DICOM order (row, column, slice), i.e. NIfTI's first two axes swapped.
LAYOUT = CacheLayout(order=(1, 0, 2))
WINDOW = (-100.0, 240.0)
#: What `--raw` points at for each raw data set, and where it comes from (named when the cache is missing).
RAW_HINTS = {"nih": "<NIH Pancreas-CT folder: PANCREAS_00XX/ and label00XX.nii.gz>",
             "msd": "<MSD Task07_Pancreas folder>"}
SOURCES = {"nih": "NIH Pancreas-CT, https://www.cancerimagingarchive.net/collection/pancreas-ct/",
           "msd": "Medical Segmentation Decathlon, http://medicaldecathlon.com"}


class SliceSample(NamedTuple):
    """One training or testing sample.

    Attributes:
        image: float32 [T, H, W] in [0, 1] (T = thickness, 3).
        label: float32 [T, H, W], 0/1.
        case_id: the cached case.
        slice_index: j, the centre slice along the plane axis.
    """

    image: torch.Tensor
    label: torch.Tensor
    case_id: str
    slice_index: int


def plane_axis(plane: str) -> int:
    """Returns the array axis (0, 1, 2) of plane "X", "Y" or "Z"."""
    if plane not in PLANE_AXIS:
        raise ValueError(f"plane must be X, Y or Z, got {plane!r}")
    return PLANE_AXIS[plane]


def slab(volume: np.ndarray, axis: int, centre: int, thickness: int = 3) -> np.ndarray:
    """Returns float32 [thickness, ...]: the slices centre - t//2 .. centre + t//2 along `axis`, clamped."""
    half = thickness // 2
    index = np.clip(np.arange(centre - half, centre + half + 1), 0, volume.shape[axis] - 1)
    return np.moveaxis(np.take(volume, index, axis=axis), axis, 0).astype(np.float32)


def fold_cases(split_file: str | Path, fold: int) -> tuple[list[str], list[str]]:
    """Returns (training case ids, testing case ids) of `fold` of a split file with `folds` (`common.splits`).

    Raises:
        DataError: the file is missing or malformed, or `fold` is out of range.
    """
    sets = load_split(split_file, fold)
    return sets["train"], sets["test"]


def file_volume(cache: VolumeCache, case_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns a cached array in its source NIfTI order `[X, Y, Z]` and the source affine.

    Raises:
        DataError: the cache holds no affine for the case.
    """
    affine = cache.affine(case_id)
    if affine is None:
        raise DataError(cache.root, f"the cache holds no affine for {case_id}")
    axes = LAYOUT.stored_axes(cache.meta(case_id), cache.root)
    return axes.to_file(np.asarray(cache.load(case_id, key)), affine)


def window(hu: np.ndarray, low: float = WINDOW[0], high: float = WINDOW[1]) -> np.ndarray:
    """Returns float16 HU clipped to [low, high] and mapped linearly to [0, 1]."""
    return ((np.clip(hu.astype(np.float32), low, high) - low) / (high - low)).astype(np.float16)


def foreground_slices(label: np.ndarray, axis: int) -> list[tuple[int, int]]:
    """Returns (slice, foreground pixels) of the non-empty slices along `axis`."""
    counts = label.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
    return [(int(j), int(n)) for j, n in enumerate(counts) if n > 0]


def organ_free_slices(label: np.ndarray, axis: int, thickness: int = 3) -> list[int]:
    """Returns the centres j whose whole triplet (j - t//2 .. j + t//2, clamped) holds no foreground."""
    present = label.any(axis=tuple(a for a in range(3) if a != axis))
    half = thickness // 2
    return [j for j in range(label.shape[axis])
            if not present[max(j - half, 0):min(j + half, label.shape[axis] - 1) + 1].any()]


class PlaneSlices(Dataset):
    """Slice triplets of one plane of several cached cases.

    Args:
        cache_root: the `VolumeCache` folder written by `projects.rstn.prepare`.
        case_ids: cases to read (missing ones raise).
        plane: "X", "Y" or "Z".
        thickness: slices per sample (3).
        foreground_only: keep only slices with foreground (training), else every slice (testing).
        slice_threshold: with `foreground_only`, keep the largest `slice_threshold` fraction of the
            non-empty slices, ranked by foreground pixels over all the given cases (0.98 drops the smallest 2%).
        empty_fraction: with `foreground_only`, also keep organ-free slices (no foreground in the whole
            triplet), as many as `empty_fraction` times the kept foreground slices (fewer if the cases hold
            fewer), drawn once with `seed`; 0 is the paper's protocol (foreground slices only).
        seed: seed of that draw.

    Raises:
        DataError: a case is not in the cache.
    """

    def __init__(self, cache_root: str | Path, case_ids: Sequence[str], plane: str, thickness: int = 3,
                 foreground_only: bool = True, slice_threshold: float = 0.98, empty_fraction: float = 0.0,
                 seed: int = 0) -> None:
        if empty_fraction < 0:
            raise ValueError(f"empty_fraction must be >= 0, got {empty_fraction}")
        self.cache = VolumeCache(cache_root)
        self.axis = plane_axis(plane)
        self.thickness = thickness
        self.index: list[tuple[str, int]] = []
        ranked: list[tuple[int, str, int]] = []
        empty: list[tuple[str, int]] = []
        for case_id in case_ids:
            label = self.cache.load(case_id, "label")
            if foreground_only:
                ranked += [(n, case_id, j) for j, n in foreground_slices(label, self.axis)]
                empty += [(case_id, j) for j in organ_free_slices(label, self.axis, thickness)]
            else:
                self.index += [(case_id, j) for j in range(label.shape[self.axis])]
        if foreground_only and ranked:
            ranked.sort()
            drop = int(np.floor(len(ranked) * (1 - slice_threshold)))
            self.index = sorted((c, j) for _, c, j in ranked[drop:])
        n_empty = min(len(empty), int(round(empty_fraction * len(self.index))))
        if foreground_only and n_empty > 0:
            picked = np.random.default_rng(seed).choice(len(empty), size=n_empty, replace=False)
            self.index = sorted(self.index + [empty[i] for i in picked])

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, case_id: str, key: str) -> np.ndarray:
        """Returns the memory-mapped array, opened once per process (not once per sample: each opening reads
        and checks the `.npy` header, about as long as cutting the slab itself)."""
        arrays = self.__dict__.setdefault("_arrays", {})
        if (case_id, key) not in arrays:
            arrays[case_id, key] = self.cache.load(case_id, key)
        return arrays[case_id, key]

    def __getstate__(self) -> dict[str, Any]:
        # A spawned DataLoader worker gets the dataset pickled: a memory map would travel as a full copy.
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"}

    def __getitem__(self, item: int) -> SliceSample:
        case_id, j = self.index[item]
        image = slab(self._array(case_id, "image"), self.axis, j, self.thickness)
        label = slab(self._array(case_id, "label"), self.axis, j, self.thickness)
        return SliceSample(torch.from_numpy(image), torch.from_numpy(label), case_id, j)


def collate(samples: list[SliceSample]) -> SliceSample:
    """Returns a batch: image/label [B, T, H, W], case ids list, slice indices int64 [B]."""
    return SliceSample(torch.stack([s.image for s in samples]), torch.stack([s.label for s in samples]),
                       [s.case_id for s in samples], torch.tensor([s.slice_index for s in samples]))  # type: ignore[arg-type]


class RSTNDataModule(CachedCaseAffines, pl.LightningDataModule):
    """Training slices of a fold's training cases, validation / test volumes slice by slice.

    Args:
        cache_dir: the volume cache folder.
        split_file: JSON with `folds`; `fold` selects the test cases, the others train.
        fold: 0 .. 3.
        plane: "X", "Y" or "Z".
        thickness: slices per sample.
        slice_threshold: see `PlaneSlices`.
        empty_fraction: organ-free training slices per kept foreground slice (see `PlaneSlices`; 0 = paper).
        val_cases: how many training cases (the last ones) are held out for validation; 0 validates on the
            first two training cases (monitoring only, no held-out data).
        batch_size: training batch (1 in the paper; >1 needs equal slice shapes).
        num_workers: DataLoader workers.
        synthetic: optional `{n_cases, shape, seed}`: build a synthetic cache in `cache_dir` first.
        layout: the raw data set the cache comes from ("nih" or "msd"), named when it is missing.
    """

    def __init__(self, cache_dir: str, split_file: str, fold: int = 0, plane: str = "Z", thickness: int = 3,
                 slice_threshold: float = 0.98, empty_fraction: float = 0.0, val_cases: int = 2, batch_size: int = 1, num_workers: int | str = 0,
                 synthetic: dict[str, Any] | None = None, layout: str = "nih") -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.cases: dict[str, list[str]] = {}

    def _not_prepared(self, problem: str) -> DataError:
        layout = self.hparams.layout
        return not_prepared(self.hparams.cache_dir, problem, "rstn", RAW_HINTS.get(layout, "DIR"),
                            SOURCES.get(layout, layout), extra=f" --layout {layout}")

    def check_data(self, stage: str | None = None) -> None:
        """Raises `DataError` naming the prepare command when cases of the fold (or the split) are missing.

        A synthetic cache is not checked: `prepare_data` builds it.
        """
        h = self.hparams
        if h.synthetic:
            return
        cache = VolumeCache(h.cache_dir)
        if len(cache) == 0 or not Path(h.split_file).is_file():
            raise self._not_prepared("the cache is empty" if len(cache) == 0 else f"no split file {h.split_file}")
        train, test = fold_cases(h.split_file, h.fold)
        missing = [c for c in train + test if not cache.has(c)]
        if missing:
            raise self._not_prepared(f"{len(missing)} cases of the split are not in the cache, e.g. {missing[:3]}")

    def prepare_data(self) -> None:
        syn = self.hparams.synthetic
        if syn:
            from projects.rstn.prepare import prepare_synthetic

            prepare_synthetic(self.hparams.cache_dir, int(syn["n_cases"]), tuple(syn["shape"]), int(syn.get("seed", 0)))

    def setup(self, stage: str | None = None) -> None:
        train, test = fold_cases(self.hparams.split_file, self.hparams.fold)
        cache = VolumeCache(self.hparams.cache_dir)
        missing = [c for c in train + test if not cache.has(c)]
        if missing:
            raise DataError(self.hparams.cache_dir, f"cases of the split are not cached: {', '.join(missing[:5])}")
        n_val = self.hparams.val_cases
        val = train[-n_val:] if n_val > 0 else train[:2]
        self.cases = {"train": train[:-n_val] if n_val > 0 else train, "val": val, "test": test}

    def _slices(self, split: str, foreground_only: bool) -> PlaneSlices:
        h = self.hparams
        return PlaneSlices(h.cache_dir, self.cases[split], h.plane, h.thickness, foreground_only, h.slice_threshold,
                           h.empty_fraction if split == "train" else 0.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._slices("train", True), batch_size=self.hparams.batch_size, shuffle=True,
                          collate_fn=collate, drop_last=False, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        """Every slice of the validation cases, in a fixed shuffled order.

        Validation scores per case from whatever slices it saw, so a `trainer.limit_val_batches` cap takes
        slices from the whole of each volume; in file order it would take the first slices only, which along
        planes X and Y hold no organ (val Dice 0 whatever the network does).
        """
        slices = self._slices("val", False)
        order = np.random.default_rng(0).permutation(len(slices)).tolist()
        return DataLoader(Subset(slices, order), batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=collate, **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._slices("test", False), batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=collate, **self._loader_options())

    def _loader_options(self) -> dict:
        return loader_options(self.hparams.num_workers, self.trainer)
