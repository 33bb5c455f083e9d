"""CPU process setup shared by every command: torch thread choice and the memory allocator's settings.

On a CPU whose cores are already busy with other processes, a second intra-op thread mostly waits for a core:
on this project's 2-core test machine, at load average 9, a demo-size SAINT train step took 2.1 s on 2 threads and
0.29 s on 1 thread, and a SPiN step was 5x slower on 2 threads. `choose_threads("auto")` therefore takes one
thread when the load average exceeds the core count and every core otherwise.
"""

from __future__ import annotations

import ctypes
import os
import sys

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
