"""Memory budgets for whole-volume inference: how many slices or patches fit in a given peak memory.

The memory a forward pass needs is measured, not estimated from layer shapes: the process's resident-set
high-water mark (Linux `VmHWM`, reset through `/proc/self/clear_refs`) over passes of 1 and 2 items gives the
bytes per item and the fixed part (workspaces, weight copies of autocast), whatever the network, the precision
and the convolution algorithms are. Where the high-water mark cannot be read, the budget is not applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common.runtime import release_memory

#: The share of the budget left after the process's current memory that the batches may plan for: the heap grows
#: beyond the live tensors (fragmentation, convolution kernels cached per batch shape); on a SPiN scan without
#: headroom a 1.7G budget peaked at 1.8-2.3 GB.
HEADROOM = 0.75
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str | int | float | None) -> int | None:
    """Returns a memory size in bytes from "1.7G", "1700M", "512k", a plain byte count, or None for None/"none".

    Units are binary (G = 2**30 bytes), case-insensitive, with an optional trailing "B" or "iB".

    Raises:
        ValueError: not a size.
    """
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"a memory size looks like 1.7G, 1700M or 512k, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def resident_bytes() -> int | None:
    """Returns the process's resident memory now (bytes), or None where /proc is not available."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def high_water_of(fn: Callable[[], Any]) -> tuple[int, int] | None:
    """Returns (resident bytes before `fn()`, the resident high-water mark during it) of this process.

    Free heap memory is returned to the OS first, so memory the allocator kept from earlier calls does not hide
    the call's own need. None where the high-water mark cannot be reset or read.
    """
    release_memory()
    before = resident_bytes()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    fn()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return before, peak * 1024


def peak_bytes_of(fn: Callable[[], Any]) -> int | None:
    """Returns how far `fn()` raised the process's resident memory above its level before the call (bytes)."""
    marks = high_water_of(fn)
    return None if marks is None else max(0, marks[1] - marks[0])


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def batch_for_budget(run: Callable[[int], Any], max_memory: int, max_batch: int, n_items: int = 0) -> int:
    """Returns the largest batch (1 .. `max_batch`) whose forward pass keeps the process under `max_memory`.

    Args:
        run: runs one forward pass on a batch of the given size and returns its result (tensors).
        max_memory: the peak resident memory allowed for the whole process (bytes).
        max_batch: the batch used when the budget allows more (or cannot be measured).
        n_items: items in the whole volume, whose results (as many bytes per item as `run` returns) are held
            until the end.

    Returns:
        The batch size; 1 when even one item does not fit (the budget is then exceeded, not refused).
    """
    result_bytes: list[int] = []

    def probe(size: int) -> None:
        result_bytes.append(_nbytes(run(size)) // size)

    with torch.no_grad():
        probe(1)  # one-time allocations (kernel caches, thread buffers) stay out of the measurements
        one = peak_bytes_of(lambda: probe(1))
        two = peak_bytes_of(lambda: probe(2))
    release_memory()
    now = resident_bytes()
    if one is None or two is None or now is None:
        return max_batch
    # the growth from 1 to 2 items, but never less than half the 2-item need: page reuse and allocator noise
    # can make the growth look smaller than it is, and the budget must hold
    per_item = max(two - one, two / 2, 1)
    fixed = max(0.0, one - per_item)
    free = HEADROOM * (max_memory - now) - fixed - result_bytes[0] * n_items
    return int(min(max_batch, max(1, free // per_item)))
