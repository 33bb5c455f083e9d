"""Stage-2 data: the frozen MSR's two views of every training volume, served as axial slices to the RFN.

`FusionDataModule.prepare_data` runs the MSR (weights from a stage-1 checkpoint) over the training and
validation volumes once per factor and stores, per case and factor, uint16 `[Z', 3, X, Y]` (view from planes of
constant x, view from planes of constant y, HR reference): axial-slice-major, so one training sample is one
contiguous read. The MSR runs in the trainer's precision (bf16 autocast under `trainer.precision=bf16-mixed`, so
that the RFN trains on views like those it fuses at evaluation). The files are rebuilt when the stage-1 checkpoint
or that precision changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, RandomSampler

from common.errors import DataError
from common.io.atomic import save_json, save_npy
from common.io.cache import VolumeCache
from common.io.lock import prepare_lock
from common.runtime import autocast
from projects.saint.checkpoint import load_weights
from projects.saint.data import IMAGE_KEY, SaintDataModule, VolumeDataset, first_item, fusion_file, lr_from_hr
from projects.saint.model import MAX_INTENSITY, SAINT

log = logging.getLogger(__name__)
SOURCE_FILE = "source.json"


def _source(msr_ckpt: str | Path) -> dict[str, Any]:
    path = Path(msr_ckpt).resolve()
    if not path.is_file():
        raise DataError(path, "stage-1 (MSR) checkpoint not found: set model.msr_ckpt")
    stat = path.stat()
    return {"msr_ckpt": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def build_fusion_inputs(net: SAINT, cache: VolumeCache, case_ids: Sequence[str], factors: Sequence[int],
                        out_dir: str | Path, source: dict[str, Any], plane_batch: int | None = None,
                        precision: str = "32") -> list[Path]:
    """Writes the stage-1 outputs of every (case, factor) not yet built from `source`; returns all the files.

    Args:
        net: the network with the stage-1 MSR weights.
        cache: the volume cache.
        case_ids: cases to run.
        factors: factors to run (the RFN serves every factor).
        out_dir: folder of the `<case>_x<f>.npy` files.
        source: identity of the MSR weights; files built from other weights are rebuilt.
        plane_batch: planes per MSR pass (None: by pixel budget).
        precision: "32" or "bf16" (autocast; recorded with `source`, so a change rebuilds the files).
    """
    out_dir = Path(out_dir)
    source = {**source, "precision": precision}
    record = out_dir / SOURCE_FILE
    files = []
    net.eval()
    with prepare_lock(out_dir):  # another node or sweep job may be writing this folder
        fresh = record.exists() and _read_json(record) == source
        for case_id in case_ids:
            spacing = cache.meta(case_id)["spacing"]
            for f in factors:
                path = fusion_file(out_dir, case_id, f)
                files.append(path)
                if fresh and path.exists():
                    continue
                hr, lr = lr_from_hr(np.asarray(cache.load(case_id, IMAGE_KEY), dtype=np.float32), f)
                with autocast(precision):
                    view_x, view_y = net.infer_views(torch.from_numpy(np.ascontiguousarray(lr)), spacing, f,
                                                     plane_batch)
                stack = torch.stack([view_x.float(), view_y.float(), torch.from_numpy(hr)])
                stack = stack.round_().clamp_(0, MAX_INTENSITY)
                save_npy(path, stack.permute(3, 0, 1, 2).numpy().astype(np.uint16))
                log.info("stage-1 views of %s at x%d written to %s", case_id, f, path)
        save_json(record, source)
    return files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class FusionSliceDataset(Dataset):
    """RFN training samples: axial slices of the stage-1 outputs.

    Item: `views` `[2, h, w]` float32 (the two MSR views), `target` `[1, h, w]` float32 (HR), where (h, w) is a
    random `patch` crop of (X, Y) or the whole slice.
    """

    def __init__(self, files: Sequence[Path], patch: int | None = None) -> None:
        self.files, self.patch = list(files), patch
        self.items = [(fi, z) for fi, path in enumerate(self.files)
                      for z in range(np.load(path, mmap_mode="r").shape[0])]
        if not self.items:
            raise DataError(Path(files[0]).parent if files else None, "no stage-1 slices to train the RFN on")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        fi, z = self.items[index]
        stack = np.load(self.files[fi], mmap_mode="r")[z]  # [3, X, Y]
        x, y = stack.shape[1:]
        if self.patch is not None and (x > self.patch or y > self.patch):
            px, py = min(self.patch, x), min(self.patch, y)
            x0, y0 = (int(torch.randint(0, s - p + 1, ()).item()) for s, p in ((x, px), (y, py)))
            stack = stack[:, x0:x0 + px, y0:y0 + py]
        sample = torch.from_numpy(np.asarray(stack, dtype=np.float32))
        return {"views": sample[:2], "target": sample[2:]}


def collate_slices(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stacks slice samples, zero-padding to the largest; `mask` `[B, 1, h, w]` marks the real pixels."""
    h = max(it["views"].shape[1] for it in items)
    w = max(it["views"].shape[2] for it in items)
    batch = {"views": torch.zeros(len(items), 2, h, w), "target": torch.zeros(len(items), 1, h, w),
             "mask": torch.zeros(len(items), 1, h, w)}
    for b, it in enumerate(items):
        hi, wi = it["views"].shape[1:]
        batch["views"][b, :, :hi, :wi] = it["views"]
        batch["target"][b, :, :hi, :wi] = it["target"]
        batch["mask"][b, :, :hi, :wi] = 1.0
    return batch


