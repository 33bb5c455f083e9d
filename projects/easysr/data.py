"""EasySR datasets and DataModule: (LR, HR) pairs from the volume cache, whole volumes or patches.

Arrays come from `projects.easysr.prepare` with the thick axis at array axis 1, already normalised, so a sample
is two memory-mapped crops and no per-item spline work. Patches (HR size `patch_size`, its axis-1 size a
multiple of `scale`) start at an axis-1 offset that is a multiple of `scale`, so the LR crop is exactly the LR of
the HR crop. Flips (augmentation) are applied to LR and HR together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.errors import DataError
from common.io.cache import VolumeCache
from common.loaders import CachedCaseAffines, loader_options
from common.prepare import not_prepared
from projects.easysr.prepare import RAW_HINT, SOURCE, build_cache, cached_splits, case_id, find_volumes


class SRSample(NamedTuple):
    """One training or evaluation pair.

    Attributes:
        lr: float32 `[1, D, H, W]` in [0, 255] (thick axis = H).
        hr: float32 `[1, D, H * scale, W]` in [0, 255].
        case_id: the case the pair comes from.
    """

    lr: torch.Tensor
    hr: torch.Tensor
    case_id: str


class SRVolumeDataset(Dataset):
    """Whole-volume pairs (the reference's training unit; also every validation and test sample).

    Args:
        cache: the prepared cache.
        case_ids: cases to serve.
        augment: random flips of axes 0 and 2 (LR and HR together).
    """

    def __init__(self, cache: VolumeCache, case_ids: Sequence[str], augment: bool = False) -> None:
        self.cache = cache
        self.case_ids = list(case_ids)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.case_ids)

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        cid = self.case_ids[index]
        return self.cache.load(cid, "lr"), self.cache.load(cid, "hr"), cid

    def __getitem__(self, index: int) -> SRSample:
        lr, hr, cid = self._pair(index)
        return _sample(lr, hr, cid, self.augment)


class SRPatchDataset(SRVolumeDataset):
    """Random patch pairs: `patches_per_volume` per case and epoch, bounded memory for large volumes.

    Args:
        cache: the prepared cache.
        case_ids: cases to serve.
        patch_size: HR patch `(D, H, W)`; H must be a multiple of `scale` (clipped to the volume).
        scale: thick/thin ratio.
        patches_per_volume: samples per case per epoch.
        augment: random flips of axes 0 and 2.

    Raises:
        ValueError: H of `patch_size` is not a multiple of `scale`.
    """

    def __init__(self, cache: VolumeCache, case_ids: Sequence[str], patch_size: Sequence[int], scale: int,
                 patches_per_volume: int = 4, augment: bool = False) -> None:
        super().__init__(cache, case_ids, augment)
        if patch_size[1] % scale:
            raise ValueError(f"patch H size {patch_size[1]} must be a multiple of scale {scale}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.scale = scale
        self.patches_per_volume = patches_per_volume

    def __len__(self) -> int:
        return len(self.case_ids) * self.patches_per_volume

    def __getitem__(self, index: int) -> SRSample:
        lr, hr, cid = self._pair(index // self.patches_per_volume)
        size = [min(p, s) for p, s in zip(self.patch_size, hr.shape)]
        size[1] -= size[1] % self.scale
        # torch's RNG: seeded once by seed_everything(workers=True), different in every worker.
        starts = [int(torch.randint(0, s - p + 1, ()).item()) for s, p in zip(hr.shape, size)]
        starts[1] -= starts[1] % self.scale
        hr_crop = hr[starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]
        lo = starts[1] // self.scale
        lr_crop = lr[starts[0]:starts[0] + size[0], lo:lo + size[1] // self.scale, starts[2]:starts[2] + size[2]]
        return _sample(lr_crop, hr_crop, cid, self.augment)


def _sample(lr: np.ndarray, hr: np.ndarray, cid: str, augment: bool) -> SRSample:
    lr_t = torch.from_numpy(np.array(lr, dtype=np.float32))[None]
    hr_t = torch.from_numpy(np.array(hr, dtype=np.float32))[None]
    if augment:
        dims = [d for d in (1, 3) if torch.rand(()) < 0.5]
        if dims:
            lr_t, hr_t = lr_t.flip(dims), hr_t.flip(dims)
    return SRSample(lr_t, hr_t, cid)


class EasySRDataModule(CachedCaseAffines, pl.LightningDataModule):
    """Builds the cache from the raw NIfTI folder if needed, then serves train / val / test pairs.

    Args:
        raw_dir: raw NIfTI folder (layouts in `projects.easysr.prepare`).
        cache_dir: cache folder.
        axis: array axis of the raw volumes made thick (1 in the reference).
        scale: thick/thin ratio (3 in the reference).
        patch_size: HR training patch `(D, H, W)`, or None for whole volumes (the reference).
        patches_per_volume: patch samples per case per epoch.
        batch_size: training batch size (validation and test use 1 whole volume).
        num_workers: DataLoader workers.
        val_fraction: validation share when the raw folder is flat.
        split_seed: seed of that split.
        augment: random flips of the in-plane axes.
        require_isotropic: reject anisotropic raw volumes.
    """

    def __init__(self, raw_dir: str, cache_dir: str, axis: int = 1, scale: int = 3,
                 patch_size: Sequence[int] | None = None, patches_per_volume: int = 4, batch_size: int = 2,
                 num_workers: int | str = 0, val_fraction: float = 0.2, split_seed: int = 0, augment: bool = False,
                 require_isotropic: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.splits: dict[str, list[str]] = {}
        self.cache: VolumeCache | None = None

    def check_data(self, stage: str | None = None) -> None:
        """Raises `DataError` naming the prepare command when there is neither a raw folder nor a cache."""
        h = self.hparams
        if not Path(h.raw_dir).is_dir() and len(VolumeCache(h.cache_dir)) == 0:
            raise not_prepared(h.cache_dir, f"the cache is empty and the raw folder {h.raw_dir} (data.raw_dir) "
                                            "does not exist", "easysr", RAW_HINT, SOURCE)

    def prepare_data(self) -> None:
        """Writes the cache (once; reused while the raw files and settings are unchanged).

        Without the raw folder the cache written by `prepare` is used as it is.
        """
        h = self.hparams
        self.check_data()
        if Path(h.raw_dir).is_dir():
            build_cache(h.raw_dir, h.cache_dir, h.axis, h.scale, h.val_fraction, h.split_seed,
                        h.require_isotropic)

    def setup(self, stage: str | None = None) -> None:
        """Reads the split of every case; checks that whole-volume training volumes share one shape."""
        h = self.hparams
        self.cache = VolumeCache(h.cache_dir)
        if Path(h.raw_dir).is_dir():
            files = find_volumes(h.raw_dir, h.val_fraction, h.split_seed)
            self.splits = {s: [case_id(p) for p in paths] for s, paths in files.items()}
        else:
            self.check_data(stage)
            self.splits = cached_splits(self.cache, h.axis, h.scale)
        if not self.splits["test"]:
            self.splits["test"] = list(self.splits["validation"])
        missing = [c for ids in self.splits.values() for c in ids if c not in self.cache]
        if missing:
            raise DataError(Path(h.cache_dir), f"cases {missing} are not prepared: run prepare_data first")
        if h.patch_size is None:
            shapes = {c: self.cache.shape(c, "hr") for c in self.splits["training"]}
            if len(set(shapes.values())) > 1 and h.batch_size > 1:
                raise DataError(Path(h.raw_dir), f"whole-volume training with batch_size > 1 needs one shape, "
                                f"got {shapes}; set data.patch_size or batch_size=1")

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        ids = self.splits["training"]
        if h.patch_size is None:
            data: Dataset = SRVolumeDataset(self.cache, ids, h.augment)
        else:
            data = SRPatchDataset(self.cache, ids, h.patch_size, h.scale, h.patches_per_volume, h.augment)
        return DataLoader(data, batch_size=h.batch_size, shuffle=True, drop_last=len(data) > h.batch_size,
                          **loader_options(h.num_workers, self.trainer))

    def _eval_loader(self, split: str) -> DataLoader:
        if not self.splits[split]:
            raise DataError(Path(self.hparams.raw_dir), f"the {split} split is empty")
        data = SRVolumeDataset(self.cache, self.splits[split])
        return DataLoader(data, batch_size=1, shuffle=False, **loader_options(self.hparams.num_workers, self.trainer))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
