"""Evaluates a SAINT checkpoint with the paper's protocol beside cubic and linear interpolation along z.

    python projects/saint/eval.py ckpt_path=PATH data.cache_dir=DIR [factor=4] [subset=test] [max_cases=N]

Prints PSNR (slice-weighted mean of per-volume PSNR) and SSIM for SAINT (RFN fusion when the checkpoint has a
trained RFN, mean fusion, and each marginal view alone) and for the baselines, and writes
`<run dir>/eval_x<f>.json` (`common.eval_report`): `cases`/`mean` score the checkpoint's own output (its
`model.eval_fuse`, what `predict.py` writes) with `evaluation.score_case`, `protocol` names the protocol, `rows`
holds every method's slice-weighted means and `methods` every method's per-case scores and seconds. The factor, plane batch and scored crop are the checkpoint's
(`model.eval_factors[0]`, `model.plane_batch`, `model.crop_fraction` of its run config), as in `predict.py`;
`factor=`, `plane_batch=`, `crop_fraction=` override them with a note. With `write_volumes=true` SAINT's output in
the checkpoint's fusion (`model.eval_fuse`) is written as int16 HU to `<run dir>/x<f>/<case>.nii.gz` on the grid of
the scored slices: the voxels `predict.py` gives for that case's thick-slice copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from common.cli import progress
from common.errors import DataError
from common.eval_report import write_eval_report
from common.io.cache import VolumeCache
from common.io.nifti import save_nifti
from common.run import entry, output_dir
from common.runtime import autocast, choose_precision, set_threads
from common.settings import CheckpointSettings
from projects.saint.checkpoint import load_saint, read_run_config
from projects.saint.data import HU_OFFSET, IMAGE_KEY, PAPER_SPLIT, VolumeDataset, split_cases
from projects.saint.evaluation import interpolate_z, score_case, weighted_mean
from projects.saint.model import SAINT

log = logging.getLogger(__name__)

#: The `protocol` block of the eval JSON (the paper's PSNR/SSIM table could not be read: no figure is quoted).
PROTOCOL = {"name": "SAINT (Peng et al., CVPR 2020): PSNR (peak 1 after clipping to [0, 4000] / 4000) and SSIM of "
                    "the synthesised slices only, central half of x and y, per volume; the paper's aggregate is the "
                    "slice-weighted mean (`rows`), `mean` is unweighted",
            "paper": None}


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


class Inference(NamedTuple):
    """How a checkpoint synthesises and is scored: settings of its run config, or given by the user."""

    factor: int  # model.eval_factors[0]
    fuse: str  # model.eval_fuse ("rfn" or "mean")
    plane_batch: int | None  # model.plane_batch (None: by pixel budget)
    crop_fraction: float  # model.crop_fraction: the scored central part of x and y


#: Inference field -> the eval.py key that overrides the checkpoint's value (null: not given).
EVAL_KEYS = {"factor": "factor", "plane_batch": "plane_batch", "crop_fraction": "crop_fraction"}


def inference_of(ckpt: str | Path, rfn_trained: bool, overrides: Mapping[str, Any] | None = None,
                 flags: Mapping[str, str] | None = None, fallback_model: Mapping[str, Any] | None = None
                 ) -> Inference:
    """Returns the inference settings of a checkpoint, each overridden (with a one-line note) when given.

    Args:
        ckpt: a SAINT checkpoint (its run config holds the settings).
        rfn_trained: whether its RFN is trained: the fusion of a checkpoint whose config names none.
        overrides: field -> given value (None or absent: not given).
        flags: field -> how the user writes it, for the note.
        fallback_model: model config for what the run config lacks (a plain state dict has none).

    Raises:
        DataError: unreadable checkpoint, or neither it nor `fallback_model` holds a setting.
    """
    written = OmegaConf.to_container(OmegaConf.create(fallback_model or {}), resolve=False)
    fallback = {k: v for k, v in dict(written).items() if k != "eval_fuse"}  # type: ignore[arg-type]
    own = read_run_config(ckpt) or {}
    settings = CheckpointSettings(ckpt, OmegaConf.merge({"model": fallback}, own))
    overrides, flags = overrides or {}, flags or {}

    def get(field: str, key: str, default: Any = None) -> Any:
        return settings.get(key, overrides.get(field), flags.get(field, field), default)

    factor = settings.choose("model.eval_factors[0]", settings.stored("model.eval_factors", [None])[0],
                             overrides.get("factor"), flags.get("factor", "factor"))
    if factor is None:
        raise DataError(ckpt, "the checkpoint's run config has no model.eval_factors: give the factor")
    return Inference(int(factor), str(get("fuse", "model.eval_fuse", "rfn" if rfn_trained else "mean")),
                     get("plane_batch", "model.plane_batch"), float(get("crop_fraction", "model.crop_fraction")))


def method_outputs(net: SAINT, item: dict, plane_batch: int | None, fuses: Sequence[str],
                   baselines: Sequence[str]) -> dict[str, tuple[torch.Tensor | np.ndarray, float]]:
    """Returns `{method: (volume [X, Y, Z'] in 0..4000, seconds)}`: SAINT's views and fusions, the baselines."""
    f = item["f"]
    start = time.perf_counter()
    view_x, view_y = net.infer_views(item["lr"], item["spacing"], f, plane_batch)
    views_seconds = time.perf_counter() - start
    outputs = {"SAINT view x (MSR)": (view_x, views_seconds), "SAINT view y (MSR)": (view_y, views_seconds)}
    for mode in fuses:
        start = time.perf_counter()
        fused = net.fuse(view_x, view_y, mode)
        outputs[f"SAINT {mode} fusion"] = (fused, views_seconds + time.perf_counter() - start)
    for kind in baselines:
        start = time.perf_counter()
        outputs[f"{kind} along z"] = (interpolate_z(item["lr"], f, kind), time.perf_counter() - start)
    return outputs


