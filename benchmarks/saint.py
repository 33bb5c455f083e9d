"""SAINT benchmark: quality against interpolation along z, train-step time, whole-volume inference time and memory.

    python -m benchmarks.saint [--skip-quality] [--skip-speed] [--out outputs/bench/saint]

1. Quality: the demo (synthetic CT abdomens, reduced-width MSR trained for a fixed number of steps, then the RFN)
   scored at x4 and x6 on held-out volumes with the paper's protocol: SAINT with RFN fusion, mean fusion and each
   view alone (MSR only), beside cubic and linear interpolation along z, with the gain in dB over both; then the
   paper's formulation (`experiment=demo_paper`) at the same width, data and steps.
2. Train step of the paper's MSR on a batch [4, 3, 512, 10] + distance maps, L1 over the real phases, Adam:
   fp32, fp32 + channels_last, bf16 autocast + channels_last.
3. Whole-volume inference of the paper's network, both views with batched planes + RFN fusion:
   256 x 256 x 24 -> x4 measured whole, the reference's input;
   512 x 512 x 60 -> 240 measured on a slab of planes and axial slices and extrapolated to the volume, with the
   peak memory of the measured part plus the output buffers of the whole volume.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import measure, previous_rows, print_table, speed_row, write_results
from common.runtime import choose_threads
from projects.saint.model import PIXELS_PER_PASS, SAINT, distance_map
from projects.saint.module import masked_l1

QUALITY_EXPERIMENTS = {"demo": "", "demo_paper": "paper formulation: "}


def quality_rows(out: Path, msr_steps: int, rfn_steps: int, threads: int,
                 experiments: Sequence[str] = tuple(QUALITY_EXPERIMENTS)) -> list[dict]:
    """Runs the demo into `out/<experiment>` for each experiment and returns one row per (factor, method) with
    PSNR, SSIM and the gains over linear and cubic interpolation (the baselines once, from the first run)."""
    from projects.saint.demo import main as demo_main

    rows = []
    for n, experiment in enumerate(experiments):
        demo_main(["--out", str(out / experiment), "--msr-steps", str(msr_steps), "--rfn-steps", str(rfn_steps),
                   "--threads", str(threads), "--experiment", experiment])
        result = json.loads((out / experiment / "result.json").read_text())
        for factor, methods in result["table"].items():
            cubic, linear = methods["cubic along z"]["psnr"], methods["linear along z"]["psnr"]
            for method, v in methods.items():
                baseline = not method.startswith("SAINT")
                if baseline and n > 0:
                    continue
                rows.append({"factor": factor, "method": (QUALITY_EXPERIMENTS.get(experiment, experiment + ": ")
                                                          if not baseline else "") + method,
                             "psnr_db": round(v["psnr"], 2), "ssim": round(v["ssim"], 4),
                             "gain_vs_linear_db": round(v["psnr"] - linear, 2),
                             "gain_vs_cubic_db": round(v["psnr"] - cubic, 2), "n_cases": result["n_cases"],
                             "msr_steps": msr_steps, "rfn_steps": rfn_steps})
    return rows


def previous_run_info(name: str) -> dict | None:
    """Returns when, on how many threads and on what machine the speed rows of the last results file were
    measured (kept beside them when only the quality rows are rerun), or None without a file."""
    path = harness.RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return None
    last = json.loads(path.read_text())
    if "speed_rows_from" in last:
        return last["speed_rows_from"]
    return {k: last.get(k) for k in ("when", "threads", "machine", "load_average_start")}


def is_speed_row(row: dict) -> bool:
    """Speed rows carry a `measurement`; quality rows a `factor` and a `method`."""
    return "measurement" in row


def _train_step(net: SAINT, channels_last: bool, bf16: bool) -> Callable[[], None]:
    batch = 4
    lr = torch.rand(batch, 3, 512, 10) * 4000
    dist = torch.stack([torch.from_numpy(distance_map(f, 1.0, 0.7, 6)) for f in (4, 6, 4, 6)])
    target = torch.rand(batch, 6, 512, 10) * 4000
    mask = torch.zeros_like(target)
    for b, f in enumerate((4, 6, 4, 6)):
        mask[b, :f] = 1
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.msr_parameters(), 1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = net(lr, dist)
        loss = masked_l1(pred, target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_step_rows(repeat: int) -> list[dict]:
    rows = []
    for name, cl, bf16 in (("fp32", False, False), ("fp32 channels_last", True, False),
                           ("bf16 autocast channels_last", True, True)):
        torch.manual_seed(0)
        net = SAINT()
        for p in net.RFN.parameters():
            p.requires_grad_(False)
        t = measure(_train_step(net, cl, bf16), repeat=repeat, warmup=1, flops=True)
        rows.append(speed_row("saint", "step", f"MSR [4,3,512,10], {name}", t, measurement="train step"))
        print(rows[-1], flush=True)
    return rows


def _net(channels_last: bool) -> SAINT:
    torch.manual_seed(0)
    net = SAINT().eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def inference_rows_256(plane_batch: int | None, slices: int = 24) -> list[dict]:
    """Times both views + RFN on 256 x 256 x `slices` -> x4, the reference's row at the default 24 slices."""
    rows = []
    vol = torch.rand(256, 256, slices) * 4000
    for name, cl, bf16 in (("fp32", False, False), ("fp32 channels_last", True, False),
                           ("bf16 autocast channels_last", True, True)):
        net = _net(cl)

        def run(net: SAINT = net, bf16: bool = bf16) -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net.infer_volume(vol, (0.7, 0.7, 1.0), 4, "rfn", plane_batch)

        t = measure(run, repeat=1, warmup=1, flops=True)
        rows.append(speed_row("saint", "volume", f"256x256x{slices} -> {4 * slices}, both views + RFN, {name}", t,
                              measurement="whole volume"))
        print(rows[-1], flush=True)
    return rows


