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

from benchmarks.harness import measure, previous_rows, print_table, write_results
from common.io.cache import VolumeCache
from common.run import load_module, train
from common.runtime import set_threads
from projects.spin.data import volume_xyz
from projects.spin.demo import compose_demo, threshold_mask, tune_threshold
from projects.spin.eval import score_masks
from projects.spin.model import SPiN, UNet, count_parameters
from projects.spin.predict import logits_function, predict_volume
from projects.spin.splits import load_split

REFERENCE = {"train_step_s": 5.2, "scan_s": 20.6, "target_step_s": 2.6, "target_scan_s": 7.0}


def _train_step(bf16: bool, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.nn.Module, Callable[[], None]]:
    """Returns (the paper-size SPiN, one BCE + Adam step on (x, y)) in fp32 or bf16 autocast + channels_last."""
    model = SPiN()
    if bf16:
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


def speed_rows(repeat: int) -> list[dict]:
    """Returns train-step and whole-scan rows of the paper-size SPiN in fp32 and bf16 + channels_last."""
    rows = []
    torch.manual_seed(0)
    x = torch.randn(8, 5, 197, 233)
    y = (torch.rand(8, 1, 197, 233) > 0.97).float()
    scan = np.random.default_rng(0).uniform(0, 100, (197, 233, 189)).astype(np.float32)
    for bf16 in (False, True):
        model, step = _train_step(bf16, x, y)
        label = "bf16-mixed + channels_last" if bf16 else "fp32"
        timing = measure(step, repeat=repeat, warmup=1, flops=True)
        rows.append({"row": f"train step [8,5,197,233], {label}", "seconds": timing["median_s"],
                     "gflops_per_s": timing["gflops_per_s"],
                     "reference_s": REFERENCE["train_step_s"], "target_s": REFERENCE["target_step_s"],
                     "peak_rss_mb": timing["peak_rss_mb"]})
        model.eval()
        fn = logits_function(_ChannelsLast(model) if bf16 else model, bf16=bf16)
        timing = measure(lambda fn=fn: predict_volume(fn, scan, 5, batch_size=32), repeat=max(1, repeat - 1),
                         warmup=1, flops=True)
        rows.append({"row": f"scan 197x233x189, 32 slices/batch, {label}", "seconds": timing["median_s"],
                     "gflops_per_s": timing["gflops_per_s"],
                     "reference_s": REFERENCE["scan_s"], "target_s": REFERENCE["target_scan_s"],
                     "peak_rss_mb": timing["peak_rss_mb"]})
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
             else speed_rows(repeat=2 if args.quick else 3))
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