def score_outputs(outputs: Mapping[str, tuple[Any, float]], item: dict, crop_fraction: float
                  ) -> dict[str, dict[str, float]]:
    """Returns `{method: {"psnr", "ssim", "seconds"}}` of `method_outputs` against the item's HR volume."""
    f, hr = item["f"], item["hr"]
    return {name: {**score_case(vol, hr, f, crop_fraction), "seconds": sec} for name, (vol, sec) in outputs.items()}


def score_methods(net: SAINT, item: dict, cfg: DictConfig, fuses: list[str]) -> dict[str, dict[str, float]]:
    """Returns `{method: {"psnr", "ssim", "seconds"}}` for one evaluation item (`cfg.model.plane_batch`,
    `cfg.model.crop_fraction`, `cfg.baselines`)."""
    outputs = method_outputs(net, item, cfg.model.plane_batch, fuses, cfg.baselines)
    return score_outputs(outputs, item, cfg.model.crop_fraction)


def write_volume(path: Path, volume: torch.Tensor, cache: VolumeCache, item: dict) -> Path:
    """Writes a synthesised volume (0..4000) as int16 HU on the grid of the item's scored slices; returns `path`.

    The scored grid is the cached one without its first `Z mod f` slices (see `data.lr_from_hr`).
    """
    cached = cache.affine(item["case_id"])
    if cached is None:
        raise DataError(cache.root, f"the cache holds no affine for {item['case_id']}")
    affine = np.array(cached, dtype=np.float64)
    trimmed = cache.shape(item["case_id"], IMAGE_KEY)[2] - item["hr"].shape[2]
    affine[:3, 3] += trimmed * affine[:3, 2]
    return save_nifti(path, volume.numpy() - HU_OFFSET, affine, dtype=np.int16)


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
    """Runs the evaluation of `cfg` and returns the summary rows (the report is written to `eval_x<f>.json`)."""
    set_threads(cfg.threads)
    net, rfn_trained = load_saint(cfg.ckpt_path, OmegaConf.to_container(cfg.model.net, resolve=True))
    run = inference_of(cfg.ckpt_path, rfn_trained, {f: cfg.get(k) for f, k in EVAL_KEYS.items()}, EVAL_KEYS,
                       cfg.model)
    fuses = [m for m in cfg.fuse if m != "rfn" or rfn_trained]
    fuses += [run.fuse] if run.fuse not in fuses else []
    precision = choose_precision(cfg.get("inference_precision"))
    cache = VolumeCache(cfg.data.cache_dir)
    cases = select_cases(cfg, cache)
    per_case, weights = {}, {}
    for item in progress(VolumeDataset(cache, cases, [run.factor]), f"SAINT x{run.factor}", len(cases)):
        with autocast(precision):
            outputs = method_outputs(net, item, run.plane_batch, fuses, cfg.baselines)
        per_case[item["case_id"]] = score_outputs(outputs, item, run.crop_fraction)
        weights[item["case_id"]] = int(item["hr"].shape[2])
        if cfg.write_volumes:
            path = output_dir(cfg) / f"x{run.factor}" / f"{item['case_id']}.nii.gz"
            write_volume(path, outputs[f"SAINT {run.fuse} fusion"][0], cache, item)
        log.info("%s: %s", item["case_id"], {m: v["psnr"] for m, v in per_case[item["case_id"]].items()})
    rows = summarise(per_case, weights)
    print_rows(rows, f"SAINT x{run.factor}: {len(cases)} {cfg.subset} volume(s) of {cfg.data.cache_dir}")
    if not rfn_trained:
        print("(the checkpoint is a stage-1 checkpoint: its RFN is untrained, so RFN fusion is not reported)")
    own = f"SAINT {run.fuse} fusion"
    write_eval_report(output_dir(cfg) / f"eval_x{run.factor}.json",
                      {c: {k: v for k, v in m[own].items() if k != "seconds"} for c, m in per_case.items()},
                      {**PROTOCOL, "factor": run.factor, "method": own}, checkpoint=str(cfg.ckpt_path),
                      settings={**run._asdict(), "precision": precision}, rows=rows, methods=per_case)
    return rows


if __name__ == "__main__":
    entry("saint", evaluate, config_name="eval")()