def inference_rows_512(plane_batch: int | None, n_planes: int, n_slices: int) -> list[dict]:
    """512 x 512 x 60 -> 240: time per plane batch and per axial slice measured on a slab, then extrapolated."""
    rows = []
    size, z_lr, f = 512, 60, 4
    slab = torch.rand(n_planes, size, z_lr) * 4000
    views = torch.rand(2, size, size, n_slices) * 4000
    out_buffers_mb = 3 * size * size * z_lr * f * 4 / 2**20  # two views + fused, float32
    dist = torch.from_numpy(distance_map(f, 1.0, 0.7))[None]
    for name, cl, bf16 in (("fp32", False, False), ("bf16 autocast channels_last", True, True)):
        net = _net(cl)

        def msr(net: SAINT = net, bf16: bool = bf16) -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net._marginal(slab, 0, dist, plane_batch or max(1, PIXELS_PER_PASS // (size * z_lr)))

        def rfn(net: SAINT = net, bf16: bool = bf16) -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net.fuse(views[0], views[1], "rfn")

        t_msr, t_rfn = measure(msr, repeat=1, warmup=1, flops=True), measure(rfn, repeat=1, warmup=1, flops=True)
        total = t_msr["median_s"] * (2 * size / n_planes) + t_rfn["median_s"] * (z_lr * f / n_slices)
        rows.append({"row": f"volume: 512x512x60 -> 240, both views + RFN, {name} "
                            f"(extrapolated from {n_planes} planes and {n_slices} axial slices)",
                     "measurement": "whole volume",
                     "seconds": round(total, 1), "efficiency": round(
                         (t_msr["gflop"] * 2 * size / n_planes + t_rfn["gflop"] * z_lr * f / n_slices)
                         / total / t_msr["matmul_gflops"], 3),
                     "peak_rss_mb": round(max(t_msr["peak_rss_mb"], t_rfn["peak_rss_mb"]) + out_buffers_mb)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--volume-slices", type=int, default=24,
                        help="slices of the 256 x 256 volume row (24: the reference's input)")
    parser.add_argument("--out", default=None, help="demo output folder (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plane-batch", type=int, default=None, help="default: by pixel budget")
    parser.add_argument("--skip-speed", action="store_true",
                        help="quality rows only; the speed rows of the last results file are kept")
    parser.add_argument("--msr-steps", type=int, default=400, help="stage-1 steps of the quality runs (the demo's)")
    parser.add_argument("--rfn-steps", type=int, default=60, help="stage-2 steps of the quality runs (the demo's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as the demo chooses)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    threads = args.threads or choose_threads()
    load = [round(x, 2) for x in os.getloadavg()]
    quality: list[dict] = []
    if not args.skip_quality:
        with tempfile.TemporaryDirectory() as tmp:
            quality = quality_rows(Path(args.out) if args.out else Path(tmp), args.msr_steps, args.rfn_steps,
                                   threads)
        print_table(quality, f"SAINT on held-out synthetic CT (paper protocol), MSR {args.msr_steps} steps, "
                             f"RFN {args.rfn_steps} steps")
    else:
        quality = previous_rows("saint", lambda row: not is_speed_row(row))
    torch.set_num_threads(threads)
    speed_run = previous_run_info("saint") if args.skip_speed else None
    if args.skip_speed:
        speed = previous_rows("saint", is_speed_row)
    else:
        speed = train_step_rows(args.repeat) + inference_rows_256(args.plane_batch, args.volume_slices) + \
            inference_rows_512(args.plane_batch, n_planes=16, n_slices=8)
        print_table(speed, f"SAINT speed and memory ({torch.get_num_threads()} threads, load average at start {load})")
    extra = {"speed_rows_from": speed_run} if speed_run else {}
    path = write_results("saint", quality + speed, seconds=round(time.perf_counter() - start, 1),
                         threads=threads, load_average_start=load, load_average_end=list(os.getloadavg()), **extra)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
