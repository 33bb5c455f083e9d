"""`python -m projects.fastmri_gen.demo --out outputs/demo/fastmri_gen`: the baseline on synthetic k-space, end to end.

Writes synthetic single-coil knee volumes (64 x 64 targets, 128 x 72 k-space, smooth phase, noise) in the fastMRI
layout, trains `experiment=demo` (the fixed-mode baseline at reduced widths, 4x random masks), picks the best
checkpoint on the validation split, then reconstructs held-out volumes at 4x with their per-file masks, writes
them in the fastMRI reconstruction layout and scores them with the official rules next to zero-filling.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.io import save_json
from common.run import CONF_ROOT, train
from projects.fastmri_gen.eval import evaluate
from projects.fastmri_gen.prepare import write_synthetic_tree

HOLDOUT = "singlecoil_holdout"


def compose_cfg(name: str, overrides: list[str]):
    """Return the composed `conf/fastmri_gen/<name>.yaml` with `overrides`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "fastmri_gen"), version_base="1.3"):
        return compose(name, overrides=overrides)


def run(out: Path, epochs: int | None = None, volumes: tuple[int, int, int] = (12, 3, 4)) -> dict:
    """Train, evaluate and compare; returns the result written to `<out>/result.json`."""
    data = out / "data"
    if not (data / HOLDOUT).is_dir():
        write_synthetic_tree(data, train_volumes=volumes[0], val_volumes=volumes[1], holdout_volumes=volumes[2],
                             slices=8, size=64, seed=0)
    common = ["experiment=demo", f"data.data_dir={data}", f"data.cache_dir={out / 'index'}"]
    extra = [f"trainer.max_epochs={epochs}"] if epochs else []
    # the run folder is named after the experiment: TensorBoard lists `.../fastmri_gen/demo/tb/...`
    cfg = compose_cfg("train", [*common, *extra, f"paths.output_dir={out / 'demo'}", "test_after_fit=false"])
    start = time.perf_counter()
    train(cfg)
    train_seconds = time.perf_counter() - start
    scoring = [*common, f"eval.split={HOLDOUT}", "eval.accelerations=[4]"]
    best = out / "demo" / "checkpoints" / "best.ckpt"
    model = evaluate(compose_cfg("eval", [*scoring, f"ckpt_path={best}", f"paths.output_dir={out / 'eval_model'}"]))
    baseline = evaluate(compose_cfg("eval", [*scoring, "model=zero_filled", f"paths.output_dir={out / 'eval_zf'}"]))
    model_x4, zf_x4 = model["x4"], baseline["x4"]
    prediction = sorted(Path(model_x4["reconstructions"]).glob("*.h5"))[0]
    result = {
        "project": "fastmri_gen", "task": "4x single-coil MRI reconstruction (synthetic k-space)",
        "metric": "ssim", "higher_is_better": True,
        "model": "stylish baseline (fixed mode, reduced widths)", "model_value": model_x4["mean"]["ssim"],
        "baseline": "zero-filled", "baseline_value": zf_x4["mean"]["ssim"],
        "n_cases": len(model_x4["cases"]), "prediction": str(prediction), "train_seconds": train_seconds,
        "model_nmse": model_x4["mean"]["nmse"], "model_psnr": model_x4["mean"]["psnr"],
        "baseline_nmse": zf_x4["mean"]["nmse"], "baseline_psnr": zf_x4["mean"]["psnr"],
        "threads": torch.get_num_threads(),
    }
    save_json(out / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo/fastmri_gen"))
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: the tiny demo nets gain nothing from more on 2 cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.out.resolve(), args.epochs)
    print(f"4x, {result['n_cases']} held-out volumes: SSIM model {result['model_value']:.4f}, zero-filled "
          f"{result['baseline_value']:.4f}; PSNR {result['model_psnr']:.2f} vs {result['baseline_psnr']:.2f} dB; "
          f"trained in {result['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
