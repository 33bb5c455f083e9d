"""Super-resolve thick-slice NIfTI scans with an EasySR checkpoint.

    python -m projects.easysr.predict -i scan.nii.gz -o sr.nii.gz --ckpt best.ckpt
    python -m projects.easysr.predict -i SCAN_FOLDER -o SR_FOLDER --ckpt G_latest_T1.pth [--device cuda]

`--ckpt` is a train.py checkpoint or a plain generator state dict (the reference's `G_latest_T1.pth`). A folder in
gives a folder out, one output per scan with the same name (see `common.predict_cli`).

The through-plane axis is the one with the largest voxel size (from the affine); the output covers the same field
of view with `scale` times thinner voxels along it and overlays the input in world space (see
`projects.easysr.infer`). A checkpoint runs as `eval.py` runs it: its own generator (and so its scale) and its
sliding-window patch `model.eval_patch` (null: the whole volume at once); `--patch D H W` overrides the patch with
a one-line note. A plain state dict has no settings of its own: the generator of conf/easysr/model/easysr.yaml at
`--scale` (default 3) and conf/easysr/predict.yaml's defaults. Bad input (not 3-D, NaN, unreadable) prints one
line and exits with code 2; nothing is written for that scan.

The former Hydra form (`input=... output=... ckpt_path=...|weights=...`, options of conf/easysr/predict.yaml)
still works for one release and says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import read_checkpoint
from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io import load_nifti, save_nifti
from common.predict_cli import list_cases, parse_predict_args, predict_cases, predict_parser
from common.settings import CONF_ROOT, CheckpointSettings
from common.weights import load_third_party
from projects.easysr.infer import super_resolve

CONF_DIR = CONF_ROOT / "easysr"


def _training_state(path: str | Path) -> tuple[dict, dict] | None:
    """Returns (generator state, run config) of a train.py checkpoint, None for a plain generator state dict."""
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not any(str(k).startswith("generator.") for k in state):
        return None
    generator = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    return generator, ckpt.get("run_config") or {}


def load_generator(cfg: DictConfig) -> torch.nn.Module:
    """Returns the generator of `cfg.ckpt_path` (a train.py checkpoint or a plain state dict) or `cfg.weights`.

    Raises:
        DataError: neither given, unreadable file, or weights that do not fit the generator.
    """
    source = cfg.get("ckpt_path") or cfg.get("weights")
    if not source:
        raise DataError(None, "predict needs --ckpt <train.py checkpoint or generator state dict>")
    trained = _training_state(source)
    if trained is not None:
        state, run_config = trained
        gen_cfg = run_config.get("model", {}).get("generator") or cfg.model.generator
    else:
        gen_cfg, state = cfg.model.generator, load_third_party(source)
    generator = instantiate(gen_cfg if isinstance(gen_cfg, DictConfig) else OmegaConf.create(gen_cfg))
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(source, f"weights do not fit the generator: {err}") from err
    return generator.eval()


def patch_of(cfg: DictConfig) -> list[int] | None:
    """Returns the LR patch of the sliding window: the checkpoint's `model.eval_patch` unless `cfg.patch` is given.

    For a plain state dict it is `cfg.patch`, else `cfg.model.eval_patch` (conf/easysr/model/easysr.yaml).
    """
    given = list(cfg.patch) if cfg.get("patch") else None
    source = cfg.get("ckpt_path") or cfg.get("weights")
    trained = _training_state(source) if source else None
    if trained is None:
        return given or (list(cfg.model.eval_patch) if cfg.model.get("eval_patch") else None)
    settings = CheckpointSettings(source, trained[1])
    patch = settings.get("model.eval_patch", given, "patch", default=None)
    return list(patch) if patch else None


def predict_scan(input_path: str | Path, output_path: str | Path, generator: torch.nn.Module, cfg: DictConfig,
                 patch: list[int] | None) -> Path:
    """Super-resolves one NIfTI scan with `generator` and `cfg`'s options; returns the written path."""
    scan = load_nifti(input_path, ndim=3)
    result = super_resolve(scan, generator, axis=cfg.get("axis"), patch=patch, overlap=float(cfg.overlap),
                           intensity=cfg.intensity, target_spacing=cfg.get("target_spacing"),
                           precision=str(cfg.precision))
    out = save_nifti(output_path, result.data, result.affine, header=scan.header)
    print(f"{out}: {result.shape} voxels of {[round(s, 4) for s in result.spacing]} mm", file=sys.stderr)
    return out


def predict(cfg: DictConfig) -> Path:
    """Reads `cfg.input`, super-resolves it and writes `cfg.output`; returns the output path."""
    load_nifti(cfg.input, ndim=3)  # bad input fails before the checkpoint is read
    return predict_scan(cfg.input, cfg.output, load_generator(cfg), cfg, patch_of(cfg))


def _defaults(scale: int) -> DictConfig:
    """Returns conf/easysr/predict.yaml's options with the model group at `scale` (Hydra's composition of it)."""
    options = OmegaConf.load(CONF_DIR / "predict.yaml")
    model = OmegaConf.load(CONF_DIR / "model" / "easysr.yaml")
    base = {k: v for k, v in OmegaConf.to_container(options).items() if k not in ("defaults", "hydra")}
    merged = OmegaConf.merge(base, {"model": model, "data": {"scale": scale}})
    merged.model.generator.scale = scale
    return merged


def _hydra_form(argv: Sequence[str]) -> int:
    """Runs the former `key=value` command line (conf/easysr/predict.yaml), after a one-line note."""
    from hydra import compose, initialize_config_dir

    print("note: the key=value form of easysr predict goes in the next release: use "
          "-i INPUT -o OUTPUT --ckpt CKPT (see --help)", file=sys.stderr)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=list(argv))
    print(f"wrote {predict(cfg)}")
    return 0


@exit_code_on_data_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and all("=" in a and not a.startswith("-") for a in argv):
        return _hydra_form(argv)
    parser = predict_parser(__doc__.split("\n")[0], "thick-slice NIfTI scan", "super-resolved NIfTI to write",
                            "train.py checkpoint, or a plain generator state dict (e.g. G_latest_T1.pth)")
    parser.add_argument("--patch", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                        help="LR patch of the sliding window (default: the checkpoint's model.eval_patch)")
    parser.add_argument("--axis", type=int, default=None, help="through-plane axis (default: the thickest)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap fraction")
    parser.add_argument("--intensity", choices=["input", "normalised"], default="input",
                        help="input: the scan's units; normalised: the network's [0, 255]")
    parser.add_argument("--target-spacing", type=float, default=None, help="resample to this isotropic mm")
    parser.add_argument("--scale", type=int, default=3, help="scale of a plain state dict (a checkpoint has its own)")
    args = parse_predict_args(parser, argv)
    cfg = _defaults(args.scale)
    cfg.merge_with({"ckpt_path": args.ckpt, "patch": args.patch, "axis": args.axis, "overlap": args.overlap,
                    "intensity": args.intensity, "target_spacing": args.target_spacing,
                    "precision": args.precision})
    cases = list_cases(args.input, args.output)
    generator, patch = load_generator(cfg).to(args.device), patch_of(cfg)
    predict_cases(cases, lambda case: predict_scan(case.source, case.target, generator, cfg, patch), "EasySR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
