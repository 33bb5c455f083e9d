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


def copy_bandwidth(megabytes: int = 256, repeat: int = 3) -> float:
    """Returns the best memory bandwidth in GB/s (bytes read + written) of a `megabytes` fp32 tensor copy.

    With the matmul figure it gives the machine's balance: the FLOPs per byte below which an operation is bound by
    memory, not arithmetic (a BatchNorm or activation does ~1 FLOP per 8 bytes, a convolution tens to hundreds).
    """
    src = torch.rand(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return round(2 * src.numel() * 4 / best / 1e9, 1)


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
            "copy_gb_per_s": copy_bandwidth(),
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
        warmup: untimed runs first (at least one after the peak-memory window opens, so that the timed runs do
            not pay the first touch of freshly mapped memory).
        flops: count the floating-point operations of one call (torch's FlopCounterMode, during the first warmup
            run) and add `gflop` per call, `gflops_per_s` = gflop / median and `efficiency` = gflops_per_s / the
            fp32 4096-square matmul GFLOP/s timed right after the call (`matmul_gflops`): a figure comparable
            across machines and across the changing load of one shared machine.
    """
    out: dict[str, float] = {}
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        out["gflop"] = counter.get_total_flops() / 1e9
        warmup -= 1
    _reset_peak()
    # at least one untimed call after the heap is returned to the OS: the timed calls then find their memory mapped
    # (a training step's steady state, not its first touch of fresh pages) and the peak still covers one call
    for _ in range(max(warmup, 1)):
        fn()
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
        # the machine-independent figure: the share of the fp32 matmul throughput reached, the matmul timed right
        # after the call so that both see the same load on a shared machine
        out["matmul_gflops"] = max(matmul_gflops(4096, repeat=2), 1e-9)
        out["efficiency"] = out["gflops_per_s"] / out["matmul_gflops"]
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
    host = machine()
    save_json(path, {"name": name, "machine": host, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "rows": list(rows), **extra})
    print(f"\nmachine: {machine_line(host)}")
    return path


def machine_line(host: dict[str, Any]) -> str:
    """Returns one line naming a results file's machine: CPU, cores, threads, the flags that decide bf16, matmul."""
    if "cpu_flags" in host:
        flags = " ".join(f for f in host["cpu_flags"] if f.startswith(("avx512_bf16", "amx"))) or "none"
        bf16 = f"bf16/AMX flags: {flags} (bf16 hardware: {'yes' if host.get('bf16_hardware') else 'no'})"
    else:
        bf16 = "CPU flags not recorded"
    return (f"{host.get('cpu')}, {host.get('cores')} cores, {host.get('threads')} threads; {bf16}; fp32 matmul 4096: "
            f"{host.get('fp32_matmul_4096_gflops')} GFLOP/s; copy {host.get('copy_gb_per_s', '-')} GB/s; load average {host.get('load_average', 0):.1f}")


#: The machines of PERF.md's reference timings (2 cores each, fp32, 2 threads).
REFERENCE_MACHINES = {"2026-11-23": "AMD CPU with avx512_bf16, 2 cores",
                      "2026-12-07": "Intel Xeon, AVX-512, no bf16/AMX, 2 cores"}

#: PERF.md: (project, row) -> the reference implementation's input, seconds per reference machine, its
#: efficiency on 2026-12-07 (None: not recorded) and its peak memory (MiB, None: not recorded). Whole-volume
#: rows ("volume") must beat the reference 2x, the others 1.5x.
REFERENCE: dict[tuple[str, str], dict[str, Any]] = {
    ("saint", "step"): {"input": "MSR batch [4,3,512,10] + distance maps, L1, Adam",
                        "seconds": {"2026-11-23": 1.38, "2026-12-07": 2.90}, "efficiency": 0.36},
    ("saint", "volume"): {"input": "both views + RFN, 256x256x24 -> 96",
                          "seconds": {"2026-11-23": 82.0, "2026-12-07": 203.0}, "efficiency": 0.35},
    ("spin", "step"): {"input": "[8,5,197,233], BCE, Adam", "seconds": {"2026-11-23": 5.2, "2026-12-07": 4.22},
                       "efficiency": 0.21},
    ("spin", "volume"): {"input": "one 197x233x189 scan", "seconds": {"2026-11-23": 20.6, "2026-12-07": 23.4},
                         "efficiency": 0.30, "peak_mb": 1.7 * 1024},
    ("rstn", "step"): {"input": "[1,3,512,512], mode J", "seconds": {"2026-11-23": 9.4, "2026-12-07": 16.7},
                       "efficiency": 0.44},
    ("rstn", "volume"): {"input": "coarse plane Z, 512x512x100",
                         "seconds": {"2026-11-23": 154.0, "2026-12-07": 232.0}, "efficiency": 0.53},
    ("easysr", "step"): {"input": "G+D, [2,1,128,64,128]", "seconds": {"2026-11-23": 23.4, "2026-12-07": 23.1},
                         "efficiency": 0.25},
    # PERF.md gives no efficiency for this row; 0.23 = the generator's 303.6 GFLOP (the same network and
    # FLOPs) / 4.3 s / 311 GFLOP/s, the rule that reproduces PERF.md's figure for the step (1822 / 23.1 / 311)
    ("easysr", "volume"): {"input": "[1,1,128,64,128]", "seconds": {"2026-11-23": 3.3, "2026-12-07": 4.3},
                           "efficiency": 0.23},
    ("fastmri_gen", "step"): {"input": "[8,1,320,320], L1 + GAN",
                              "seconds": {"2026-11-23": 9.4, "2026-12-07": 14.9}, "efficiency": 0.36},
    ("fastmri_gen", "volume"): {"input": "35 slices 320x320", "seconds": {"2026-11-23": 7.1, "2026-12-07": 11.1},
                                "efficiency": 0.40},
}


def reference_day(flags: set[str] | None = None) -> str:
    """Returns the PERF.md reference day measured on a machine like this one: with bf16 instructions or without."""
    return "2026-11-23" if has_bf16("cpu", cpu_flags() if flags is None else flags) else "2026-12-07"


def speed_row(project: str, kind: str, name: str, timing: dict[str, float], **extra: Any) -> dict[str, Any]:
    """Returns one speed row: ours (time, GFLOP/s, efficiency, peak) beside the reference's row from PERF.md.

    Args:
        project: the project (a key of `REFERENCE`).
        kind: "step" or "volume".
        name: what was measured (precision, layout, batch).
        timing: `measure(..., flops=True)`'s result; an `extrapolated_s` key replaces the median when present.
        extra: further columns, placed before the reference's.

    Returns:
        The row: `seconds`, `efficiency`, the reference's `ref_seconds` on the machine of `reference_day()`
        (`ref_machine`), `speedup` = ref_seconds / seconds and the `target_speedup` (2 for whole volumes, else
        1.5), the reference's efficiency of 2026-12-07 and its peak memory where PERF.md has them, and
        `speedup_by_efficiency` = efficiency / the reference's: the time ratio of the two on one machine when
        both compute the same FLOPs (the fp32 rows; a bf16 row's efficiency is against the fp32 matmul).
    """
    ref = REFERENCE[(project, kind)]
    day = reference_day()
    seconds = timing.get("extrapolated_s", timing["median_s"])
    row: dict[str, Any] = {"row": f"{kind}: {name}", "input": ref["input"], "seconds": round(seconds, 3),
                           "gflop": round(timing["gflop"], 1) if "gflop" in timing else None,
                           "gflops_per_s": round(timing["gflop"] / seconds, 1) if "gflop" in timing else None,
                           "efficiency": round(timing["gflop"] / seconds / timing.get("matmul_gflops", matmul_peak()), 3)
                           if "gflop" in timing else None,
                           "peak_rss_mb": round(timing["peak_rss_mb"]), **extra}
    row.update(ref_seconds=ref["seconds"][day], ref_machine=f"{day}: {REFERENCE_MACHINES[day]}",
               speedup=round(ref["seconds"][day] / seconds, 2), target_speedup=2.0 if kind == "volume" else 1.5,
               ref_efficiency_12_07=ref["efficiency"], ref_peak_mb=ref.get("peak_mb"))
    # the same FLOPs at both efficiencies on one machine: the speed-up that the machine-to-machine drift of the
    # seconds above cannot blur
    row["speedup_by_efficiency"] = round(row["efficiency"] / ref["efficiency"], 2) \
        if row["efficiency"] is not None and ref["efficiency"] else None
    return row
