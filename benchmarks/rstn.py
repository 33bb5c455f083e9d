"""RSTN benchmark: `python -m benchmarks.rstn` (about 10-15 minutes on a 2-core CPU).

Rows:
- train step [1, 3, 512, 512], mode J, coarse + fine, paper width (268.6 M parameters), SGD: fp32 and bf16
  (beside the reference's row of PERF.md);
- coarse stage of one plane (Z) of a 512 x 512 x 100 volume at paper width, batched slices, fp32 and bf16
  (beside the reference's row, one slice per pass);
- quality on held-out synthetic cases (the demo's run: 1/16 width, trained minutes): coarse, fused, oracle
  and coarse-to-fine DSC, rounds to convergence, coarse-to-fine time and peak memory per volume, and the
  classical window rule on the same cases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from benchmarks.harness import measure, previous_rows, print_table, speed_row, write_results
from common.io.cache import VolumeCache
from projects.rstn.inference import coarse_to_fine, predict_plane
from projects.rstn.model import RSTN, rstn_loss


def _paper_net() -> RSTN:
    torch.manual_seed(0)
    return RSTN(width=1.0).to(memory_format=torch.channels_last)


def train_step_rows(net: RSTN, repeat: int) -> list[dict]:
    """Times one SGD step of mode J on a 512 x 512 triplet with a 60 x 90 pancreas-sized label."""
    x = torch.rand(1, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(1, 3, 512, 512)
    y[:, :, 250:310, 200:290] = 1
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-5, momentum=0.99, weight_decay=5e-4)
    rows = []
    for precision in ("fp32", "bf16"):
        def step(precision: str = precision) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                p_c, p_f = net.forward_train(x, y, "J", 20)
                loss = rstn_loss(p_c.float(), p_f.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        m = measure(step, repeat=repeat, warmup=1, flops=True)
        rows.append(speed_row("rstn", "step", f"J [1,3,512,512], coarse + fine, SGD, {precision}", m))
        print(rows[-1], flush=True)
    return rows


def coarse_plane_rows(net: RSTN, slices: int, batch_size: int) -> list[dict]:
    """Times the coarse stage of plane Z over a 512 x 512 x `slices` volume (scaled to 100 slices if fewer)."""
    net.eval()
    volume = np.random.default_rng(0).random((512, 512, slices), dtype=np.float32)
    rows = []
    for precision in ("32", "bf16"):
        m = measure(lambda p=precision: predict_plane(volume, "Z", net, batch_size, p), repeat=1, warmup=1,
                    flops=True)
        scaled = {**m, "extrapolated_s": m["median_s"] * 100 / slices, "gflop": m["gflop"] * 100 / slices}
        name = f"coarse plane Z 512x512x100, {batch_size} slices/pass, {'fp32' if precision == '32' else 'bf16'}"
        rows.append(speed_row("rstn", "volume", name, scaled, measured_slices=slices))
        print(rows[-1], flush=True)
    return rows


def stride_ceiling(label: np.ndarray, stride: int = 8) -> float:
    """Returns the DSC left of a label [H, W, D] seen at 1 / `stride` of its in-plane size.

    Each axial slice is average-pooled by `stride`, bilinearly upsampled back and thresholded at 0.5: about the
    best that FCN-8s, whose finest scores come at 1/8 resolution through a fixed bilinear upsampling, can draw of
    a structure a few pixels wide.
    """
    t = torch.from_numpy(label.astype(np.float32)).permute(2, 0, 1)[:, None]
    low = torch.nn.functional.avg_pool2d(t, stride, ceil_mode=True)
    up = torch.nn.functional.interpolate(low, size=t.shape[-2:], mode="bilinear", align_corners=False) >= 0.5
    return float(2 * (up & (t > 0)).sum() / max(float(up.sum() + (t > 0).sum()), 1.0))


def organ_free_share(mask_file: Path, cache: VolumeCache, case: str) -> float:
    """Returns the share of a written mask's voxels that lie on axial slices of `case` holding no organ."""
    from projects.rstn.data import file_volume

    label = file_volume(cache, case, "label")[0] > 0
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    organ_slices = label.any(axis=(0, 1))
    return float(mask[:, :, ~organ_slices].sum() / max(int(mask.sum()), 1))


