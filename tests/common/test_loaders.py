"""DataLoader settings from the machine: worker count per training process, pinned memory on a GPU."""

from __future__ import annotations

import pytest

from common import loaders
from common.loaders import loader_options, worker_count


@pytest.mark.parametrize(("cores", "processes", "expected"), [(2, 1, 1), (1, 1, 0), (64, 8, 7), (64, 1, 8), (8, 4, 1)])
def test_auto_workers_share_the_cores_among_training_processes(monkeypatch, cores, processes, expected):
    monkeypatch.setattr(loaders, "available_cores", lambda: cores)
    assert worker_count("auto", processes) == expected
    assert worker_count(None, processes) == expected


def test_explicit_workers_are_kept_and_bad_values_refused():
    assert worker_count(0) == 0 and worker_count("3") == 3
    with pytest.raises(ValueError, match="num_workers"):
        worker_count("many")
    with pytest.raises(ValueError, match="num_workers"):
        worker_count(-1)


class CUDAAccelerator:  # named like Lightning's, which is all `loader_options` looks at
    pass


class _Trainer:
    def __init__(self, accelerator, num_devices: int) -> None:
        self.accelerator, self.num_devices = accelerator, num_devices


def test_pinned_and_persistent_when_a_gpu_trains(monkeypatch):
    monkeypatch.setattr(loaders, "available_cores", lambda: 32)
    gpu = loader_options("auto", _Trainer(CUDAAccelerator(), num_devices=4))
    assert gpu == {"num_workers": 7, "pin_memory": True, "persistent_workers": True}
    cpu = loader_options(0, _Trainer(object(), num_devices=1))
    assert cpu == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_options(2)["pin_memory"] is False  # outside a trainer
