from __future__ import annotations

import platform

import pytest
import torch

from common import runtime


def test_explicit_counts_are_used_as_given() -> None:
    assert runtime.choose_threads(3) == 3
    assert runtime.choose_threads("2") == 2
    assert runtime.choose_threads(-4) == 1


def test_auto_takes_one_thread_on_a_busy_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    assert runtime.choose_threads("auto") == 1
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert runtime.choose_threads("auto") == 2
    assert runtime.choose_threads(None) == 2


def test_bad_request_names_the_value() -> None:
    with pytest.raises(ValueError, match="'many'"):
        runtime.choose_threads("many")


def test_set_threads_applies_the_choice() -> None:
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_allocator_settings_apply_once_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_allocator_tuned", False)
    monkeypatch.setenv("MEDIMG_ALLOCATOR", "system")
    assert runtime.tune_allocator() is False
    monkeypatch.delenv("MEDIMG_ALLOCATOR")
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert runtime.tune_allocator() is expected
    assert runtime.tune_allocator() is expected  # a second call is a no-op with the same answer


def test_release_memory_returns_freed_heap_to_the_os() -> None:
    def rss_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS line")

    runtime.tune_allocator()
    big = torch.ones(32, 1024, 1024)  # 128 MB, kept by the tuned heap after it is freed
    del big
    before = rss_mb()
    runtime.release_memory()
    assert rss_mb() < before - 64
