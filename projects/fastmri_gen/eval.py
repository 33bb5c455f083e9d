"""Evaluate a checkpoint with the official fastMRI protocol, one acceleration at a time.

    python projects/fastmri_gen/eval.py experiment=knee_x4 ckpt_path=PATH eval.accelerations=[4,8]
    python projects/fastmri_gen/eval.py model=zero_filled          # the classical comparator, no checkpoint

For each acceleration the validation volumes are undersampled with their per-file seeded masks,
reconstructed slice by slice, written as `<out_dir>/x<acc>/<fname>.h5` (dataset `reconstruction`, the
layout the official evaluator reads), and scored per volume: NMSE over the volume, PSNR with
`data_range = target volume max`, mean slice SSIM (7 x 7 uniform window), after cropping both to the
target width. `python -m common.evaluate recon --pred <out_dir>/x4 --ref <data_dir>/singlecoil_val`
gives the same figures. Results: `<run dir>/eval_metrics.json`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import instantiate_model, module_from_checkpoint
from common.errors import DataError
from common.io import read_reconstruction, save_json, write_reconstructions
from common.metrics import fastmri_volume_metrics
from common.run import entry, output_dir


def load_checkpoint_module(path: str | Path) -> tuple[Any, dict]:
    """Return `(module, run config)` rebuilt from a checkpoint written by `train.py` (its stored model config).

    Raises:
        DataError: missing/unreadable file, no stored run config, or weights that do not fit.
    """
    return module_from_checkpoint(path)


def build_module(cfg: DictConfig) -> tuple[Any, dict | None]:
    """Return `(module, stored fidelity switches or None)`.

    With `ckpt_path` the model config stored in the checkpoint is used when present (the command line need
    not repeat the training overrides, and the data transform follows the training's switches); without one
    only a network without parameters (zero-filling) is accepted.
    """
    if cfg.get("ckpt_path"):
        try:
            module, run_config = load_checkpoint_module(cfg.ckpt_path)
            return module, run_config.get("fidelity")
        except DataError as err:
            if "no run config" not in str(err):
                raise
        return module_from_checkpoint(cfg.ckpt_path, cfg.model)[0], None
    module = instantiate_model(cfg.model)
    if any(p.requires_grad for p in module.net.parameters()):
        raise DataError(None, "eval needs ckpt_path=PATH for a trained model (only model=zero_filled has none)")
    return module, None


@torch.no_grad()
def reconstruct_split(module: Any, datamodule: Any) -> tuple[dict[str, np.ndarray], float]:
    """Return `({fname: float32 [S, h, w]}, seconds)` over the datamodule's test split, slices in order."""
    module.eval()
    slices: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    start = time.perf_counter()
    for index, batch in enumerate(datamodule.test_dataloader()):
        out = module.predict_step(batch, index)
        for fname, slice_num, image in zip(out["fname"], out["slice_num"].tolist(), out["reconstruction"]):
            slices[fname][slice_num] = image.numpy()
    seconds = time.perf_counter() - start
    return {f: np.stack([s[i] for i in sorted(s)]) for f, s in sorted(slices.items())}, seconds


def score_volumes(recon_dir: str | Path, ref_dir: str | Path, target_key: str = "reconstruction_esc") -> dict:
    """Return `{"cases": {fname: {nmse, psnr, ssim}}, "mean": {...}}` for every reconstruction in `recon_dir`.

    Both volumes are centre-cropped to `target width x target width` first, as the official evaluator does.

    Raises:
        DataError: a reconstruction without its target file, or sizes that do not match.
    """
    cases = {}
    for path in sorted(Path(recon_dir).glob("*.h5")):
        ref_path = Path(ref_dir) / path.name
        target = read_reconstruction(ref_path, target_key)
        recon = read_reconstruction(path)
        width = target.shape[-1]
        crops = []
        for volume, where in ((target, ref_path), (recon, path)):
            top, left = (volume.shape[-2] - width) // 2, (volume.shape[-1] - width) // 2
            if top < 0 or left < 0:
                raise DataError(where, f"volume {volume.shape} is smaller than the {width} x {width} crop")
            crops.append(volume[..., top : top + width, left : left + width])
        if crops[0].shape != crops[1].shape:
            raise DataError(path, f"shape {crops[1].shape} differs from the target {crops[0].shape}")
        cases[path.name.removesuffix(".h5")] = fastmri_volume_metrics(crops[0], crops[1])
    mean = {k: float(np.mean([c[k] for c in cases.values()])) for k in ("nmse", "psnr", "ssim")} if cases else {}
    return {"cases": cases, "mean": mean}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Reconstruct, write and score the split at each of `cfg.eval.accelerations`; returns the results."""
    module, fidelity = build_module(cfg)
    if fidelity is not None:
        cfg.fidelity = OmegaConf.create(fidelity)
    out_root = Path(cfg.eval.out_dir)
    results: dict[str, Any] = {}
    for acceleration in cfg.eval.accelerations:
        datamodule = instantiate(cfg.data, _recursive_=False, test_split=cfg.eval.split,
                                 val_accelerations=[int(acceleration)], val_sample_rate=1.0,
                                 val_batch_size=cfg.eval.batch_size)
        datamodule.prepare_data()
        recons, seconds = reconstruct_split(module, datamodule)
        folder = out_root / f"x{int(acceleration)}"
        write_reconstructions(folder, recons)
        scores = score_volumes(folder, Path(cfg.data.data_dir) / cfg.eval.split)
        scores["seconds_per_volume"] = seconds / max(len(recons), 1)
        scores["reconstructions"] = str(folder)
        results[f"x{int(acceleration)}"] = scores
        mean = scores["mean"]
        print(f"x{int(acceleration)}: {len(recons)} volumes  NMSE {mean['nmse']:.4f}  PSNR {mean['psnr']:.2f} dB  "
              f"SSIM {mean['ssim']:.4f}  -> {folder}")
    save_json(output_dir(cfg) / "eval_metrics.json", results)
    return results


if __name__ == "__main__":
    entry("fastmri_gen", evaluate, config_name="eval")()