class FusionDataModule(SaintDataModule):
    """Stage-2 data: RFN slices from the frozen MSR's outputs (training), whole volumes (validation, test).

    Args:
        net: config of the `SAINT` network (the same as the model's).
        msr_ckpt: stage-1 checkpoint whose MSR produces the views.
        stage1_dir: folder of the stage-1 outputs.
        patch: in-plane crop of the RFN slices (None: whole slices).
        plane_batch: planes per MSR pass while building.
        **kwargs: `SaintDataModule` arguments (`factors` = the factors the RFN is trained on).
    """

    def __init__(self, net: DictConfig | dict, msr_ckpt: str, stage1_dir: str, patch: int | None = None,
                 plane_batch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    def _build(self) -> list[Path]:
        self.setup()
        hp = self.hparams
        net = load_weights(instantiate(hp.net), hp.msr_ckpt, parts="msr")
        factors = sorted(set(hp.factors) | set(hp.val_factors))
        with torch.inference_mode():
            return build_fusion_inputs(net, self.cache, self.split.train + self.split.val, factors, hp.stage1_dir,
                                       _source(hp.msr_ckpt), hp.plane_batch, self._view_precision())

    def _view_precision(self) -> str:
        """Returns "bf16" when the trainer trains in bf16 (`bf16-mixed`, `bf16-true`), else "32"."""
        return "bf16" if "bf16" in str(getattr(self.trainer, "precision", "32")) else "32"

    def check_data(self, stage: str | None = None) -> None:
        """Raises `DataError` when the cache is empty or, to train, the stage-1 checkpoint is missing."""
        super().check_data(stage)
        if stage in (None, "fit") and not Path(self.hparams.msr_ckpt).is_file():
            raise DataError(self.hparams.msr_ckpt, "stage-1 (MSR) checkpoint not found (model.msr_ckpt); train "
                            "stage 1 first (python -m projects.saint.train experiment=msd_msr, or experiment=demo "
                            "before demo_rfn) or set model.msr_ckpt=PATH")

    def prepare_data(self) -> None:
        self._build()

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        files = [fusion_file(hp.stage1_dir, c, f) for c in self.split.train for f in hp.factors]
        dataset = FusionSliceDataset(files, hp.patch)
        sampler = RandomSampler(dataset, num_samples=hp.samples_per_epoch) if hp.samples_per_epoch else None
        return self._loader(dataset, batch_size=hp.batch_size, shuffle=sampler is None, sampler=sampler,
                            collate_fn=collate_slices)

    def val_dataloader(self) -> DataLoader:
        dataset = VolumeDataset(self.cache, self.split.val, self.hparams.val_factors, self.hparams.stage1_dir)
        return self._loader(dataset, batch_size=1, collate_fn=first_item)
