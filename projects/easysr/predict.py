"""Super-resolve a thick-slice NIfTI scan: `python projects/easysr/predict.py input=scan.nii.gz output=sr.nii.gz
ckpt_path=best.ckpt` (or `weights=G_latest_T1.pth`, a plain generator state dict). Options in conf/easysr/predict.yaml.

The through-plane axis is the one with the largest voxel size (from the affine); the output covers the same field
of view with `scale` times thinner voxels along it and overlays the input in world space (see
`projects.easysr.infer`). A checkpoint runs as `eval.py` runs it: its own generator (and so its scale) and its
sliding-window patch `model.eval_patch` (null: the whole volume at once); `patch=[d,h,w]` overrides the patch with
a one-line note. A plain state dict (`weights=`) has no settings of its own: `model.*` of conf/easysr/predict.yaml. Bad input (not 3-D, NaN, unreadable) prints one line and exits with code 2; nothing
is written then.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from common.checkpoint import read_checkpoint  # noqa: E402
from common.errors import DataError  # noqa: E402
from common.io import load_nifti, save_nifti  # noqa: E402
from common.settings import CheckpointSettings  # noqa: E402
from common.weights import load_third_party  # noqa: E402
from projects.easysr.infer import super_resolve  # noqa: E402

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


def patch_of(cfg: DictConfig) -> list[int] | None:
    """Returns the LR patch of the sliding window: the checkpoint's `model.eval_patch` unless `cfg.patch` is given.

    For a plain state dict (`weights=`) it is `cfg.patch`, else predict.yaml's `model.eval_patch`.
    """
    given = list(cfg.patch) if cfg.get("patch") else None
    if not cfg.get("ckpt_path"):
        return given or (list(cfg.model.eval_patch) if cfg.model.get("eval_patch") else None)
    settings = CheckpointSettings(cfg.ckpt_path, read_checkpoint(cfg.ckpt_path).get("run_config"))
    patch = settings.get("model.eval_patch", given, "patch", default=None)
    return list(patch) if patch else None


def predict(cfg: DictConfig) -> Path:
    """Reads `cfg.input`, super-resolves it and writes `cfg.output`; returns the output path."""
    scan = load_nifti(cfg.input, ndim=3)
    generator = load_generator(cfg)
    result = super_resolve(scan, generator, axis=cfg.get("axis"), patch=patch_of(cfg), overlap=float(cfg.overlap),
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
