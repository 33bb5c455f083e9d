"""DataLoader settings that fit the machine a run lands on (`num_workers=auto`, pinned memory on a GPU), and the
case geometry a cached DataModule offers to the TensorBoard panels."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from common.io.cache import VolumeCache

MAX_WORKERS = 8  # past this, workers mostly compete with each other for the disk and the training loop's cores


def available_cores() -> int:
    """Returns the CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_count(requested: int | str | None, processes_per_node: int = 1) -> int:
    """Returns the DataLoader worker count of one training process.

    Args:
        requested: an integer (or its string form) to use as given, or "auto"/None: the cores this node gives
            each training process, less one for the process itself, at most `MAX_WORKERS` (2 cores and 1
            process -> 1 worker; 64 cores and 8 GPU processes -> 7).
        processes_per_node: training processes sharing the node's cores (DDP devices per node).

    Raises:
        ValueError: `requested` is neither "auto" nor a non-negative integer.
    """
    if requested not in (None, "auto"):
        try:
            count = int(requested)  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"num_workers must be a non-negative integer or 'auto', got {requested!r}") from None
        if count < 0:
            raise ValueError(f"num_workers must be a non-negative integer or 'auto', got {count}")
        return count
    per_process = available_cores() // max(1, processes_per_node)
    return max(0, min(MAX_WORKERS, per_process - 1))


def loader_options(num_workers: int | str | None, trainer: Any = None) -> dict[str, Any]:
    """Returns `num_workers`, `pin_memory` and `persistent_workers` for a `DataLoader` of this run.

    Args:
        num_workers: as `worker_count`'s `requested`.
        trainer: the Lightning Trainer the loader feeds (a data module's `self.trainer`), or None outside
            training. Its devices per node share the cores; pinned memory is used when it trains on a GPU.
    """
    processes = int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
    workers = worker_count(num_workers, processes)
    on_gpu = trainer is not None and type(getattr(trainer, "accelerator", None)).__name__ == "CUDAAccelerator"
    return {"num_workers": workers, "pin_memory": on_gpu, "persistent_workers": workers > 0}


class CachedCaseAffines:
    """Mixin of a LightningDataModule whose `hparams.cache_dir` is a `VolumeCache`: its cases' affines.

    `common.callbacks.ImagePanels` reads `case_affine` to show validation slices in radiological orientation.
    """

    def case_affine(self, case_id: str) -> np.ndarray | None:
        """Returns the float64 `[4, 4]` affine of the cached case's arrays, None if the cache holds none."""
        cache = VolumeCache(self.hparams.cache_dir)  # type: ignore[attr-defined]
        return cache.affine(case_id) if case_id in cache else None
