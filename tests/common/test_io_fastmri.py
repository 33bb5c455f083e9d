"""fastMRI HDF5 layer: header XML, write/read in the official layout, validation, worker safety."""

from __future__ import annotations

import multiprocessing as mp
import operator
import os
import pickle
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from common.errors import DataError
from common.io.fastmri import (
    ISMRMRD_NS,
    FastMRIFile,
    FastMRIHeader,
    header_to_xml,
    parse_header_xml,
    read_header,
    read_reconstruction,
    validate_fastmri_file,
    write_fastmri_volume,
    write_reconstructions,
)

HEADER = FastMRIHeader(encoding_size=(32, 24, 1), recon_size=(16, 16, 1), center=12, maximum=21)


def _volume(slices=5, seed=0):
    rng = np.random.default_rng(seed)
    kspace = (rng.normal(size=(slices, 32, 24)) + 1j * rng.normal(size=(slices, 32, 24))).astype(np.complex64)
    esc = rng.random((slices, 16, 16), dtype=np.float32)
    return kspace, esc


@pytest.fixture
def volume_file(tmp_path):
    kspace, esc = _volume()
    path = write_fastmri_volume(
        tmp_path / "file1000000.h5",
        kspace,
        HEADER,
        {"acquisition": "CORPD_FBK", "patient_id": "abc123"},
        targets={"reconstruction_esc": esc, "reconstruction_rss": esc * 2},
    )
    return path, kspace, esc


def test_header_paddings():
    assert HEADER.padding_left == 24 // 2 - 12 == 0
    assert HEADER.padding_right == 22
    real_like = FastMRIHeader((640, 368, 1), (320, 320, 1), center=184, maximum=356)
    assert (real_like.padding_left, real_like.padding_right) == (0, 357)
    narrow = FastMRIHeader((640, 372, 1), (320, 320, 1), center=174, maximum=345)
    assert (narrow.padding_left, narrow.padding_right) == (12, 358)


def test_header_xml_round_trip_and_element_paths():
    header = FastMRIHeader((640, 372, 1), (320, 320, 1), center=174, maximum=345)
    xml = header_to_xml(header, field_strength_t=2.89, sequence={"TR": 2750, "TE": 27.0})
    assert parse_header_xml(xml) == header
    assert parse_header_xml(xml.encode()) == header
    root = ET.fromstring(xml)
    assert root.tag == f"{{{ISMRMRD_NS}}}ismrmrdHeader"
    ns = {"m": ISMRMRD_NS}
    assert root.find("m:encoding/m:encodedSpace/m:matrixSize/m:y", ns).text == "372"
    assert root.find("m:encoding/m:reconSpace/m:matrixSize/m:x", ns).text == "320"
    limits = root.find("m:encoding/m:encodingLimits/m:kspace_encoding_step_1", ns)
    assert [limits.find(f"m:{t}", ns).text for t in ("minimum", "maximum", "center")] == ["0", "345", "174"]


def test_header_xml_errors_name_the_file():
    with pytest.raises(DataError, match="f.h5: ismrmrd_header is not valid XML"):
        parse_header_xml(b"<ismrmrdHeader><encoding>", "f.h5")
    partial = header_to_xml(HEADER).replace("<center>12</center>", "")
    with pytest.raises(DataError, match="g.h5: ismrmrd_header has no .*kspace_encoding_step_1/center"):
        parse_header_xml(partial, "g.h5")


def test_write_then_read_official_layout(volume_file):
    path, kspace, esc = volume_file
    with h5py.File(path, "r") as f:
        assert f["kspace"].dtype == np.complex64 and f["kspace"].shape == (5, 32, 24)
        assert f["reconstruction_esc"].dtype == np.float32 and f["reconstruction_esc"].shape == (5, 16, 16)
        assert f["ismrmrd_header"].shape == ()
        assert isinstance(f["ismrmrd_header"][()], bytes)
        assert set(f.attrs) == {"acquisition", "patient_id", "max", "norm"}
    with FastMRIFile(path) as f:
        assert f.header == HEADER
        assert f.num_slices == len(f) == 5
        attrs = f.attrs
        assert attrs["acquisition"] == "CORPD_FBK" and attrs["patient_id"] == "abc123"
        assert attrs["max"] == pytest.approx(float(esc.max()))
        assert attrs["norm"] == pytest.approx(float(np.linalg.norm(esc)), rel=1e-6)
        for i in (0, 3):
            assert f.kspace(i).dtype == np.complex64
            np.testing.assert_array_equal(f.kspace(i), kspace[i])
            np.testing.assert_array_equal(f.target(i), esc[i])
            np.testing.assert_array_equal(f.target(i, "reconstruction_rss"), esc[i] * 2)
        assert f.has("reconstruction_rss") and not f.has("mask")
        assert f.mask() is None
        with pytest.raises(DataError, match="file1000000.h5: no dataset 'reconstruction_xyz'"):
            f.target(0, "reconstruction_xyz")
    assert validate_fastmri_file(path, require_target=True) == HEADER
    assert read_header(path) == HEADER


def test_test_split_file_with_mask(tmp_path):
    kspace, _ = _volume(slices=3)
    mask = np.zeros(24, dtype=bool)
    mask[10:14] = True
    mask[::4] = True
    attrs = {"acquisition": "CORPDFS_FBK", "patient_id": "p", "acceleration": 4, "num_low_frequency": 4}
    path = write_fastmri_volume(tmp_path / "file1001.h5", kspace * mask, HEADER, attrs, mask=mask)
    with FastMRIFile(path) as f:
        np.testing.assert_array_equal(f.mask(), mask)
        assert f.attrs["acceleration"] == 4 and f.attrs["num_low_frequency"] == 4
        assert "max" not in f.attrs
    assert validate_fastmri_file(path) == HEADER
    with pytest.raises(DataError, match="file1001.h5: no target dataset"):
        validate_fastmri_file(path, require_target=True)


