"""Score a checkpoint with the paper's protocols and print the paper's numbers beside ours.

    python projects/spin/eval.py experiment=atlas_traintest ckpt_path=outputs/spin/atlas_traintest/checkpoints/best.ckpt

Table 2 protocol: each test scan is segmented whole (every axial slice, logit >= 0), Dice / IoU / precision /
recall are computed on its 3-D mask (a zero division scores 0) and averaged over scans. Table 3 protocol: the
test slices whose every 8-connected lesion component has at most 100 pixels are pooled and each metric is
computed once over the pool. Both score with ``metrics.score_counts``, the rule validation uses. Writes
``<run dir>/eval_spin.json`` (``common.eval_report``: ``cases``/``mean`` of Table 2, ``protocol`` with the paper's
rows, ``small_lesion`` the Table 3 pool) and prints a table; with ``eval.write_masks=true``
also each scan's mask, ``<run dir>/masks/<scan>.nii.gz`` (uint8, on the RAS grid of the cached scan). The network,
its slice context and the eval settings are the checkpoint's (as in ``predict.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.checkpoint import module_from_checkpoint
from common.cli import progress
from common.compiled import maybe_compiled
from common.eval_report import write_eval_report
from common.io.cache import VolumeCache
from common.io.nifti import save_nifti
from common.run import entry, output_dir, resolve_ckpt_path
from common.runtime import choose_precision
from common.settings import given_settings
from projects.spin.data import ras_volume, volume_xyz
from projects.spin.metrics import METRICS, score_case, score_counts, small_lesion_counts
from projects.spin.predict import inference_of, logits_function, predict_volume, prepare_network

#: Paper Tables 2 (27 test scans, mean over scans) and 3 (pooled small-lesion slices): DSC, IoU, P, R.
PAPER = {
    "SPiN": {"scans": (0.703, 0.556, 0.806, 0.654), "small": (0.424, 0.269, 0.546, 0.347)},
    "U-Net": {"scans": (0.584, 0.432, 0.674, 0.558), "small": (0.368, 0.225, 0.440, 0.316)},
}


def score_masks(predict_mask: Callable[[str], np.ndarray], cache: VolumeCache, scan_ids: Sequence[str],
                small_max_px: int = 100) -> dict[str, Any]:
    """Returns per-scan, mean-over-scan and pooled small-lesion scores of the masks ``predict_mask(scan id)``.

    Args:
        predict_mask: returns the predicted mask ``[X, Y, Z]`` of a cached scan.
        cache: the volume cache holding the reference ``lesion`` arrays.
        scan_ids: the scans to score.
        small_max_px: component size limit of the small-lesion rule.

    Returns:
        ``{"cases": {id: scores}, "mean": scores, "small_lesion": scores, "n_scans", "n_small_slices"}``,
        scores being ``metrics.score_case``'s ``{"dice", "iou", "precision", "recall"}``.
    """
    per_scan, pooled, n_small = {}, np.zeros(3, dtype=np.int64), 0
    for scan in progress(scan_ids, f"SPiN: {len(scan_ids)} scan(s)", len(scan_ids)):
        gt = np.asarray(volume_xyz(cache, scan, "lesion")) > 0
        pred = np.asarray(predict_mask(scan)) > 0
        per_scan[scan] = score_case(pred, gt)
        counts, slices = small_lesion_counts(pred, gt, small_max_px)
        pooled, n_small = pooled + counts, n_small + slices
    mean = {m: float(np.mean([s[m] for s in per_scan.values()])) if per_scan else float("nan") for m in METRICS}
    return {"cases": per_scan, "mean": mean, "small_lesion": score_counts(*pooled),
            "n_scans": len(per_scan), "n_small_slices": n_small}


def format_table(results: dict[str, Any], model_name: str) -> str:
    """Returns our mean-over-scan and small-lesion scores beside the paper's rows, as aligned text."""
    lines = [f"{'':<28}{'Dice':>8}{'IoU':>8}{'Prec':>8}{'Recall':>8}"]
    ours = [(f"{model_name} (this run), scans", results["mean"]),
            (f"{model_name} (this run), small", results["small_lesion"])]
    for label, scores in ours:
        lines.append(f"{label:<28}" + "".join(f"{scores[m]:>8.3f}" for m in METRICS))
    for name, rows in PAPER.items():
        for key, label in (("scans", "scans"), ("small", "small")):
            lines.append(f"{f'{name} (paper), {label}':<28}" + "".join(f"{v:>8.3f}" for v in rows[key]))
    lines.append(f"{results['n_scans']} scans, {results['n_small_slices']} small-lesion slices")
    return "\n".join(lines)


def evaluate_spin(cfg: DictConfig) -> dict[str, Any]:
    """Evaluates ``cfg.ckpt_path`` on ``cfg.eval.split``; writes ``eval_spin.json`` and returns it.

    The network and its inference settings are the checkpoint's (see `predict.inference_of`); an `eval.*`
    setting given on the command line overrides the checkpoint's with a note. The precision is the machine's
    (`inference_precision`).
    """
    ckpt = resolve_ckpt_path(cfg)
    module, run_config = module_from_checkpoint(ckpt)
    given = given_settings(cfg.eval, "spin")
    run = inference_of(ckpt, run_config, given, {field: f"eval.{field}" for field in given})
    precision = choose_precision(cfg.get("inference_precision"))
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    cache = VolumeCache(datamodule.hparams.cache_dir)
    scan_ids = datamodule.sets[cfg.eval.split]
    logits_fn = maybe_compiled(logits_function(prepare_network(module, run.n_chunk), run.tta_flip,
                                               precision == "bf16"), bool(cfg.eval.get("compile", False)))

    def predict_mask(scan: str) -> np.ndarray:
        t1, affine = ras_volume(cache, scan, "t1")
        mask = predict_volume(logits_fn, t1, run.n_chunk, run.batch_size, max_memory=run.max_memory)
        if cfg.eval.write_masks:
            save_nifti(output_dir(cfg) / "masks" / f"{scan}.nii.gz", mask, affine, dtype=np.uint8)
        return mask

    results = score_masks(predict_mask, cache, scan_ids, int(cfg.data.small_max_px))
    model_name = type(module.net).__name__
    paper = {k: {t: dict(zip(METRICS, v)) for t, v in rows.items()} for k, rows in PAPER.items()}
    report = write_eval_report(
        output_dir(cfg) / "eval_spin.json", results["cases"],
        {"name": "SPiN Table 2: Dice / IoU / precision / recall of each scan's 3-D mask (logit >= 0, a zero "
                 "division scores 0), mean over scans; Table 3 (`small_lesion`): the same, pooled over the slices "
                 "whose lesion components all have at most data.small_max_px pixels", "paper": paper},
        small_lesion=results["small_lesion"], n_scans=results["n_scans"], n_small_slices=results["n_small_slices"],
        checkpoint=str(cfg.ckpt_path), split=cfg.eval.split, model=model_name,
        settings={**run._asdict(), "precision": precision})
    print(format_table(report, model_name))
    return report


if __name__ == "__main__":
    entry("spin", evaluate_spin, config_name="eval")()
