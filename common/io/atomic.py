"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

A reader (another process, a DataLoader worker, a resumed run) therefore sees either the old
file or the complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError

# A compressed suffix is kept together with the one before it, so that `x.nii.gz` keeps `.nii.gz`.
_COMPRESSED_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".lz4"}


def _real_extension(path: Path) -> str:
    """Return the extension that libraries inspect (`.nii.gz`, `.h5`, `.npy`, or '')."""
    suffixes = path.suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSED_SUFFIXES and len(suffixes) >= 2:
        return "".join(suffixes[-2:])
    return suffixes[-1]


# Errors that mean "this folder cannot take the output", as opposed to a bug in the writer.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT}


def is_unwritable(err: BaseException) -> bool:
    """Returns whether `err` says a file or folder cannot be written there (permission, read-only, full, not a dir)."""
    return isinstance(err, OSError) and (isinstance(err, PermissionError) or err.errno in _UNWRITABLE)


def writable_folder(path: str | os.PathLike) -> Path:
    """Returns `path` as an existing folder, created with its parents when missing.

    Raises:
        DataError: it cannot be created (a regular file in the way, no permission, read-only file system).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if not is_unwritable(err):
            raise
        raise DataError(folder, f"cannot create the output folder ({err.strerror or err})") from err
    return folder


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds.

    The temporary name ends with the real extension of `path` (or `suffix`), so that libraries
    which choose a format from the file name (nibabel `.nii.gz`, numpy `.npy`, h5py) behave as
    they would on the final name. Parent folders are created. The temporary file is not created
    here: the caller writes it. On any exception the temporary file is removed and the target is
    left untouched.

    Args:
        path: the final file path.
        suffix: extension for the temporary name; defaults to the extension of `path`.

    Yields:
        The temporary path to write to.

    Raises:
        FileNotFoundError: the block finished without writing the temporary file.
        DataError: the folder cannot take the file (no permission, read-only, full, a file in the way).
    """
    target = Path(path)
    writable_folder(target.parent)
    ext = _real_extension(target) if suffix is None else suffix
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.parent / f".{target.name}.{token}.tmp{ext}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{target}: nothing was written to the temporary file {tmp.name}")
        os.replace(tmp, target)
    except BaseException as err:
        _remove(tmp)
        if is_unwritable(err):
            problem = getattr(err, "strerror", None) or str(err)
            raise DataError(target.parent, f"cannot write {target.name} in this folder ({problem})") from err
        raise


def _json_default(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths, which `json` does not know, to plain values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def save_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON, atomically; numpy scalars and arrays become plain numbers and lists.

    Args:
        path: destination file.
        obj: any JSON-serialisable object (numpy values and paths allowed).
        indent: JSON indentation (None for one line).

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, default=_json_default, allow_nan=True)
            f.write("\n")
    return Path(path)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write one array in `.npy` format, atomically (no pickled objects).

    Args:
        path: destination file (written under exactly this name, no `.npy` is appended).
        array: the array, any shape and numeric dtype.

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asanyarray(array), allow_pickle=False)
    return Path(path)


def save_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write a text file, atomically.

    Args:
        path: destination file.
        text: the content.
        encoding: text encoding.

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Returns the parsed content of a JSON file (the reading twin of `save_json`).

    Args:
        path: the file.
        what: what the file is, for the error message (e.g. "split file", "dataset.json").

    Raises:
        DataError: the file is missing, unreadable or not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(path, f"{what} not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read the {what} ({err})") from err
