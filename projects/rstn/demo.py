"""`python -m projects.rstn.demo --out outputs/demo/rstn`: RSTN on synthetic CT-like abdomens, minutes on a CPU.

Builds 16 synthetic cases (`common.synthetic.ct_abdomen`, 128 x 128 x 32, a small pancreas-like organ), trains
`experiment=demo` (FCNs at 1/16 width) on the training cases of fold 0, one network per plane (X, Y, Z), runs
the test chain (coarse per plane, fusion, oracle, coarse-to-fine) on the 4 held-out cases, compares with a classical intensity-window rule tuned
on the training cases, predicts one held-out volume to NIfTI, and writes `<out>/result.json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.checkpoint import checkpoint_progress
from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.io.nifti import save_nifti
from common.run import CONF_ROOT
from common.runtime import set_threads
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


def _baseline(cache: VolumeCache, train: list[str], test: list[str]) -> tuple[list[float], float]:
    images = [np.asarray(cache.load(c, "image"), np.float32) for c in train]
    labels = [np.asarray(cache.load(c, "label")) for c in train]
    rule, train_dsc = tune_window_rule(images, labels)
    scores = [dsc(rule(np.asarray(cache.load(c, "image"), np.float32)), np.asarray(cache.load(c, "label")) > 0)
              for c in test]
    return scores, train_dsc


def run(out: Path, n_cases: int = 16, shape: tuple[int, int, int] = (128, 128, 32), planes: str = "XYZ",
        steps: int | None = None, max_minutes: float | None = None, overrides: Sequence[str] = (),
        threads: int | None = None) -> dict:
    """Runs the demo in `out`; returns the result written to `out/result.json`.

    Args:
        out: output folder (cache, runs, eval, prediction, result.json).
        n_cases, shape: the synthetic data set (fold 0 of 4 folds is held out).
        planes: planes to train and fuse, e.g. "Z" or "XYZ".
        steps: training steps per plane (None: the experiment's `trainer.max_steps`).
        max_minutes: optional wall-clock cap of the training of all planes together.
        overrides: extra Hydra overrides of the training config.
        threads: torch threads (None: 1 on a loaded machine, else every core).
    """
    set_threads(threads or "auto")
    cache_dir = out / "cache"
    prepare_synthetic(cache_dir, n_cases, shape, seed=0)
    common = [f"paths.output_dir={out / RUN_NAME}", f"data.cache_dir={cache_dir}", "data.synthetic=null",
              f"data.split_file={cache_dir / 'splits.json'}", f"paths.outputs_root={out}"]
    start = time.perf_counter()
    budget = [f"trainer.max_steps={steps}"] if steps else []
    if max_minutes:
        seconds = int(60 * max_minutes / len(planes))
        budget.append(f"+trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}")
    for plane in planes:
        cfg = _compose("train", ["experiment=demo", f"plane={plane}", "test_after_fit=false",
                                 "+trainer.enable_progress_bar=false", *budget, *common, *overrides])
        train_planes(cfg)
    train_seconds = time.perf_counter() - start
    ckpts = {p: out / RUN_NAME / p / "checkpoints" / "last.ckpt" for p in planes}
    cfg = _compose("eval", ["experiment=demo", f"eval.out_dir={out / 'eval'}", "eval.fine_batch_size=16",
                            f"eval.planes=[{','.join(planes)}]", *common, *overrides,
                            *[f"checkpoints.{p}={path}" for p, path in ckpts.items()]])
    evaluation = evaluate_rstn(cfg)
    stages, details = evaluation["stages"], evaluation["details"]
    cache = VolumeCache(cache_dir)
    train, test = fold_cases(cache_dir / "splits.json", 0)
    baseline, baseline_train = _baseline(cache, train, test)
    case = test[0]
    models = {p: load_plane_model(path) for p, path in ckpts.items()}
    image, affine = file_volume(cache, case, "image")
    hu_like = image.astype(np.float32) * 340.0 - 100.0
    pred_path = out / "pred" / f"{case}.nii.gz"
    # the settings of the evaluation above
    protocol = protocol_of(ckpts[planes[0]], precision=evaluation["precision"])._replace(fine_batch_size=16)
    save_nifti(pred_path, predict_volume(hu_like, affine, models, protocol), affine, dtype=np.uint8)
    axial = "Z" if "Z" in planes else planes[0]
    result = {"project": "rstn", "task": "small-organ (pancreas-like) segmentation in synthetic CT",
              "metric": "dice", "higher_is_better": True, "model": f"RSTN coarse-to-fine (1/16 width, planes {planes})",
              "model_value": stages["coarse2fine"]["mean"], "coarse_value": stages[f"coarse_{axial}"]["mean"],
              "coarse_values": {p: stages[f"coarse_{p}"]["mean"] for p in planes},
              "fusion_value": stages["fusion"]["mean"], "oracle_value": stages["oracle"]["mean"],
              "baseline": "intensity window in a prior box + large components (tuned on training cases)",
              "baseline_value": float(np.mean(baseline)), "baseline_train_value": baseline_train,
              "n_cases": len(test), "prediction": str(pred_path), "train_seconds": round(train_seconds, 1),
              "train_steps": _steps(out / RUN_NAME, planes), "rounds": [c["rounds"] for c in details.values()],
              "threads": torch.get_num_threads()}
    save_json(out / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default="outputs/demo/rstn")
    parser.add_argument("--planes", default="XYZ", help="planes to train and fuse, e.g. XYZ (default) or Z")
    parser.add_argument("--steps", type=int, default=None, help="training steps per plane (default: the config's)")
    parser.add_argument("--minutes", type=float, default=None, help="optional cap of the training time, all planes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="synthetic volume shape (default: the demo's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo experiment")
    args = parser.parse_args(argv)
    shape = {"shape": tuple(args.shape)} if args.shape else {}
    result = run(Path(args.out), planes=args.planes, **shape, steps=args.steps, max_minutes=args.minutes,
                 overrides=args.overrides, threads=args.threads)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
