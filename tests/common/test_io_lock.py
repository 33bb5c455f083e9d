"""The prepare lock: processes that write one data folder take turns; no lock where none can be taken."""

from __future__ import annotations

import errno
import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

import common.io.lock as lock_module
from common.io.lock import LOCK_NAME, prepare_lock


def _hold(folder: str, journal: str, inside: mp.synchronize.Event, release: mp.synchronize.Event) -> None:
    with prepare_lock(folder) as held:
        assert held
        with open(journal, "a") as f:
            f.write("first in\n")
        inside.set()
        release.wait(30)
        with open(journal, "a") as f:
            f.write("first out\n")


def test_a_second_process_waits_for_the_first_to_leave(tmp_path: Path) -> None:
    folder, journal = tmp_path / "data", tmp_path / "journal.txt"
    ctx = mp.get_context("spawn")
    inside, release = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_hold, args=(str(folder), str(journal), inside, release))
    first.start()
    held = []

    def second() -> None:
        with prepare_lock(folder) as got:
            held.append(got)
            with open(journal, "a") as f:
                f.write("second in\n")

    waiter = threading.Thread(target=second)
    try:
        assert inside.wait(60), "the first process never took the lock"
        waiter.start()
        time.sleep(0.5)
        assert journal.read_text().splitlines() == ["first in"]  # the second one is waiting
    finally:
        release.set()
        waiter.join(60)
        first.join(60)
    assert first.exitcode == 0
    assert held == [True]
    assert journal.read_text().splitlines() == ["first in", "first out", "second in"]
    assert (folder / LOCK_NAME).is_file()


def test_the_lock_is_free_again_after_an_error_in_the_block(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with prepare_lock(tmp_path):
            raise RuntimeError("boom")
    with prepare_lock(tmp_path) as held:
        assert held


def test_a_folder_that_takes_no_lock_file_runs_the_block_unlocked(tmp_path: Path, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(lock_module.os, "open", read_only)
    ran = []
    with prepare_lock(tmp_path / "cache") as held:
        ran.append(held)
    assert ran == [False]


def test_a_file_system_without_locks_runs_the_block_unlocked(tmp_path: Path, no_file_locks) -> None:
    with prepare_lock(tmp_path) as held:
        assert held is False


def test_other_errors_are_not_hidden(tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(lock_module.os, "open", broken)
    with pytest.raises(OSError, match="Input/output"):
        with prepare_lock(tmp_path):
            pass
