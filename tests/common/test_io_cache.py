"""VolumeCache: round trip, memory mapping, index consistency, errors, concurrent use."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import common.io.lock as lock_module
from common.errors import DataError
from common.io.cache import VolumeCache


def _case(seed: int):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(6, 7, 8)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, seed]
    return image, label, affine


def test_round_trip(tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    assert cache.case_ids() == [] and len(cache) == 0
    image, label, affine = _case(0)
    cache.write_case(
        "case_00", {"image": image, "label": label}, affine=affine, meta={"spacing": [0.7, 0.7, 2.5]}
    )
    cache.write_case("case_01", {"image": image[:3]})
    assert cache.case_ids() == ["case_00", "case_01"]
    assert cache.has("case_00") and "case_01" in cache and not cache.has("case_02")
    assert cache.keys("case_00") == ["image", "label"]
    np.testing.assert_array_equal(cache.load("case_00", "image"), image)
    loaded = cache.load("case_00", "label", mmap=False)
    assert loaded.dtype == np.uint8 and not isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, label)
    np.testing.assert_array_equal(cache.affine("case_00"), affine)
    assert cache.affine("case_01") is None
    assert cache.meta("case_00") == {"spacing": [0.7, 0.7, 2.5]}
    assert cache.shape("case_01", "image") == (3, 7, 8)

    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["cases"]["case_00"]["keys"]["image"] == {"shape": [6, 7, 8], "dtype": "<f4"}
    # A second instance (another process, a worker) reads the same index.
    assert VolumeCache(tmp_path / "cache").keys("case_00") == ["image", "label"]


def test_replace_and_update(tmp_path):
    cache = VolumeCache(tmp_path)
    image, label, affine = _case(1)
    cache.write_case("c", {"image": image, "label": label}, affine=affine, meta={"a": 1})
    cache.write_case("c", {"pred": label}, meta={"b": 2}, update=True)
    assert cache.keys("c") == ["image", "label", "pred"]
    assert cache.meta("c") == {"a": 1, "b": 2}
    np.testing.assert_array_equal(cache.affine("c"), affine)
    cache.write_case("c", {"image": image * 2})
    assert cache.keys("c") == ["image"] and cache.affine("c") is None
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["image.npy"]
    np.testing.assert_array_equal(cache.load("c", "image"), image * 2)


def test_mmap_load_is_lazy(tmp_path):
    cache = VolumeCache(tmp_path)
    big = np.arange(64 * 64 * 64, dtype=np.float32).reshape(64, 64, 64)
    cache.write_case("big", {"image": big})
    arr = cache.load("big", "image")
    assert isinstance(arr, np.memmap)
    assert not arr.flags.writeable
    assert arr[10, 20, 30] == big[10, 20, 30]
    # The memmap's buffer is the file mapping, not a copy in memory.
    assert str(arr.filename).endswith("image.npy")


def test_unknown_case_and_key(tmp_path):
    cache = VolumeCache(tmp_path)
    cache.write_case("known", {"image": np.ones((2, 2, 2), np.float32)})
    with pytest.raises(DataError, match="case 'ghost' is not in the cache index"):
        cache.load("ghost", "image")
    with pytest.raises(DataError, match="ghost"):
        cache.affine("ghost")
    with pytest.raises(DataError, match="known: case 'known' has no key 'label'"):
        cache.load("known", "label")


def test_truncated_or_stale_npy(tmp_path):
    cache = VolumeCache(tmp_path)
    image, _, _ = _case(2)
    cache.write_case("t", {"image": image})
    path = tmp_path / "t" / "image.npy"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    for mmap in (True, False):
        with pytest.raises(DataError, match="image.npy: .*truncated"):
            cache.load("t", "image", mmap=mmap)
    np.save(path, image[:, :, :4])  # a complete file with another shape
    with pytest.raises(
        DataError, match=r"image.npy: array is <f4 \[6, 7, 4\] but the index says <f4 \[6, 7, 8\]"
    ):
        cache.load("t", "image")
    path.unlink()
    with pytest.raises(DataError, match="image.npy: file not found"):
        cache.load("t", "image")


def test_corrupt_index(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="index.json: cache index cannot be read"):
        VolumeCache(tmp_path).case_ids()
    (tmp_path / "index.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="index.json: cache index has no 'cases'"):
        VolumeCache(tmp_path).case_ids()


def test_rejects_names_that_escape(tmp_path):
    cache = VolumeCache(tmp_path)
    with pytest.raises(ValueError, match="case id"):
        cache.write_case("../evil", {"image": np.ones(2)})
    with pytest.raises(ValueError, match="key"):
        cache.write_case("ok", {".hidden": np.ones(2)})


def _write_many(root, start):
    cache = VolumeCache(root)
    for i in range(start, start + 8):
        cache.write_case(f"case_{i:02d}", {"image": np.full((2, 2, 2), i, np.int16)}, meta={"i": i})


def test_concurrent_writers_lose_no_case(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(tmp_path, s)) for s in (0, 8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    cache = VolumeCache(tmp_path)
    assert cache.case_ids() == [f"case_{i:02d}" for i in range(16)]
    assert all(cache.meta(c)["i"] == int(cache.load(c, "image")[0, 0, 0]) for c in cache.case_ids())


class _CacheDataset(Dataset):
    def __init__(self, cache):
        self.cache = cache
        self.ids = cache.case_ids()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.cache.load(self.ids[i], "image"))), i


def test_dataloader_workers_read_the_index(tmp_path):
    _write_many(tmp_path, 0)
    cache = VolumeCache(tmp_path)
    loader = DataLoader(_CacheDataset(cache), batch_size=2, num_workers=2, multiprocessing_context="fork")
    values = {}
    for images, idx in loader:
        for image, i in zip(images, idx.tolist(), strict=True):
            values[i] = int(image[0, 0, 0])
    assert values == {i: i for i in range(8)}


def test_a_folder_that_cannot_take_the_index_lock_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(lock_module.os, "open", read_only)
    with pytest.raises(DataError, match=f"{tmp_path / 'cache'}: cannot write in this folder \\(Read-only"):
        VolumeCache(tmp_path / "cache").write_case("c1", {"image": np.zeros((2, 2), np.float32)})


def test_a_file_system_without_locks_still_takes_writes(tmp_path, no_file_locks):
    cache = VolumeCache(tmp_path / "cache")
    cache.write_case("c1", {"image": np.ones((2, 2), np.float32)})
    assert cache.case_ids() == ["c1"] and float(cache.load("c1", "image").sum()) == 4.0