def quality_rows(out: Path, steps: int | None, planes: str, overrides: list[str], reuse: bool = False) -> list[dict]:
    """Trains and tests the demo recipe (synthetic data, a step budget), then times coarse-to-fine on one volume.

    With `reuse`, `out` is a finished demo run (`result.json`, `eval/summary.json`, checkpoints): nothing is
    trained again, and `steps` / `planes` are read from it.
    """
    from projects.rstn.data import fold_cases
    from projects.rstn.demo import RUN_NAME, run
    from projects.rstn.eval import load_plane_model

    if reuse:
        result = json.loads((out / "result.json").read_text())
        planes, steps = "".join(result["train_steps"]), max(result["train_steps"].values())
    else:
        result = run(out, planes=planes, steps=steps, overrides=overrides)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    stages, cases = summary["stages"], summary["details"]
    steps = steps or max(result["train_steps"].values())
    label = f"{steps} steps/plane, planes {planes}"
    rows = [{"row": f"DSC {stage} (synthetic, {s['n']} held-out; {label})", "mean": s["mean"], "std": s["std"],
             "min": s["min"], "max": s["max"]} for stage, s in stages.items()]
    rows.append({"row": "DSC classical window rule (same held-out cases)", "mean": result["baseline_value"]})
    coarse = stages["fusion"]["mean"]
    rows.append({"row": "coarse-to-fine minus fused coarse DSC", "mean": stages["coarse2fine"]["mean"] - coarse})
    rounds = [c["rounds"] for c in cases.values()]
    rows.append({"row": "coarse-to-fine rounds to convergence (inter-DSC >= 0.99)", "mean": float(np.mean(rounds)),
                 "min": float(np.min(rounds)), "max": float(np.max(rounds))})
    rows.append({"row": f"training seconds ({label}, {result['threads']} thread(s))",
                 "seconds": result["train_seconds"]})
    cache = VolumeCache(out / "cache")
    test = fold_cases(out / "cache" / "splits.json", 0)[1]
    ceiling = [stride_ceiling(np.asarray(cache.load(c, "label")) > 0) for c in test]
    rows.append({"row": "DSC ceiling of a stride-8 output (label pooled 8x, upsampled; same cases)",
                 "mean": float(np.mean(ceiling)), "min": float(np.min(ceiling)), "max": float(np.max(ceiling))})
    for stage in ("coarse_Z", "coarse2fine"):
        if (out / "eval" / stage).is_dir():
            share = [organ_free_share(out / "eval" / stage / f"{c}.nii.gz", cache, c) for c in test]
            rows.append({"row": f"share of {stage} voxels on organ-free axial slices", "mean": float(np.mean(share)),
                         "min": float(np.min(share)), "max": float(np.max(share))})
    case = test[0]
    image = np.asarray(cache.load(case, "image"), np.float32)
    models = {p: load_plane_model(out / RUN_NAME / p / "checkpoints" / "last.ckpt") for p in planes}

    def c2f() -> None:
        with torch.no_grad():
            coarse = {p: predict_plane(image, p, m) for p, m in models.items()}
            coarse_to_fine(image, models, coarse, batch_size=16)

    m = measure(c2f, repeat=3, warmup=1)
    rows.append({"row": f"coarse-to-fine per volume {image.shape} (demo width, planes {planes})",
                 "seconds": m["median_s"], "peak_rss_mb": m["peak_rss_mb"]})
    return rows


_SPEED_ROWS = ("step:", "volume:", "train step", "coarse plane")


def previous_speed_rows() -> list[dict]:
    """Returns the paper-width speed rows of the current results file (kept by a quality-only run)."""
    rows = previous_rows("rstn", lambda row: row["row"].startswith(_SPEED_ROWS))
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the table and writes benchmarks/results/rstn.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default="outputs/bench/rstn")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=50,
                        help="slices of the coarse-plane timing (scaled to 100; 50 keeps the whole run under 15 min)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per plane of the quality rows (default: the demo's)")
    parser.add_argument("--planes", default="XYZ", help="planes of the quality rows (XYZ: with the fusion)")
    parser.add_argument("--set", action="append", default=[], help="Hydra override of the quality run's config")
    parser.add_argument("--from-run", default=None, help="record the quality rows of this finished demo run")
    parser.add_argument("--skip-quality", action="store_true", help="keep the quality rows of the last results file")
    parser.add_argument("--skip-speed", action="store_true",
                        help="keep the paper-width speed rows of the last results file")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    if not args.skip_speed:
        net = _paper_net()
        rows = train_step_rows(net, args.repeat)
        print(rows, flush=True)
        rows += coarse_plane_rows(net, args.slices, batch_size=4)
        print(rows[-2:], flush=True)
        del net
    if not args.skip_quality:
        out = Path(args.from_run or args.out)
        rows += quality_rows(out, args.steps, args.planes, args.set, reuse=args.from_run is not None)
    if args.skip_speed:  # read at the end: the speed rows may have been rewritten while this ran
        rows = previous_speed_rows() + rows
    if args.skip_quality:
        rows += [{k: v for k, v in r.items() if v is not None}
                 for r in previous_rows("rstn", lambda row: not row["row"].startswith(_SPEED_ROWS))]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    rows = [{k: row.get(k) for k in keys} for row in rows]
    load = os.getloadavg()
    print_table(rows, f"RSTN (2-core CPU, load average {load[0]:.1f} during the run)")
    write_results("rstn", rows, command="python -m benchmarks.rstn " + " ".join(sys.argv[1:] if argv is None else argv), load_average=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
