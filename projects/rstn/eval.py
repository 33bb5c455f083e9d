"""The RSTN test chain on one fold: `python projects/rstn/eval.py experiment=nih_pancreas fold=0`.

Stages (`eval.stages`, in this order): coarse testing per plane, fusion of the planes (mean >= 0.5), oracle
testing (fine stage in the ground-truth box), coarse-to-fine iteration. Each stage writes its masks as NIfTI
on the CT grid (`<out_dir>/<stage>/<case>.nii.gz`) and its per-case DSC (`<out_dir>/<stage>_dsc.json`), scored by
`metrics.score_case` as validation is. `<out_dir>/summary.json` is the eval report (`common.eval_report`): per case
`dice` (the last stage run: coarse2fine by default) and `dice_<stage>` of every stage, their means, the
`protocol` with the paper's figures, `stages` (mean / std / min / max per stage, printed beside the paper's
figures) and `details` (per case: coarse-to-fine rounds, inter-round DSC, seconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import module_from_checkpoint, read_checkpoint
from common.cli import progress
from common.errors import DataError
from common.eval_report import write_eval_report
from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.io.nifti import save_nifti
from common.run import entry
from common.runtime import choose_precision
from common.settings import CheckpointSettings, given_settings
from projects.rstn.data import LAYOUT, fold_cases
from projects.rstn.inference import (
    average_triplets,
    coarse_to_fine,
    dsc,
    keep_large_components,
    oracle_plane,
    predict_plane,
)
from projects.rstn.metrics import score_case
from projects.rstn.model import RSTN

log = logging.getLogger(__name__)

# Fold 0 of the reference PyTorch port (logs/FD0_*) and the paper's 4-fold result, DSC %.
PAPER = {"coarse_X": "70.60 (fold 0)", "coarse_Y": "70.72 (fold 0)", "coarse_Z": "70.43 (fold 0)",
         "fusion": "75.25 (fold 0, F2)", "oracle": "-", "coarse2fine": "84.62 (fold 0); 84.50 +/- 4.97, "
         "min 62.81, max 91.02 (paper, 4 folds)"}
__all__ = ["Protocol", "average_triplets", "evaluate_rstn", "load_plane_model", "protocol_of"]


def load_plane_model(path: str | Path, fallback_model: DictConfig | None = None) -> RSTN:
    """Returns the RSTN of a training checkpoint (built from the config stored in it), in eval mode.

    Raises:
        DataError: the checkpoint is missing, unreadable or does not fit.
    """
    has_config = "model" in (read_checkpoint(path).get("run_config") or {})
    module, _ = module_from_checkpoint(path, None if has_config else fallback_model)
    return module.net.eval()


class Protocol(NamedTuple):
    """The coarse-to-fine testing settings (`eval.*` of conf/rstn/eval.yaml; margin = the model's; precision = the
    machine's, `inference_precision` / predict's `--precision`)."""

    margin: int
    max_rounds: int
    stop_inter_dsc: float
    threshold: float
    post_ratio: float
    batch_size: int
    fine_batch_size: int
    precision: str


_TYPES = {"margin": int, "max_rounds": int, "stop_inter_dsc": float, "threshold": float, "post_ratio": float,
          "batch_size": int, "fine_batch_size": int, "precision": str}


def protocol_of(ckpt: str | Path, overrides: Mapping[str, Any] | None = None,
                flags: Mapping[str, str] | None = None, fallback_model: DictConfig | None = None,
                precision: str = "32") -> Protocol:
    """Returns the protocol a checkpoint is tested with: its own margin, conf/rstn/eval.yaml's rounds.

    Args:
        ckpt: a plane checkpoint written by train.py (its run config holds `model.margin`).
        overrides: field -> value given by the user (None or absent: not given); a given one wins and is
            reported in one line.
        flags: field -> how the user writes it (`--margin`, `eval.margin`), for that line.
        fallback_model: the model config of a checkpoint without a run config (as `load_plane_model`).
        precision: "32" or "bf16": how this machine runs the forward passes (not a checkpoint setting).

    Raises:
        DataError: unreadable checkpoint, or one without the settings.
    """
    run_config = read_checkpoint(ckpt).get("run_config") or ({"model": fallback_model} if fallback_model else None)
    settings = CheckpointSettings(ckpt, run_config, project="rstn")
    overrides, flags = overrides or {}, flags or {}
    values = {name: settings.get(f"eval.{name}", overrides.get(name), flags.get(name))
              for name in Protocol._fields if name != "precision"}
    return Protocol(**{name: _TYPES[name](value) for name, value in values.items()}, precision=precision)


def eval_settings(cfg: DictConfig) -> DictConfig:
    """Returns `cfg.eval` with the protocol of the first plane's checkpoint (its margin, not the eval config's).

    A protocol setting given on the command line (`eval.margin=7`) overrides the checkpoint's with a note.
    """
    given = {name: value for name, value in given_settings(cfg.eval, "rstn").items()
             if name in Protocol._fields and name != "precision"}
    protocol = protocol_of(cfg.checkpoints[cfg.eval.planes[0]], given, {name: f"eval.{name}" for name in given},
                           cfg.model, choose_precision(cfg.get("inference_precision")))
    return OmegaConf.merge(OmegaConf.to_container(cfg.eval, resolve=True), protocol._asdict())


def _write_mask(out_dir: Path, stage: str, case_id: str, mask: np.ndarray, affine: np.ndarray | None,
                meta: dict | None = None) -> None:
    if affine is None:
        raise DataError(case_id, "the cache holds no affine for this case")
    data, source_affine = LAYOUT.stored_axes(meta, case_id).to_file(mask.astype(np.uint8), affine)
    save_nifti(out_dir / stage / f"{case_id}.nii.gz", data, source_affine)


def evaluate_case(image: np.ndarray, label: np.ndarray, models: dict[str, RSTN], ev: DictConfig
                  ) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, Any]]:
    """Runs the configured stages on one volume; returns (DSC per stage, mask per stage, C2F details)."""
    stages = list(ev.stages)
    scores: dict[str, float] = {}
    masks: dict[str, np.ndarray] = {}
    details: dict[str, Any] = {}
    with torch.no_grad():
        coarse = {p: predict_plane(image, p, m, ev.batch_size, str(ev.precision)) for p, m in models.items()}
    if "coarse" in stages:
        for plane, prob in coarse.items():
            masks[f"coarse_{plane}"] = (prob >= 0.5).astype(np.uint8)
    if "fusion" in stages:
        fused = np.sum(list(coarse.values()), axis=0)
        masks["fusion"] = (fused / len(coarse) >= ev.threshold).astype(np.uint8)
        for name, t in (("F1", 0.5), ("F2", 1.5), ("F3", 2.5)):
            details[f"fusion_{name}"] = dsc(fused >= t, label) if len(coarse) == 3 else None
        masks["fusion_post"] = keep_large_components(masks["fusion"], ev.post_ratio)
    if "oracle" in stages:
        with torch.no_grad():
            oracle = [oracle_plane(image, label, p, m, ev.margin, str(ev.precision), ev.fine_batch_size)
                      for p, m in models.items()]
        masks["oracle"] = keep_large_components(np.mean(oracle, axis=0) >= ev.threshold, ev.post_ratio)
    if "coarse2fine" in stages:
        c2f = coarse_to_fine(image, models, coarse, ev.max_rounds, ev.stop_inter_dsc, ev.threshold, ev.margin,
                             ev.post_ratio, label, str(ev.precision), ev.fine_batch_size)
        masks["coarse2fine"] = c2f.mask
        details.update(rounds=c2f.rounds, inter_dsc=c2f.inter_dsc, round_dsc=c2f.dsc)
    scores = {name: score_case(mask, label)["dice"] for name, mask in masks.items()}
    return scores, masks, details


def summary(per_case: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Returns {stage: {mean, std, min, max, n}} of per-case DSC (fractions)."""
    stages = sorted({s for scores in per_case.values() for s in scores})
    out = {}
    for stage in stages:
        values = np.array([scores[stage] for scores in per_case.values() if stage in scores])
        out[stage] = {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                      "max": float(values.max()), "n": int(values.size)}
    return out


