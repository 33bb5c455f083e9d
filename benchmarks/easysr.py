"""EasySR benchmark: `python -m benchmarks.easysr [--quick] [--only quality|speed]` (about 12 minutes on 2 cores).

Rows:
1. quality: the generator trained briefly (6 epochs of 12 patch batches) as the reference trains it, the same with
   the residual input skip (`model.generator.input_skip=linear`), and with the `gan` loss (MSE + 1e-3
   adversarial on patch logits) plus the skip, against cubic-spline upsampling, on held-out synthetic rat-brain-like volumes
   (PSNR and slice SSIM with the reference's rules, normalised [0, 255] domain). Short CPU training: this checks
   the pipeline and the direction of the comparison, not the paper's (unpublished) numbers.
2. train step: one G step + one D step for a batch [2, 1, 128, 64, 128] -> 128 x 192 x 128 (the reference's
   size, beside PERF.md's reference row), with the reference's linear head and the patch discriminator, fp32 and
   bf16.
3. inference: time, efficiency and peak memory for one [128, 64, 128] LR volume (the reference's row), with and
   without BatchNorm folded into the convolutions, and one [256, 96, 256] one (whole volume and sliding window).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from benchmarks.harness import measure, previous_rows, print_table, speed_row, write_results
from common.fold import fold_batchnorm
from common.run import CONF_ROOT, train
from common.synthetic import isotropic_volume, write_ratbrain_nifti
from projects.easysr.infer import upsample_normalised
from projects.easysr.model import EasySRGenerator, PatchDiscriminator3D


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def gan_step(gen, disc, opt_g, opt_d, lr, hr, adversarial_weight: float, precision: str) -> None:
    """One generator step then one discriminator step, the same operations as `EasySRModule.training_step`."""
    with _autocast(precision):
        sr = gen(lr)
        loss_g = F.mse_loss(sr.float(), hr)
        if adversarial_weight > 0:
            logits = disc(sr).float()
            loss_g = loss_g + adversarial_weight * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    with _autocast(precision):
        real, fake = disc(hr).float(), disc(sr.detach()).float()
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()


def train_step_rows(repeat: int) -> list[dict]:
    """Times the G+D step at the reference size for both discriminators and both precisions."""
    lr = torch.rand(2, 1, 128, 64, 128) * 255
    hr = torch.rand(2, 1, 128, 192, 128) * 255
    rows = []
    for head, weight in (("linear", 0.0), ("patch", 1e-3)):
        for precision in ("32", "bf16"):
            gen, disc = EasySRGenerator().train(), PatchDiscriminator3D(head=head).train()
            opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
            opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
            stats = measure(lambda g=gen, d=disc, og=opt_g, od=opt_d, w=weight, p=precision:
                            gan_step(g, d, og, od, lr, hr, w, p), repeat=repeat, flops=True)
            rows.append(speed_row("easysr", "step", f"G+D [2,1,128,64,128], D={head}, adv={weight}, {precision}",
                                  stats, cpu_s=round(stats["cpu_s"], 2)))
            print(rows[-1], flush=True)
    return rows


#: (LR shape, window or None for the whole volume, precision, BatchNorm folded) of the inference rows.
INFERENCE_CASES = (((128, 64, 128), None, "32", False), ((128, 64, 128), None, "32", True),
                   ((128, 64, 128), None, "bf16", True), ((256, 96, 256), None, "32", True),
                   ((256, 96, 256), (128, 48, 128), "32", True), ((256, 96, 256), (128, 48, 128), "bf16", True))


def inference_rows(repeat: int) -> list[dict]:
    """Times the generator on whole volumes and with the sliding window; the first size is the reference's."""
    torch.manual_seed(0)
    gen = EasySRGenerator().eval()
    for module in gen.modules():  # trained-like statistics: identity ones would make folding a no-op
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(gen, torch.randn(1, 1, 8, 8, 8))[0]
    rows = []
    for shape, patch, precision, fold in INFERENCE_CASES:
        lr = torch.rand(*shape) * 255
        reps = repeat if shape[0] == 128 else 1
        stats = measure(lambda x=lr, p=patch, pr=precision, g=folded if fold else gen:
                        upsample_normalised(g, x, p, 0.25, precision=pr), repeat=reps, warmup=1, flops=True)
        name = (f"G [1,1,{','.join(map(str, shape))}], "
                f"{'whole volume' if patch is None else f'window {list(patch)}, overlap 0.25'}, {precision}"
                f"{', BN folded' if fold else ''}")
        row = speed_row("easysr", "volume", name, stats, cpu_s=round(stats["cpu_s"], 2))
        if shape[0] != 128:  # no reference row at this size
            row.update(input=f"[1,1,{','.join(map(str, shape))}]", ref_seconds=None, speedup=None,
                       ref_efficiency_12_07=None, ref_machine=None, speedup_by_efficiency=None)
        rows.append(row)
        print(rows[-1], flush=True)
    return rows


