"""Writers that put synthetic arrays into the real public data-set layouts, through ``common.io``.

Each writer produces a small tree a project's real ``prepare.py`` or loader can read unchanged:

| writer | layout |
|---|---|
| ``write_msd_task`` | Medical Segmentation Decathlon: ``TaskXX_Name/{dataset.json, imagesTr/, labelsTr/, imagesTs/}`` |
| ``write_atlas_tree`` | ATLAS R1.2 ``standard_MNI``: ``c00SS/<scan>/<scan>_t1w_stx.nii.gz`` + ``<scan>_LesionSmooth[_n]_stx.nii.gz`` |
| ``write_nih_pancreas`` | NIH Pancreas-CT: ``PANCREAS_NNNN/<StudyUID>/<SeriesUID>/*.dcm`` + ``TCIA_pancreas_labels-02-05-2017/labelNNNN.nii.gz`` |
| ``write_fastmri_singlecoil`` | fastMRI: ``singlecoil_{train,val,test}/fileNNNNNNN.h5`` |
| ``write_ratbrain_nifti`` | EasySR input: ``[training/|validation/]<name>.nii.gz`` |

Every file is written atomically; bad input raises ``DataError`` naming the case.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from common.errors import DataError
from common.io.atomic import atomic_path, save_json
from common.io.fastmri import FastMRIHeader, write_fastmri_volume
from common.io.nifti import save_nifti
from common.synthetic.dicom_series import write_ct_series

#: Known MSD tasks: case-name prefix and label names as in the released ``dataset.json`` files.
MSD_TASKS: dict[str, tuple[str, dict[str, str]]] = {
    "Task03_Liver": ("liver", {"0": "background", "1": "liver", "2": "cancer"}),
    "Task07_Pancreas": ("pancreas", {"0": "background", "1": "pancreas", "2": "cancer"}),
    "Task08_HepaticVessel": ("hepaticvessel", {"0": "background", "1": "Vessel", "2": "Tumour"}),
    "Task10_Colon": ("colon", {"0": "background", "1": "colon cancer primaries"}),
}
NIH_LABEL_DIR = "TCIA_pancreas_labels-02-05-2017"
_ATLAS_SCAN = re.compile(r"^c\d{4}s\d{4}t\d{2}$")
# Header of a macOS AppleDouble resource file (magic 0x00051607, version 2, "Mac OS X" filler).
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02" + b"\x00" * 4070


def _check_pair(where: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    if np.shape(image) != np.shape(label):
        raise DataError(where, f"label shape {np.shape(label)} differs from image shape {np.shape(image)}")
    if np.shape(affine) != (4, 4):
        raise DataError(where, f"affine must be 4 x 4, got shape {np.shape(affine)}")


def write_appledouble(path: str | os.PathLike) -> Path:
    """Writes a macOS AppleDouble ``._*`` junk file (as found in archives made on a Mac).

    Args:
        path: destination; its name should start with ``._``.

    Returns:
        The destination path.
    """
    with atomic_path(path, suffix="") as tmp:
        Path(tmp).write_bytes(_APPLEDOUBLE)
    return Path(path)


def write_msd_task(
    root: str | os.PathLike,
    task: str,
    cases: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    test_cases: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    appledouble: bool = False,
) -> Path:
    """Writes a Medical Segmentation Decathlon task folder.

    Args:
        root: folder that receives ``<task>/``.
        task: ``TaskXX_Name``, e.g. ``Task03_Liver``; known tasks (``MSD_TASKS``) get their case prefix
            and label names, others the lower-case name and ``labels``.
        cases: training cases ``{"liver_0": (hu [X, Y, Z], label uint [X, Y, Z], affine [4, 4])}``;
            images are stored as int16 (rounded HU), labels as uint8.
        test_cases: test images ``{"liver_140": (hu, affine)}`` (written to ``imagesTs/``, no labels).
        labels: label names ``{"0": "background", ...}``, overriding the task's.
        appledouble: also write ``._<case>.nii.gz`` junk next to the first case of each folder.

    Returns:
        The task folder.

    Raises:
        DataError: a malformed task name, a case name without the task's ``<prefix>_<digits>`` form, or
            image / label shapes that differ.
    """
    match = re.fullmatch(r"Task(\d{2,3})_([A-Za-z0-9]+)", task)
    if match is None:
        raise DataError(task, "an MSD task name looks like 'Task03_Liver'")
    prefix, known_labels = MSD_TASKS.get(task, (match.group(2).lower(), {"0": "background", "1": "foreground"}))
    folder = Path(root) / task
    training, test = [], []
    for name, (image, label, affine) in cases.items():
        _check_msd_name(name, prefix, folder)
        _check_pair(name, image, label, affine)
        save_nifti(folder / "imagesTr" / f"{name}.nii.gz", np.rint(image), affine, dtype=np.int16)
        save_nifti(folder / "labelsTr" / f"{name}.nii.gz", np.asarray(label), affine, dtype=np.uint8)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    for name, (image, affine) in (test_cases or {}).items():
        _check_msd_name(name, prefix, folder)
        save_nifti(folder / "imagesTs" / f"{name}.nii.gz", np.rint(image), affine, dtype=np.int16)
        test.append(f"./imagesTs/{name}.nii.gz")
    (folder / "imagesTs").mkdir(parents=True, exist_ok=True)
    if appledouble:
        for sub, names in (("imagesTr", list(cases)), ("labelsTr", list(cases)), ("imagesTs", list(test_cases or {}))):
            if names:
                write_appledouble(folder / sub / f"._{names[0]}.nii.gz")
    save_json(folder / "dataset.json", _msd_dataset_json(task, match.group(2), labels or known_labels, training, test))
    return folder


def _check_msd_name(name: str, prefix: str, folder: Path) -> None:
    if re.fullmatch(rf"{re.escape(prefix)}_\d+", name) is None:
        raise DataError(folder / name, f"MSD case names of this task look like '{prefix}_<number>'")


def _msd_dataset_json(task: str, title: str, labels: Mapping[str, str], training: list, test: list) -> dict:
    return {
        "name": title,
        "description": f"{title} segmentation (synthetic data in the {task} layout)",
        "reference": "synthetic, common.synthetic",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",  # (sic) the released files spell the key this way
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(labels),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }


def write_atlas_tree(
    root: str | os.PathLike, scans: Mapping[str, tuple[np.ndarray, Sequence[np.ndarray], np.ndarray]]
) -> list[Path]:
    """Writes ATLAS R1.2 ``standard_MNI`` scans: one T1 and one file per lesion mask.

    Args:
        root: the ``atlas_standard``-like folder that receives ``c00SS/<scan>/``.
        scans: ``{"c0003s0021t01": (t1 float [X, Y, Z], [mask uint8 [X, Y, Z], ...], affine [4, 4])}``;
            the first mask goes to ``<scan>_LesionSmooth_stx.nii.gz``, the n-th (n >= 1, counting from
            0) to ``<scan>_LesionSmooth_<n>_stx.nii.gz``.

    Returns:
        The scan folders, in input order.

    Raises:
        DataError: a scan id not like ``c0003s0021t01``, no masks, or a mask whose shape differs.
    """
    folders = []
    for scan, (t1, masks, affine) in scans.items():
        if _ATLAS_SCAN.fullmatch(scan) is None:
            raise DataError(scan, "ATLAS scan ids look like 'c0003s0021t01' (site, subject, timepoint)")
        if len(masks) == 0:
            raise DataError(scan, "every ATLAS scan has at least one LesionSmooth mask")
        folder = Path(root) / scan[:5] / scan
        for index, mask in enumerate(masks):
            _check_pair(scan, t1, mask, affine)
            tag = "LesionSmooth" if index == 0 else f"LesionSmooth_{index}"
            save_nifti(folder / f"{scan}_{tag}_stx.nii.gz", np.asarray(mask), affine, dtype=np.uint8)
        save_nifti(folder / f"{scan}_t1w_stx.nii.gz", np.asarray(t1, dtype=np.float32), affine)
        folders.append(folder)
    return folders


def write_nih_pancreas(
    root: str | os.PathLike,
    cases: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    slope: float = 1.0,
    intercept: float = -1024.0,
    shuffle_names: bool = True,
    seed: int = 0,
) -> dict[str, tuple[Path, Path]]:
    """Writes NIH Pancreas-CT cases: a DICOM series per case plus the label NIfTI files.

    Array convention: ``hu`` and ``label`` are indexed ``[column i, row j, slice k]`` with a RAS affine
    (as ``common.io.dicom.load_dicom_series`` and dcm2niix return them); slice ``k`` has
    ``InstanceNumber = k + 1``. The label NIfTI stores the same array with the same affine, so image
    and label overlay voxel for voxel. The affine's slice axis must run along the DICOM slice normal.

    Args:
        root: the download folder that receives ``PANCREAS_NNNN/`` and ``TCIA_pancreas_labels-02-05-2017/``.
        cases: ``{"0001": (hu [X, Y, Z], label uint [X, Y, Z], affine [4, 4])}``, ids of four digits.
        slope: RescaleSlope; stored values are ``(HU - intercept) / slope``.
        intercept: RescaleIntercept.
        shuffle_names: give the files names whose sorted order is not the slice order.
        seed: seed of the file-name shuffle.

    Returns:
        ``{case: (series folder, label file)}``.

    Raises:
        DataError: a case id not of four digits, shapes that differ, or a geometry DICOM cannot hold.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for case, (hu, label, affine) in cases.items():
        if re.fullmatch(r"\d{4}", case) is None:
            raise DataError(case, "NIH Pancreas-CT case ids have four digits, e.g. '0001'")
        _check_pair(case, hu, label, affine)
        study_uid = generate_uid(entropy_srcs=["PANCREAS", case, "study"])
        series_uid = generate_uid(entropy_srcs=["PANCREAS", case, "series"])
        series = Path(root) / f"PANCREAS_{case}" / study_uid / series_uid
        order = rng.permutation(np.shape(hu)[2]) if shuffle_names else None
        if order is not None and np.shape(hu)[2] > 1 and np.all(order == np.arange(len(order))):
            order = np.roll(order, 1)
        write_ct_series(series, hu, affine, patient_id=f"PANCREAS_{case}", study_uid=study_uid,
                        series_uid=series_uid, slope=slope, intercept=intercept, file_order=order)
        label_path = Path(root) / NIH_LABEL_DIR / f"label{case}.nii.gz"
        save_nifti(label_path, np.asarray(label), affine, dtype=np.uint8)
        written[case] = (series, label_path)
    return written


