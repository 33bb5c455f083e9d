"""stylish-fastmri benchmark: train-step and volume-inference speed at 320 x 320, and quality at 4x / 8x.

    python -m benchmarks.fastmri_gen [--skip-speed] [--skip-quality] [--epochs 20] [--threads 2]

Speed (rows of /work/shared/PERF.md): one generator + one discriminator step on a batch [8, 1, 320, 320] built
from synthetic k-space of the real size (640 x 368), for the baseline in reference and fixed mode and for the
generative model (fixed mode), fp32 (and bf16 autocast for the fixed baseline; FFTs stay float32); inference of one
35-slice volume without gradients, in chunks of 7 slices. Quality: every model trained for the same number of
epochs (12 batches of 8, so the same number of generator steps) on synthetic 64 x 64 volumes with mixed 4x / 8x
masks, best validation-SSIM checkpoint, then
scored on held-out volumes with the official rules, one torch thread. Writes benchmarks/results/fastmri_gen.json;
with --skip-speed the speed rows already in that file are kept (and with --skip-quality the quality rows).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from benchmarks.harness import RESULTS_DIR, measure, previous_rows, print_table, speed_row, write_results
from common.checkpoint import instantiate_model
from common.fold import fold_network
from common.run import CONF_ROOT, train
from common.synthetic import knee_images, single_coil_kspace
from projects.fastmri_gen.data import DataFidelity, SliceTransform, collate
from projects.fastmri_gen.eval import evaluate
from projects.fastmri_gen.prepare import write_synthetic_tree
from projects.fastmri_gen.transforms import RandomMaskFunc


def compose_cfg(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "fastmri_gen"), version_base="1.3"):
        return compose(name, overrides=overrides)


def full_size_batch(slices: int, fidelity: str) -> object:
    """Return a collated batch of `slices` 320 x 320 slices (k-space 640 x 368) under the given fidelity."""
    images = knee_images(seed=0, n_slices=slices, size=(320, 320))
    kspace, target = single_coil_kspace(images, seed=0)
    flags = {k: fidelity == "reference" for k in DataFidelity.__dataclass_fields__}
    transform = SliceTransform(RandomMaskFunc([4]), training=False, fidelity=DataFidelity(**flags))
    return collate([transform(kspace[i], target[i], (320, 320), "file1000000.h5", i, float(target.max()))
                    for i in range(slices)])


def build_module(model: str, fidelity: str):
    cfg = compose_cfg("train", [f"model={model}", f"fidelity={fidelity}", "paths.output_dir=/tmp/unused"])
    return instantiate_model(cfg.model)


def step_fn(module, batch, bf16: bool):
    """Return a closure doing one generator and one discriminator update."""
    opt_g = torch.optim.Adam(module.net.parameters(), lr=2e-4)
    opt_d = torch.optim.Adam(module.discriminator.parameters(), lr=2e-4, betas=(0.0, 0.999))
    module.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            total, _, pred = module.generator_loss(batch)
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            d_loss = module.discriminator_loss(batch, pred)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

    return step


def volume_fn(module, volume, bf16: bool, chunk: int = 7):
    """Return a closure reconstructing the whole volume without gradients, `chunk` slices at a time."""
    module.eval()
    pieces = [volume._replace(**{k: getattr(volume, k)[i:i + chunk] for k in volume._fields if k != "fname"},
                              fname=volume.fname[i:i + chunk]) for i in range(0, len(volume.fname), chunk)]

    @torch.no_grad()
    def infer() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            for piece in pieces:
                module.reconstruct(piece)

    return infer


def speed_rows(repeat: int, warmup: int = 1) -> list[dict]:
    rows = []
    batches = {f: full_size_batch(8, f) for f in ("reference", "fixed")}
    cases = [("baseline", "reference", (False,)), ("baseline", "fixed", (False, True)), ("generative", "fixed", (False,))]
    for model, fidelity, precisions in cases:
        module = build_module(model, fidelity)
        for bf16 in precisions:
            timing = measure(step_fn(module, batches[fidelity], bf16), repeat=repeat, warmup=max(1, warmup),
                             flops=True)
            rows.append(speed_row("fastmri_gen", "step", f"{model} [8,1,320,320] L1+GAN, {fidelity} mode, "
                                  f"{'bf16' if bf16 else 'fp32'}", timing, measure="train step",
                                  cpu_s=round(timing["cpu_s"], 2)))
            print(rows[-1], flush=True)
    volume = full_size_batch(35, "fixed")
    # BatchNorm folding needs eval-mode BatchNorm: the reference mode validates in train mode (defect 5)
    for fidelity, bf16, fold in (("reference", False, False), ("fixed", False, False), ("fixed", False, True),
                                 ("fixed", True, True)):
        module = build_module("baseline", fidelity)
        if fold:
            fold_network(module, full_size_batch(2, fidelity), through_wrapper=True)
        data = volume if fidelity == "fixed" else full_size_batch(35, "reference")
        timing = measure(volume_fn(module, data, bf16), repeat=repeat, warmup=max(1, warmup), flops=True)
        rows.append(speed_row("fastmri_gen", "volume", f"baseline, {fidelity} mode, {'bf16' if bf16 else 'fp32'}"
                              f"{', BN folded' if fold else ''}", timing, measure="inference",
                              cpu_s=round(timing["cpu_s"], 2)))
        print(rows[-1], flush=True)
    return rows


TRAIN_VOLUMES, SLICES, BATCH = 12, 8, 8  # the demo data config's batch size; drop_last: 12 batches per epoch
QUALITY_MODELS = [("zero-filled", "zero_filled", "fixed", []),
                  ("fastMRI U-Net (8 ch)", "unet_small", "fixed", []),
                  ("baseline, reference mode", "baseline_small", "reference", []),
                  ("baseline, fixed mode", "baseline_small", "fixed", []),
                  ("generative, fixed mode", "generative_small", "fixed", [])]


def quality_rows(root: Path, epochs: int, models: list[str] | None = None) -> list[dict]:
    """Train each model `epochs` epochs (1 thread), score the held-out volumes at 4x and 8x.

    Epochs, not `max_steps`: under manual optimisation Lightning counts the discriminator's steps too, so a
    step limit would give the GAN models half the generator updates of the U-Net.
    """
    data = write_synthetic_tree(root / "data", train_volumes=TRAIN_VOLUMES, val_volumes=3, holdout_volumes=4,
                                slices=SLICES, size=64, seed=100)
    common = ["experiment=demo", f"data.data_dir={data}", "data.cache_dir=null", "data.accelerations=[4,8]",
              "logger=none", "callbacks=minimal", "threads=1"]
    rows = []
    for label, model, fidelity, extra in QUALITY_MODELS:
        if models and label not in models and model not in models:
            continue
        overrides = [*common, f"model={model}", f"fidelity={fidelity}", *extra]
        run_dir = root / model / fidelity
        ckpt, cpu, steps = [], 0.0, 0
        if model != "zero_filled":
            cfg = compose_cfg("train", [*overrides, f"paths.output_dir={run_dir}", "test_after_fit=false",
                                        f"trainer.max_epochs={epochs}"])
            start = time.process_time()
            train(cfg)
            cpu, steps = time.process_time() - start, epochs * (TRAIN_VOLUMES * SLICES // BATCH)
            ckpt = [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"]
        cfg = compose_cfg("eval", [*overrides, *ckpt, "eval.split=singlecoil_holdout", "eval.accelerations=[4,8]",
                                   f"paths.output_dir={run_dir / 'eval'}"])
        results = evaluate(cfg)
        for acc in ("x4", "x8"):
            mean = results[acc]["mean"]
            rows.append({"model": label, "acceleration": acc, "nmse": mean["nmse"], "psnr": mean["psnr"],
                         "ssim": mean["ssim"], "volumes": len(results[acc]["cases"]), "generator_steps": steps,
                         "train_cpu_s": round(cpu, 1)})
        print(rows[-2], rows[-1], flush=True)
    return rows


def previous_metadata() -> dict:
    """Return the run metadata of the results file as it stands (without its rows; empty when there is none)."""
    path = RESULTS_DIR / "fastmri_gen.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in before.items() if k not in ("name", "machine", "when", "rows", "speed", "quality")}


def is_speed_row(row: dict) -> bool:
    return "measure" in row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-speed", action="store_true", help="keep the speed rows already in the results file")
    parser.add_argument("--skip-quality", action="store_true", help="keep the quality rows already in the file")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per model (12 batches each)")
    parser.add_argument("--models", nargs="*", default=None, help="quality rows to run (labels or model configs)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="threads for the 320 x 320 speed rows")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    speed: list[dict] = []
    quality: list[dict] = []
    measured: dict = {}
    if not args.skip_speed:
        torch.set_num_threads(args.threads)
        speed = speed_rows(args.repeat, args.warmup)
        measured.update(load_average_at_start=list(load), threads=args.threads)
        print_table(speed, f"speed ({args.threads} threads, load average {load[0]:.1f})")
    if not args.skip_quality:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as scratch:
            quality = quality_rows(Path(scratch), args.epochs, args.models)
        measured.update(quality_epochs=args.epochs, quality_threads=1, quality_load_average_at_start=list(load))
        print_table(quality, "quality on held-out synthetic volumes (official fastMRI metrics)")
    # read the file only now: what is not measured by this run is kept as it stands at the end of the run
    extra = {**previous_metadata(), **measured}
    if args.skip_speed:
        speed = previous_rows("fastmri_gen", is_speed_row)
    if args.skip_quality:
        quality = previous_rows("fastmri_gen", lambda row: not is_speed_row(row))
    elif args.models:  # a partial run replaces only its own rows
        labels = {r["model"] for r in quality}
        quality = [r for r in previous_rows("fastmri_gen", lambda row: not is_speed_row(row))
                   if r["model"] not in labels] + quality
    if speed:
        print_table(speed, "speed")
    extra.update(numpy=np.__version__)
    path = write_results("fastmri_gen", speed + quality, **extra)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
