"""One writer at a time for a shared data folder: an exclusive lock on a hidden file inside it.

Data modules write their synthetic data or cache in `prepare_data`. Lightning calls it once per node (local
rank 0), so two nodes on one shared file system, or the parallel jobs of a sweep, would write the same folder at
the same time: one process lists files that another is still writing, or two processes rewrite one index. Under
`prepare_lock(folder)` they take turns, and each one checks, once it holds the lock, whether the data is already
there.

The lock is `fcntl.flock` on `<folder>/.prepare.lock`: local file systems and NFS (v4, or v3 with lockd) honour it
between machines. Where the folder cannot take the lock file (a read-only prepared cache) or the file system has no
locks, the block runs unlocked: nothing is written there, or the writes fail with their own error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per data folder there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".prepare.lock"

# Errors that mean "no lock here": read-only or foreign folder, or a file system without locks.
_NO_LOCK = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTDIR}


def _open_lock_file(folder: Path) -> int | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if err.errno not in _NO_LOCK and not isinstance(err, FileExistsError):
            raise
        log.info("%s: cannot create %s (%s); preparing without a lock", folder, LOCK_NAME, err.strerror or err)
        return None


@contextlib.contextmanager
def prepare_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Holds an exclusive lock on `folder` (created when missing) for the block; other holders wait.

    Not re-entrant: a block must not take the lock of its own folder again (the inner call would wait forever).

    Args:
        folder: the data folder the block writes.

    Yields:
        Whether the lock is held (False: the folder or its file system takes no lock; the block runs anyway).
    """
    folder = Path(folder)
    fd = _open_lock_file(folder) if fcntl is not None else None
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
            log.warning("%s: the file system takes no lock (%s); preparing without one (several nodes preparing this "
                        "folder at once could collide)", folder, err.strerror or err)
            held = False
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock
