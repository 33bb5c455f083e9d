"""SPiN benchmark: parameter counts, train-step and whole-scan speed (PERF.md rows), SPiN vs U-Net quality.

    python -m benchmarks.spin [--quick]

Speed rows use the paper configuration on ATLAS-sized inputs: a train step on [8, 5, 197, 233] (BCE, Adam) and
the segmentation of one 197 x 233 x 189 scan with batched slices, in fp32 and in bf16 autocast + channels_last.
The quality rows train a reduced-width SPiN and a reduced-width U-Net (one slice in, as in the paper) for the
same number of steps on the same synthetic brains and score held-out scans with the paper's two protocols,
next to the tuned intensity threshold of the demo.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import measure, previous_rows, print_table, speed_row, write_results
from common.fold import fold_batchnorm
from common.io.cache import VolumeCache
from common.memory import parse_memory
from common.run import load_module, train
from common.runtime import set_threads
from projects.spin.data import volume_xyz
from projects.spin.demo import compose_demo, threshold_mask, tune_threshold
from projects.spin.eval import score_masks
from projects.spin.model import SPiN, UNet, count_parameters
from projects.spin.predict import logits_function, predict_volume
from projects.spin.splits import load_split

#: The whole-scan memory budget: the reference implementation's peak on the same scan (PERF.md).
SCAN_BUDGET = "1.7G"


def _train_step(bf16: bool, channels_last: bool, x: torch.Tensor,
                y: torch.Tensor) -> tuple[torch.nn.Module, Callable[[], None]]:
    """Returns (the paper-size SPiN, one BCE + Adam step on (x, y)) in fp32 or bf16 autocast."""
    model = SPiN()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.5]))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)["logits"]
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


#: (label, bf16, channels_last) of the train-step rows.
STEP_VARIANTS = (("fp32", False, False), ("fp32 channels_last", False, True), ("bf16 autocast channels_last", True, True))
#: (label, bf16, channels_last, BatchNorm folded, batch, memory budget) of the whole-scan rows.
SCAN_VARIANTS = (("fp32, 32 slices/batch", False, False, False, 32, None),
                 ("fp32, budget 1.7G", False, False, False, 32, SCAN_BUDGET),
                 ("fp32, BN folded, budget 1.7G", False, False, True, 32, SCAN_BUDGET),
                 ("fp32, BN folded, channels_last, budget 1.7G", False, True, True, 32, SCAN_BUDGET),
                 ("bf16, BN folded, channels_last, budget 1.7G", True, True, True, 32, SCAN_BUDGET))


def step_rows(repeat: int) -> list[dict]:
    """Returns the train-step rows of the paper-size SPiN on [8, 5, 197, 233]."""
    torch.manual_seed(0)
    x = torch.randn(8, 5, 197, 233)
    y = (torch.rand(8, 1, 197, 233) > 0.97).float()
    rows = []
    for label, bf16, channels_last in STEP_VARIANTS:
        _, step = _train_step(bf16, channels_last, x, y)
        rows.append(speed_row("spin", "step", label, measure(step, repeat=repeat, warmup=1, flops=True)))
        print(rows[-1], flush=True)
    return rows


def scan_network(bf16: bool, channels_last: bool, fold: bool) -> torch.nn.Module:
    """Returns the paper-size SPiN for whole-scan inference (random weights, BatchNorm statistics not trivial)."""
    torch.manual_seed(0)
    net = SPiN().eval()
    for module in net.modules():  # identity statistics would make folding a no-op
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    if fold:
        net = fold_batchnorm(net, torch.randn(1, 5, 64, 64))[0]
    if channels_last:
        net = _ChannelsLast(net.to(memory_format=torch.channels_last))
    return net


def scan_rows(repeat: int, slices: int = 189) -> list[dict]:
    """Returns the whole-scan rows: one 197 x 233 x 189 scan, batched slices, per variant.

    With fewer `slices` (a quicker comparison of the variants) the time is scaled to 189 slices.
    """
    scan = np.random.default_rng(0).uniform(0, 100, (197, 233, slices)).astype(np.float32)
    rows = []
    for label, bf16, channels_last, fold, batch, budget in SCAN_VARIANTS:
        fn = logits_function(scan_network(bf16, channels_last, fold), bf16=bf16)
        timing = measure(lambda fn=fn, batch=batch, budget=budget: predict_volume(fn, scan, 5, batch_size=batch,
                                                                     max_memory=parse_memory(budget)),
                         repeat=repeat, warmup=1, flops=True)
        scale = 189 / slices
        timing.update(extrapolated_s=timing["median_s"] * scale, gflop=timing["gflop"] * scale)
        rows.append(speed_row("spin", "volume", label, timing, budget=budget, measured_slices=slices))
        print(rows[-1], flush=True)
    return rows


class _ChannelsLast(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def _train_and_score(name: str, out: Path, overrides: list[str], data_root: Path, experiment: str) -> dict:
    cfg = compose_demo(out, [f"data.root={data_root}", "logger=none", *overrides], experiment)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    cache = VolumeCache(data_root / "cache")
    test_ids = load_split(data_root / "split.json")["test"]
    module = load_module(cfg, Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").eval()
    fn = logits_function(module)
    scores = score_masks(lambda s: predict_volume(fn, np.asarray(volume_xyz(cache, s, "t1")),
                                                  int(cfg.data.n_chunk)), cache, test_ids)
    return _quality_row(name, scores, seconds, count_parameters(module.net))


def _quality_row(name: str, scores: dict, seconds: float | None, params: int | None) -> dict:
    return {"row": name, "dice": scores["mean"]["dice"], "iou": scores["mean"]["iou"],
            "precision": scores["mean"]["precision"], "recall": scores["mean"]["recall"],
            "small_dice": scores["small_lesion"]["dice"], "small_recall": scores["small_lesion"]["recall"],
            "n_small_slices": scores["n_small_slices"], "train_s": seconds, "params": params}


def quality_rows(epochs: int, n_train: int) -> list[dict]:
    """Trains SPiN and U-Net (reduced widths, same steps and data) and scores both and the threshold baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        budget = [f"trainer.max_epochs={epochs}", f"data.n_train={n_train}", "data.n_test=6",
                  f"model.scheduler.milestones=[{epochs // 2},{3 * epochs // 4}]",
                  f"model.gate_switch_epoch={3 * epochs // 4}", "trainer.check_val_every_n_epoch=5"]
        rows = [_train_and_score("SPiN (reduced width, 5 slices)", root / "spin", budget, root / "data", "demo"),
                _train_and_score("U-Net (reduced width, 1 slice)", root / "unet", budget, root / "data",
                                 "demo_unet")]
        cache = VolumeCache(root / "data" / "cache")
        split = load_split(root / "data" / "split.json")
        tuned = tune_threshold(cache, split["train"])
        scores = score_masks(lambda s: threshold_mask(np.asarray(volume_xyz(cache, s, "t1")), tuned["level"],
                                                      erosion=int(tuned["erosion"])), cache, split["test"])
        rows.append(_quality_row("intensity threshold (tuned on train)", scores, None, None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs (a smoke run)")
    parser.add_argument("--threads", default="auto", help="torch threads, or auto (1 on a busy CPU)")
    parser.add_argument("--skip-quality", action="store_true", help="rerun the speed rows, keep the last quality rows")
    parser.add_argument("--scan-slices", type=int, default=189,
                        help="slices of the scan rows (fewer: time scaled to 189, a quicker comparison)")
    parser.add_argument("--skip-speed", action="store_true", help="rerun the quality rows, keep the last speed rows")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    set_threads(args.threads)
    params = [{"row": "SPiN paper configuration (built)", "params": count_parameters(SPiN())},
              {"row": "SPiN + the reference's unused 1x1 shortcuts",
               "params": count_parameters(SPiN(build_unused_shortcut=True))},
              {"row": "U-Net baseline (VGG-13 encoder)", "params": count_parameters(UNet())}]
    print_table(params, "Parameters")
    speed = (previous_rows("spin", lambda row: "seconds" in row) if args.skip_speed
             else step_rows(repeat=2 if args.quick else 3) + scan_rows(1 if args.quick else 2, args.scan_slices))
    print_table(speed, f"Speed (median wall time, torch threads = {torch.get_num_threads()})")
    quality = (previous_rows("spin", lambda row: "dice" in row) if args.skip_quality
               else quality_rows(epochs=6 if args.quick else 40, n_train=8 if args.quick else 16))
    print_table(quality, "Quality on held-out synthetic scans (Dice per scan then mean; small = pooled slices)")
    path = write_results("spin", [*params, *speed, *quality], torch_threads=torch.get_num_threads(),
                         load_average_before=load_before, load_average_after=os.getloadavg()[0])
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
