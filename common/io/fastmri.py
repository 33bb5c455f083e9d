"""fastMRI single-coil HDF5 files: header parsing, lazy per-process reading, validation, writing.

Layout of one volume file (`file1000000.h5`), as published:
    * `kspace`: complex64 `[S, H, W]` (H = 640 readout rows, W phase-encoding columns, varies).
    * `reconstruction_esc` / `reconstruction_rss`: float32 `[S, h, w]` magnitude targets (320 x 320).
    * `ismrmrd_header`: scalar bytes dataset holding the ISMRMRD XML header.
    * `mask` (test split only): the sampled columns `[W]`.
    * attrs: `acquisition`, `patient_id`, `max`, `norm` (and `acceleration`, `num_low_frequency`
      in the test split).
Reconstruction files for the official evaluator hold one dataset, `reconstruction` `[S, h, w]`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.errors import DataError
from common.io.atomic import atomic_path

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
TARGET_KEYS = ("reconstruction_esc", "reconstruction_rss")
_NAN_CHECK_SLICES = 8  # slices read at a time when scanning k-space for NaN (bounds memory)


@dataclass(frozen=True)
class FastMRIHeader:
    """The header fields the fastMRI transforms need.

    Attributes:
        encoding_size: encoded k-space matrix `(x, y, z)`, e.g. `(640, 368, 1)`.
        recon_size: reconstructed image matrix `(x, y, z)`, e.g. `(320, 320, 1)`.
        center: `kspace_encoding_step_1` centre line.
        maximum: `kspace_encoding_step_1` maximum line.
    """

    encoding_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    center: int
    maximum: int

    @property
    def padding_left(self) -> int:
        """First sampled phase-encoding column (columns before it are zero padding)."""
        return self.encoding_size[1] // 2 - self.center

    @property
    def padding_right(self) -> int:
        """One past the last sampled phase-encoding column."""
        return self.padding_left + self.maximum + 1


def _find(root: ET.Element, path: str) -> ET.Element | None:
    """Find `a/b/c` below the root with the ISMRMRD namespace, or without one."""
    namespaced = "/".join(f"{{{ISMRMRD_NS}}}{part}" for part in path.split("/"))
    found = root.find(namespaced)
    return found if found is not None else root.find(path)


def _int_at(root: ET.Element, path: str, file: str | os.PathLike | None) -> int:
    element = _find(root, path)
    if element is None or element.text is None:
        raise DataError(file, f"ismrmrd_header has no {path}")
    try:
        return int(round(float(element.text.strip())))
    except ValueError as err:
        raise DataError(file, f"ismrmrd_header {path} is not a number: {element.text!r}") from err


def parse_header_xml(xml: bytes | str, path: str | os.PathLike | None = None) -> FastMRIHeader:
    """Parse the ISMRMRD XML header of a fastMRI file.

    Args:
        xml: the XML text (bytes as stored in `ismrmrd_header`, or str).
        path: the file it came from, named in errors.

    Returns:
        The :class:`FastMRIHeader`.

    Raises:
        DataError: invalid XML or a missing/non-numeric field.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise DataError(path, f"ismrmrd_header is not valid XML ({err})") from err
    enc = "encoding/encodedSpace/matrixSize"
    rec = "encoding/reconSpace/matrixSize"
    lim = "encoding/encodingLimits/kspace_encoding_step_1"
    return FastMRIHeader(
        encoding_size=(
            _int_at(root, f"{enc}/x", path),
            _int_at(root, f"{enc}/y", path),
            _int_at(root, f"{enc}/z", path),
        ),
        recon_size=(
            _int_at(root, f"{rec}/x", path),
            _int_at(root, f"{rec}/y", path),
            _int_at(root, f"{rec}/z", path),
        ),
        center=_int_at(root, f"{lim}/center", path),
        maximum=_int_at(root, f"{lim}/maximum", path),
    )


def _xyz(parent: ET.Element, tag: str, values: tuple[float, ...]) -> None:
    node = ET.SubElement(parent, tag)
    for axis, value in zip("xyz", values, strict=True):
        ET.SubElement(node, axis).text = f"{value:g}" if isinstance(value, float) else str(value)


