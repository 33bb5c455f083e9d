"""Evaluate a checkpoint with the official fastMRI protocol, one acceleration at a time.

    python projects/fastmri_gen/eval.py experiment=knee_x4 ckpt_path=PATH eval.accelerations=[4,8]
    python projects/fastmri_gen/eval.py model=zero_filled          # the classical comparator, no checkpoint

For each acceleration the validation volumes are undersampled with their per-file seeded masks,
reconstructed slice by slice, written as `<out_dir>/x<acc>/<fname>.h5` (dataset `reconstruction`, the
layout the official evaluator reads), and scored per volume: NMSE over the volume, PSNR with
`data_range = target volume max`, mean slice SSIM (7 x 7 uniform window), after cropping both to the
target width (`metrics.score_case`). `python -m common.evaluate recon --pred <out_dir>/x4 --ref
<data_dir>/singlecoil_val` gives the same figures. Results: `<run dir>/eval_metrics.json` (`common.eval_report`):
`cases`/`mean` of the first acceleration, `protocol`, and one block per acceleration (`x4`, `x8`, ...) with its
cases, means, seconds per volume and reconstruction folder. The forward passes run at `inference_precision`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import instantiate_model, module_from_checkpoint
from common.cli import progress
from common.errors import DataError
from common.eval_report import write_eval_report
from common.fold import fold_network
from common.io import read_reconstruction, write_reconstructions
from common.run import entry, output_dir
from common.runtime import autocast, choose_precision
from projects.fastmri_gen.metrics import score_case


def load_checkpoint_module(path: str | Path) -> tuple[Any, dict]:
    """Return `(module, run config)` rebuilt from a checkpoint written by `train.py` (its stored model config).

    Raises:
        DataError: missing/unreadable file, no stored run config, or weights that do not fit.
    """
    return module_from_checkpoint(path)


def build_module(cfg: DictConfig) -> tuple[Any, dict | None]:
    """Return `(module, the stored data-side fidelity switches or None)`.

    With `ckpt_path` the model config stored in the checkpoint is used when present (the command line need
    not repeat the training overrides, and the data transform follows the training's switches); without one
    only a network without parameters (zero-filling) is accepted.
    """
    if cfg.get("ckpt_path"):
        try:
            module, run_config = load_checkpoint_module(cfg.ckpt_path)
            return module, (run_config.get("data") or {}).get("fidelity")
        except DataError as err:
            if "no run config" not in str(err):
                raise
        return module_from_checkpoint(cfg.ckpt_path, cfg.model)[0], None
    module = instantiate_model(cfg.model)
    if any(p.requires_grad for p in module.net.parameters()):
        raise DataError(None, "eval needs ckpt_path=PATH for a trained model (only model=zero_filled has none)")
    return module, None


def _first_slices(batch: Any, n: int) -> Any:
    """The first `n` slices of a collated `Sample` (tensor and list fields cut, others kept)."""
    return type(batch)(*(v[:n] if isinstance(v, torch.Tensor | list | tuple) and len(v) else v for v in batch))


@torch.no_grad()
def fold_for_inference(module: Any, batch: Any) -> int:
    """Folds the BatchNorms of `module.net` into their convolutions, once per module; returns how many.

    The folded network reconstructs the same images to float rounding (`common.fold` checks it on two slices
    of `batch`) and took 0.91x the time per volume of the paper-size baseline (benchmarks/results/
    fastmri_gen.md). Nothing is folded where the network evaluates with batch statistics (the reference
    fidelity's defect 5) or has no BatchNorm (zero-filling, the U-Net).
    """
    if getattr(module, "_bn_folded", False):
        return 0
    module._bn_folded = True
    if module.evaluates_in_train_mode:
        return 0
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.net.modules()):
        return 0
    return fold_network(module, _first_slices(batch, 2), through_wrapper=True)  # eval mode: fixed draws


@torch.no_grad()
def reconstruct_split(module: Any, datamodule: Any, device: str = "cpu", precision: str = "32"
                      ) -> tuple[dict[str, np.ndarray], float]:
    """Return `({fname: float32 [S, h, w]}, seconds)` over the datamodule's test split, slices in order.

    Args:
        module: the ReconstructionModule, on `device`.
        datamodule: its test split is reconstructed.
        device: where the batches go.
        precision: "32" or "bf16" (autocast).
    """
    module.eval()
    slices: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    start = time.perf_counter()
    for index, batch in enumerate(datamodule.test_dataloader()):
        batch = move_data_to_device(batch, device)
        if index == 0:
            fold_for_inference(module, batch)
        with autocast(precision, device):
            out = module.predict_step(batch, index)
        for fname, slice_num, image in zip(out["fname"], out["slice_num"].tolist(), out["reconstruction"]):
            slices[fname][slice_num] = image.numpy()
    seconds = time.perf_counter() - start
    return {f: np.stack([s[i] for i in sorted(s)]) for f, s in sorted(slices.items())}, seconds


def score_volumes(recon_dir: str | Path, ref_dir: str | Path, target_key: str = "reconstruction_esc") -> dict:
    """Return `{"cases": {fname: {nmse, psnr, ssim}}, "mean": {...}}` for every reconstruction in `recon_dir`.

    Each is scored against its target file by `metrics.score_case` (the official evaluator's crop and rules).

    Raises:
        DataError: a reconstruction without its target file, or sizes that do not match.
    """
    paths = sorted(Path(recon_dir).glob("*.h5"))
    cases = {path.name.removesuffix(".h5"): score_case(read_reconstruction(path),
                                                       read_reconstruction(Path(ref_dir) / path.name, target_key), path)
             for path in progress(paths, f"scoring {Path(recon_dir).name}", len(paths))}
    mean = {k: float(np.mean([c[k] for c in cases.values()])) for k in ("nmse", "psnr", "ssim")} if cases else {}
    return {"cases": cases, "mean": mean}


PROTOCOL = {"name": "fastMRI single-coil knee, official evaluator: both volumes centre-cropped to the target "
                    "width, NMSE over the volume, PSNR with the target volume max as peak, mean slice SSIM (7 x 7 "
                    "uniform window); per volume, mean over volumes",
            "paper": None}  # the paper's table could not be retrieved: no figure is quoted


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Reconstruct, write and score the split at each of `cfg.eval.accelerations`; writes and returns the report."""
    module, fidelity = build_module(cfg)
    if fidelity is not None:
        cfg.data.fidelity = OmegaConf.create(fidelity)
    precision = choose_precision(cfg.get("inference_precision"))
    out_root = Path(cfg.eval.out_dir)
    results: dict[str, Any] = {}
    for acceleration in cfg.eval.accelerations:
        datamodule = instantiate(cfg.data, _recursive_=False, test_split=cfg.eval.split,
                                 val_accelerations=[int(acceleration)], val_sample_rate=1.0,
                                 val_batch_size=cfg.eval.batch_size)
        datamodule.prepare_data()
        recons, seconds = reconstruct_split(module, datamodule, precision=precision)
        folder = out_root / f"x{int(acceleration)}"
        write_reconstructions(folder, recons)
        scores = score_volumes(folder, Path(cfg.data.data_dir) / cfg.eval.split)
        scores["seconds_per_volume"] = seconds / max(len(recons), 1)
        scores["reconstructions"] = str(folder)
        results[f"x{int(acceleration)}"] = scores
        mean = scores["mean"]
        print(f"x{int(acceleration)}: {len(recons)} volumes  NMSE {mean['nmse']:.4f}  PSNR {mean['psnr']:.2f} dB  "
              f"SSIM {mean['ssim']:.4f}  -> {folder}")
    first = f"x{int(cfg.eval.accelerations[0])}"
    return write_eval_report(output_dir(cfg) / "eval_metrics.json", results[first]["cases"],
                             {**PROTOCOL, "acceleration": int(cfg.eval.accelerations[0])},
                             precision=precision, **results)


if __name__ == "__main__":
    entry("fastmri_gen", evaluate, config_name="eval")()
