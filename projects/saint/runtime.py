"""Thread choice for CPU runs on a shared machine."""

from __future__ import annotations

import os

import torch


def choose_threads() -> int:
    """Returns the torch thread count: 1 when other processes already load the cores, else all cores.

    Small convolutions on several threads stall at every synchronisation when a core is busy elsewhere (a
    demo-size SAINT train step: 2.1 s on 2 threads vs 0.29 s on 1 thread, at load average 9 on 2 cores).
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores - 0.5 else cores


def set_threads(threads: int | None = None) -> int:
    """Sets and returns the torch thread count (`threads`, or `choose_threads()` when None or 0)."""
    torch.set_num_threads(threads or choose_threads())
    return torch.get_num_threads()
