"""EasySR preparation and data: layouts, splits, normalisation, LR/HR alignment of patches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import DataError
from common.io import save_nifti
from common.io.cache import VolumeCache
from common.synthetic import isotropic_volume
from projects.easysr.data import EasySRDataModule, SRPatchDataset
from projects.easysr.ops import Normaliser, make_lr, normalise, spline_upsample
from projects.easysr.prepare import build_cache, find_volumes
from tests.contract import check_waits_for_the_prepare_lock


def test_flat_folder_split_is_seeded_and_disjoint(flat_raw):
    first = find_volumes(flat_raw, 0.2, seed=3)
    again = find_volumes(flat_raw, 0.2, seed=3)
    assert first == again
    assert len(first["validation"]) == 1 and len(first["training"]) == 4
    assert not set(first["training"]) & set(first["validation"])


def test_reference_split_layout_is_read(split_raw):
    splits = find_volumes(split_raw)
    assert [p.name for p in splits["validation"]] == ["val00.nii.gz"]
    assert len(splits["training"]) == 3


def test_cache_pairs_are_normalised_and_aligned(split_raw, tmp_path):
    cache = build_cache(split_raw, tmp_path / "cache", axis=1, scale=3)
    lr, hr = cache.load("rat01", "lr"), cache.load("rat01", "hr")
    assert hr.shape == (16, 18, 16) and lr.shape == (16, 6, 16)
    assert lr.min() == 0.0 and lr.max() == pytest.approx(255.0)
    assert 0.0 <= hr.min() and hr.max() <= 255.0
    # The LR is the spline-thickened HR mapped by the same normaliser.
    raw = isotropic_volume(1, (16, 18, 16))[0]
    norm = Normaliser.fit(make_lr(raw, 1, 3))
    np.testing.assert_allclose(lr, norm.apply(make_lr(raw, 1, 3)), atol=1e-3)
    np.testing.assert_allclose(hr, norm.apply(raw), atol=1e-3)
    stamp = cache.index_path.stat().st_mtime_ns
    build_cache(split_raw, tmp_path / "cache", axis=1, scale=3)
    assert cache.index_path.stat().st_mtime_ns == stamp


def test_other_thick_axis_moves_to_axis_one(split_raw, tmp_path):
    cache = build_cache(split_raw, tmp_path / "cache", axis=2, scale=4)
    assert cache.load("rat01", "hr").shape == (16, 16, 18)
    assert cache.load("rat01", "lr").shape == (16, 4, 18)


def test_normaliser_inverts_and_normalise_is_one_function():
    vol = isotropic_volume(4, (16, 16, 16))[0]
    norm = Normaliser.fit(vol)
    out = norm.apply(vol)
    np.testing.assert_array_equal(out, normalise(vol))
    unclipped = (out > 0) & (out < 255)
    np.testing.assert_allclose(norm.invert(out)[unclipped], vol[unclipped], rtol=1e-4, atol=1e-2)


def test_make_lr_extent_grid_puts_thick_voxel_on_centre_of_three():
    hr = np.zeros((3, 30, 3), np.float32)
    hr[:, 12:15] = 1.0  # exactly the thin slices of LR voxel 4
    lr = make_lr(hr, axis=1, scale=3, order=1)
    assert int(np.argmax(lr[1, :, 1])) == 4
    up = spline_upsample(lr, axis=1, scale=3, order=1)
    assert up.shape == hr.shape and int(np.argmax(up[1, :, 1])) == 13


def test_patches_match_the_whole_volume_lr(tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    # Voxel values encode their position, so a crop tells where it came from.
    hr = np.arange(12 * 18 * 10, dtype=np.float32).reshape(12, 18, 10)
    lr = np.arange(12 * 6 * 10, dtype=np.float32).reshape(12, 6, 10)
    cache.write_case("c0", {"lr": lr, "hr": hr})
    torch.manual_seed(0)
    data = SRPatchDataset(cache, ["c0"], patch_size=(8, 9, 8), scale=3, patches_per_volume=20)
    origins = set()
    for i in range(len(data)):
        lr_p, hr_p, cid = data[i]
        assert cid == "c0" and lr_p.shape == (1, 8, 3, 8) and hr_p.shape == (1, 8, 9, 8)
        a, b, c = np.unravel_index(int(hr_p[0, 0, 0, 0]), hr.shape)
        assert b % 3 == 0
        np.testing.assert_array_equal(hr_p[0].numpy(), hr[a:a + 8, b:b + 9, c:c + 8])
        np.testing.assert_array_equal(lr_p[0].numpy(), lr[a:a + 8, b // 3:b // 3 + 3, c:c + 8])
        origins.add((a, b, c))
    assert len(origins) > 5


def test_patch_size_must_fit_the_scale(split_raw, tmp_path):
    cache = build_cache(split_raw, tmp_path / "cache")
    with pytest.raises(ValueError, match="multiple"):
        SRPatchDataset(cache, ["rat00"], patch_size=(8, 8, 8), scale=3)


def test_datamodule_batches(flat_raw, tmp_path):
    dm = EasySRDataModule(str(flat_raw), str(tmp_path / "cache"), batch_size=2, augment=True)
    dm.prepare_data()
    dm.setup("fit")
    lr, hr, ids = next(iter(dm.train_dataloader()))
    assert lr.shape == (2, 1, 16, 6, 16) and hr.shape == (2, 1, 16, 18, 16) and len(ids) == 2
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0].hr.shape == (1, 1, 16, 18, 16)
    assert dm.splits["test"] == dm.splits["validation"]


def test_prepared_cache_trains_without_the_raw_folder(split_raw, tmp_path):
    from projects.easysr.prepare import main

    assert main(["--raw", str(split_raw), "--cache", str(tmp_path / "cache")]) == 0
    dm = EasySRDataModule(str(tmp_path / "absent"), str(tmp_path / "cache"), batch_size=1)
    dm.check_data("fit")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.splits["training"] == ["rat00", "rat01", "rat02"] and dm.splits["validation"] == ["val00"]
    lr, hr, _ = next(iter(dm.train_dataloader()))
    assert lr.shape == (1, 1, 16, 6, 16) and hr.shape == (1, 1, 16, 18, 16)
    other_scale = EasySRDataModule(str(tmp_path / "absent"), str(tmp_path / "cache"), scale=2)
    with pytest.raises(DataError, match="scale 3; this run needs axis 1, scale 2"):
        other_scale.setup("fit")


def test_the_cache_records_its_split_in_the_shared_format(split_raw, tmp_path):
    from common.splits import read_split, write_split
    from projects.easysr.prepare import SPLIT_FILE, main

    assert main(["--raw", str(split_raw), "--cache", str(tmp_path / "cache")]) == 0
    written = read_split(tmp_path / "cache" / SPLIT_FILE)  # the one reader of every project's splits
    assert (written["train"], written["val"], written["test"]) == (["rat00", "rat01", "rat02"], ["val00"], [])
    write_split(tmp_path / "cache" / SPLIT_FILE, train=["rat00", "rat01"], val=["val00", "rat02"], test=[])
    dm = EasySRDataModule(str(tmp_path / "absent"), str(tmp_path / "cache"), batch_size=1)
    dm.setup("fit")  # a cache without its raw folder trains from the recorded split
    assert dm.splits["training"] == ["rat00", "rat01"] and dm.splits["validation"] == ["val00", "rat02"]


def test_neither_raw_folder_nor_cache_names_the_prepare_command(tmp_path):
    dm = EasySRDataModule(str(tmp_path / "raw"), str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"run python -m projects.easysr.prepare --raw .* --cache .*cache"):
        dm.check_data("fit")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("problem,match", [("anisotropic", "isotropic"), ("duplicate", "case id"),
                                           ("empty", "no training")])
def test_bad_raw_data_is_named(tmp_path, problem, match):
    raw = tmp_path / "raw"
    raw.mkdir()
    vol, affine = isotropic_volume(0, (16, 16, 16))
    if problem == "anisotropic":
        affine[1, 1] = 0.6
        save_nifti(raw / "thick.nii.gz", vol, affine)
    elif problem == "duplicate":
        for name in ("a.nii.gz", "a.nii"):
            save_nifti(raw / name, vol, affine)
    with pytest.raises(DataError, match=match):
        build_cache(raw, tmp_path / "cache")
    assert not VolumeCache(tmp_path / "cache").index_path.exists()


def test_the_cache_waits_for_another_writer_of_its_folder(flat_raw, tmp_path):
    """Two nodes on one shared file system (or two jobs of a sweep) build the same cache in turn."""
    cache = tmp_path / "cache"
    check_waits_for_the_prepare_lock(cache, lambda: build_cache(flat_raw, cache), cache / "index.json")
    assert len(VolumeCache(cache)) == 5


def test_hidden_files_in_the_raw_folder_are_not_volumes(flat_raw):
    before = find_volumes(flat_raw, 0.2, seed=3)
    (flat_raw / ".rat00.nii.gz.4242-0badf00d.tmp.nii.gz").write_bytes(b"")  # another writer, mid-write
    (flat_raw / "._rat01.nii.gz").write_bytes(b"\0" * 10)  # a macOS fork
    assert find_volumes(flat_raw, 0.2, seed=3) == before
