"""`python -m projects.saint.demo --out outputs/demo/saint`: SAINT on embedded synthetic CT, end to end.

Writes synthetic CT-like abdomens in the MSD `Task03_Liver` layout (held-out cases take ids from the paper's
test list, so the committed split holds them out), prepares the cache, trains `experiment=demo` (a reduced-
width MSR) for a fixed number of steps (400, about 30 s on one core), then its RFN (60 steps), scores held-out
volumes at x4 and x6 with the paper's protocol against cubic and linear interpolation along z, predicts one thick-
slice NIfTI to a thin-slice NIfTI, and writes `<out>/result.json`. Training and inference run in bf16 where the CPU
computes it natively (`--precision auto`), else in fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.io.nifti import load_nifti, save_nifti, scale_axis_affine
from common.run import CONF_ROOT, REPO_ROOT, train
from common.runtime import autocast, choose_precision, set_threads
from common.splits import read_split
from common.synthetic import ct_abdomen, write_msd_task
from projects.saint.checkpoint import load_saint
from projects.saint.data import PAPER_SPLIT, VolumeDataset, split_cases
from projects.saint.eval import score_methods, summarise
from projects.saint.predict import predict_file
from projects.saint.prepare import prepare

DEMO_SHAPE = (64, 64, 48)
DEMO_SPACING = (0.8, 0.8, 1.25)


def write_demo_msd(root: str | Path, n_train: int = 10, n_test: int = 3, shape: Sequence[int] = DEMO_SHAPE,
                   spacing: Sequence[float] = DEMO_SPACING, seed: int = 0, appledouble: bool = True) -> Path:
    """Writes synthetic CT abdomens as an MSD `Task03_Liver` folder under `root`; returns the task folder.

    Training cases take ids that are not in the paper's test list; the `n_test` held-out cases take the
    first ids of that list (`liver_0`, `liver_1`, ...), half in `imagesTr/` and half in `imagesTs/`.
    """
    paper_test = [c for c in read_split(PAPER_SPLIT)["test"]
                  if c.startswith("liver_")]
    train_ids = [f"liver_{i}" for i in range(2, 400) if f"liver_{i}" not in paper_test][:n_train]
    test_ids = paper_test[:n_test]
    tr, ts = {}, {}
    for k, case in enumerate(train_ids + test_ids):
        hu, organ, affine = ct_abdomen(seed + k, shape, spacing)
        if case in test_ids and k % 2:
            ts[case] = (hu, affine)
        else:
            tr[case] = (hu, organ, affine)
    return write_msd_task(root, "Task03_Liver", tr, ts, appledouble=appledouble)


def thick_slice_copy(src: Path, dst: Path, factor: int) -> Path:
    """Writes the slice-dropped version of a thin-slice NIfTI (every `factor`-th slice after dropping the first
    `Z mod factor`), with the matching affine; returns `dst`."""
    volume = load_nifti(src, dtype=np.float32)
    drop = volume.shape[2] % factor
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ [0, 0, drop] + volume.affine[:3, 3]
    affine = scale_axis_affine(affine, 2, 1.0 / factor, anchor="first")
    return save_nifti(dst, volume.data[:, :, drop::factor], affine, dtype=np.int16)


def train_stage(experiment: str, out_dir: Path, overrides: Sequence[str], validations: int | None = None) -> dict:
    """Trains one experiment in this process, its run folder `out_dir`; returns its metrics.

    With `validations`, each epoch holds `max_steps // validations` batches, so that validation (and the choice
    of `best.ckpt`) runs that many times, the last time after the final step.
    """
    with initialize_config_dir(config_dir=str(CONF_ROOT / "saint"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.output_dir={out_dir}", *overrides])
    if validations:
        steps_per_epoch = max(1, int(cfg.trainer.max_steps) // validations)
        cfg.data.samples_per_epoch = steps_per_epoch * int(cfg.data.batch_size)
    return train(cfg)


def _net_overrides(experiment: str) -> list[str]:
    """Returns the overrides that give stage 2 the MSR of `experiment` (its network options differ from demo's)."""
    if experiment == "demo":
        return []
    with initialize_config_dir(config_dir=str(CONF_ROOT / "saint"), version_base="1.3"):
        net = compose("train", overrides=[f"experiment={experiment}"]).model.net
    return [f"model.net.skip={net.skip}", f"model.net.intensity_scale={net.intensity_scale}"]


def score_held_out(ckpt: Path, cache_dir: Path, factors: Sequence[int], precision: str = "32") -> dict:
    """Returns `{f: summary rows}` of SAINT and the interpolation baselines on the held-out cases.

    SAINT runs in `precision` ("32" or "bf16" autocast, as `eval.py`'s `inference_precision`).
    """
    net, rfn_trained = load_saint(ckpt)
    cache = VolumeCache(cache_dir)
    cases = split_cases(cache.case_ids(), PAPER_SPLIT, val_count=2).test
    cfg = OmegaConf.create({"model": {"crop_fraction": 0.5, "plane_batch": None}, "baselines": ["cubic", "linear"]})
    fuses = ["rfn", "mean"] if rfn_trained else ["mean"]
    results = {}
    for f in factors:
        per_case, weights = {}, {}
        for item in VolumeDataset(cache, cases, [f]):
            with autocast(precision):
                per_case[item["case_id"]] = score_methods(net, item, cfg, fuses)
            weights[item["case_id"]] = int(item["hr"].shape[2])
        results[f] = {r["method"]: r for r in summarise(per_case, weights)}
    return {"cases": cases, "rows": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "outputs" / "demo" / "saint"))
    parser.add_argument("--msr-steps", type=int, default=400, help="training steps of stage 1 (batches of 16 planes)")
    parser.add_argument("--rfn-steps", type=int, default=60, help="training steps of stage 2 (batches of 8 slices)")
    parser.add_argument("--validations", type=int, default=3,
                        help="validations per stage (the last after the final step; each picks best.ckpt)")
    parser.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"],
                        help="training and inference (auto: bf16 where the CPU has it natively, else 32)")
    parser.add_argument("--experiment", default="demo", help="stage-1 experiment (demo_paper: the paper's formulation)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores, or 1 when other processes already load them)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    threads = set_threads(args.threads)
    print(f"saint demo: {threads} torch thread(s), load average {os.getloadavg()[0]:.1f}")
    write_demo_msd(out / "msd")
    prepare([out / "msd"], out / "cache")
    # Each stage's run folder is named after its experiment: TensorBoard lists `demo/saint/<experiment>/tb/...`.
    # bf16 (training, stage-1 views, scoring, prediction) where the CPU computes it natively: avx512_bf16 / AMX
    precision = choose_precision(args.precision)
    # No test run after each stage: `score_held_out` scores the same held-out volumes with the final network.
    common = [f"data.cache_dir={out / 'cache'}", "test_after_fit=false",
              f"trainer.precision={'bf16-mixed' if precision == 'bf16' else '32'}"]
    t0 = time.perf_counter()
    train_stage(args.experiment, out / args.experiment, [*common, f"trainer.max_steps={args.msr_steps}"],
                args.validations)
    msr_ckpt = out / args.experiment / "checkpoints" / "best.ckpt"
    train_stage("demo_rfn", out / "demo_rfn", [*common, f"model.msr_ckpt={msr_ckpt}", f"data.stage1_dir={out / 'stage1'}",
                                              f"trainer.max_steps={args.rfn_steps}", *_net_overrides(args.experiment)],
                args.validations)
    train_seconds = time.perf_counter() - t0
    final = out / "demo_rfn" / "checkpoints" / "best.ckpt"
    scores = score_held_out(final, out / "cache", (4, 6), precision)
    case = scores["cases"][-1]
    src = next((out / "msd" / "Task03_Liver").glob(f"images*/{case}.nii.gz"))
    thick = thick_slice_copy(src, out / "pred" / f"{case}_thick_x4.nii.gz", 4)
    pred = predict_file(thick, out / "pred" / f"{case}_saint_x4.nii.gz", final, 4, precision=precision)
    x4 = scores["rows"][4]
    result = {"project": "saint", "task": "CT slice synthesis x4 (thick -> thin slices)", "metric": "psnr_x4",
              "higher_is_better": True, "model": f"SAINT (reduced-width MSR + RFN, experiment={args.experiment})",
              "model_value": x4["SAINT rfn fusion"]["psnr"], "baseline": "cubic interpolation along z",
              "baseline_value": x4["cubic along z"]["psnr"], "linear_value": x4["linear along z"]["psnr"],
              "n_cases": len(scores["cases"]), "msr_steps": args.msr_steps, "rfn_steps": args.rfn_steps,
              "prediction": str(pred), "thick_input": str(thick), "train_seconds": round(train_seconds, 1),
              "checkpoint": str(final), "cache": str(out / "cache"), "precision": precision,
              "table": {f"x{f}": {m: {"psnr": r["psnr"], "ssim": r["ssim"]} for m, r in rows.items()}
                        for f, rows in scores["rows"].items()},
              "seconds": round(time.perf_counter() - start, 1)}
    save_json(out / "result.json", result)
    for f, rows in scores["rows"].items():
        print(f"x{f}: " + ", ".join(f"{m} {r['psnr']:.2f} dB / {r['ssim']:.4f}" for m, r in rows.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
