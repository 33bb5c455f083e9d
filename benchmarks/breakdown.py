"""Where a benchmark row's time goes: `python -m benchmarks.breakdown [--rows spin_step ...] [--threads 2]`.

Profiles one call of a speed row (torch.profiler, self CPU time of each operator) and sorts the operators into
convolutions / matrix products (the only FLOPs `measure(..., flops=True)` counts), normalisation, activations,
other elementwise arithmetic, copies and layout changes, the optimiser, and the rest. The convolutions' own
GFLOP/s over the same run's fp32 matmul is the efficiency the row would reach if every other operator were
free: the ceiling that fusing BatchNorm and activations into the convolutions could approach. Shares, not
times, are the figures to compare across machines and loads (the profiler adds its own per-operator cost).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import matmul_gflops, print_table
from common.runtime import set_threads

#: category -> substrings of aten operator names, first match wins (the order matters: "conv" before "add").
CATEGORIES = (("conv/matmul", ("conv", "mm", "matmul", "linear", "addmm", "bmm", "baddbmm")),
              ("normalisation", ("norm",)),
              ("activation", ("relu", "sigmoid", "tanh", "gelu", "elu", "softmax", "threshold", "hardtanh")),
              ("optimiser", ("foreach", "adam", "lerp", "addcdiv", "addcmul")),
              ("copy/layout", ("copy", "contiguous", "cat", "pad", "clone", "empty", "zero", "fill", "index",
                               "stack", "to_dense", "reorder", "transpose", "permute", "as_strided", "slice",
                               "pixel_shuffle", "pixel_unshuffle", "upsample", "flip", "roll")),
              ("elementwise", ("add", "sub", "mul", "div", "pow", "sqrt", "exp", "log", "abs", "neg", "clamp",
                               "where", "sum", "mean", "max", "min", "sign", "rsub", "fft")))


def category(name: str) -> str:
    """Returns the category of an aten operator name (see `CATEGORIES`), "other" when none matches."""
    short = name.split("::")[-1].lower()
    for label, keys in CATEGORIES:
        if any(key in short for key in keys):
            return label
    return "other"


def breakdown(call: Callable[[], object], name: str) -> list[dict]:
    """Returns one row per category of one profiled `call()`: its share of the operators' self CPU time.

    The conv/matmul row also carries the GFLOP/s of the convolutions alone and that over the fp32 matmul timed
    right after (`conv_efficiency`): the efficiency ceiling of the call.
    """
    call()  # warm-up: oneDNN primitives, allocator
    with FlopCounterMode(display=False) as counter:
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("mkldnn"):
            label = category(event.key)
            totals[label] = totals.get(label, 0.0) + event.self_cpu_time_total / 1e6
    whole = sum(totals.values()) or 1.0
    peak = matmul_gflops(4096, repeat=2)
    rows = []
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        row = {"row": name, "category": label, "share": round(seconds / whole, 3), "self_s": round(seconds, 3)}
        if label == "conv/matmul":
            gflops = counter.get_total_flops() / 1e9 / seconds
            row.update(conv_gflops_per_s=round(gflops, 1), conv_efficiency=round(gflops / peak, 3))
        rows.append(row)
    return rows


def row_calls() -> dict[str, Callable[[], Callable[[], object]]]:
    """Returns row name -> a builder of the call that the benchmark of that row times (fp32)."""

    def spin_step() -> Callable[[], object]:
        from benchmarks.spin import _train_step

        x, y = torch.randn(8, 5, 197, 233), (torch.rand(8, 1, 197, 233) > 0.97).float()
        return _train_step(False, False, x, y)[1]

    def spin_scan() -> Callable[[], object]:
        import numpy as np

        from benchmarks.spin import scan_network
        from projects.spin.predict import logits_function, predict_volume

        fn = logits_function(scan_network(False, False, True))
        scan = np.random.default_rng(0).uniform(0, 100, (197, 233, 16)).astype(np.float32)
        return lambda: predict_volume(fn, scan, 5, 8)

    def easysr_step() -> Callable[[], object]:
        from benchmarks.easysr import gan_step
        from projects.easysr.model import EasySRGenerator, PatchDiscriminator3D

        lr, hr = torch.rand(2, 1, 128, 64, 128) * 255, torch.rand(2, 1, 128, 192, 128) * 255
        gen, disc = EasySRGenerator().train(), PatchDiscriminator3D(head="patch").train()
        opt_g, opt_d = torch.optim.Adam(gen.parameters()), torch.optim.Adam(disc.parameters())
        return lambda: gan_step(gen, disc, opt_g, opt_d, lr, hr, 1e-3, "32")

    def fastmri_step() -> Callable[[], object]:
        from benchmarks.fastmri_gen import build_module, full_size_batch, step_fn

        return step_fn(build_module("baseline", "fixed"), full_size_batch(8, "fixed"), False)

    def fastmri_volume() -> Callable[[], object]:
        from benchmarks.fastmri_gen import build_module, full_size_batch, volume_fn

        return volume_fn(build_module("baseline", "fixed"), full_size_batch(35, "fixed"), False)

    return {"spin_step": spin_step, "spin_scan": spin_scan, "easysr_step": easysr_step,
            "fastmri_step": fastmri_step, "fastmri_volume": fastmri_volume}


def main(argv: list[str] | None = None) -> int:
    builders = row_calls()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", choices=sorted(builders), default=sorted(builders))
    parser.add_argument("--threads", default="2", help="torch threads (default 2, as the speed rows)")
    args = parser.parse_args(argv)
    set_threads(int(args.threads) if args.threads.isdigit() else args.threads)
    for name in args.rows:
        print_table(breakdown(builders[name](), name), f"{name}: self CPU time by operator category")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
