"""prepare (NIH DICOM, MSD NIfTI) -> cache -> plane slice triplets; folds."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from common.errors import DataError
from common.io.cache import VolumeCache
from common.synthetic.layouts import write_msd_task, write_nih_pancreas
from projects.rstn.data import (
    LAYOUT,
    PlaneSlices,
    RSTNDataModule,
    fold_cases,
    organ_free_slices,
    slab,
    window,
)
from projects.rstn.prepare import (
    NIH_SPLIT,
    fold_split,
    main,
    prepare_msd,
    prepare_nih,
    prepare_synthetic,
)
from tests.contract import check_waits_for_the_prepare_lock

SHAPE = (24, 20, 12)  # the fixture cases' grid


def test_window_maps_hu_to_unit_range() -> None:
    out = window(np.array([-1000.0, -100.0, 70.0, 240.0, 3000.0]))
    assert out.dtype == np.float16
    assert np.allclose(out.astype(np.float32), [0, 0, 0.5, 1, 1], atol=1e-3)


def test_committed_nih_folds_are_the_papers_and_disjoint() -> None:
    folds = json.loads(NIH_SPLIT.read_text())["folds"]
    assert [(f[0], f[-1], len(f)) for f in folds] == [("0001", "0020", 20), ("0021", "0040", 20),
                                                     ("0041", "0061", 21), ("0062", "0082", 21)]
    flat = [c for f in folds for c in f]
    assert len(flat) == len(set(flat)) == 82
    for fold in range(4):
        train, test = fold_cases(NIH_SPLIT, fold)
        assert not set(train) & set(test) and len(train) + len(test) == 82
    with pytest.raises(DataError, match=r"4 folds: choose a fold \(data.fold\) in 0..3"):
        fold_cases(NIH_SPLIT, 4)


def test_fold_split_of_other_sizes() -> None:
    assert [len(f) for f in fold_split([str(i) for i in range(10)])] == [2, 2, 3, 3]


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (2.0, -2048.0)])
def test_nih_dicom_import_shuffled_files_and_rescale(tmp_path, small_case, slope: float, intercept: float) -> None:
    hu, label, affine = small_case(1)
    hu = np.rint(hu / slope) * slope  # representable after the rescale
    write_nih_pancreas(tmp_path / "raw", {"0003": (hu, label, affine)}, slope=slope, intercept=intercept,
                       shuffle_names=True, seed=2)
    assert prepare_nih(tmp_path / "raw", tmp_path / "cache") == ["0003"]
    cache = VolumeCache(tmp_path / "cache")
    image, stored_label = cache.load("0003", "image"), cache.load("0003", "label")
    assert image.shape == (SHAPE[1], SHAPE[0], SHAPE[2])  # rows, columns, slices
    axes = LAYOUT.stored_axes(cache.meta("0003"))
    back, back_affine = axes.to_file(np.asarray(image, np.float32), cache.affine("0003"))
    assert np.allclose(back, window(hu).astype(np.float32), atol=2e-3)  # slope/intercept applied, slices sorted
    assert np.array_equal(axes.to_file(stored_label, cache.affine("0003"))[0], label)
    assert np.allclose(back_affine, affine, atol=1e-4)


def test_nih_case_without_label_names_the_folder(tmp_path, small_case) -> None:
    hu, label, affine = small_case(1)
    written = write_nih_pancreas(tmp_path, {"0007": (hu, label, affine)})
    written["0007"][1].unlink()
    with pytest.raises(DataError, match="PANCREAS_0007.*label0007"):
        prepare_nih(tmp_path, tmp_path / "cache")
    assert main(["--layout", "nih", "--raw", str(tmp_path), "--cache", str(tmp_path / "c")]) == 2


def test_msd_import_counts_tumour_as_pancreas_and_writes_folds(tmp_path, small_case) -> None:
    cases = {}
    for i in range(4):
        hu, label, affine = small_case(i)
        label = label.copy()
        label[np.nonzero(label)[0][:3], np.nonzero(label)[1][:3], np.nonzero(label)[2][:3]] = 2
        cases[f"pancreas_{i:03d}"] = (hu, label, affine)
    task = write_msd_task(tmp_path, "Task07_Pancreas", cases, appledouble=True)
    ids = prepare_msd(task, tmp_path / "cache")
    assert ids == sorted(cases)
    cache = VolumeCache(tmp_path / "cache")
    assert int(cache.load("pancreas_001", "label").sum()) == int((cases["pancreas_001"][1] > 0).sum())
    train, test = fold_cases(tmp_path / "cache" / "splits.json", 2)
    assert test == ["pancreas_002"] and len(train) == 3


def test_slab_clamps_at_the_ends() -> None:
    vol = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    out = slab(vol, 0, 0)
    assert out.shape == (3, 3, 2) and np.array_equal(out[0], vol[0]) and np.array_equal(out[2], vol[1])
    out = slab(vol, 2, 1)
    assert out.shape == (3, 4, 3) and np.array_equal(out[2], vol[:, :, 1])


def test_plane_slices_shapes_and_slice_threshold(synthetic_cache) -> None:
    ids = VolumeCache(synthetic_cache).case_ids()
    for plane, shape in (("X", (3, 32, 16)), ("Y", (3, 32, 16)), ("Z", (3, 32, 32))):
        everything = PlaneSlices(synthetic_cache, ids[:2], plane, foreground_only=False)
        assert everything[0].image.shape == shape and everything[0].label.shape == shape
        all_fg = PlaneSlices(synthetic_cache, ids[:2], plane, slice_threshold=1.0)
        kept = PlaneSlices(synthetic_cache, ids[:2], plane, slice_threshold=0.5)
        assert 0 < len(kept) < len(all_fg) < len(everything)
        assert all(s.label[1].sum() > 0 for s in all_fg)
        smallest_kept = min(float(s.label[1].sum()) for s in kept)
        dropped = set(all_fg.index) - set(kept.index)
        assert all(float(all_fg[all_fg.index.index(d)].label[1].sum()) <= smallest_kept for d in dropped)


def test_plane_slices_open_each_array_once_and_pickle_without_it(synthetic_cache, monkeypatch) -> None:
    ids = VolumeCache(synthetic_cache).case_ids()[:2]
    slices = PlaneSlices(synthetic_cache, ids, "Y", foreground_only=False)
    opened: list[tuple[str, str]] = []
    load = VolumeCache.load
    monkeypatch.setattr(VolumeCache, "load", lambda self, c, k, mmap=True: opened.append((c, k)) or load(self, c, k, mmap))
    samples = [slices[i] for i in range(len(slices))]
    assert sorted(opened) == sorted((c, k) for c in ids for k in ("image", "label"))  # once each, not per sample
    cache = slices.cache
    for sample, (case_id, j) in zip(samples, slices.index, strict=True):
        expected = slab(cache.load(case_id, "image"), 1, j)
        assert np.array_equal(sample.image.numpy(), expected) and sample.slice_index == j
    copy = pickle.loads(pickle.dumps(slices))
    assert "_arrays" not in copy.__dict__  # a spawned worker gets no copy of the volumes
    assert all(np.array_equal(copy[i].label, samples[i].label) for i in (0, len(samples) - 1))


def test_organ_free_slices_need_an_empty_triplet() -> None:
    label = np.zeros((4, 4, 10), np.uint8)
    label[1, 1, 4] = 1
    assert organ_free_slices(label, 2) == [0, 1, 2, 6, 7, 8, 9]
    assert organ_free_slices(label, 2, thickness=1) == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_plane_slices_empty_fraction_adds_organ_free_slices(synthetic_cache) -> None:
    ids = VolumeCache(synthetic_cache).case_ids()[:3]
    organ = PlaneSlices(synthetic_cache, ids, "Z", slice_threshold=1.0)
    mixed = PlaneSlices(synthetic_cache, ids, "Z", slice_threshold=1.0, empty_fraction=0.5, seed=1)
    added = sorted(set(mixed.index) - set(organ.index))
    assert set(organ.index) <= set(mixed.index) and len(added) == round(0.5 * len(organ)) > 0
    assert all(float(mixed[mixed.index.index(a)].label.sum()) == 0 for a in added)
    again = PlaneSlices(synthetic_cache, ids, "Z", slice_threshold=1.0, empty_fraction=0.5, seed=1)
    assert again.index == mixed.index
    n_free = sum(len(organ_free_slices(np.asarray(VolumeCache(synthetic_cache).load(c, "label")), 2)) for c in ids)
    capped = PlaneSlices(synthetic_cache, ids, "Z", slice_threshold=1.0, empty_fraction=100.0)
    assert len(capped) == len(organ) + n_free
    with pytest.raises(ValueError, match="empty_fraction"):
        PlaneSlices(synthetic_cache, ids, "Z", empty_fraction=-0.1)


def test_empty_fraction_changes_training_slices_only(synthetic_cache) -> None:
    def loaders(fraction: float) -> tuple[int, int]:
        dm = RSTNDataModule(str(synthetic_cache), str(synthetic_cache / "splits.json"), fold=0, plane="Z",
                            empty_fraction=fraction)
        dm.setup()
        return len(dm.train_dataloader().dataset), len(dm.val_dataloader().dataset)

    (train0, val0), (train1, val1) = loaders(0.0), loaders(1.0)
    assert train1 > train0 and val1 == val0


def test_validation_order_spans_each_volume(synthetic_cache) -> None:
    dm = RSTNDataModule(str(synthetic_cache), str(synthetic_cache / "splits.json"), fold=0, plane="X",
                        val_cases=1, batch_size=4)
    dm.setup()
    loader = dm.val_dataloader()
    seen = [(c, int(j)) for batch in loader for c, j in zip(batch.case_id, batch.slice_index, strict=True)]
    depth = VolumeCache(synthetic_cache).load(dm.cases["val"][0], "label").shape[0]
    assert sorted(seen) == [(dm.cases["val"][0], j) for j in range(depth)]  # every slice once
    first = [j for _, j in seen[:8]]  # what `limit_val_batches=2` would see
    assert min(first) < depth // 4 and max(first) > 3 * depth // 4
    assert seen == [(c, int(j)) for batch in dm.val_dataloader() for c, j in zip(batch.case_id, batch.slice_index,
                                                                                 strict=True)]  # fixed order


def test_datamodule_folds_and_missing_cases(synthetic_cache, tmp_path) -> None:
    dm = RSTNDataModule(str(synthetic_cache), str(synthetic_cache / "splits.json"), fold=1, plane="Z",
                        val_cases=1, batch_size=2)
    dm.setup()
    assert set(dm.cases["test"]).isdisjoint(dm.cases["train"] + dm.cases["val"])
    assert len(dm.cases["val"]) == 1 and len(dm.cases["train"]) == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (2, 3, 32, 32) and len(batch.case_id) == 2
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"folds": [["nope"], ["synth000"]]}))
    with pytest.raises(DataError, match="nope"):
        RSTNDataModule(str(synthetic_cache), str(split), fold=0).setup()


def test_the_synthetic_cache_waits_for_another_writer_of_its_folder(tmp_path) -> None:
    """Two nodes on one shared file system (or two jobs of a sweep) prepare the same cache in turn."""
    cache = tmp_path / "cache"
    check_waits_for_the_prepare_lock(cache, lambda: prepare_synthetic(cache, 2, (16, 16, 8)), cache / "splits.json")
    assert VolumeCache(cache).case_ids() == ["synth000", "synth001"]
