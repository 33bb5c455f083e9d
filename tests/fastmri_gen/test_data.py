"""Transforms, masks, the slice dataset, the volume sampler and bad-input errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from common.errors import DataError
from projects.fastmri_gen.data import (
    DataFidelity,
    FastMRIDataModule,
    FastMRISliceDataset,
    SliceTransform,
    VolumeSampler,
    collate,
)
from projects.fastmri_gen.prepare import build_index
from projects.fastmri_gen.transforms import (
    EquispacedMaskFractionFunc,
    RandomMaskFunc,
    center_crop,
    fft2c,
    ifft2c,
    seed_from_name,
)
from tests.contract import check_waits_for_the_prepare_lock

SPEC_LOW_LINES = {4: (0.08, 29), 8: (0.04, 15), 16: (0.02, 7), 32: (0.01, 4)}


def test_fft_round_trip_orthonormal_and_centred():
    x = torch.randn(3, 16, 12, dtype=torch.complex64)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-5)
    assert torch.allclose(fft2c(x).abs().pow(2).sum(), x.abs().pow(2).sum(), rtol=1e-4)  # Parseval
    ones = torch.ones(16, 12, dtype=torch.complex64)
    spectrum = fft2c(ones)  # a constant image has all its energy at the centre sample (H//2, W//2)
    assert abs(float(spectrum[8, 6].abs()) - (16 * 12) ** 0.5) < 1e-3
    assert float(spectrum.abs().sum() - spectrum[8, 6].abs()) < 1e-3
    reference = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.allclose(fft2c(x).numpy(), reference, atol=1e-5)


@pytest.mark.parametrize("acceleration", [4, 8, 16, 32])
def test_random_mask_line_counts_for_368(acceleration):
    fraction, low = SPEC_LOW_LINES[acceleration]
    func = RandomMaskFunc([acceleration])
    totals = []
    for seed in range(200):
        mask = func(368, np.random.RandomState(seed))
        assert mask.num_low_frequencies == low
        start = (368 - low + 1) // 2
        assert mask.mask[start:start + low].all()
        totals.append(mask.mask.sum())
    assert abs(np.mean(totals) - 368 / acceleration) < 0.05 * 368 / acceleration + 1


@pytest.mark.parametrize("acceleration", [4, 8, 16, 32])
def test_equispaced_mask_line_counts_for_368(acceleration):
    mask = EquispacedMaskFractionFunc([acceleration])(368, np.random.RandomState(0))
    assert mask.num_low_frequencies == SPEC_LOW_LINES[acceleration][1]
    assert abs(mask.mask.sum() - 368 / acceleration) <= 2


def sample_of(root, training=False, fidelity=DataFidelity(), name="file1100001.h5", index=0):
    ds = FastMRISliceDataset(root / "singlecoil_val", SliceTransform(RandomMaskFunc([4]), training, fidelity))
    return ds, ds[[i for i, (v, s) in enumerate(ds.slices) if ds.volumes[v]["file"] == name][index]]


def test_validation_masks_are_per_file_and_training_masks_fresh(fastmri_root):
    ds, first = sample_of(fastmri_root)
    _, second = sample_of(fastmri_root, index=2)
    assert torch.equal(first.mask, second.mask)  # one mask per volume
    expected = RandomMaskFunc([4])(40, np.random.RandomState(seed_from_name("file1100001.h5"))).mask
    assert np.array_equal(first.mask.numpy(), expected)
    _, other = sample_of(fastmri_root, name="file1100002.h5")
    assert not torch.equal(first.mask, other.mask)
    train = SliceTransform(RandomMaskFunc([4]), training=True)
    masks = {tuple(train.column_mask("file1100001.h5", 368).mask.tolist()) for _ in range(5)}
    assert len(masks) == 5
    by_name = SliceTransform(RandomMaskFunc([4]), True, DataFidelity(train_masks_by_filename=True))
    assert len({tuple(by_name.column_mask("f.h5", 368).mask.tolist()) for _ in range(3)}) == 1


def test_zero_filled_is_magnitude_of_masked_ifft_and_mask_along_columns(fastmri_root):
    ds, sample = sample_of(fastmri_root)
    with h5py.File(fastmri_root / "singlecoil_val" / "file1100001.h5") as f:
        kspace = f["kspace"][0]
        target = f["reconstruction_esc"][0]
    mask = sample.mask.numpy()
    masked = kspace * mask[None, :]
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(masked), norm="ortho"))
    expected = center_crop(torch.from_numpy(image), target.shape).abs().numpy()
    assert np.allclose(sample.zero_filled[0].numpy(), expected, atol=1e-5 * expected.max())
    # fully sampled: the magnitude of the cropped inverse FFT is the stored target
    full = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace), norm="ortho"))
    full = center_crop(torch.from_numpy(full), target.shape).abs()
    assert np.allclose(full.numpy(), target, atol=1e-4 * target.max())
    # the k-space of the readout-cropped grid is zero exactly on the unsampled columns
    k = torch.view_as_complex(sample.kspace.contiguous())
    assert float(k[:, mask == 0].abs().max()) == 0.0 and float(k[:, mask == 1].abs().min()) > 0
    assert torch.equal(sample.mask_image[0, 0], sample.mask_image[0, 5])  # varies along columns
    transposed = sample_of(fastmri_root, fidelity=DataFidelity(mask_transposed=True))[1]
    assert torch.equal(transposed.mask_image[0, :, 0], transposed.mask_image[0, :, 7])  # varies along rows


def test_normalisation_modes(fastmri_root):
    _, inst = sample_of(fastmri_root)
    assert abs(float(inst.image.mean())) < 0.2 and float(inst.target_norm.abs().max()) <= 6
    _, zero_one = sample_of(fastmri_root, fidelity=DataFidelity(zero_one_norm=True))
    assert float(zero_one.image.min()) == 0 and abs(float(zero_one.image.max()) - 1) < 1e-5
    assert 0 <= float(zero_one.target_norm.min()) and float(zero_one.target_norm.max()) <= 1


def test_crop_from_header_for_test_split_and_stored_mask(fastmri_root):
    ds = FastMRISliceDataset(fastmri_root / "singlecoil_test", SliceTransform(RandomMaskFunc([8]), False))
    sample = ds[0]
    assert sample.zero_filled.shape == (1, 32, 32) and sample.acceleration == 4
    with h5py.File(fastmri_root / "singlecoil_test" / "file1200001.h5") as f:
        assert np.array_equal(sample.mask.numpy().astype(bool), f["mask"][()])


def test_volume_sampler_keeps_volumes_whole(fastmri_root):
    ds = FastMRISliceDataset(fastmri_root / "singlecoil_val", SliceTransform(RandomMaskFunc([4]), False))
    seen = {}
    for rank in (0, 1):
        for i in VolumeSampler(ds, num_replicas=2, rank=rank):
            seen.setdefault(ds.volume_of(i), set()).add(rank)
    assert len(seen) == 3 and all(len(ranks) == 1 for ranks in seen.values())
    assert sum(len(VolumeSampler(ds, 2, r)) for r in (0, 1)) == len(ds)


def test_collate_pads_mixed_widths(fastmri_root):
    ds = FastMRISliceDataset(fastmri_root / "singlecoil_val", SliceTransform(RandomMaskFunc([4]), False))
    narrow = next(i for i in range(len(ds)) if ds[i].width == 38)
    batch = collate([ds[0], ds[narrow]])
    assert batch.kspace.shape == (2, 32, 40, 2) and batch.mask.shape == (2, 40)
    assert batch.width.tolist() == [40, 38] and float(batch.mask[1, [0, 39]].sum()) == 0


def test_datamodule_loaders(fastmri_root, tmp_path):
    dm = FastMRIDataModule(str(fastmri_root), cache_dir=str(tmp_path), batch_size=2, num_workers=0,
                           accelerations=[4, 8], val_accelerations=[8])
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (2, 1, 32, 32) and set(batch.acceleration.tolist()) <= {4, 8}
    assert all(a == 8 for a in next(iter(dm.val_dataloader())).acceleration.tolist())
    assert (tmp_path / "singlecoil_train.json").is_file()


def test_truncated_or_kspace_less_files_raise_data_error(tmp_path):
    folder = tmp_path / "singlecoil_val"
    folder.mkdir()
    (folder / "file1.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="file1.h5"):
        build_index(folder)
    (folder / "file1.h5").unlink()
    with h5py.File(folder / "file2.h5", "w") as f:
        f.create_dataset("reconstruction_esc", data=np.zeros((1, 4, 4), np.float32))
    with pytest.raises(DataError, match="file2.h5.*kspace"):
        build_index(folder)


def test_prepare_a_missing_data_folder_is_an_error(tmp_path, capsys):
    from projects.fastmri_gen.prepare import main

    assert main(["--raw", str(tmp_path / "nonexistent"), "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nonexistent'}: data folder not found\n"
    (tmp_path / "empty").mkdir()
    assert main(["--raw", str(tmp_path / "empty"), "--cache", str(tmp_path / "cache")]) == 2
    assert "none of the split folders" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_the_synthetic_tree_waits_for_another_writer_of_its_folder(tmp_path):
    """Two nodes on one shared file system (or two jobs of a sweep) write the synthetic tree in turn."""
    synthetic = {"train_volumes": 1, "val_volumes": 1, "slices": 2, "size": 32, "seed": 0}
    dm = FastMRIDataModule(str(tmp_path / "fastmri"), cache_dir=None, num_workers=0, synthetic=synthetic)
    check_waits_for_the_prepare_lock(tmp_path / "fastmri", dm.prepare_data, tmp_path / "fastmri" / "singlecoil_val")
    assert len(list((tmp_path / "fastmri" / "singlecoil_val").glob("*.h5"))) == 1
