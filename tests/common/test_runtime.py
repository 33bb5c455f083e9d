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


AMD_ZEN5 = {"avx2", "avx512f", "avx512_bf16"}
XEON_AMX = {"avx2", "avx512f", "amx_tile", "amx_bf16"}
XEON_NO_BF16 = {"avx2", "avx512f", "avx512bw"}


@pytest.mark.parametrize(("flags", "expected"), [(AMD_ZEN5, "bf16"), (XEON_AMX, "bf16"), (XEON_NO_BF16, "32"),
                                                 (set(), "32")])
def test_auto_precision_takes_bf16_only_where_the_cpu_computes_in_it(flags, expected) -> None:
    assert runtime.choose_precision("auto", "cpu", flags) == expected
    assert runtime.choose_precision(None, "cpu", flags) == expected


def test_explicit_precision_is_kept_and_unknown_refused() -> None:
    assert runtime.choose_precision("32", flags=AMD_ZEN5) == "32"
    assert runtime.choose_precision(32, flags=AMD_ZEN5) == "32"
    assert runtime.choose_precision("bf16-mixed", flags=XEON_NO_BF16) == "bf16"
    with pytest.raises(ValueError, match="'16'"):
        runtime.choose_precision("16")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert runtime.cpu_flags(info) == {"fpu", "avx512f", "amx_bf16"}
    assert runtime.cpu_flags(tmp_path / "absent") == set()
