"""Evaluates a SAINT checkpoint with the paper's protocol beside cubic and linear interpolation along z.

    python projects/saint/eval.py ckpt_path=PATH data.cache_dir=DIR factor=4 [subset=test] [max_cases=N]

Prints PSNR (slice-weighted mean of per-volume PSNR) and SSIM for SAINT (RFN fusion when the checkpoint has a
trained RFN, mean fusion, and each marginal view alone) and for the baselines, and writes
`<run dir>/eval_x<f>.json` with the per-case values.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from common.errors import DataError
from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.run import entry, output_dir
from common.runtime import set_threads
from projects.saint.checkpoint import load_saint
from projects.saint.data import PAPER_SPLIT, VolumeDataset, split_cases
from projects.saint.evaluation import interpolate_z, psnr_saint, ssim_saint, weighted_mean
from projects.saint.model import SAINT

log = logging.getLogger(__name__)


def select_cases(cfg: DictConfig, cache: VolumeCache) -> list[str]:
    """Returns the cases of `cfg.subset` (test / val / all) present in the cache, at most `cfg.max_cases`."""
    if len(cache) == 0:
        raise DataError(cache.root, "the cache is empty (run `python -m projects.saint.prepare` or `make demo`)")
    if cfg.subset == "all":
        cases = cache.case_ids()
    else:
        split = split_cases(cache.case_ids(), cfg.data.split_file or PAPER_SPLIT, cfg.data.val_count,
                            cfg.data.split_seed)
        cases = getattr(split, cfg.subset)
    if not cases:
        raise DataError(cache.root, f"no {cfg.subset} case in the cache")
    return cases[: cfg.max_cases] if cfg.max_cases else cases


def score_case(net: SAINT, item: dict, cfg: DictConfig, fuses: list[str]) -> dict[str, dict[str, float]]:
    """Returns `{method: {"psnr", "ssim", "seconds"}}` for one evaluation item."""
    f, hr, crop = item["f"], item["hr"], cfg.model.crop_fraction
    start = time.perf_counter()
    view_x, view_y = net.infer_views(item["lr"], item["spacing"], f, cfg.model.plane_batch)
    views_seconds = time.perf_counter() - start
    outputs = {"SAINT view x (MSR)": (view_x, views_seconds), "SAINT view y (MSR)": (view_y, views_seconds)}
    for mode in fuses:
        start = time.perf_counter()
        fused = net.fuse(view_x, view_y, mode)
        outputs[f"SAINT {mode} fusion"] = (fused, views_seconds + time.perf_counter() - start)
    for kind in cfg.baselines:
        start = time.perf_counter()
        outputs[f"{kind} along z"] = (interpolate_z(item["lr"], f, kind), time.perf_counter() - start)
    return {name: {"psnr": psnr_saint(vol, hr, f, crop), "ssim": ssim_saint(vol, hr, f, crop), "seconds": sec}
            for name, (vol, sec) in outputs.items()}


def summarise(per_case: dict[str, dict], weights: dict[str, int]) -> list[dict]:
    """Returns one row per method: slice-weighted PSNR and SSIM over the cases."""
    methods = next(iter(per_case.values())).keys()
    rows = []
    for m in methods:
        w = [weights[c] for c in per_case]
        rows.append({"method": m, "psnr": weighted_mean([per_case[c][m]["psnr"] for c in per_case], w),
                     "ssim": weighted_mean([per_case[c][m]["ssim"] for c in per_case], w),
                     "seconds_per_case": float(np.mean([per_case[c][m]["seconds"] for c in per_case]))})
    return rows


def print_rows(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for key in ("method", "PSNR (dB)", "SSIM", "s / volume"):
        table.add_column(key, justify="left" if key == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['seconds_per_case']:.2f}")
    Console(width=120).print(table)


@torch.no_grad()
def evaluate(cfg: DictConfig) -> list[dict]:
    """Runs the evaluation of `cfg` and returns the summary rows (also written to `eval_x<f>.json`)."""
    set_threads(cfg.threads)
    net, rfn_trained = load_saint(cfg.ckpt_path, OmegaConf.to_container(cfg.model.net, resolve=True))
    fuses = [m for m in cfg.fuse if m != "rfn" or rfn_trained]
    cache = VolumeCache(cfg.data.cache_dir)
    cases = select_cases(cfg, cache)
    dataset = VolumeDataset(cache, cases, [cfg.factor])
    per_case, weights = {}, {}
    for item in dataset:
        per_case[item["case_id"]] = score_case(net, item, cfg, fuses)
        weights[item["case_id"]] = int(item["hr"].shape[2])
        log.info("%s: %s", item["case_id"], {m: v["psnr"] for m, v in per_case[item["case_id"]].items()})
    rows = summarise(per_case, weights)
    title = f"SAINT x{cfg.factor}: {len(cases)} {cfg.subset} volume(s) of {cfg.data.cache_dir}"
    print_rows(rows, title)
    if not rfn_trained:
        print("(the checkpoint is a stage-1 checkpoint: its RFN is untrained, so RFN fusion is not reported)")
    save_json(output_dir(cfg) / f"eval_x{cfg.factor}.json",
              {"checkpoint": str(cfg.ckpt_path), "factor": cfg.factor, "cases": cases, "rows": rows,
               "per_case": per_case})
    return rows


if __name__ == "__main__":
    entry("saint", evaluate, config_name="eval")()