def format_table(stats: dict[str, dict[str, float]]) -> str:
    """Returns the summary as a text table in DSC %, with the paper's figures."""
    lines = [f"{'stage':<14} {'mean +/- std':>16} {'min':>7} {'max':>7}   paper / reference",
             "-" * 90]
    for stage, s in stats.items():
        lines.append(f"{stage:<14} {100 * s['mean']:7.2f} +/- {100 * s['std']:5.2f} {100 * s['min']:7.2f} "
                     f"{100 * s['max']:7.2f}   {PAPER.get(stage, '')}")
    return "\n".join(lines)


def case_scores(stage_dsc: dict[str, float]) -> dict[str, float]:
    """Returns a case's report scores: `dice` of its final mask (coarse2fine when run, else the fused coarse
    mask; oracle testing sees the label, so it is never the final one) and `dice_<stage>` of every stage."""
    final = next(stage for stage in ("coarse2fine", "fusion", "fusion_post", *sorted(stage_dsc), "oracle")
                 if stage in stage_dsc)
    return {"dice": stage_dsc[final], **{f"dice_{stage}": value for stage, value in stage_dsc.items()}}


def evaluate_rstn(cfg: DictConfig) -> dict[str, Any]:
    """Runs the test chain of `cfg.eval` on the fold's cases; writes masks, per-case DSC and the report.

    Returns:
        The report written to `summary.json` (see the module docstring).
    """
    ev = eval_settings(cfg)
    models = {p: load_plane_model(cfg.checkpoints[p], cfg.model) for p in ev.planes}
    if ev.channels_last:
        models = {p: m.to(memory_format=torch.channels_last) for p, m in models.items()}
    train, test = fold_cases(cfg.data.split_file, cfg.fold)
    cases = {"test": test, "train": train}.get(ev.split)
    if cases is None:
        raise DataError(None, f"eval.split must be test or train, got {ev.split!r}")
    cache = VolumeCache(cfg.data.cache_dir)
    out_dir = Path(ev.out_dir)
    per_case: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}
    for case_id in progress(cases, f"RSTN fold {cfg.fold}: {len(cases)} case(s)", len(cases)):
        start = time.perf_counter()
        image = np.asarray(cache.load(case_id, "image"), dtype=np.float32)
        label = np.asarray(cache.load(case_id, "label")) > 0
        scores, masks, info = evaluate_case(image, label, models, ev)
        if ev.write_masks:
            for stage, mask in masks.items():
                _write_mask(out_dir, stage, case_id, mask, cache.affine(case_id), cache.meta(case_id))
        per_case[case_id], details[case_id] = scores, {**info, "seconds": time.perf_counter() - start}
        log.info("%s: %s", case_id, {k: round(v, 4) for k, v in scores.items()})
    for stage in sorted({s for scores in per_case.values() for s in scores}):
        save_json(out_dir / f"{stage}_dsc.json", {c: s[stage] for c, s in per_case.items() if stage in s})
    stats = summary(per_case)
    report = write_eval_report(
        out_dir / "summary.json", {case: case_scores(scores) for case, scores in per_case.items()},
        {"name": "RSTN (Yu et al., CVPR 2018): DSC of each test volume's mask (0 when both are empty), mean over "
                 "the fold's test cases", "paper": PAPER},
        fold=cfg.fold, split=ev.split, precision=ev.precision, stages=stats, details=details)
    print(f"RSTN fold {cfg.fold}, {len(cases)} {ev.split} cases (DSC %)\n{format_table(stats)}")
    return report


if __name__ == "__main__":
    entry("rstn", evaluate_rstn, config_name="eval")()
