"""`python -m projects.spin.demo --out outputs/demo/spin`: SPiN on synthetic brains against an intensity threshold.

Writes synthetic scans in the ATLAS layout, trains ``experiment=demo`` (a reduced-width SPiN), then scores the
held-out scans with the paper's protocols next to a classical baseline (a hypointensity threshold inside an
eroded brain mask, both thresholds tuned on the training scans), predicts one held-out scan to a NIfTI file and
writes ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from scipy import ndimage

from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.run import CONF_ROOT, load_module, train
from common.runtime import choose_precision, set_threads
from projects.spin.data import volume_xyz
from projects.spin.eval import score_masks
from projects.spin.metrics import score_counts
from projects.spin.predict import logits_function, predict_volume, prepare_network, segment_nifti
from projects.spin.splits import load_split


def compose_demo(out: Path, overrides: list[str] | None = None, experiment: str = "demo") -> DictConfig:
    """Returns the composed ``experiment=demo`` (or another) config with its data and run folder under ``out``.

    The run folder is ``out/<experiment>``, so that TensorBoard lists the run as ``.../spin/<experiment>/tb/...``;
    ``last.ckpt`` is written with each validation (``trainer.check_val_every_n_epoch``).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "spin"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"data.root={out / 'data'}",
                                          f"paths.output_dir={out / experiment}", "test_after_fit=false",
                                          *(overrides or [])], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        last = cfg.get("callbacks", {}).get("last_checkpoint")
        if last is not None:  # one save per validation, not one per short epoch (50 ms each, 40 epochs)
            last.every_n_epochs = cfg.trainer.check_val_every_n_epoch
    return cfg


def brain_interior(t1: np.ndarray, brain_level: float = 5.0, erosion: int = 3) -> np.ndarray:
    """Returns the hole-filled brain (``t1 > brain_level``) eroded by ``erosion`` voxels, bool ``[X, Y, Z]``."""
    brain = ndimage.binary_fill_holes(t1 > brain_level)
    return ndimage.binary_erosion(brain, iterations=erosion)


def threshold_mask(t1: np.ndarray, level: float, brain_level: float = 5.0, erosion: int = 3) -> np.ndarray:
    """Returns the classical baseline's mask: voxels darker than ``level`` inside the eroded, hole-filled brain."""
    return (brain_interior(t1, brain_level, erosion) & (t1 < level)).astype(np.uint8)


#: The baseline's grid: erosions of the brain mask (voxels) and intensity levels searched on the training scans.
EROSIONS = (2, 3, 5)
LEVELS = tuple(range(14, 62, 3))


def dice_by_level(t1: np.ndarray, interior: np.ndarray, lesion: np.ndarray, levels: Sequence[float]) -> list[float]:
    """Returns the Dice of ``interior & (t1 < level)`` against ``lesion`` for every level (``score_case``'s rule).

    One sort of the interior's intensities gives the mask's size and its overlap with the lesion at every level,
    instead of building and scoring one mask per level.
    """
    below = np.searchsorted(np.sort(t1[interior]), levels, side="left")
    hits = np.searchsorted(np.sort(t1[interior & lesion]), levels, side="left")
    lesion_voxels = int(np.count_nonzero(lesion))
    return [score_counts(int(tp), int(n - tp), lesion_voxels - int(tp))["dice"] for tp, n in zip(hits, below)]


def tune_threshold(cache: VolumeCache, scan_ids: list[str]) -> dict[str, float]:
    """Returns the baseline parameters with the best mean Dice over the training scans (grid search).

    The grid is ``EROSIONS`` x ``LEVELS``, searched in that order; the first best wins.
    """
    t1s = {s: np.asarray(volume_xyz(cache, s, "t1")) for s in scan_ids}
    lesions = {s: np.asarray(volume_xyz(cache, s, "lesion")) > 0 for s in scan_ids}
    best: dict[str, float] = {"dice": -1.0}
    for erosion in EROSIONS:
        per_scan = [dice_by_level(t1s[s], brain_interior(t1s[s], erosion=erosion), lesions[s], LEVELS)
                    for s in scan_ids]
        for i, level in enumerate(LEVELS):
            dice = float(np.mean([scores[i] for scores in per_scan]))
            if dice > best["dice"]:
                best = {"dice": dice, "level": float(level), "erosion": float(erosion)}
    return best


