"""ATLAS layout -> cache, integrity errors, slice windows, sampling, the small-lesion rule, the splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.errors import DataError
from common.io.cache import VolumeCache
from common.io.nifti import load_nifti, save_nifti
from projects.spin.data import (
    ATLASDataModule,
    ATLASSliceDataset,
    is_small_lesion_slice,
    normalise,
    ras_volume,
    slice_window,
    small_lesion_slices,
    volume_xyz,
)
from projects.spin.prepare import find_scans, prepare
from projects.spin.splits import carve_validation, load_split, make_folds, resolve_split, subject_of
from projects.spin.synthetic_atlas import SyntheticATLASDataModule
from tests.contract import check_waits_for_the_prepare_lock


def test_prepare_or_combines_masks_and_keeps_geometry(atlas_fixture: dict) -> None:
    cache = VolumeCache(atlas_fixture["cache"])
    assert cache.case_ids() == sorted(atlas_fixture["ids"])
    scans = find_scans(atlas_fixture["raw"])
    combined = 0
    for scan, (t1_path, masks) in scans.items():
        union = np.zeros(load_nifti(t1_path).shape, dtype=bool)
        for m in masks:
            union |= load_nifti(m, allow_constant=True).data > 0
        assert np.array_equal(np.asarray(volume_xyz(cache, scan, "lesion")) > 0, union)
        assert np.allclose(volume_xyz(cache, scan, "t1"), load_nifti(t1_path).data)
        assert np.array_equal(ras_volume(cache, scan, "t1")[1], nib.load(t1_path).affine)
        assert cache.load(scan, "t1").shape == (24, 32, 40)
        assert cache.meta(scan)["lesion_px"] == [int(v) for v in union.sum(axis=(0, 1))]
        combined += len(masks) > 1
    assert combined > 0, "the fixture should contain scans traced in several mask files"


def _copy_scan(raw_scan: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "raw" / raw_scan.parent.name / raw_scan.name
    shutil.copytree(raw_scan, dest)
    return dest


def test_missing_mask_names_the_scan(raw_scan: Path, tmp_path: Path) -> None:
    scan_dir = _copy_scan(raw_scan, tmp_path)
    for mask in scan_dir.glob("*LesionSmooth*"):
        mask.unlink()
    with pytest.raises(DataError, match=f"{raw_scan.name}.*LesionSmooth"):
        prepare(tmp_path / "raw", tmp_path / "cache")


def test_hidden_files_beside_the_masks_are_not_masks(raw_scan: Path, tmp_path: Path) -> None:
    scan_dir = _copy_scan(raw_scan, tmp_path)
    before = find_scans(tmp_path / "raw")[raw_scan.name]
    # another process's temporary file mid-write, and a macOS fork from a copy over a USB disk
    (scan_dir / f".{raw_scan.name}_LesionSmooth_stx.nii.gz.4242-0badf00d.tmp.nii.gz").write_bytes(b"")
    (scan_dir / f"._{raw_scan.name}_LesionSmooth_1_stx.nii.gz").write_bytes(b"\0" * 10)
    assert find_scans(tmp_path / "raw")[raw_scan.name] == before
    prepare(tmp_path / "raw", tmp_path / "cache")
    assert VolumeCache(tmp_path / "cache").case_ids() == [raw_scan.name]


def test_the_synthetic_data_waits_for_another_writer_of_its_folder(tmp_path: Path) -> None:
    """What two nodes on one shared file system (or two jobs of a sweep) do at the start of a run."""
    data = SyntheticATLASDataModule(str(tmp_path / "data"), n_train=3, n_test=1, shape=(24, 28, 16))
    check_waits_for_the_prepare_lock(tmp_path / "data", data.prepare_data, tmp_path / "data" / "split.json")
    split = load_split(tmp_path / "data" / "split.json")
    assert VolumeCache(tmp_path / "data" / "cache").case_ids() == sorted(split["train"] + split["test"])
    assert not list((tmp_path / "data").rglob(".*.tmp*"))  # no temporary file left


def test_mask_shape_mismatch_names_the_scan(raw_scan: Path, tmp_path: Path) -> None:
    scan_dir = _copy_scan(raw_scan, tmp_path)
    mask = next(scan_dir.glob("*LesionSmooth_stx.nii.gz"))
    save_nifti(mask, np.zeros((8, 8, 8), np.uint8), np.eye(4))
    with pytest.raises(DataError, match=f"scan {raw_scan.name}: mask shape"):
        prepare(tmp_path / "raw", tmp_path / "cache")


def test_nan_t1_is_rejected_with_the_file_name(raw_scan: Path, tmp_path: Path) -> None:
    scan_dir = _copy_scan(raw_scan, tmp_path)
    t1_path = scan_dir / f"{raw_scan.name}_t1w_stx.nii.gz"
    vol = load_nifti(t1_path)
    vol.data[3, 3, 3] = np.nan
    save_nifti(t1_path, vol.data, vol.affine)
    with pytest.raises(DataError, match=raw_scan.name):
        prepare(tmp_path / "raw", tmp_path / "cache")


def test_slice_window_pads_with_the_dataset_mean() -> None:
    t1 = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2) + 10
    window = slice_window(t1, 0, 5)
    assert window.shape == (5, 3, 2)
    assert np.all(window[:2] == 0)
    assert np.allclose(window[2:], normalise(t1[:3]))
    assert np.allclose(slice_window(t1, 3, 5)[3:], 0)


def test_sampler_draws_lesion_slices_at_the_set_rate(atlas_fixture: dict) -> None:
    ids = atlas_fixture["ids"][:3]
    torch.manual_seed(0)
    positive = ATLASSliceDataset(atlas_fixture["cache"], ids, pos_rate=1.0, samples_per_scan=10)
    negative = ATLASSliceDataset(atlas_fixture["cache"], ids, pos_rate=0.0, samples_per_scan=10)
    assert len(positive) == 30
    assert all(int(s.label.sum()) > 0 for s in positive)
    assert all(int(s.label.sum()) == 0 for s in negative)
    sample = positive[0]
    assert sample.image.shape == (5, 32, 40) and sample.image.dtype == torch.float32
    assert sample.label.shape == (1, 32, 40) and sample.label.dtype == torch.int64


def _square(mask: np.ndarray, top: int, left: int, side: int) -> None:
    mask[top:top + side, left:left + side] = 1


def test_small_lesion_rule_on_hand_made_masks() -> None:
    empty = np.zeros((40, 40), np.uint8)
    assert not is_small_lesion_slice(empty)
    exactly_100 = empty.copy()
    _square(exactly_100, 2, 2, 10)
    assert is_small_lesion_slice(exactly_100)
    two_small = exactly_100.copy()
    _square(two_small, 20, 20, 9)
    assert is_small_lesion_slice(two_small)
    # Touching diagonally: one 8-connected component of 200 pixels.
    diagonal = exactly_100.copy()
    _square(diagonal, 12, 12, 10)
    assert not is_small_lesion_slice(diagonal)
    one_large = empty.copy()
    _square(one_large, 5, 5, 11)
    assert not is_small_lesion_slice(one_large)
    with_large = two_small.copy()
    _square(with_large, 28, 2, 11)
    assert not is_small_lesion_slice(with_large)
    volume = np.stack([empty, exactly_100, diagonal, two_small], axis=2)
    assert small_lesion_slices(volume) == [1, 3]


def test_paper_split_is_subject_disjoint() -> None:
    split = load_split("atlas_traintest")
    assert len(split["train"]) == 212 and len(split["test"]) == 27
    train_subjects = {subject_of(s) for s in split["train"]}
    assert len(train_subjects) == 203
    assert not train_subjects & {subject_of(s) for s in split["test"]}
    assert sum(s.endswith("t02") for s in split["train"]) == 11
    sets = resolve_split("atlas_traintest", val_fraction=0.1, val_seed=0)
    assert sorted(sets["train"] + sets["val"]) == sorted(split["train"])
    assert not {subject_of(s) for s in sets["train"]} & {subject_of(s) for s in sets["val"]}
    assert resolve_split("atlas_traintest", val_seed=0)["val"] == sets["val"]
    assert resolve_split("atlas_traintest", val_seed=1)["val"] != sets["val"]


def test_follow_up_scans_stay_with_their_subject() -> None:
    ids = ["c0010s0005t01", "c0010s0005t02", "c0010s0006t01", "c0003s0001t01", "c0003s0002t01"]
    for seed in range(5):
        train, val = carve_validation(ids, 0.4, seed)
        assert ("c0010s0005t01" in val) == ("c0010s0005t02" in val)
    folds = make_folds(ids, k=2, seed=0)
    assert sorted(sum(folds, [])) == sorted(ids)
    assert any({"c0010s0005t01", "c0010s0005t02"} <= set(f) for f in folds)


def test_six_folds_are_the_reference_lists() -> None:
    folds = load_split("atlas_6fold")["folds"]
    paper = load_split("atlas_traintest")
    assert [len(f) for f in folds] == [39, 40, 40, 40, 40, 40]
    assert sorted(sum(folds, [])) == sorted(paper["train"] + paper["test"])  # disjoint, and cover the 239 scans
    # ids as the reference's data_split/atlas/6fold/validation/scans/val_scans-{1..6}.txt place them
    placed = {"c0011s0007t01": 0, "c0005s0031t01": 0, "c0003s0008t01": 1, "c0010s0005t02": 1,
              "c0010s0005t01": 2, "c0005s0048t01": 2, "c0010s0043t01": 3, "c0004s0031t01": 4, "c0003s0030t01": 5}
    assert {scan: next(i for i, f in enumerate(folds) if scan in f) for scan in placed} == placed
    # the reference separates 9 follow-ups from their baseline scan; the split keeps them as published
    subjects = [{subject_of(s) for s in f} for f in folds]
    assert len({s for i in range(6) for j in range(i + 1, 6) for s in subjects[i] & subjects[j]}) == 9
    sets = resolve_split("atlas_6fold", fold=2)
    assert sets["test"] == sorted(folds[2])
    assert sorted(sets["train"] + sets["val"]) == sorted(s for i, f in enumerate(folds) if i != 2 for s in f)
    with pytest.raises(DataError, match="data.fold"):
        resolve_split("atlas_6fold", fold=None)


def test_a_subject_disjoint_split_still_refuses_shared_subjects(tmp_path) -> None:
    (tmp_path / "s.json").write_text('{"folds": [["c0010s0005t01"], ["c0010s0005t02", "c0003s0001t01"]]}')
    with pytest.raises(DataError, match=r"subjects in both train and test: \['c0010s0005'\]"):
        resolve_split(tmp_path / "s.json", fold=0, val_fraction=0.0)
    (tmp_path / "s.json").write_text('{"subject_disjoint": false, "folds": [["c0010s0005t01"], '
                                     '["c0010s0005t02", "c0003s0001t01"]]}')
    assert resolve_split(tmp_path / "s.json", fold=0, val_fraction=0.0)["test"] == ["c0010s0005t01"]


def test_datamodule_loaders_on_the_fixture(atlas_fixture: dict) -> None:
    dm = ATLASDataModule(str(atlas_fixture["cache"]), str(atlas_fixture["split"]), val_fraction=0.2,
                         batch_size=3, eval_batch_size=24)
    assert len(dm.sets["val"]) == 1 and len(dm.sets["test"]) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (3, 5, 32, 40)
    test = next(iter(dm.test_dataloader()))
    assert test.image.shape == (24, 5, 32, 40) and list(test.slice_index) == list(range(24))
    masks = np.asarray(volume_xyz(VolumeCache(atlas_fixture["cache"]), dm.sets["test"][0], "lesion"))
    assert [bool(v) for v in test.small] == [z in small_lesion_slices(masks) for z in range(24)]


def test_split_scans_missing_from_the_cache_are_reported(atlas_fixture: dict, tmp_path: Path) -> None:
    from common.io.atomic import save_json

    split = tmp_path / "split.json"
    save_json(split, {"train": atlas_fixture["ids"][:3] + ["c0009s0099t01"], "test": atlas_fixture["ids"][5:]})
    dm = ATLASDataModule(str(atlas_fixture["cache"]), str(split), val_fraction=0.0)
    with pytest.raises(DataError, match="not in the cache"):
        dm.train_dataloader()


def test_validation_puts_lesion_slices_first_without_changing_the_set(atlas_fixture: dict) -> None:
    from projects.spin.data import ATLASScanSlices

    ids = atlas_fixture["ids"][:3]
    plain = ATLASScanSlices(atlas_fixture["cache"], ids)
    front = ATLASScanSlices(atlas_fixture["cache"], ids, lesion_first=2)
    assert sorted(plain.items) == sorted(front.items) and len(set(front.items)) == len(front.items)
    assert all(int(front[i].label.sum()) > 0 for i in range(2))
    assert [front.items[i][0] for i in range(2)] == ids[:2]


def test_prepare_into_an_unwritable_folder_is_one_line(atlas_fixture, tmp_path, capsys) -> None:
    from projects.spin.prepare import main

    # Tests run as root, which chmod does not stop: a regular file where the folder should be blocks it instead.
    (tmp_path / "taken").write_text("")
    assert main(["--raw", str(atlas_fixture["raw"]), "--cache", str(tmp_path / "taken" / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'taken' / 'cache'}") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