def header_to_xml(
    header: FastMRIHeader,
    *,
    encoded_fov_mm: tuple[float, float, float] = (280.0, 280.0, 4.5),
    recon_fov_mm: tuple[float, float, float] = (140.0, 140.0, 3.0),
    field_strength_t: float | None = None,
    sequence: dict[str, float] | None = None,
) -> str:
    """Return a minimal valid ISMRMRD XML header with the element paths of the real files.

    Args:
        header: the matrix sizes and encoding limits to write.
        encoded_fov_mm: field of view of the encoded space, mm.
        recon_fov_mm: field of view of the reconstructed space, mm.
        field_strength_t: optional `acquisitionSystemInformation/systemFieldStrength_T`.
        sequence: optional `sequenceParameters` children (e.g. `{"TR": 2750, "TE": 27}`).

    Returns:
        The XML text (UTF-8 declaration included).
    """
    ET.register_namespace("", ISMRMRD_NS)
    q = f"{{{ISMRMRD_NS}}}"
    root = ET.Element(f"{q}ismrmrdHeader")
    if field_strength_t is not None:
        system = ET.SubElement(root, f"{q}acquisitionSystemInformation")
        ET.SubElement(system, f"{q}systemFieldStrength_T").text = f"{field_strength_t:g}"
    ET.SubElement(
        ET.SubElement(root, f"{q}experimentalConditions"), f"{q}H1resonanceFrequency_Hz"
    ).text = "123000000"
    encoding = ET.SubElement(root, f"{q}encoding")
    for space, size, fov in (
        ("encodedSpace", header.encoding_size, encoded_fov_mm),
        ("reconSpace", header.recon_size, recon_fov_mm),
    ):
        node = ET.SubElement(encoding, f"{q}{space}")
        _xyz(node, f"{q}matrixSize", tuple(int(v) for v in size))
        _xyz(node, f"{q}fieldOfView_mm", tuple(float(v) for v in fov))
    ET.SubElement(encoding, f"{q}trajectory").text = "cartesian"
    step1 = ET.SubElement(ET.SubElement(encoding, f"{q}encodingLimits"), f"{q}kspace_encoding_step_1")
    for tag, line in (("minimum", 0), ("maximum", header.maximum), ("center", header.center)):
        ET.SubElement(step1, f"{q}{tag}").text = str(int(line))
    if sequence:
        params = ET.SubElement(root, f"{q}sequenceParameters")
        for tag, value in sequence.items():
            ET.SubElement(params, f"{q}{tag}").text = f"{value:g}" if isinstance(value, float) else str(value)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file for reading, with a DataError for a missing or unreadable file."""
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(path, f"not a readable HDF5 file, corrupt or truncated ({err})") from err


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


class FastMRIFile:
    """Lazy reader of one fastMRI volume file, safe across processes.

    The HDF5 handle is opened on first access in the current process and reopened whenever the
    process id changes (a forked DataLoader worker must not share its parent's handle); it is
    dropped when the object is pickled (spawned workers, DDP), so the object is cheap to send.

    Args:
        path: the `.h5` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._header: FastMRIHeader | None = None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _open_h5(self.path)
            self._pid = os.getpid()
        return self._h5

    @property
    def handle_pid(self) -> int | None:
        """Process id that opened the current HDF5 handle (None while closed)."""
        return self._pid if self._h5 is not None else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def _dataset(self, key: str) -> h5py.Dataset:
        f = self._file()
        if key not in f:
            raise DataError(self.path, f"no dataset {key!r} (has {sorted(f.keys())})")
        return f[key]

    @property
    def header(self) -> FastMRIHeader:
        """The parsed ISMRMRD header (cached)."""
        if self._header is None:
            self._header = parse_header_xml(self._dataset("ismrmrd_header")[()], self.path)
        return self._header

    @property
    def attrs(self) -> dict[str, Any]:
        """File attributes (`max`, `norm`, `acquisition`, `patient_id`, ... when present)."""
        return {key: _plain(value) for key, value in self._file().attrs.items()}

    @property
    def num_slices(self) -> int:
        """Number of slices S of `kspace`."""
        return int(self._dataset("kspace").shape[0])

    def __len__(self) -> int:
        return self.num_slices

    def has(self, key: str) -> bool:
        """Whether the file holds dataset `key`."""
        return key in self._file()

    def kspace(self, index: int) -> np.ndarray:
        """Return slice `index` of the k-space: complex64 `[H, W]`."""
        return np.asarray(self._dataset("kspace")[index], dtype=np.complex64)

    def target(self, index: int, key: str = "reconstruction_esc") -> np.ndarray:
        """Return slice `index` of target `key`: float32 `[h, w]`."""
        return np.asarray(self._dataset(key)[index], dtype=np.float32)

    def mask(self) -> np.ndarray | None:
        """Return the sampled-column mask `[W]` of a test-split file, or None."""
        f = self._file()
        return np.asarray(f["mask"]) if "mask" in f else None

    def close(self) -> None:
        """Close the HDF5 handle (it is reopened on the next access)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._pid = None

    def __enter__(self) -> FastMRIFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FastMRIFile({str(self.path)!r})"


def read_header(path: str | os.PathLike) -> FastMRIHeader:
    """Return the parsed ISMRMRD header of a fastMRI file.

    Raises:
        DataError: unreadable file, missing or invalid `ismrmrd_header`.
    """
    with FastMRIFile(path) as f:
        return f.header


def _check_kspace(f: h5py.File, path: Path) -> int:
    if "kspace" not in f:
        raise DataError(path, f"no 'kspace' dataset (has {sorted(f.keys())})")
    kspace = f["kspace"]
    if not isinstance(kspace, h5py.Dataset) or kspace.dtype.kind != "c" or kspace.ndim != 3:
        shape = getattr(kspace, "shape", None)
        dtype = getattr(kspace, "dtype", None)
        raise DataError(path, f"'kspace' must be complex [slices, H, W], got dtype {dtype} shape {shape}")
    for start in range(0, kspace.shape[0], _NAN_CHECK_SLICES):
        block = kspace[start : start + _NAN_CHECK_SLICES]
        bad = int(block.size - np.count_nonzero(np.isfinite(block)))
        if bad:
            raise DataError(path, f"'kspace' has {bad} NaN/Inf value(s) in slices {start}..")
    return int(kspace.shape[0])


def _check_targets(f: h5py.File, path: Path, require_target: bool | str, slices: int) -> None:
    keys = (require_target,) if isinstance(require_target, str) else TARGET_KEYS
    present = [k for k in keys if k in f]
    if require_target and not present:
        raise DataError(path, f"no target dataset ({' or '.join(keys)})")
    for key in present:
        shape = f[key].shape
        if len(shape) != 3 or shape[0] != slices:
            raise DataError(path, f"{key!r} must be [{slices}, h, w] like kspace, got {shape}")


def validate_fastmri_file(path: str | os.PathLike, require_target: bool | str = False) -> FastMRIHeader:
    """Check that a file has the fastMRI layout and return its header.

    Args:
        path: the `.h5` file.
        require_target: True to require `reconstruction_esc` or `reconstruction_rss`, or the
            name of the target that must be present.

    Returns:
        The parsed :class:`FastMRIHeader`.

    Raises:
        DataError: unreadable/truncated HDF5, missing or non-complex-3-D `kspace`, NaN/Inf in
            k-space, missing/invalid `ismrmrd_header`, missing or mis-shaped target.
    """
    path = Path(path)
    with _open_h5(path) as f:
        slices = _check_kspace(f, path)
        if "ismrmrd_header" not in f:
            raise DataError(path, "no 'ismrmrd_header' dataset")
        header = parse_header_xml(f["ismrmrd_header"][()], path)
        _check_targets(f, path, require_target, slices)
    return header


def write_fastmri_volume(
    path: str | os.PathLike,
    kspace: np.ndarray,
    header: FastMRIHeader | str | bytes,
    attrs: dict[str, Any],
    targets: dict[str, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
) -> Path:
    """Write one volume in the official fastMRI single-coil layout, atomically.

    Args:
        path: destination `.h5` file.
        kspace: complex `[S, H, W]` (stored as complex64).
        header: a :class:`FastMRIHeader` (written with :func:`header_to_xml`) or the XML text.
        attrs: file attributes: `acquisition`, `patient_id`, and for test files `acceleration`,
            `num_low_frequency`. `max` and `norm` default to those of the first target.
        targets: `{"reconstruction_esc": float32 [S, h, w], "reconstruction_rss": ...}`.
        mask: sampled columns `[W]` (test split).

    Returns:
        The destination path.

    Raises:
        ValueError: k-space not complex 3-D, or a target whose slice count differs.
    """
    kspace = np.asarray(kspace)
    if not np.iscomplexobj(kspace) or kspace.ndim != 3:
        raise ValueError(f"kspace must be complex [S, H, W], got {kspace.dtype} {kspace.shape}")
    targets = {k: np.asarray(v, dtype=np.float32) for k, v in (targets or {}).items()}
    for key, value in targets.items():
        if value.ndim != 3 or value.shape[0] != kspace.shape[0]:
            raise ValueError(f"target {key!r} must be [{kspace.shape[0]}, h, w], got {value.shape}")
    xml = header_to_xml(header) if isinstance(header, FastMRIHeader) else header
    all_attrs = dict(attrs)
    if targets:
        first = next(iter(targets.values()))
        all_attrs.setdefault("max", float(first.max()))
        all_attrs.setdefault("norm", float(np.linalg.norm(first)))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64, copy=False))
        for key, value in targets.items():
            f.create_dataset(key, data=value)
        f.create_dataset("ismrmrd_header", data=np.bytes_(xml.encode() if isinstance(xml, str) else xml))
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask))
        for key, value in all_attrs.items():
            f.attrs[key] = value
    return Path(path)


def write_reconstructions(out_dir: str | os.PathLike, recons: dict[str, np.ndarray]) -> list[Path]:
    """Write one HDF5 file per volume with dataset `reconstruction`, as the fastMRI evaluator reads.

    Args:
        out_dir: output folder (created).
        recons: `{fname: float32 [S, h, w]}`; `fname` is the original file name (`file1000000.h5`
            or without `.h5`).

    Returns:
        The written paths, in the order of `recons`.

    Raises:
        DataError: a reconstruction that is not 3-D (naming its fname).
    """
    written = []
    for fname, volume in recons.items():
        name = Path(fname).name
        target = Path(out_dir) / (name if name.endswith(".h5") else f"{name}.h5")
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise DataError(fname, f"reconstruction must be [slices, h, w], got shape {volume.shape}")
        with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=volume)
        written.append(target)
    return written


def read_reconstruction(path: str | os.PathLike, key: str = "reconstruction") -> np.ndarray:
    """Return dataset `key` of a reconstruction file as float32 `[S, h, w]`.

    Raises:
        DataError: missing or unreadable file, no dataset `key`, a dtype that is not real (complex k-space or
            image data instead of a magnitude image), or NaN / infinite values (naming the first such slice).
    """
    path = Path(path)
    with _open_h5(path) as f:
        if key not in f:
            raise DataError(path, f"no dataset {key!r} (has {sorted(f.keys())})")
        dtype = f[key].dtype
        if dtype.kind not in "fiu":
            what = "complex" if dtype.kind == "c" else "non-numeric"
            raise DataError(path, f"dataset {key!r} has {what} dtype {dtype}; a reconstruction is a real "
                                  "(magnitude) image")
        volume = np.asarray(f[key], dtype=np.float32)
    bad = ~np.isfinite(volume)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise DataError(path, f"dataset {key!r} has {int(bad.sum())} NaN / infinite value(s), the first at "
                              f"index {tuple(int(i) for i in first)} (slice {int(first[0])})")
    return volume
