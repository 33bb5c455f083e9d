"""Exclusive locks on hidden files in data folders: one writer at a time, across processes and machines.

Two users:
- `prepare_lock(folder)`: data modules write their synthetic data or cache in `prepare_data`. Lightning calls it once
  per node (local rank 0), so two nodes on one shared file system, or the parallel jobs of a sweep, would write the
  same folder at the same time: one process lists files that another is still writing, or two processes rewrite
  one index. Under `prepare_lock` they take turns, and each one checks, once it holds the lock, whether the data
  is already there.
- `VolumeCache` serialises its index updates with `exclusive_lock(<cache>/.index.lock, required=True)`.

The lock is `fcntl.flock`: local file systems and NFS (v4, or v3 with lockd) honour it between machines. On a file
system without locks the block runs unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from common.errors import DataError
from common.io.atomic import is_unwritable

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per data folder there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".prepare.lock"

# Errors that mean "no lock here": read-only or foreign folder, or a file system without locks.
_NO_LOCK = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTDIR}


def _open_lock_file(path: Path, required: bool) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if required:
            if is_unwritable(err):
                raise DataError(path.parent, f"cannot write in this folder ({err.strerror or err})") from err
            raise
        if err.errno not in _NO_LOCK and not isinstance(err, FileExistsError):
            raise
        log.info("%s: cannot create %s (%s); going on without a lock", path.parent, path.name, err.strerror or err)
        return None


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, required: bool = False) -> Iterator[bool]:
    """Holds an exclusive `flock` on the file `path` (created, with its folder, when missing); other holders wait.

    Not re-entrant: a block must not take the same lock again (the inner call would wait forever).

    Args:
        path: the lock file.
        required: the block writes beside the lock file, so a lock file that cannot be created is an error.

    Yields:
        Whether the lock is held (False: the folder or its file system takes no lock; the block runs anyway).

    Raises:
        DataError: with `required`, the folder cannot take the lock file (no permission, read-only, a file in the way).
    """
    path = Path(path)
    fd = _open_lock_file(path, required) if fcntl is not None else None
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = True
        except OSError as err:
            if err.errno not in _NO_LOCK:
                raise
            log.warning("%s: the file system takes no lock (%s); going on without one (several processes writing "
                        "this folder at once could collide)", path.parent, err.strerror or err)
            held = False
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def prepare_lock(folder: str | os.PathLike) -> contextlib.AbstractContextManager[bool]:
    """Holds an exclusive lock on the data folder `folder` (created when missing) while a block prepares it.

    A folder that cannot take the lock file (a read-only prepared cache) runs the block unlocked: nothing is written
    there, or the writes fail with their own error. Not re-entrant.
    """
    return exclusive_lock(Path(folder) / LOCK_NAME)
