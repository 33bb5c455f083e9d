"""Inference levers compared in CPU seconds: `python -m benchmarks.levers [--slices 16] [--repeat 3] [--parts ...]`.

On a shared machine whose load drifts, wall times of rows measured minutes apart are not comparable; process CPU
seconds on one thread, with the variants run in turn in one process, are. Rows: SPiN and the EasySR generator
(paper size, random weights, non-trivial BatchNorm statistics) plain, with BatchNorm folded (`common.fold`),
folded + channels_last and folded + bf16 autocast; then SPiN slices per pass fixed (32, 8) against a 1.7G budget
(`common.memory`), with the peak resident memory of each call; with `--parts graphs`, SPiN eager against a frozen
TorchScript graph and `torch.compile` (`common.compiled`); with `--parts tail`, the EasySR generator's tail
(transposed conv + conv to one channel) as torch's convolutions against matrix products (`output_layers`), one
whole-volume inference and one G+D train step each, both after a warm-up (no first-touch page faults).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.harness import print_table
from common.compiled import FixedBatch
from common.fold import fold_batchnorm
from common.memory import high_water_of, parse_memory
from projects.easysr.infer import upsample_normalised
from projects.easysr.model import EasySRGenerator
from projects.spin.model import SPiN
from projects.spin.predict import logits_function, predict_volume


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Returns `net` in eval mode with BatchNorm statistics away from the identity (else folding is a no-op)."""
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


class ChannelsLast(torch.nn.Module):
    """Runs a 2-D network on channels_last inputs."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def lever_cases(slices: int) -> dict[str, Callable[[], object]]:
    """Returns name -> call of each network and lever."""
    spin = _trained_like(SPiN())
    folded = fold_batchnorm(spin, torch.randn(1, 5, 64, 64))[0]
    scan = np.random.default_rng(0).uniform(0, 100, (197, 233, slices)).astype(np.float32)
    gen = _trained_like(EasySRGenerator())
    gen_folded = fold_batchnorm(gen, torch.randn(1, 1, 8, 8, 8))[0]
    lr = torch.rand(64, 32, 64) * 255
    return {"SPiN plain fp32": lambda: predict_volume(logits_function(spin), scan, 5, 8),
            "SPiN BN folded fp32": lambda: predict_volume(logits_function(folded), scan, 5, 8),
            "SPiN BN folded channels_last fp32": lambda: predict_volume(logits_function(ChannelsLast(folded)), scan,
                                                                        5, 8),
            "SPiN BN folded bf16": lambda: predict_volume(logits_function(ChannelsLast(folded), bf16=True), scan,
                                                          5, 8),
            "EasySR G [64,32,64] plain fp32": lambda: upsample_normalised(gen, lr),
            "EasySR G BN folded fp32": lambda: upsample_normalised(gen_folded, lr),
            "EasySR G BN folded bf16": lambda: upsample_normalised(gen_folded, lr, precision="bf16")}


class _Logits(torch.nn.Module):
    """SPiN's `[B, H, W]` logits as one tensor output (what TorchScript traces)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["logits"][:, 0]