def test_truncated_file_and_missing_kspace(volume_file, tmp_path):
    path, _, _ = volume_file
    raw = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.h5: not a readable HDF5 file"):
        validate_fastmri_file(cut)
    with pytest.raises(DataError, match="cut.h5"):
        FastMRIFile(cut).kspace(0)

    no_kspace = tmp_path / "nok.h5"
    with h5py.File(no_kspace, "w") as f:
        f["ismrmrd_header"] = np.bytes_(header_to_xml(HEADER).encode())
    with pytest.raises(DataError, match="nok.h5: no 'kspace' dataset"):
        validate_fastmri_file(no_kspace)
    with pytest.raises(DataError, match="missing.h5: file not found"):
        validate_fastmri_file(tmp_path / "missing.h5")


@pytest.mark.parametrize(
    ("name", "build", "message"),
    [
        (
            "real.h5",
            lambda f: f.create_dataset("kspace", data=np.ones((2, 4, 4), np.float32)),
            "must be complex",
        ),
        (
            "flat.h5",
            lambda f: f.create_dataset("kspace", data=np.ones((4, 4), np.complex64)),
            "must be complex",
        ),
        (
            "nohdr.h5",
            lambda f: f.create_dataset("kspace", data=np.ones((2, 4, 4), np.complex64)),
            "ismrmrd_header",
        ),
    ],
)
def test_invalid_layouts(tmp_path, name, build, message):
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        build(f)
    with pytest.raises(DataError, match=f"{name}: .*{message}"):
        validate_fastmri_file(path)


def test_nan_in_kspace_and_bad_header(tmp_path):
    kspace, esc = _volume(slices=10)
    kspace[9, 1, 2] = np.nan
    path = write_fastmri_volume(tmp_path / "nan.h5", kspace, HEADER, {}, targets={"reconstruction_esc": esc})
    with pytest.raises(DataError, match="nan.h5: 'kspace' has 1 NaN"):
        validate_fastmri_file(path)
    bad = write_fastmri_volume(tmp_path / "badxml.h5", kspace[:2], "<ismrmrdHeader/>", {})
    with pytest.raises(DataError, match="badxml.h5: ismrmrd_header has no encoding"):
        validate_fastmri_file(bad)


def test_reconstructions_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    recons = {"file1000000.h5": rng.random((4, 8, 8)), "file1000001": rng.random((2, 8, 8))}
    paths = write_reconstructions(tmp_path / "recons", recons)
    assert [p.name for p in paths] == ["file1000000.h5", "file1000001.h5"]
    back = read_reconstruction(paths[0])
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, recons["file1000000.h5"], rtol=1e-6)
    with h5py.File(paths[1], "r") as f:
        assert list(f.keys()) == ["reconstruction"] and f["reconstruction"].dtype == np.float32
    with pytest.raises(DataError, match="file1000001.h5: no dataset 'reconstruction_esc'"):
        read_reconstruction(paths[1], key="reconstruction_esc")
    with pytest.raises(DataError, match="vol2: reconstruction must be"):
        write_reconstructions(tmp_path / "recons", {"vol2": np.zeros((8, 8))})


def test_pickle_drops_the_handle(volume_file):
    path, kspace, _ = volume_file
    f = FastMRIFile(path)
    assert f.handle_pid is None
    f.kspace(0)
    assert f.handle_pid == os.getpid()
    clone = pickle.loads(pickle.dumps(f))
    assert clone.handle_pid is None and clone.path == f.path
    np.testing.assert_array_equal(clone.kspace(2), kspace[2])
    f.close()
    clone.close()
    assert f.handle_pid is None


def test_spawned_process_reads_a_pickled_file(volume_file):
    path, kspace, _ = volume_file
    f = FastMRIFile(path)
    f.kspace(0)  # a live handle in this process must not travel
    with mp.get_context("spawn").Pool(1) as pool:
        got = pool.apply(operator.methodcaller("kspace", 4), (f,))
    np.testing.assert_array_equal(got, kspace[4])
    f.close()


class _SliceDataset(Dataset):
    def __init__(self, files):
        self.files = files
        self.index = [(n, i) for n, f in enumerate(files) for i in range(f.num_slices)]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        n, i = self.index[item]
        f = self.files[n]
        k = f.kspace(i)
        return torch.tensor([n, i]), torch.from_numpy(k.view(np.float32).copy()), f.handle_pid


def test_dataloader_workers_reopen_the_file(tmp_path):
    kspaces = []
    files = []
    for seed in range(2):
        kspace, esc = _volume(slices=3, seed=seed)
        path = write_fastmri_volume(tmp_path / f"v{seed}.h5", kspace, HEADER, {}, {"reconstruction_esc": esc})
        kspaces.append(kspace)
        files.append(FastMRIFile(path))
    dataset = _SliceDataset(files)  # opens both files in this process before the fork
    assert all(f.handle_pid == os.getpid() for f in files)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, multiprocessing_context="fork")
    seen = set()
    worker_pids = set()
    for ids, k, pid in loader:
        n, i = ids[0].tolist()
        expected = kspaces[n][i]
        np.testing.assert_array_equal(k[0].numpy().view(np.complex64), expected)
        worker_pids.add(int(pid[0]))
        seen.add((n, i))
    assert seen == {(n, i) for n in range(2) for i in range(3)}
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    for f in files:
        f.close()
