"""SAINT data: case splits, slice-dropping LR synthesis, MSR plane samples, whole-volume evaluation items.

All volumes come from the cache written by `prepare.py`: key `image`, uint16 `[X, Y, Z]` (HU + 1024 in
[0, 4000], z the axial axis), `meta["spacing"]` = (sx, sy, sz) mm. Training reads 3 adjacent planes of constant
x or constant y straight from the memory-mapped array, only over the z range it needs.

LR synthesis is slice dropping: the first `Z mod f` slices are dropped, then every f-th slice is kept, so high-
resolution slice `z * f + k` is phase k of low-resolution slice z.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from common.errors import DataError
from common.io.cache import VolumeCache
from common.io.layout import CacheLayout
from common.loaders import CachedCaseAffines, loader_options
from common.prepare import not_prepared
from common.splits import carve_by_count, load_split
from projects.saint.model import distance_map

IMAGE_KEY = "image"
PAPER_SPLIT = Path(__file__).resolve().parent / "splits" / "paper_test.json"
#: The cache order: the axial (slice) axis last, the in-plane axes in file order.
LAYOUT = CacheLayout(move="axial", position=2)
HU_OFFSET = 1024.0
MAX_INTENSITY = 4000.0
#: The raw data: what `--raw` points at, where it comes from (named when the cache is empty).
RAW_HINT = "<folder of the MSD Task03_Liver, Task10_Colon, Task08_HepaticVessel folders>"
SOURCE = "Medical Segmentation Decathlon, http://medicaldecathlon.com"


class Split(NamedTuple):
    """Case ids of each subset."""

    train: list[str]
    val: list[str]
    test: list[str]


def offset_intensities(hu: np.ndarray) -> np.ndarray:
    """Returns `HU + 1024` rounded and clipped to [0, 4000] as uint16 (the same offset for every volume)."""
    return np.clip(np.rint(np.asarray(hu, dtype=np.float32) + HU_OFFSET), 0, MAX_INTENSITY).astype(np.uint16)


def split_cases(case_ids: Sequence[str], split_file: str | Path, val_count: int = 2, seed: int = 0) -> Split:
    """Returns train / val / test ids of the cached cases: test from the split file, val drawn (seeded) from the rest.

    Ids of the split file that are not in `case_ids` are ignored (e.g. the paper's KiTS cases); a file with a `val`
    list keeps it (`common.splits`).
    """
    sets = load_split(split_file, available=case_ids, carve=carve_by_count(val_count, seed))
    return Split(sets["train"], sets["val"], sets["test"])


def thickness_step(n_slices: int, dz_mm: float, rng: np.random.Generator, max_thickness_mm: float = 5.0,
                   min_slices: int = 60) -> int:
    """Returns a random slice step r (new spacing dz * r) simulating thicker acquisitions.

    r is uniform in 1..upper, upper = floor(max_thickness / dz) lowered until `n_slices // upper >= min_slices`;
    never below 1, so short volumes simply keep their spacing.
    """
    upper = max(1, int(np.floor(max_thickness_mm / dz_mm + 1e-6)))
    while upper > 1 and n_slices // upper < min_slices:
        upper -= 1
    return int(rng.integers(1, upper + 1))


def read_planes(vol: np.ndarray, axis: int, j: int, z_index: slice) -> np.ndarray:
    """Returns float32 `[3, H, nz]`: planes j-1, j, j+1 perpendicular to `axis` (0 or 1), zero beyond the border.

    H is the other in-plane axis; only the z range `z_index` is read from the (memory-mapped) volume.
    """
    n = vol.shape[axis]
    lo, hi = max(j - 1, 0), min(j + 2, n)
    block = vol[lo:hi, :, z_index] if axis == 0 else np.swapaxes(vol[:, lo:hi, z_index], 0, 1)
    out = np.zeros((3, block.shape[1], block.shape[2]), dtype=np.float32)
    out[lo - (j - 1):hi - (j - 1)] = block
    return out


def lr_from_hr(hr: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(hr_trimmed, lr)`: the first `Z mod f` slices dropped, then every f-th slice kept (last axis)."""
    trimmed = hr[..., hr.shape[-1] % f:]
    return trimmed, trimmed[..., ::f]


class PlaneDataset(Dataset):
    """MSR training samples: every plane of constant x and of constant y of every training volume.

    Each item draws a factor f from `factors`, a thickness step r, a z offset, and a crop of `patch_lr` low-
    resolution slices over the full in-plane width.

    Item: `lr` `[3, H, P]`, `target` `[n_phase, H, P]` (phases >= f zero), `dist` `[n_phase, 3, 3]`, `f`.
    """

    def __init__(self, cache: VolumeCache, case_ids: Sequence[str], factors: Sequence[int] = (4, 6),
                 n_phase: int = 6, patch_lr: int = 10, max_thickness_mm: float = 5.0,
                 min_hr_slices: int | None = None) -> None:
        if not case_ids:
            raise DataError(cache.root, "no training cases")
        if max(factors) > n_phase:
            raise ValueError(f"factors {list(factors)} exceed n_phase={n_phase}")
        self.cache, self.case_ids, self.factors = cache, list(case_ids), [int(f) for f in factors]
        self.n_phase, self.patch_lr, self.max_thickness_mm = n_phase, patch_lr, max_thickness_mm
        self.min_hr_slices = min_hr_slices if min_hr_slices is not None else patch_lr * max(self.factors)
        self.spacing = [tuple(cache.meta(c)["spacing"]) for c in self.case_ids]
        self.items = [(ci, axis, j) for ci, c in enumerate(self.case_ids)
                      for axis in (0, 1) for j in range(cache.shape(c, IMAGE_KEY)[axis])]
        self._volumes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers open their own memory maps (a pickled memmap would be a full copy of the volume)
        return {**self.__dict__, "_volumes": {}}

    def _volume(self, ci: int) -> np.ndarray:
        """Returns the memory-mapped image of training case `ci`, opened once per process.

        Opening costs more than reading a crop (header parsing, path checks: 60 % of an item's time).
        """
        volume = self._volumes.get(ci)
        if volume is None:
            volume = self._volumes[ci] = self.cache.load(self.case_ids[ci], IMAGE_KEY)
        return volume

    def _z_window(self, n_slices: int, dz: float, f: int, rng: np.random.Generator) -> tuple[slice, int, float]:
        """Returns the z slice to read (HR slices of the crop), the LR crop length, and the HR spacing (mm)."""
        r = thickness_step(n_slices, dz, rng, self.max_thickness_mm, self.min_hr_slices)
        offset = int(rng.integers(0, r))
        n_kept = len(range(offset, n_slices, r))
        n_lr = n_kept // f
        if n_lr < 1:
            raise DataError(self.cache.root, f"a volume of {n_slices} slices is too short for factor {f}")
        patch = min(self.patch_lr, n_lr)
        start = int(rng.integers(0, n_lr - patch + 1))
        z0 = offset + r * (n_kept % f + start * f)
        return slice(z0, z0 + r * patch * f, r), patch, dz * r

    def __getitem__(self, index: int) -> dict[str, Any]:
        ci, axis, j = self.items[index]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        vol = self._volume(ci)
        sx, sy, sz = self.spacing[ci]
        f = self.factors[int(rng.integers(0, len(self.factors)))]
        z_index, patch, dz_hr = self._z_window(vol.shape[2], sz, f, rng)
        hr = read_planes(vol, axis, j, z_index)  # [3, H, patch * f]
        target = np.zeros((self.n_phase, hr.shape[1], patch), dtype=np.float32)
        target[:f] = np.stack([hr[1, :, k::f] for k in range(f)])
        dxy = sy if axis == 0 else sx
        return {"lr": torch.from_numpy(np.ascontiguousarray(hr[:, :, ::f])), "target": torch.from_numpy(target),
                "dist": torch.from_numpy(distance_map(f, dz_hr, dxy, self.n_phase)), "f": f}


def collate_planes(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks plane samples, zero-padding H and W to the largest; `mask` marks the real phases and pixels.

    Returns:
        `lr` `[B, 3, H, W]`, `target` `[B, n_phase, H, W]`, `dist` `[B, n_phase, 3, 3]`, `f` `[B]` int64,
        `mask` `[B, n_phase, H, W]` float32 (1 where the loss counts).
    """
    h = max(it["lr"].shape[1] for it in items)
    w = max(it["lr"].shape[2] for it in items)
    n_phase = items[0]["target"].shape[0]
    batch = {"lr": torch.zeros(len(items), 3, h, w), "target": torch.zeros(len(items), n_phase, h, w),
             "mask": torch.zeros(len(items), n_phase, h, w)}
    for b, it in enumerate(items):
        _, hi, wi = it["lr"].shape
        batch["lr"][b, :, :hi, :wi] = it["lr"]
        batch["target"][b, :, :hi, :wi] = it["target"]
        batch["mask"][b, :it["f"], :hi, :wi] = 1.0
    batch["dist"] = torch.stack([it["dist"] for it in items])
    batch["f"] = torch.tensor([it["f"] for it in items])
    return batch


class VolumeDataset(Dataset):
    """Whole-volume evaluation items, one per (case, factor): the HR volume and its slice-dropped LR version.

    Item: `case_id`, `f`, `lr` `[X, Y, Z // f]` float32, `hr` `[X, Y, (Z // f) * f]` float32, `spacing`
    `(sx, sy, sz)` mm of the HR grid; with `views_dir`, also `views` `[2, X, Y, Z']` (stage-1 outputs).
    """

    def __init__(self, cache: VolumeCache, case_ids: Sequence[str], factors: Sequence[int] = (4, 6),
                 views_dir: str | Path | None = None) -> None:
        self.cache, self.views_dir = cache, views_dir
        self.items = [(c, int(f)) for c in case_ids for f in factors]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id, f = self.items[index]
        hr, lr = lr_from_hr(np.asarray(self.cache.load(case_id, IMAGE_KEY), dtype=np.float32), f)
        item = {"case_id": case_id, "f": f, "lr": torch.from_numpy(np.ascontiguousarray(lr)),
                "hr": torch.from_numpy(np.ascontiguousarray(hr)),
                "spacing": tuple(float(s) for s in self.cache.meta(case_id)["spacing"])}
        if self.views_dir is not None:
            stack = np.load(fusion_file(self.views_dir, case_id, f), mmap_mode="r")  # [Z', 3, X, Y]
            item["views"] = torch.from_numpy(np.ascontiguousarray(stack[:, :2].transpose(1, 2, 3, 0), np.float32))
        return item


def first_item(items: list[Any]) -> Any:
    """Collate function of batch size 1 that returns the item itself (whole volumes are never stacked)."""
    return items[0]


def fusion_file(folder: str | Path, case_id: str, f: int) -> Path:
    """Returns the path of the stage-1 outputs of one case and factor: uint16 `[Z', 3, X, Y]` (view x, view y, HR)."""
    return Path(folder) / f"{case_id}_x{f}.npy"


class SaintDataModule(CachedCaseAffines, pl.LightningDataModule):
    """Stage-1 data: MSR plane samples for training, whole volumes for validation and test.

    Args:
        cache_dir: the cache written by `prepare.py`.
        split_file: split JSON (default: the paper's test ids); val cases are drawn from the non-test cases.
        factors: training factors, one drawn per sample (paper: 4 and 6).
        n_phase: phases of the network output (the largest factor the head serves at once).
        patch_lr: low-resolution slices per training crop (paper: 10).
        max_thickness_mm: thickness simulation limit (paper: 5 mm).
        min_hr_slices: keep at least this many slices after thickness simulation (default: patch_lr * max f).
        batch_size, num_workers: training loader.
        samples_per_epoch: planes drawn per epoch (default: every plane of every training volume).
        val_count: validation volumes held out of training (when the split file has no `val` list).
        val_factors, test_factors: factors evaluated on whole volumes.
        split_seed: seed of the validation draw.
    """

    def __init__(self, cache_dir: str, split_file: str | None = None, factors: Sequence[int] = (4, 6),
                 n_phase: int = 6, patch_lr: int = 10, max_thickness_mm: float = 5.0,
                 min_hr_slices: int | None = None, batch_size: int = 16, num_workers: int | str = 2,
                 samples_per_epoch: int | None = None, val_count: int = 2, val_factors: Sequence[int] = (4, 6),
                 test_factors: Sequence[int] = (4, 6), split_seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.cache = VolumeCache(cache_dir)
        self.split: Split | None = None

    def _check_cache(self) -> None:
        if len(self.cache) == 0:
            raise not_prepared(self.cache.root, "the cache is empty", "saint", RAW_HINT, SOURCE)

    def check_data(self, stage: str | None = None) -> None:
        """Raises `DataError` naming the prepare command when the cache holds no volume."""
        self._check_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self._check_cache()
        hp = self.hparams
        self.split = split_cases(self.cache.case_ids(), hp.split_file or PAPER_SPLIT, hp.val_count, hp.split_seed)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, **loader_options(self.hparams.num_workers, self.trainer), **kwargs)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = PlaneDataset(self.cache, self.split.train, hp.factors, hp.n_phase, hp.patch_lr,
                               hp.max_thickness_mm, hp.min_hr_slices)
        sampler = RandomSampler(dataset, num_samples=hp.samples_per_epoch) if hp.samples_per_epoch else None
        return self._loader(dataset, batch_size=hp.batch_size, shuffle=sampler is None, sampler=sampler,
                            collate_fn=collate_planes, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(VolumeDataset(self.cache, self.split.val, self.hparams.val_factors),
                            batch_size=1, collate_fn=first_item)

    def test_dataloader(self) -> DataLoader:
        return self._loader(VolumeDataset(self.cache, self.split.test, self.hparams.test_factors),
                            batch_size=1, collate_fn=first_item)
