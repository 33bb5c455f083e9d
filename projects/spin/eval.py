"""Score a checkpoint with the paper's protocols and print the paper's numbers beside ours.

    python projects/spin/eval.py experiment=atlas_traintest ckpt_path=outputs/spin/atlas_traintest/checkpoints/best.ckpt

Table 2 protocol: each test scan is segmented whole (every axial slice, logit >= 0), Dice / IoU / precision /
recall are computed on its 3-D mask (a zero division scores 0) and averaged over scans. Table 3 protocol: the
test slices whose every 8-connected lesion component has at most 100 pixels are pooled and each metric is
computed once over the pool. Writes ``<run dir>/eval_spin.json`` and prints a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.io.atomic import save_json
from common.io.cache import VolumeCache
from common.metrics import confusion_counts, scores_from_counts
from common.run import entry, load_module, output_dir, resolve_ckpt_path
from projects.spin.data import small_lesion_slices
from projects.spin.predict import logits_function, predict_volume
from projects.spin.prepare import volume_xyz

METRICS = ("dice", "iou", "precision", "recall")
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
        ``{"per_scan": {id: scores}, "mean": scores, "small_lesion": scores, "n_scans", "n_small_slices"}``,
        scores being ``{"dice", "iou", "precision", "recall"}``.
    """
    per_scan, pooled, n_small = {}, np.zeros(3, dtype=np.int64), 0
    for scan in scan_ids:
        gt = np.asarray(volume_xyz(cache, scan, "lesion")) > 0
        pred = np.asarray(predict_mask(scan)) > 0
        per_scan[scan] = scores_from_counts(*confusion_counts(pred, gt), empty_score=0.0)
        for z in small_lesion_slices(gt, small_max_px):
            pooled += np.asarray(confusion_counts(pred[:, :, z], gt[:, :, z]))
            n_small += 1
    mean = {m: float(np.mean([s[m] for s in per_scan.values()])) if per_scan else float("nan") for m in METRICS}
    return {"per_scan": per_scan, "mean": mean, "small_lesion": scores_from_counts(*pooled, empty_score=0.0),
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
    """Evaluates ``cfg.ckpt_path`` on ``cfg.eval.split``; writes and returns the results."""
    module = load_module(cfg, resolve_ckpt_path(cfg)).eval()
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    cache = VolumeCache(datamodule.hparams.cache_dir)
    scan_ids = datamodule.sets[cfg.eval.split]
    logits_fn = logits_function(module, bool(cfg.eval.tta_flip), str(cfg.eval.precision) == "bf16")
    n_chunk = int(cfg.data.n_chunk)

    def predict_mask(scan: str) -> np.ndarray:
        return predict_volume(logits_fn, np.asarray(volume_xyz(cache, scan, "t1")), n_chunk, cfg.eval.batch_size)

    results = score_masks(predict_mask, cache, scan_ids, int(cfg.data.small_max_px))
    model_name = type(module.net).__name__
    results.update({"checkpoint": str(cfg.ckpt_path), "split": cfg.eval.split, "model": model_name,
                    "paper": {k: {t: dict(zip(METRICS, v)) for t, v in rows.items()} for k, rows in PAPER.items()}})
    save_json(output_dir(cfg) / "eval_spin.json", results)
    print(format_table(results, model_name))
    return results


if __name__ == "__main__":
    entry("spin", evaluate_spin, config_name="eval")()
