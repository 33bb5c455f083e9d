"""Torch thread choice for CPU runs, shared by the demos, benchmarks and prediction commands.

On a CPU whose cores are already busy with other processes, a second intra-op thread mostly waits for a core:
on this project's 2-core test machine, at load average 9, a demo-size SAINT train step took 2.1 s on 2 threads and
0.29 s on 1 thread, and a SPiN step was 5x slower on 2 threads. `choose_threads("auto")` therefore takes one
thread when the load average exceeds the core count and every core otherwise.
"""

from __future__ import annotations

import os

import torch


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
