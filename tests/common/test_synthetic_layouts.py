"""Writers into the public layouts: exact file trees, readable files, consistent geometry."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest

from common.errors import DataError
from common.io.dicom import load_dicom_series
from common.io.fastmri import read_header, validate_fastmri_file
from common.synthetic import (
    CT_LABELS,
    brain_t1,
    center_crop,
    ct_abdomen,
    ifft2c,
    isotropic_volume,
    knee_images,
    single_coil_kspace,
    write_atlas_tree,
    write_fastmri_singlecoil,
    write_msd_task,
    write_nih_pancreas,
    write_ratbrain_nifti,
)

SMALL_CT = (24, 20, 8)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ct_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return ct_abdomen(0, SMALL_CT, spacing=(1.5, 1.5, 3.0))


@pytest.mark.parametrize(
    ("task", "names"),
    [
        ("Task03_Liver", ["liver_0", "liver_7", "liver_140"]),
        ("Task07_Pancreas", ["pancreas_001", "pancreas_004", "pancreas_010"]),
        ("Task08_HepaticVessel", ["hepaticvessel_001", "hepaticvessel_002", "hepaticvessel_007"]),
        ("Task10_Colon", ["colon_001", "colon_005", "colon_015"]),
    ],
)
def test_msd_task_tree_and_dataset_json(tmp_path: Path, ct_case, task: str, names: list[str]) -> None:
    hu, organ, affine = ct_case
    folder = write_msd_task(
        tmp_path, task, {names[0]: (hu, organ, affine), names[1]: (hu, organ, affine)},
        {names[2]: (hu, affine)}, appledouble=True,
    )
    assert folder == tmp_path / task
    assert _tree(folder) == {
        "dataset.json",
        f"imagesTr/{names[0]}.nii.gz", f"imagesTr/{names[1]}.nii.gz", f"imagesTr/._{names[0]}.nii.gz",
        f"labelsTr/{names[0]}.nii.gz", f"labelsTr/{names[1]}.nii.gz", f"labelsTr/._{names[0]}.nii.gz",
        f"imagesTs/{names[2]}.nii.gz", f"imagesTs/._{names[2]}.nii.gz",
    }
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and meta["labels"]["0"] == "background"
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    for entry in meta["training"]:
        image, label = nib.load(folder / entry["image"]), nib.load(folder / entry["label"])
        np.testing.assert_allclose(image.affine, affine)
        np.testing.assert_allclose(label.affine, image.affine)
        assert image.get_data_dtype() == np.int16
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), organ)
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), np.rint(hu).astype(np.int16))
    assert [(folder / p).is_file() for p in meta["test"]] == [True]
    with pytest.raises(nib.filebasedimages.ImageFileError):
        nib.load(folder / "imagesTr" / f"._{names[0]}.nii.gz")


def test_msd_rejects_wrong_names_and_shapes(tmp_path: Path, ct_case) -> None:
    hu, organ, affine = ct_case
    with pytest.raises(DataError, match="liver_<number>"):
        write_msd_task(tmp_path, "Task03_Liver", {"case_00001": (hu, organ, affine)})
    with pytest.raises(DataError, match="Task03_Liver"):
        write_msd_task(tmp_path, "Liver", {"liver_0": (hu, organ, affine)})
    with pytest.raises(DataError, match="liver_1: label shape"):
        write_msd_task(tmp_path, "Task03_Liver", {"liver_1": (hu, organ[:-1], affine)})


def test_atlas_tree_one_file_per_mask(tmp_path: Path) -> None:
    t1, lesion, affine = brain_t1(1, (32, 40, 28), n_lesions=(2, 2), small_fraction=1.0)
    half = np.zeros_like(lesion)
    half[:16] = lesion[:16]
    scans = {"c0003s0021t01": (t1, [half, lesion - half], affine), "c0010s0005t02": (t1, [lesion], affine)}
    folders = write_atlas_tree(tmp_path, scans)
    assert folders == [tmp_path / "c0003" / "c0003s0021t01", tmp_path / "c0010" / "c0010s0005t02"]
    assert _tree(tmp_path) == {
        "c0003/c0003s0021t01/c0003s0021t01_t1w_stx.nii.gz",
        "c0003/c0003s0021t01/c0003s0021t01_LesionSmooth_stx.nii.gz",
        "c0003/c0003s0021t01/c0003s0021t01_LesionSmooth_1_stx.nii.gz",
        "c0010/c0010s0005t02/c0010s0005t02_t1w_stx.nii.gz",
        "c0010/c0010s0005t02/c0010s0005t02_LesionSmooth_stx.nii.gz",
    }
    scan = folders[0]
    masks = [np.asanyarray(nib.load(p).dataobj) > 0 for p in sorted(scan.glob("*LesionSmooth*"))]
    np.testing.assert_array_equal(np.logical_or.reduce(masks), lesion > 0)
    image = nib.load(scan / "c0003s0021t01_t1w_stx.nii.gz")
    np.testing.assert_allclose(image.get_fdata(), t1, atol=1e-4)
    for path in scan.glob("*.nii.gz"):
        np.testing.assert_allclose(nib.load(path).affine, affine)
    with pytest.raises(DataError, match="c0003s0021t01"):
        write_atlas_tree(tmp_path, {"sub-01": (t1, [lesion], affine)})
    with pytest.raises(DataError, match="at least one"):
        write_atlas_tree(tmp_path, {"c0003s0021t01": (t1, [], affine)})


def _lps_position(affine: np.ndarray, k: int) -> np.ndarray:
    return (np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine @ np.array([0.0, 0.0, k, 1.0]))[:3]


@pytest.mark.parametrize(("slope", "intercept", "signed"), [(1.0, -1024.0, 0), (2.0, -1000.0, 1)])
def test_nih_pancreas_dicom_and_labels_overlay(
    tmp_path: Path, ct_case, slope: float, intercept: float, signed: int
) -> None:
    hu, organ, affine = ct_case
    hu = np.rint(hu / slope) * slope  # representable exactly with this slope
    label = (organ == CT_LABELS["pancreas"]).astype(np.uint8) + (organ == CT_LABELS["liver"])
    written = write_nih_pancreas(tmp_path, {"0001": (hu, label, affine)}, slope=slope, intercept=intercept)
    series, label_path = written["0001"]
    assert series.parent.parent == tmp_path / "PANCREAS_0001"
    assert label_path == tmp_path / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz"
    files = sorted(series.glob("*.dcm"))
    assert len(files) == SMALL_CT[2] and len(_tree(tmp_path)) == SMALL_CT[2] + 1
    datasets = [pydicom.dcmread(f) for f in files]
    assert int(((hu - intercept) / slope).min() < 0) == signed  # stored as int16 only when needed
    instance_order = [int(ds.InstanceNumber) for ds in datasets]
    assert instance_order != sorted(instance_order)  # file names are not in slice order
    for ds in datasets:
        k = int(ds.InstanceNumber) - 1
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.StudyInstanceUID == series.parent.name
        assert ds.SeriesInstanceUID == series.name and ds.PixelRepresentation == signed
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], _lps_position(affine, k), atol=1e-4)
        expected = ((hu[:, :, k] - intercept) / slope).T
        np.testing.assert_array_equal(ds.pixel_array.astype(np.int64), expected.astype(np.int64))
    volume = load_dicom_series(series)
    labels = nib.load(label_path)
    np.testing.assert_allclose(volume.affine, labels.affine, atol=1e-4)
    np.testing.assert_allclose(volume.data, hu, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(labels.dataobj), label)


def test_nih_pancreas_rejects_geometry_dicom_cannot_hold(tmp_path: Path, ct_case) -> None:
    hu, organ, affine = ct_case
    flipped = affine.copy()
    flipped[:3, 2] *= -1
    with pytest.raises(DataError, match="slice normal"):
        write_nih_pancreas(tmp_path, {"0002": (hu, organ, flipped)})
    sheared = affine.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(DataError, match="orthogonal"):
        write_nih_pancreas(tmp_path, {"0003": (hu, organ, sheared)})
    with pytest.raises(DataError, match="four digits"):
        write_nih_pancreas(tmp_path, {"1": (hu, organ, affine)})


def test_fastmri_train_and_test_files(tmp_path: Path) -> None:
    kspace, target = single_coil_kspace(knee_images(0, 3, (32, 32)), seed=0)
    written = write_fastmri_singlecoil(tmp_path, "singlecoil_train", {"file1000001.h5": (kspace, target)})
    assert written == [tmp_path / "singlecoil_train" / "file1000001.h5"]
    header = validate_fastmri_file(written[0], require_target=True)
    assert header == read_header(written[0])
    assert header.encoding_size == (64, 40, 1) and header.recon_size == (32, 32, 1)
    assert (header.padding_left, header.padding_right) == (0, 40)
    with h5py.File(written[0], "r") as f:
        stored_k, stored_t = f["kspace"][()], f["reconstruction_esc"][()]
        attrs = dict(f.attrs)
    assert stored_k.dtype == np.complex64 and stored_t.dtype == np.float32
    np.testing.assert_array_equal(np.abs(center_crop(ifft2c(stored_k), (32, 32))), stored_t)
    assert attrs["acquisition"] == "CORPD_FBK" and len(attrs["patient_id"]) == 64
    assert attrs["max"] == pytest.approx(float(target.max()))
    assert attrs["norm"] == pytest.approx(float(np.linalg.norm(target)), rel=1e-5)
    mask = np.zeros(40, dtype=bool)
    mask[17:23] = True
    mask[::5] = True
    test = write_fastmri_singlecoil(tmp_path, "singlecoil_test", {"file1000002.h5": (kspace * mask, None)},
                                    "CORPDFS_FBK", masks={"file1000002.h5": mask}, acceleration=4)
    with h5py.File(test[0], "r") as f:
        assert set(f) == {"kspace", "ismrmrd_header", "mask"}
        np.testing.assert_array_equal(f["mask"][()], mask)
        assert (f.attrs["num_low_frequency"], f.attrs["acceleration"]) == (6, 4)
    assert read_header(test[0]).recon_size == (320, 320, 1)
    with pytest.raises(DataError, match="mask has 8 columns"):
        write_fastmri_singlecoil(tmp_path, "singlecoil_test", {"file3.h5": (kspace, None)}, masks={"file3.h5": mask[:8]})


def test_ratbrain_nifti_split_folders(tmp_path: Path) -> None:
    vol, affine = isotropic_volume(0, (16, 24, 16))
    write_ratbrain_nifti(tmp_path, {"rat01": (vol, affine), "rat02": (vol, affine)}, subfolder="training")
    write_ratbrain_nifti(tmp_path, {"rat03": (vol, affine)}, subfolder="validation")
    assert _tree(tmp_path) == {"training/rat01.nii.gz", "training/rat02.nii.gz", "validation/rat03.nii.gz"}
    image = nib.load(tmp_path / "validation" / "rat03.nii.gz")
    np.testing.assert_allclose(image.header.get_zooms(), (0.15, 0.15, 0.15), atol=1e-6)
    np.testing.assert_allclose(image.get_fdata(), vol, atol=1e-6)
    with pytest.raises(DataError, match="plain"):
        write_ratbrain_nifti(tmp_path, {"rat.t2": (vol, affine)})