def quality_rows(epochs: int, root: Path) -> list[dict]:
    """Trains the reference and GAN losses briefly on synthetic volumes; returns test PSNR/SSIM vs splines."""
    raw = root / "train_data"
    shape = (48, 48, 48)
    splits = {"training": range(0, 8), "validation": range(100, 101), "test": range(200, 204)}
    for split, seeds in splits.items():
        write_ratbrain_nifti(raw, {f"rat{s:03d}": isotropic_volume(s, shape) for s in seeds}, split)
    rows = []
    common = [f"paths.data_dir={root}", f"data.raw_dir={raw}", "callbacks=minimal", "logger=none",
              "data.patch_size=[32,36,32]", "data.patches_per_volume=6", "data.batch_size=4",
              f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={epochs}"]
    reference = ["experiment=reference", "model.discriminator.input_shape=[32,36,32]"]
    skip = ["model.generator.input_skip=linear"]
    runs = {"reference": reference, "reference + input_skip": [*reference, *skip],
            "gan + input_skip": ["experiment=gan", *skip]}
    for name, extra in runs.items():
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_ROOT / "easysr"), version_base="1.3"):
            cfg = compose("train", overrides=[*common, *extra, f"paths.output_dir={root / name}"])
        start = time.perf_counter()
        res = train(cfg)
        rows.append({"row": "quality (held-out, 4 vols)", "input": "48x16x48 -> 48x48x48",
                     "config": f"{name} loss, {epochs} epochs", "psnr": res["test/psnr"],
                     "psnr_spline": res["test/psnr_spline"], "ssim": res["test/ssim"],
                     "ssim_spline": res["test/ssim_spline"], "train_s": time.perf_counter() - start})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs (a smoke run)")
    parser.add_argument("--only", choices=["quality", "speed"], help="run one part, keep the other's last rows")
    parser.add_argument("--skip-quality", action="store_const", const="speed", dest="only",
                        help="the speed rows only (--only speed), as in the other benchmarks")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else 2
    quality, speed = [], []
    if args.only != "speed":
        with tempfile.TemporaryDirectory() as tmp:
            quality = quality_rows(2 if args.quick else 6, Path(tmp))
        print_table(quality, "EasySR quality: generator vs cubic spline (PSNR dB / SSIM, reference rules)")
    if args.only != "quality":
        speed = train_step_rows(repeat) + inference_rows(repeat)
        print_table(speed, "EasySR speed (2-core CPU; cpu_s = process CPU seconds per call)")
    # Read the other part's rows only now: the two parts may run at the same time in two processes.
    quality = quality or previous_rows("easysr", lambda row: row.get("row", "").startswith("quality"))
    speed = speed or previous_rows("easysr", lambda row: not row.get("row", "").startswith("quality"))
    path = write_results("easysr", quality + speed, load_average=os.getloadavg())
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
