"""CPU process setup shared by every command: torch thread choice and the memory allocator's settings.

On a CPU whose cores are already busy with other processes, a second intra-op thread mostly waits for a core:
on this project's 2-core test machine, at load average 9, a demo-size SAINT train step took 2.1 s on 2 threads and
0.29 s on 1 thread, and a SPiN step was 5x slower on 2 threads. `choose_threads("auto")` therefore takes one
thread when the load average exceeds the core count and every core otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import torch

_M_TRIM_THRESHOLD = -1  # glibc mallopt() parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_allocator_tuned = False


def choose_threads(requested: int | str | None = "auto") -> int:
    """Returns a torch intra-op thread count.

    Args:
        requested: a positive integer (or its string form) to use as given; "auto", None or 0 to choose from
            the load: 1 when the 1-minute load average exceeds the core count, else every core.

    Returns:
        The thread count, at least 1.

    Raises:
        ValueError: `requested` is neither "auto" nor an integer.
    """
    if requested not in (None, "auto", 0, "0"):
        try:
            return max(1, int(requested))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"threads must be an integer or 'auto', got {requested!r}") from None
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else cores


def set_threads(requested: int | str | None = "auto") -> int:
    """Sets torch's intra-op thread count by `choose_threads(requested)` and returns it."""
    torch.set_num_threads(choose_threads(requested))
    return torch.get_num_threads()


def tune_allocator() -> bool:
    """Makes glibc keep freed memory for reuse instead of unmapping it after every large tensor.

    glibc serves each allocation above 32 MB (the activations of a batch of slices) with a fresh `mmap` and
    unmaps it on free, so the next batch page-faults its way through zeroed pages again: on this project's 2-core
    test machine a SPiN whole-scan prediction (32 slices per batch) spent 28 of its 54 s fp32 in the kernel.
    With mmap disabled for chunks and heap trimming off, the same scan took 38 s fp32 and 12.9 s bf16 (from
    19.2 s). The process keeps its high-water memory until it exits, as a training loop does anyway.
    The same effect before start-up: `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>` (the Makefile exports
    them). Opt out with the environment variable `MEDIMG_ALLOCATOR=system`.

    Returns:
        True when the settings were applied (Linux with glibc), False otherwise.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("MEDIMG_ALLOCATOR") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mallopt returns 1 on success; -1 for the trim threshold means "never trim" (mallopt(3)).
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        return False
    return _allocator_tuned


def release_memory() -> None:
    """Returns the heap's free memory to the OS now (glibc `malloc_trim`; a no-op elsewhere).

    With `tune_allocator()` a process keeps its high-water memory; call this between phases whose peaks should be
    measured apart, or before a long idle period.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of a CPU with bf16 arithmetic


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """Returns the CPU's feature flags ("avx512f", "avx512_bf16", "amx_bf16", ...); empty where unknown."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_bf16(device: str = "cpu", flags: set[str] | None = None) -> bool:
    """Returns True when `device` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with the
    AVX-512 bf16 or AMX instructions. Without them bf16 autocast only adds conversions: on a Xeon without either,
    every project's bf16 rows ran 2.3-4.6x slower than fp32.
    """
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def choose_precision(requested: str | int | None = "auto", device: str = "cpu",
                     flags: set[str] | None = None) -> str:
    """Returns the inference precision, "32" or "bf16".

    Args:
        requested: "32"/32, "bf16" (also "bf16-mixed"), or "auto"/None: bf16 where the device has it natively
            (`has_bf16`), else 32.
        device: "cpu" or "cuda[:N]".
        flags: the CPU flags to decide from (default: this machine's).

    Raises:
        ValueError: an unknown precision.
    """
    value = "auto" if requested is None else str(requested)
    if value == "auto":
        return "bf16" if has_bf16(device, flags) else "32"
    if value in ("32", "32-true", "fp32"):
        return "32"
    if value in ("bf16", "bf16-mixed"):
        return "bf16"
    raise ValueError(f"precision must be 32, bf16 or auto, got {requested!r}")


def autocast(precision: str, device: str = "cpu") -> contextlib.AbstractContextManager:
    """Returns bf16 autocast on `device` for precision "bf16" (also "bf16-mixed"), a no-op context otherwise."""
    if precision in ("bf16", "bf16-mixed"):
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()
