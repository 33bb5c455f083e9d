"""Super-resolve a thick-slice NIfTI scan: `python projects/easysr/predict.py input=scan.nii.gz output=sr.nii.gz
ckpt_path=best.ckpt` (or `weights=G_latest_T1.pth`, a plain generator state dict). Options in conf/easysr/predict.yaml.

The through-plane axis is the one with the largest voxel size (from the affine); the output covers the same field
of view with `scale` times thinner voxels along it and overlays the input in world space (see
`projects.easysr.infer`). Bad input (not 3-D, NaN, unreadable) prints one line and exits with code 2; nothing
is written then.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import read_checkpoint
from common.errors import DataError
from common.io import load_nifti, save_nifti
from common.weights import load_third_party
from projects.easysr.infer import super_resolve

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "easysr"


def load_generator(cfg: DictConfig) -> torch.nn.Module:
    """Returns the generator of `cfg.ckpt_path` (a train.py checkpoint) or `cfg.weights` (a plain state dict).

    Raises:
        DataError: neither given, unreadable file, or weights that do not fit the generator.
    """
    if cfg.get("ckpt_path"):
        ckpt = read_checkpoint(cfg.ckpt_path)
        gen_cfg = ckpt.get("run_config", {}).get("model", {}).get("generator") or cfg.model.generator
        state = {k.removeprefix("generator."): v for k, v in ckpt.get("state_dict", {}).items()
                 if k.startswith("generator.")}
        source = cfg.ckpt_path
    elif cfg.get("weights"):
        gen_cfg, state, source = cfg.model.generator, load_third_party(cfg.weights), cfg.weights
    else:
        raise DataError(None, "predict needs ckpt_path=<train.py checkpoint> or weights=<generator state dict>")
    if not isinstance(gen_cfg, DictConfig):
        gen_cfg = OmegaConf.create(gen_cfg)
    generator = instantiate(gen_cfg)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(source, f"weights do not fit the generator: {err}") from err
    return generator.eval()


def predict(cfg: DictConfig) -> Path:
    """Reads `cfg.input`, super-resolves it and writes `cfg.output`; returns the output path."""
    scan = load_nifti(cfg.input, ndim=3)
    generator = load_generator(cfg)
    patch = list(cfg.patch) if cfg.get("patch") else None
    result = super_resolve(scan, generator, axis=cfg.get("axis"), patch=patch, overlap=float(cfg.overlap),
                           intensity=cfg.intensity, target_spacing=cfg.get("target_spacing"),
                           precision=str(cfg.precision))
    out = save_nifti(cfg.output, result.data, result.affine, header=scan.header)
    print(f"{out}: {result.shape} voxels of {[round(s, 4) for s in result.spacing]} mm")
    return out


if __name__ == "__main__":
    import hydra

    from common.cli import exit_on_data_error  # light: no Lightning import at start-up

    def _main(cfg: DictConfig) -> None:
        exit_on_data_error(predict, cfg)

    hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")(_main)()
