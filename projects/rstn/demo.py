"""`python -m projects.rstn.demo --out outputs/demo/rstn`: RSTN on synthetic CT-like abdomens, minutes on a CPU.

Builds 16 synthetic cases (`common.synthetic.ct_abdomen`, 128 x 128 x 32, a small pancreas-like organ), trains
`experiment=demo` (FCNs at 1/16 width) on the training cases of fold 0, one network per plane (X, Y, Z), runs
the test chain (coarse per plane, fusion, oracle, coarse-to-fine) on the 4 held-out cases, compares with a classical intensity-window rule tuned
on the training cases, predicts one held-out volume to NIfTI, and writes `<out>/result.json`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.checkpoint import checkpoint_progress
from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.io.nifti import save_nifti
from common.loaders import available_cores
from common.run import CONF_ROOT
from common.runtime import choose_precision, set_threads
from projects.rstn.baseline import tune_window_rule
from projects.rstn.data import file_volume, fold_cases
from projects.rstn.eval import evaluate_rstn, load_plane_model
from projects.rstn.inference import dsc
from projects.rstn.predict import predict_volume, protocol_of
from projects.rstn.prepare import prepare_synthetic
from projects.rstn.train import train_planes

# The run folder of `experiment=demo` on fold 0 (`<experiment>_fd<fold>`, one sub-folder per plane), so that
# TensorBoard lists the runs as `.../rstn/demo_fd0/<plane>/tb/...`.
RUN_NAME = "demo_fd0"


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "rstn"), version_base="1.3"):
        return compose(config, overrides=overrides)


def _steps(run_dir: Path, planes: str) -> dict[str, int]:
    """Returns the global step of each plane's last checkpoint."""
    return {p: checkpoint_progress(run_dir / p / "checkpoints" / "last.ckpt")[0] for p in planes}


def _baseline(cache_dir: Path) -> tuple[list[float], float]:
    """Returns the window rule's DSC on each test case of fold 0 and its training DSC (the rule tuned there)."""
    cache = VolumeCache(cache_dir)
    train, test = fold_cases(cache_dir / "splits.json", 0)
    images = [np.asarray(cache.load(c, "image"), np.float32) for c in train]
    labels = [np.asarray(cache.load(c, "label")) for c in train]
    rule, train_dsc = tune_window_rule(images, labels)
    scores = [dsc(rule(np.asarray(cache.load(c, "image"), np.float32)), np.asarray(cache.load(c, "label")) > 0)
              for c in test]
    return scores, train_dsc


def plane_jobs(planes: str, requested: int | None = None) -> int:
    """Returns how many planes train at once: `requested`, else one process per plane when the machine has
    at least two cores (the planes are independent networks), else 1."""
    if requested is not None:
        return max(1, min(requested, len(planes)))
    return len(planes) if available_cores() >= 2 else 1


def _train_plane(plane: str, overrides: list[str], threads: int | None) -> None:
    """Trains one plane of `experiment=demo` (in this process, or in a worker with `threads` torch threads)."""
    if threads is not None:
        set_threads(threads)
    train_planes(_compose("train", ["experiment=demo", f"plane={plane}", *overrides]))