def write_fastmri_singlecoil(
    root: str | os.PathLike,
    split: str = "singlecoil_train",
    volumes: Mapping[str, tuple[np.ndarray, np.ndarray | None]] | None = None,
    acquisition: str = "CORPD_FBK",
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    acceleration: int | None = None,
    recon_size: tuple[int, int] = (320, 320),
) -> list[Path]:
    """Writes fastMRI single-coil HDF5 files, one per volume, in the official layout.

    Args:
        root: folder that receives ``<split>/``.
        split: ``singlecoil_train``, ``singlecoil_val`` or ``singlecoil_test`` (any name is accepted).
        volumes: ``{"file1000001.h5": (kspace complex [S, H_enc, W_enc], target float [S, h, w] or None)}``;
            targets go to ``reconstruction_esc``.
        acquisition: ``CORPD_FBK`` or ``CORPDFS_FBK``.
        masks: test-split sampling masks ``{fname: [W_enc]}`` (stored as ``mask``, with the attrs
            ``num_low_frequency`` and, when given, ``acceleration``).
        acceleration: acceleration written with the masks.
        recon_size: ``(h, w)`` of the header's recon space when a volume has no target.

    Returns:
        The written files.

    Raises:
        DataError: a file name not ending in ``.h5``, or k-space / target / mask shapes that disagree.
    """
    paths = []
    for fname, (kspace, target) in (volumes or {}).items():
        path = Path(root) / split / fname
        if not fname.endswith(".h5") or "/" in fname:
            raise DataError(path, "fastMRI volumes are single '.h5' file names, e.g. 'file1000001.h5'")
        _, enc_h, enc_w = np.shape(kspace)
        recon = tuple(np.shape(target)[1:]) if target is not None else tuple(recon_size)
        header = FastMRIHeader(encoding_size=(enc_h, enc_w, 1), recon_size=(recon[0], recon[1], 1),
                               center=enc_w // 2, maximum=enc_w - 1)
        attrs: dict[str, object] = {"acquisition": acquisition,
                                    "patient_id": hashlib.sha256(fname.encode()).hexdigest()}
        mask = None if masks is None else masks.get(fname)
        if mask is not None:
            mask = np.asarray(mask).astype(bool).ravel()
            if mask.size != enc_w:
                raise DataError(path, f"mask has {mask.size} columns, k-space has {enc_w}")
            attrs["num_low_frequency"] = _central_run(mask)
            if acceleration is not None:
                attrs["acceleration"] = int(acceleration)
        targets = None if target is None else {"reconstruction_esc": np.asarray(target, dtype=np.float32)}
        try:
            paths.append(write_fastmri_volume(path, kspace, header, attrs, targets=targets, mask=mask))
        except ValueError as error:
            raise DataError(path, str(error)) from error
    return paths


def _central_run(mask: np.ndarray) -> int:
    """Length of the run of sampled columns through the centre column (0 if the centre is not sampled)."""
    centre = mask.size // 2
    if not mask[centre]:
        return 0
    left = centre
    while left > 0 and mask[left - 1]:
        left -= 1
    right = centre
    while right < mask.size - 1 and mask[right + 1]:
        right += 1
    return right - left + 1


def write_ratbrain_nifti(
    root: str | os.PathLike, volumes: Mapping[str, tuple[np.ndarray, np.ndarray]], subfolder: str | None = None
) -> list[Path]:
    """Writes plain ``<name>.nii.gz`` volumes (EasySR's input), optionally into ``training/`` etc.

    Args:
        root: destination folder.
        volumes: ``{"rat01": (vol float [X, Y, Z], affine [4, 4])}``; names hold no '.' or '/' since
            EasySR names its cache after the text before the first '.'.
        subfolder: e.g. ``"training"`` or ``"validation"``; None writes into ``root``.

    Returns:
        The written files.

    Raises:
        DataError: a name with '.' or '/', or a volume that is not 3-D.
    """
    folder = Path(root) / subfolder if subfolder else Path(root)
    paths = []
    for name, (vol, affine) in volumes.items():
        if not name or "." in name or "/" in name:
            raise DataError(folder / name, "volume names must be plain (no '.' or '/'), e.g. 'rat01'")
        if np.ndim(vol) != 3:
            raise DataError(folder / name, f"expected a 3-D volume, got shape {np.shape(vol)}")
        paths.append(save_nifti(folder / f"{name}.nii.gz", np.asarray(vol, dtype=np.float32), affine))
    return paths
