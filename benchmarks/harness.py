"""Timing, peak-memory and reporting helpers shared by every benchmark.

Each benchmark script (`python -m benchmarks.<project>`) measures, prints one table and writes
`benchmarks/results/<name>.json` with the machine it ran on. Peak memory is the process's resident-set high-water
mark (VmHWM), reset before each measurement through /proc/self/clear_refs, so it includes everything the measured
call allocated (tensors, numpy buffers), not only torch's allocator.

Benchmarks run with `common.runtime.tune_allocator()` applied (as every project command does), and each results
file records the fp32 matmul throughput measured as it is written, so that figures taken on a slower or busier day
can be compared with PERF.md's reference timings (taken when this machine reached 185-250 GFLOP/s).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.io.atomic import save_json
from common.runtime import cpu_flags, has_bf16, release_memory, tune_allocator

tune_allocator()

RESULTS_DIR = Path(__file__).resolve().parent / "results"


_PEAK: dict[int, float] = {}


def matmul_peak(size: int = 4096) -> float:
    """Returns this process's fp32 `size`-square matmul GFLOP/s, measured once per process and thread count."""
    key = size * 1000 + torch.get_num_threads()
    if key not in _PEAK:
        _PEAK[key] = matmul_gflops(size)
    return _PEAK[key]


def matmul_gflops(size: int = 2048, repeat: int = 3) -> float:
    """Returns the best fp32 matmul throughput in GFLOP/s of `size` x `size` matrices with the current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return round(2 * size**3 / best / 1e9, 1)


def machine() -> dict[str, Any]:
    """Returns a description of this machine (CPU, cores, torch build, threads, fp32 matmul GFLOP/s now)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "python": platform.python_version(), "platform": platform.platform(),
            "fp32_matmul_gflops": matmul_gflops(), "fp32_matmul_4096_gflops": matmul_peak(),
            "load_average": os.getloadavg()[0], "allocator_tuned": tune_allocator(),
            "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
            "bf16_hardware": has_bf16("cpu", flags)}


def _reset_peak() -> None:
    """Starts a new peak-memory window: returns the heap's free memory to the OS, then resets VmHWM.

    Without the release, the memory a tuned allocator keeps from earlier measurements would count in this one.
    """
    release_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1, flops: bool = False) -> dict[str, float]:
    """Times `fn()`: median / min wall time (s) over `repeat` runs after `warmup` untimed runs, the median process
    CPU seconds per run (`cpu_s`: what a dedicated machine with the same threads would need, whatever else a shared
    machine runs) and peak RSS (MiB).

    Args:
        fn: the call to time.
        repeat: timed runs.
        warmup: untimed runs first (at least one when `flops`).
        flops: count the floating-point operations of one call (torch's FlopCounterMode, during the first warmup
            run) and add `gflop` per call, `gflops_per_s` = gflop / median and `efficiency` = gflops_per_s / the
            process's fp32 4096-square matmul GFLOP/s (`matmul_peak`): a figure comparable across machines and
            across days of one shared machine.
    """
    out: dict[str, float] = {}
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        out["gflop"] = counter.get_total_flops() / 1e9
        warmup -= 1
    for _ in range(warmup):
        fn()
    _reset_peak()
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    out.update(median_s=statistics.median(times), min_s=min(times), cpu_s=statistics.median(cpu),
               peak_rss_mb=_peak_mb(), repeat=repeat)
    if flops:
        out["gflops_per_s"] = out["gflop"] / out["median_s"]
        # the machine-independent figure: the share of this process's fp32 matmul throughput reached
        out["efficiency"] = out["gflops_per_s"] / matmul_peak()
    return out


def print_table(rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Prints rows (dicts with the same keys) as an aligned table."""
    if not rows:
        return
    keys = list(rows[0].keys())
    cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    if title:
        print(f"\n{title}")
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def previous_rows(name: str, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Returns the rows of the last `benchmarks/results/<name>.json` for which `keep(row)` is true ([] if none).

    A benchmark that reruns only one part (quality or speed) keeps the other part's last rows this way.
    """
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return []
    return [row for row in json.loads(path.read_text()).get("rows", []) if keep(row)]


def write_results(name: str, rows: Sequence[dict[str, Any]], **extra: Any) -> Path:
    """Writes `benchmarks/results/<name>.json` (rows + machine + timestamp) atomically and returns its path."""
    path = RESULTS_DIR / f"{name}.json"
    save_json(path, {"name": name, "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "rows": list(rows), **extra})
    return path