def _train_and_tune(planes: str, train_overrides: list[str], cache_dir: Path, jobs: int,
                    threads: int | None) -> tuple[float, list[float], float]:
    """Trains the planes (in turn, or `jobs` at once in worker processes) and tunes the window rule.

    Returns:
        (training seconds, the rule's DSC per test case, its training DSC).
    """
    start = time.perf_counter()
    if jobs == 1:
        for plane in planes:
            _train_plane(plane, train_overrides, None)
        return time.perf_counter() - start, *_baseline(cache_dir)
    train_threads = threads or max(1, available_cores() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        trained = [pool.submit(_train_plane, p, train_overrides, train_threads) for p in planes]
        tuned = pool.submit(_baseline, cache_dir)  # single-threaded: takes the core of the first plane done
        for done in trained:
            done.result()  # re-raises a plane's error here
        seconds = time.perf_counter() - start
        return seconds, *tuned.result()


def _predict_one(out: Path, cache_dir: Path, ckpts: dict[str, Path], precision: str) -> Path:
    """Predicts the first test case with `predict_volume` (eval's settings) and returns its NIfTI path."""
    cache = VolumeCache(cache_dir)
    case = fold_cases(cache_dir / "splits.json", 0)[1][0]
    models = {p: load_plane_model(path) for p, path in ckpts.items()}
    image, affine = file_volume(cache, case, "image")
    hu_like = image.astype(np.float32) * 340.0 - 100.0
    pred_path = out / "pred" / f"{case}.nii.gz"
    protocol = protocol_of(next(iter(ckpts.values())), precision=precision)._replace(fine_batch_size=16)
    save_nifti(pred_path, predict_volume(hu_like, affine, models, protocol), affine, dtype=np.uint8)
    return pred_path


def run(out: Path, n_cases: int = 16, shape: tuple[int, int, int] = (128, 128, 32), planes: str = "XYZ",
        steps: int | None = None, max_minutes: float | None = None, overrides: Sequence[str] = (),
        threads: int | None = None, jobs: int | None = None, precision: str = "auto") -> dict:
    """Runs the demo in `out`; returns the result written to `out/result.json`.

    Args:
        out: output folder (cache, runs, eval, prediction, result.json).
        n_cases, shape: the synthetic data set (fold 0 of 4 folds is held out).
        planes: planes to train and fuse, e.g. "Z" or "XYZ".
        steps: training steps per plane (None: the experiment's `trainer.max_steps`).
        max_minutes: optional wall-clock cap of the training of all planes together.
        overrides: extra Hydra overrides of the training config.
        threads: torch threads of each training process and of the test chain (None: for training, the cores
            shared out among the jobs; for the test chain, 1 on a loaded machine, else every core).
        jobs: planes trained at once, each in its own process (None: `plane_jobs`). With one thread per job a
            run gives the same numbers however loaded the machine is.
        precision: "auto" (bf16 where the CPU computes it natively, else 32), "32" or "bf16": training and test chain.
    """
    set_threads(threads or "auto")
    cache_dir = out / "cache"
    prepare_synthetic(cache_dir, n_cases, shape, seed=0)
    common = [f"paths.output_dir={out / RUN_NAME}", f"data.cache_dir={cache_dir}", "data.synthetic=null",
              f"data.split_file={cache_dir / 'splits.json'}", f"paths.outputs_root={out}"]
    jobs = plane_jobs(planes, jobs)
    budget = [f"trainer.max_steps={steps}"] if steps else []
    if max_minutes:
        seconds = int(60 * max_minutes / -(-len(planes) // jobs))  # the planes run in ceil(planes / jobs) waves
        budget.append(f"+trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}")
    # auto: bf16 where the CPU computes it natively (about 1.3x faster steps here), else float32; an override wins
    chosen = choose_precision(precision)
    precision = "bf16-mixed" if chosen == "bf16" else "32"
    train_overrides = ["test_after_fit=false", "+trainer.enable_progress_bar=false", f"trainer.precision={precision}",
                       *budget, *common, *overrides]
    train_seconds, baseline, baseline_train = _train_and_tune(planes, train_overrides, cache_dir, jobs, threads)
    ckpts = {p: out / RUN_NAME / p / "checkpoints" / "last.ckpt" for p in planes}
    cfg = _compose("eval", ["experiment=demo", f"eval.out_dir={out / 'eval'}", "eval.fine_batch_size=16",
                            f"eval.planes=[{','.join(planes)}]", f"inference_precision={chosen}", *common, *overrides,
                            *[f"checkpoints.{p}={path}" for p, path in ckpts.items()]])
    evaluation = evaluate_rstn(cfg)
    stages, details = evaluation["stages"], evaluation["details"]
    pred_path = _predict_one(out, cache_dir, ckpts, evaluation["precision"])
    axial = "Z" if "Z" in planes else planes[0]
    result = {"project": "rstn", "task": "small-organ (pancreas-like) segmentation in synthetic CT",
              "metric": "dice", "higher_is_better": True, "model": f"RSTN coarse-to-fine (1/16 width, planes {planes})",
              "model_value": stages["coarse2fine"]["mean"], "coarse_value": stages[f"coarse_{axial}"]["mean"],
              "coarse_values": {p: stages[f"coarse_{p}"]["mean"] for p in planes},
              "fusion_value": stages["fusion"]["mean"], "oracle_value": stages["oracle"]["mean"],
              "baseline": "intensity window in a prior box + large components (tuned on training cases)",
              "baseline_value": float(np.mean(baseline)), "baseline_train_value": baseline_train,
              "n_cases": len(baseline), "prediction": str(pred_path), "train_seconds": round(train_seconds, 1),
              "train_steps": _steps(out / RUN_NAME, planes), "rounds": [c["rounds"] for c in details.values()],
              "threads": torch.get_num_threads(), "train_jobs": jobs,
              "train_precision": [o for o in train_overrides if o.startswith("trainer.precision=")][-1].split("=")[1]}
    save_json(out / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default="outputs/demo/rstn")
    parser.add_argument("--planes", default="XYZ", help="planes to train and fuse, e.g. XYZ (default) or Z")
    parser.add_argument("--steps", type=int, default=None, help="training steps per plane (default: the config's)")
    parser.add_argument("--minutes", type=float, default=None, help="optional cap of the training time, all planes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=None,
                        help="planes trained at once, one process each (default: all, on 2+ cores)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="synthetic volume shape (default: the demo's)")
    parser.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"],
                        help="auto: bf16 where the CPU computes it natively, else 32 (training and evaluation)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo experiment")
    args = parser.parse_args(argv)
    shape = {"shape": tuple(args.shape)} if args.shape else {}
    result = run(Path(args.out), planes=args.planes, **shape, steps=args.steps, max_minutes=args.minutes,
                 overrides=args.overrides, threads=args.threads, jobs=args.jobs, precision=args.precision)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
