"""MSD loader, HU offset, paper split, slice dropping, thickness simulation and MSR plane samples."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.errors import DataError
from common.io.cache import VolumeCache
from common.splits import read_split
from projects.saint.data import (
    LAYOUT,
    PAPER_SPLIT,
    PlaneDataset,
    SaintDataModule,
    VolumeDataset,
    collate_planes,
    lr_from_hr,
    offset_intensities,
    read_planes,
    split_cases,
    thickness_step,
)
from projects.saint.model import distance_map
from projects.saint.prepare import list_task_images, prepare


def test_paper_split_lists_the_194_test_cases() -> None:
    test = read_split(PAPER_SPLIT)["test"]
    assert len(test) == len(set(test)) == 194
    assert sum(c.startswith("liver_") for c in test) == 38
    assert sum(c.startswith("colon_") for c in test) == 24
    assert sum(c.startswith("hepaticvessel_") for c in test) == 100
    assert {"liver_0", "colon_015", "hepaticvessel_453", "case_00207"} <= set(test)


def test_task_listing_skips_appledouble_files(msd_root: Path) -> None:
    task = msd_root / "Task03_Liver"
    assert list((task / "imagesTr").glob("._*")), "the fixture should contain AppleDouble junk"
    images = list_task_images(task)
    assert sorted(c for c, _ in images) == sorted(["liver_0", "liver_1", "liver_2", "liver_3", "liver_4",
                                                   "liver_5"])
    assert any(p.parent.name == "imagesTs" for _, p in images)


def test_prepare_offsets_hu_rejects_metal_and_keeps_geometry(msd_root: Path, cache_dir: Path) -> None:
    report = json.loads((cache_dir / "prepare.json").read_text())
    assert report["colon_002"].startswith("metal")
    assert report["colon_001"] == "ok"
    cache = VolumeCache(cache_dir)
    assert "colon_002" not in cache.case_ids() and len(cache) == 7
    img = nib.load(msd_root / "Task03_Liver" / "imagesTr" / "liver_2.nii.gz")
    hu = np.asarray(img.dataobj, dtype=np.float32)
    cached = cache.load("liver_2", "image")
    assert cached.dtype == np.uint16 and cached.shape == hu.shape
    np.testing.assert_array_equal(cached, np.clip(hu + 1024, 0, 4000))
    np.testing.assert_allclose(cache.affine("liver_2"), img.affine)
    np.testing.assert_allclose(cache.meta("liver_2")["spacing"], [0.9, 0.8, 1.25], rtol=1e-5)


def test_offset_is_fixed_not_per_volume_minimum() -> None:
    hu = np.array([-3000.0, -1024.0, -900.5, 0.0, 2976.0, 5000.0])
    np.testing.assert_array_equal(offset_intensities(hu), [0, 0, 124, 1024, 4000, 4000])
    # the same HU maps to the same value whatever the volume's minimum (the reference subtracted the minimum)
    assert offset_intensities(np.array([-1024.0, 40.0]))[1] == offset_intensities(np.array([-2000.0, 40.0]))[1] == 1064


def test_slice_axis_is_moved_last_with_the_affine() -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[0, 0, 0.7, 0], [0, 0.7, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])  # axis 0 is S-I
    moved, new_affine, _ = LAYOUT.to_cache(data, affine)
    assert moved.shape == (5, 6, 4)
    for idx in [(1, 2, 3), (3, 4, 0)]:
        old = (idx[2], idx[0], idx[1])
        assert moved[idx] == data[old]
        np.testing.assert_allclose(new_affine @ [*idx, 1], affine @ [*old, 1])


def test_prepare_names_a_broken_dataset_json(tmp_path: Path) -> None:
    task = tmp_path / "Task03_Liver"
    (task / "imagesTr").mkdir(parents=True)
    (task / "dataset.json").write_text('{"training": [{"image": "./imagesTr/liver_9.nii.gz"}]}')
    with pytest.raises(DataError, match="liver_9"):
        prepare([task], tmp_path / "cache")
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json"):
        prepare([task], tmp_path / "cache")


def test_split_holds_out_the_paper_test_ids(cache_dir: Path) -> None:
    split = split_cases(VolumeCache(cache_dir).case_ids(), PAPER_SPLIT, val_count=1, seed=0)
    assert split.test == ["liver_0", "liver_1"]
    assert len(split.val) == 1 and not set(split.val) & set(split.train)
    assert sorted(split.train + split.val) == ["colon_001", "liver_2", "liver_3", "liver_4", "liver_5"]


def test_slice_dropping_keeps_every_fth_slice_after_dropping_the_remainder() -> None:
    hr = np.arange(14, dtype=np.float32)[None, None]
    trimmed, lr = lr_from_hr(hr, 4)
    np.testing.assert_array_equal(trimmed[0, 0], np.arange(2, 14))
    np.testing.assert_array_equal(lr[0, 0], [2, 6, 10])


def test_thickness_simulation_is_safe_for_short_volumes() -> None:
    rng = np.random.default_rng(0)
    steps = {thickness_step(300, 1.0, rng, 5.0, 60) for _ in range(200)}
    assert steps == {1, 2, 3, 4, 5}
    assert {thickness_step(20, 0.5, rng, 5.0, 60) for _ in range(50)} == {1}
    assert {thickness_step(100, 0.7, rng, 5.0, 40) for _ in range(200)} == {1, 2}


def test_read_planes_zero_pads_beyond_the_border() -> None:
    vol = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    planes = read_planes(vol, 1, 2, slice(1, 5, 2))
    assert planes.shape == (3, 4, 2)
    np.testing.assert_array_equal(planes[0], vol[:, 1, 1:5:2])
    np.testing.assert_array_equal(planes[2], 0)


def test_plane_samples_have_phases_of_the_centre_plane(cache_dir: Path) -> None:
    cache = VolumeCache(cache_dir)
    torch.manual_seed(0)
    ds = PlaneDataset(cache, ["liver_2", "colon_001"], factors=(4, 6), n_phase=6, patch_lr=3)
    assert len(ds) == 2 * (20 + 18)
    seen = set()
    for index in (0, 5, 19, 20, 50, 75):
        item = ds[index]
        f = item["f"]
        seen.add(f)
        lr, target = item["lr"], item["target"]
        assert lr.shape[0] == 3 and target.shape == (6, lr.shape[1], lr.shape[2])
        assert torch.all(target[f:] == 0)
        torch.testing.assert_close(target[0], lr[1])  # phase 0 is the observed centre slice
        assert item["dist"][0, 1, 1] == 0 and torch.all(item["dist"][f:] == 0)
    batch = collate_planes([ds[0], ds[40]])
    assert batch["mask"].shape == batch["target"].shape
    assert torch.equal(batch["mask"][:, :, 0, 0].sum(1), batch["f"].float())


def test_volume_items_pair_hr_with_its_slice_dropped_lr(cache_dir: Path) -> None:
    item = VolumeDataset(VolumeCache(cache_dir), ["liver_0"], [6])[0]
    assert item["hr"].shape == (20, 18, 24) and item["lr"].shape == (20, 18, 4)
    torch.testing.assert_close(item["lr"], item["hr"][:, :, ::6])
    np.testing.assert_allclose(item["spacing"], [0.9, 0.8, 1.25], rtol=1e-5)


def test_datamodule_reports_an_empty_cache(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepare"):
        SaintDataModule(str(tmp_path / "nothing")).setup("fit")


def test_distance_map_of_a_sample_uses_the_plane_axis_spacing(cache_dir: Path) -> None:
    ds = PlaneDataset(VolumeCache(cache_dir), ["liver_2"], factors=(4,), patch_lr=2, max_thickness_mm=1.0)
    x_plane, y_plane = ds[0], ds[25]  # planes of constant x (H = y, 0.8 mm), of constant y (H = x, 0.9 mm)
    torch.testing.assert_close(x_plane["dist"], torch.from_numpy(distance_map(4, 1.25, 0.8, 6)))
    torch.testing.assert_close(y_plane["dist"], torch.from_numpy(distance_map(4, 1.25, 0.9, 6)))


def test_prepare_into_an_unwritable_folder_is_one_line(msd_root, tmp_path, capsys) -> None:
    from projects.saint.prepare import main

    # Tests run as root, which chmod does not stop: a regular file where the folder should be blocks it instead.
    (tmp_path / "taken").write_text("")
    assert main(["--raw", str(msd_root), "--cache", str(tmp_path / "taken" / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'taken' / 'cache'}") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_plane_samples_open_each_volume_once_per_process(cache_dir: Path, monkeypatch) -> None:
    cache = VolumeCache(cache_dir)
    opened: list[str] = []
    load = VolumeCache.load

    def counting_load(self, case_id: str, key: str, mmap: bool = True) -> np.ndarray:
        opened.append(case_id)
        return load(self, case_id, key, mmap)

    monkeypatch.setattr(VolumeCache, "load", counting_load)
    ds = PlaneDataset(cache, ["liver_2", "colon_001"], factors=(4,), n_phase=4, patch_lr=3)
    torch.manual_seed(0)
    first = [ds[i] for i in range(len(ds))]
    assert sorted(opened) == ["colon_001", "liver_2"]
    worker = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker started by spawn receives
    assert worker._volumes == {} and len(pickle.dumps(ds)) < 10_000
    torch.manual_seed(0)
    again = [worker[i] for i in range(len(ds))]
    assert len(opened) == 4
    for a, b in zip(first, again):
        assert a["f"] == b["f"] and all(torch.equal(a[k], b[k]) for k in ("lr", "target", "dist"))
