"""fastMRI single-coil slices: the per-slice transform, the dataset, a volume-level sampler, the DataModule.

Folder layout read (the public one): `<data_dir>/singlecoil_{train,val,test}/fileNNNNNNN.h5`, each with
`kspace` complex64 `[S, 640, W]`, `reconstruction_esc` float32 `[S, 320, 320]` (not in test),
`ismrmrd_header` and the attributes `max`, `norm`, `acquisition`, `patient_id`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from torch.utils.data._utils.collate import default_collate

from common.io import FastMRIFile, prepare_lock
from common.loaders import loader_options
from common.prepare import cache_root, not_prepared
from projects.fastmri_gen.prepare import SOURCE, load_or_build_index, write_synthetic_tree
from projects.fastmri_gen.transforms import (
    ColumnMask,
    MaskFunc,
    apply_column_mask,
    center_crop,
    crop_readout,
    fft2c,
    ifft2c,
    make_mask_func,
    seed_from_name,
    to_real_view,
)

EPS = 1e-11


@dataclass(frozen=True)
class DataFidelity:
    """Data-side switches of the reference behaviour (True = as the reference code does it).

    Attributes:
        mask_transposed: defect 1, the mask image varies along rows instead of the sampled columns.
        known_freq_magnitude: defect 2, `known_freq` = magnitude of a crop of the k-space grid
            (False: magnitude of the k-space of the cropped zero-filled image).
        zero_one_norm: defect 8, zero-one scaling by the input's range with the target clipped to
            [0, 1] (False: instance normalisation, mean/std of the zero-filled image, clamp +-6).
        train_masks_by_filename: defect 6, training masks seeded by file name (False: fresh masks).
    """

    mask_transposed: bool = False
    known_freq_magnitude: bool = False
    zero_one_norm: bool = False
    train_masks_by_filename: bool = False


class Sample(NamedTuple):
    """One slice. `h, w` = recon size (320, 320), `W` = k-space columns (variable; padded in batches).

    Fields: `image` [1, h, w] normalised zero-filled magnitude; `zero_filled` [1, h, w] raw magnitude;
    `target` [h, w] raw `reconstruction_esc` (zeros in the test split); `target_norm` [1, h, w];
    `image_complex` [2, h, W] normalised complex zero-filled image on the readout-cropped grid;
    `kspace` [h, W, 2] normalised masked k-space of that grid; `mask` [W] float 0/1; `known_freq` and
    `mask_image` [1, h, w] (reference data-consistency inputs); `offset`, `scale`, `max_value` float32
    scalars (normalised = (raw - offset) / scale); `width`, `acceleration`, `num_low_frequencies`,
    `slice_num` ints; `fname` str.
    """

    image: torch.Tensor
    zero_filled: torch.Tensor
    target: torch.Tensor
    target_norm: torch.Tensor
    image_complex: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    known_freq: torch.Tensor
    mask_image: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor
    max_value: torch.Tensor
    width: int
    acceleration: int
    num_low_frequencies: int
    slice_num: int
    fname: str


class SliceTransform:
    """Undersample one k-space slice and build every network input (see `Sample`).

    Args:
        mask_func: the column mask sampler.
        training: fresh masks per sample (unless `fidelity.train_masks_by_filename`); otherwise one
            mask per file, seeded by the file name.
        fidelity: the data-side reference switches.
    """

    def __init__(self, mask_func: MaskFunc, training: bool, fidelity: DataFidelity = DataFidelity()) -> None:
        self.mask_func, self.training, self.fidelity = mask_func, training, fidelity
        self._rng: np.random.RandomState | None = None
        self._rng_owner: tuple[int, int | None] | None = None

    def _fresh_rng(self) -> np.random.RandomState:
        """A generator private to this process, rank and worker (seeded from torch's seed)."""
        worker = get_worker_info()
        owner = (os.getpid(), worker.id if worker else None)
        if self._rng is None or self._rng_owner != owner:
            entropy = [torch.initial_seed() % 2**63, int(rank_zero_only.rank or 0), (worker.id + 1) if worker else 0]
            self._rng = np.random.RandomState(np.random.SeedSequence(entropy).generate_state(4))
            self._rng_owner = owner
        return self._rng

    def column_mask(self, fname: str, width: int, stored: tuple[np.ndarray, int, int] | None = None) -> ColumnMask:
        """Return the mask of a slice: the file's own (test split), per-file seeded, or fresh."""
        if stored is not None:
            mask, num_low, acceleration = stored
            return ColumnMask(np.asarray(mask, dtype=np.float32), num_low, acceleration)
        if self.training and not self.fidelity.train_masks_by_filename:
            return self.mask_func(width, self._fresh_rng())
        return self.mask_func(width, np.random.RandomState(seed_from_name(fname)))

    def _normalisation(self, zero_filled: torch.Tensor) -> tuple[float, float]:
        if self.fidelity.zero_one_norm:
            low = float(zero_filled.min())
            return low, float(zero_filled.max()) - low + EPS
        return float(zero_filled.mean()), float(zero_filled.std()) + EPS

    def __call__(self, kspace: np.ndarray, target: np.ndarray | None, recon_size: tuple[int, int],
                 fname: str, slice_num: int, max_value: float, stored_mask: Any = None) -> Sample:
        """Return the `Sample` of one slice.

        Args:
            kspace: complex `[H, W]` fully sampled (or, in the test split, already masked) k-space.
            target: float `[h, w]` or None; its shape is the crop size when given.
            recon_size: `(h, w)` of the header, used when there is no target.
            fname / slice_num: identity of the slice (the mask seed uses `fname`).
            max_value: the volume maximum (attrs `max`), or 0 when unknown.
            stored_mask: `(mask [W], num_low_frequencies, acceleration)` of a test-split file.
        """
        crop = tuple(target.shape[-2:]) if target is not None else tuple(recon_size)
        full = torch.from_numpy(np.asarray(kspace, dtype=np.complex64))
        mask = self.column_mask(fname, full.shape[-1], stored_mask)
        mask_t = torch.from_numpy(mask.mask)
        masked = apply_column_mask(full, mask_t)
        readout = apply_column_mask(crop_readout(masked, crop[0]), mask_t)
        complex_image = ifft2c(readout)
        zero_filled = center_crop(complex_image, crop).abs().float()
        offset, scale = self._normalisation(zero_filled)
        clamp = (0.0, 1.0) if self.fidelity.zero_one_norm else (-6.0, 6.0)
        target_t = torch.from_numpy(np.asarray(target, np.float32)) if target is not None else torch.zeros(crop)
        image = (zero_filled - offset) / scale
        return Sample(
            image=(image if self.fidelity.zero_one_norm else image.clamp(-6, 6))[None],
            zero_filled=zero_filled[None],
            target=target_t,
            target_norm=((target_t - offset) / scale).clamp(*clamp)[None],
            image_complex=torch.stack([complex_image.real, complex_image.imag]) / scale,
            kspace=to_real_view(readout) / scale,
            mask=mask_t,
            known_freq=self._known_freq(masked, complex_image, crop)[None],
            mask_image=self._mask_image(mask_t, crop)[None],
            offset=torch.tensor(offset, dtype=torch.float32),
            scale=torch.tensor(scale, dtype=torch.float32),
            max_value=torch.tensor(float(max_value), dtype=torch.float32),
            width=int(full.shape[-1]),
            acceleration=int(mask.acceleration),
            num_low_frequencies=int(mask.num_low_frequencies),
            slice_num=int(slice_num),
            fname=fname,
        )

    def _known_freq(self, masked: torch.Tensor, complex_image: torch.Tensor, crop: tuple) -> torch.Tensor:
        if self.fidelity.known_freq_magnitude:
            return center_crop(masked, crop).abs().float()
        return fft2c(center_crop(complex_image, crop)).abs().float()

    def _mask_image(self, mask: torch.Tensor, crop: tuple) -> torch.Tensor:
        width = mask.shape[0]
        if self.fidelity.mask_transposed:
            return center_crop(mask[:, None].expand(width, width), crop).float()
        return center_crop(mask[None, :].expand(crop[0], width), crop).float()


class FastMRISliceDataset(Dataset):
    """All slices of one split folder.

    Args:
        folder: e.g. `<data_dir>/singlecoil_val`.
        transform: the `SliceTransform`.
        cache_dir: where the validated index is cached (None: rebuilt each time).
        sample_rate: fraction of slices kept (seeded by `seed`; 1.0 keeps all).
        target_key: target dataset name.
    """

    def __init__(self, folder: str | os.PathLike, transform: SliceTransform, cache_dir: str | None = None,
                 sample_rate: float = 1.0, seed: int = 0, target_key: str = "reconstruction_esc") -> None:
        self.folder, self.transform, self.target_key = Path(folder), transform, target_key
        self.is_test = self.folder.name.endswith("_test")
        self.volumes = load_or_build_index(self.folder, cache_dir, require_target=not self.is_test)
        self.files = {v["file"]: FastMRIFile(self.folder / v["file"]) for v in self.volumes}
        slices = [(i, s) for i, v in enumerate(self.volumes) for s in range(v["slices"])]
        if sample_rate < 1.0:
            keep = sorted(random.Random(seed).sample(range(len(slices)), max(1, round(len(slices) * sample_rate))))
            slices = [slices[k] for k in keep]
        self.slices = slices

    def __len__(self) -> int:
        return len(self.slices)

    def volume_of(self, index: int) -> int:
        """Return the volume number of dataset item `index`."""
        return self.slices[index][0]

    def __getitem__(self, index: int) -> Sample:
        volume, slice_num = self.slices[index]
        record = self.volumes[volume]
        handle = self.files[record["file"]]
        has_target = handle.has(self.target_key)
        target = handle.target(slice_num, self.target_key) if has_target else None
        stored = None
        if self.is_test and handle.has("mask"):
            attrs = record["attrs"]
            stored = (handle.mask(), int(attrs.get("num_low_frequency", 0)), int(attrs.get("acceleration", 0)))
        return self.transform(handle.kspace(slice_num), target, tuple(record["recon_size"][:2]), record["file"],
                              slice_num, float(record["attrs"].get("max", 0.0)), stored)


class VolumeSampler(DistributedSampler):
    """Deals whole volumes to ranks (volume v goes to rank v mod R), slices in order, no padding.

    Volume-level metrics need every slice of a volume on one rank; a plain `DistributedSampler`
    would split volumes and pad with duplicates.
    """

    def __init__(self, dataset: FastMRISliceDataset, num_replicas: int | None = None, rank: int | None = None):
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.dataset = dataset
        self.num_replicas = num_replicas or (dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.epoch = 0
        self.shuffle = False
        self.indices = [i for i in range(len(dataset)) if dataset.volume_of(i) % self.num_replicas == self.rank]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def pad_columns(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Return `x` zero-padded symmetrically along `dim` to `width` (left = (width - W) // 2)."""
    extra = width - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - dim % x.dim() - 1) + [extra // 2, extra - extra // 2]
    return F.pad(x, pad)


def collate(samples: list[Sample]) -> Sample:
    """Batch samples whose k-space widths differ by symmetric zero-padding of the column axis."""
    width = max(s.width for s in samples)
    padded = [s._replace(image_complex=pad_columns(s.image_complex, width, -1),
                         kspace=pad_columns(s.kspace, width, -2), mask=pad_columns(s.mask, width, -1))
              for s in samples]
    return default_collate(padded)


class FastMRIDataModule(pl.LightningDataModule):
    """Train / val / test loaders over the fastMRI single-coil folders.

    Args:
        data_dir: folder holding `singlecoil_train/`, `singlecoil_val/`, `singlecoil_test/`.
        cache_dir: where the validated indices are cached.
        train_split / val_split / test_split: folder names (the test split defaults to the validation
            data, whose targets are public).
        accelerations: training accelerations (one is drawn per mask); `center_fractions` default to
            0.08 / 0.04 / 0.02 / 0.01 for 4 / 8 / 16 / 32.
        val_accelerations: validation/test accelerations (default: `accelerations`).
        mask_type: "random" or "equispaced".
        batch_size / val_batch_size / num_workers: loader settings.
        sample_rate / val_sample_rate: fraction of slices used (the reference: 0.2 for both).
        fidelity: `DataFidelity` fields (reference switches).
        seed: seed of the slice subsets.
        synthetic: keyword arguments of `prepare.write_synthetic_tree`; when given and `data_dir` has no
            validation split yet, the synthetic tree is written there first (the demo).
    """

    def __init__(self, data_dir: str, cache_dir: str | None = None, train_split: str = "singlecoil_train",
                 val_split: str = "singlecoil_val", test_split: str = "singlecoil_val",
                 accelerations: list[int] | tuple[int, ...] = (4,), center_fractions: list[float] | None = None,
                 val_accelerations: list[int] | None = None, mask_type: str = "random", batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int | str = 2, sample_rate: float = 1.0,
                 val_sample_rate: float = 1.0, fidelity: dict | None = None, seed: int = 0,
                 synthetic: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.fidelity = DataFidelity(**{k: v for k, v in (fidelity or {}).items()
                                        if k in DataFidelity.__dataclass_fields__})
        self.train_masks = make_mask_func(mask_type, accelerations, center_fractions)
        val = list(val_accelerations or accelerations)
        self.val_masks = make_mask_func(mask_type, val, None if val_accelerations else center_fractions)
        self.datasets: dict[str, FastMRISliceDataset] = {}

    def check_data(self, stage: str | None = None) -> None:
        """Raises `DataError` naming the prepare command when a split folder `stage` reads is missing.

        "fit" reads the training and validation splits, "test" the test split; the synthetic demo data is
        written by `prepare_data` and not checked.
        """
        hp = self.hparams
        if hp.synthetic:
            return
        splits = {"fit": (hp.train_split, hp.val_split), "validate": (hp.val_split,), "test": (hp.test_split,)}
        for split in splits.get(stage or "fit", (hp.train_split, hp.val_split, hp.test_split)):
            folder = Path(hp.data_dir) / split
            if not folder.is_dir():
                raise not_prepared(folder, "fastMRI split folder not found (data.data_dir)", "fastmri_gen",
                                   str(hp.data_dir), SOURCE, cache=hp.cache_dir or cache_root("fastmri_gen"))

    def prepare_data(self) -> None:
        synthetic = self.hparams.synthetic
        done = Path(self.hparams.data_dir) / self.hparams.val_split
        if synthetic and not done.is_dir():
            with prepare_lock(self.hparams.data_dir):  # another node or sweep job may be writing this folder
                if not done.is_dir():
                    write_synthetic_tree(self.hparams.data_dir, **dict(synthetic))

    def dataset(self, stage: str) -> FastMRISliceDataset:
        """Return (building once) the dataset of "train", "val" or "test"."""
        if stage not in self.datasets:
            hp = self.hparams
            split = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[stage]
            training = stage == "train"
            transform = SliceTransform(self.train_masks if training else self.val_masks, training, self.fidelity)
            rate = hp.sample_rate if training else hp.val_sample_rate
            self.datasets[stage] = FastMRISliceDataset(Path(hp.data_dir) / split, transform, hp.cache_dir,
                                                       sample_rate=rate, seed=hp.seed)
        return self.datasets[stage]

    def _loader(self, stage: str) -> DataLoader:
        dataset = self.dataset(stage)
        training = stage == "train"
        batch = self.hparams.batch_size if training else (self.hparams.val_batch_size or self.hparams.batch_size)
        sampler = None if training else VolumeSampler(dataset)
        return DataLoader(dataset, batch_size=batch, shuffle=training, sampler=sampler, collate_fn=collate,
                          drop_last=training and len(dataset) > batch,
                          **loader_options(self.hparams.num_workers, self.trainer))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