def run_demo(out: Path, overrides: list[str] | None = None, precision: str = "auto") -> dict[str, Any]:
    """Trains, evaluates and predicts as described in the module docstring; returns the result dict.

    ``precision`` ("auto", "32" or "bf16") is that of training and inference; auto is bf16 where the CPU computes
    it natively (there a demo training step takes 0.7x the fp32 time, a scan 0.54x its CPU time,
    ``benchmarks/results/speed_levers.md``), fp32 elsewhere.
    """
    precision = choose_precision(precision)
    trainer_precision = "bf16-mixed" if precision == "bf16" else "32"
    cfg = compose_demo(out, [f"trainer.precision={trainer_precision}", *(overrides or [])])
    start = time.perf_counter()
    train(cfg)
    train_seconds = time.perf_counter() - start
    data_root = Path(cfg.data.root)
    cache = VolumeCache(data_root / "cache")
    split = load_split(data_root / "split.json")
    run_dir = Path(cfg.paths.output_dir)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    module = load_module(cfg, ckpt if ckpt.exists() else run_dir / "checkpoints" / "last.ckpt").eval()
    logits_fn = logits_function(prepare_network(module, int(cfg.data.n_chunk)), bf16=precision == "bf16")

    def predict(scan: str) -> np.ndarray:
        return predict_volume(logits_fn, np.asarray(volume_xyz(cache, scan, "t1")), int(cfg.data.n_chunk))

    model_scores = score_masks(predict, cache, split["test"])
    tuned = tune_threshold(cache, split["train"])
    baseline_scores = score_masks(
        lambda s: threshold_mask(np.asarray(volume_xyz(cache, s, "t1")), tuned["level"],
                                 erosion=int(tuned["erosion"])), cache, split["test"])
    scan = split["test"][0]
    source = data_root / "raw" / scan[:5] / scan / f"{scan}_t1w_stx.nii.gz"
    prediction = segment_nifti(logits_fn, source, out / "pred" / f"{scan}_lesion.nii.gz", int(cfg.data.n_chunk))
    result = {"project": "spin", "task": "stroke-lesion segmentation", "metric": "dice", "higher_is_better": True,
              "model": "SPiN (reduced width)", "model_value": model_scores["mean"]["dice"],
              "baseline": "intensity threshold tuned on the training scans",
              "baseline_value": baseline_scores["mean"]["dice"], "n_cases": len(split["test"]),
              "prediction": str(prediction), "train_seconds": round(train_seconds, 1),
              "small_lesion_dice": {"model": model_scores["small_lesion"]["dice"],
                                    "baseline": baseline_scores["small_lesion"]["dice"],
                                    "n_slices": model_scores["n_small_slices"]},
              "model_scores": model_scores["mean"], "baseline_scores": baseline_scores["mean"],
              "baseline_params": tuned, "torch_threads": torch.get_num_threads(), "precision": precision}
    save_json(out / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/demo/spin", help="output folder")
    parser.add_argument("--threads", default="auto", help="torch threads, or auto (1 on a busy CPU)")
    parser.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"],
                        help="training and inference (auto: bf16 where the CPU has it natively, else 32)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=5")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    result = run_demo(Path(args.out).resolve(), args.overrides, args.precision)
    print(f"SPiN Dice {result['model_value']:.3f} vs threshold {result['baseline_value']:.3f} on "
          f"{result['n_cases']} held-out scans (small-lesion slices: {result['small_lesion_dice']['model']:.3f} vs "
          f"{result['small_lesion_dice']['baseline']:.3f}); trained in {result['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