def graph_cases(slices: int) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """Returns name -> SPiN (BatchNorm folded, fp32) eager, as a frozen TorchScript graph and compiled
    (`common.compiled.FixedBatch`), with the wall seconds each graph took to build."""
    net = fold_batchnorm(_trained_like(SPiN()), torch.randn(1, 5, 64, 64))[0].eval()
    scan = np.random.default_rng(0).uniform(0, 100, (197, 233, slices)).astype(np.float32)
    eager = logits_function(net)
    build: dict[str, float] = {}
    start = time.perf_counter()
    with torch.no_grad():
        traced = torch.jit.trace(_Logits(net).eval(), torch.randn(8, 5, 197, 233), strict=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    build["SPiN BN folded fp32 frozen TorchScript"] = time.perf_counter() - start
    compiled = FixedBatch(eager)
    start = time.perf_counter()
    predict_volume(compiled, scan[..., :8], 5, 8)
    build["SPiN BN folded fp32 compiled"] = time.perf_counter() - start
    return ({"SPiN BN folded fp32 eager": lambda: predict_volume(eager, scan, 5, 8),
             "SPiN BN folded fp32 frozen TorchScript": lambda: predict_volume(frozen, scan, 5, 8),
             "SPiN BN folded fp32 compiled": lambda: predict_volume(compiled, scan, 5, 8)}, build)


def budget_cases(slices: int) -> dict[str, Callable[[], object]]:
    """Returns name -> a SPiN segmentation of `slices` slices with a fixed batch or a memory budget."""
    fn = logits_function(_trained_like(SPiN()))
    scan = np.random.default_rng(0).uniform(0, 100, (197, 233, slices)).astype(np.float32)
    return {"SPiN 32 slices/pass": lambda: predict_volume(fn, scan, 5, 32),
            "SPiN 8 slices/pass": lambda: predict_volume(fn, scan, 5, 8),
            "SPiN budget 1.7G": lambda: predict_volume(fn, scan, 5, 32, max_memory=parse_memory("1.7G"))}


def tail_cases() -> dict[str, Callable[[], object]]:
    """Returns name -> an EasySR inference or G+D step (fp32, reference sizes) with either generator tail."""
    from benchmarks.easysr import gan_step
    from projects.easysr.model import PatchDiscriminator3D

    torch.manual_seed(0)
    lr, hr = torch.rand(2, 1, 128, 64, 128) * 255, torch.rand(2, 1, 128, 192, 128) * 255
    cases: dict[str, Callable[[], object]] = {}
    for tail in ("conv", "matmul"):
        gen = _trained_like(EasySRGenerator(output_layers=tail))
        cases[f"EasySR G [128,64,128] tail={tail}"] = lambda g=gen: _no_grad(upsample_normalised, g.eval(), lr[0, 0])
    for tail in ("conv", "matmul"):
        gen, disc = EasySRGenerator(output_layers=tail).train(), PatchDiscriminator3D(head="patch").train()
        opt_g, opt_d = torch.optim.Adam(gen.parameters(), 2e-4), torch.optim.Adam(disc.parameters(), 2e-4)
        cases[f"EasySR G+D step [2,1,128,64,128] tail={tail}"] = \
            lambda g=gen, d=disc, og=opt_g, od=opt_d: gan_step(g.train(), d, og, od, lr, hr, 1e-3, "32")
    return cases


def _no_grad(fn: Callable[..., object], *args: object) -> object:
    with torch.no_grad():
        return fn(*args)


def interleaved(cases: dict[str, Callable[[], object]], repeat: int, grad: bool = False) -> list[dict]:
    """Runs each case once untimed, then all in turn `repeat` times; returns CPU seconds and peak memory rows
    (`grad`: with autograd enabled, for training steps)."""
    with torch.set_grad_enabled(grad):
        for call in cases.values():
            call()
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        peak: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeat):
            for name, call in cases.items():
                start = time.process_time()
                marks = high_water_of(call)
                cpu[name].append(time.process_time() - start)
                peak[name].append(marks[1] / 2**20 if marks else float("nan"))
    return [{"row": name, "cpu_s_min": min(cpu[name]), "cpu_s_median": float(np.median(cpu[name])),
             "peak_mb_max": max(peak[name])} for name in cases]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=16, help="SPiN slices of the lever rows")
    parser.add_argument("--budget-slices", type=int, default=32, help="SPiN slices of the budget rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", nargs="*", choices=["levers", "budget", "graphs", "tail"],
                        default=["levers", "budget"],
                        help="graphs: SPiN eager, frozen TorchScript and compiled (about 2 minutes to build); "
                             "tail: EasySR's generator tail as convolutions or matrix products (about 5 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU seconds compare best on 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if "levers" in args.parts:
        print_table(interleaved(lever_cases(args.slices), args.repeat),
                    f"levers, {args.threads} thread(s), load average {load:.1f}")
    if "budget" in args.parts:
        print_table(interleaved(budget_cases(args.budget_slices), 2), "SPiN slices per pass against a memory budget")
    if "graphs" in args.parts:
        cases, build = graph_cases(args.slices)
        rows = [{**row, "build_s": build.get(row["row"], 0.0)} for row in interleaved(cases, args.repeat)]
        print_table(rows, f"SPiN graphs, {args.threads} thread(s) (build_s: wall seconds to trace/freeze or compile)")
    if "tail" in args.parts:
        print_table(interleaved(tail_cases(), args.repeat, grad=True),
                    f"EasySR generator tail, {args.threads} thread(s), load average {load:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
