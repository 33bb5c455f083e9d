"""Score predictions saved as files against references: segmentation, super-resolution, fastMRI.

Command line::

    python -m common.evaluate seg   --pred PRED --ref REF [--empty-score S]
    python -m common.evaluate sr    --pred PRED --ref REF [--data-range R] [--ssim-axis A]
    python -m common.evaluate recon --pred PRED --ref REF [--target-key K] [--acceleration N]
                                    [--acquisition NAME]
    ... [--json] [--out FILE]

``PRED`` and ``REF`` are two files or two folders. Folders are matched by case name: the file name
without ``.nii.gz`` / ``.nii`` (NIfTI modes) or ``.h5`` (recon). Every case must have a partner.

* ``seg``: NIfTI masks binarised as ``> 0``; Dice, IoU, precision, recall and HD95 (mm, from the
  reference's voxel spacing) per case, with the empty-mask rule of ``common.metrics.segmentation``.
* ``sr``: NIfTI volumes; PSNR of the whole volume and the mean 2-D SSIM over the slices along
  ``--ssim-axis`` (default: the last array axis), both with ``--data-range`` (default: the
  reference's max - min, per case).
* ``recon``: fastMRI-layout HDF5 files, dataset ``reconstruction`` vs the target dataset of the
  reference files; both centre-cropped to the target's width x width, then NMSE, PSNR and SSIM with
  the official evaluator's rules (``common.metrics.fastmri_volume_metrics``).

Output: a table (default), or with ``--json`` exactly one JSON object
``{"cases": {case: {metric: value}}, "mean": {metric: value}}`` on stdout; ``--out`` writes the same
object atomically. Means are unweighted over cases; an infinite value (HD95 with one empty mask, PSNR
of identical images) is written as ``null`` in JSON and makes its mean infinite. Bad input (missing
partner, mismatched shape or affine, unreadable file) prints one line naming the file(s) on stderr
and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError
from common.io.atomic import save_json
from common.io.fastmri import FastMRIFile, read_reconstruction
from common.io.nifti import Volume, load_nifti
from common.metrics.functional import fastmri_volume_metrics, psnr, seg_scores, ssim_slices

Scores = dict[str, dict[str, float]]
NIFTI_SUFFIXES = (".nii.gz", ".nii")
HDF5_SUFFIXES = (".h5",)
AFFINE_ATOL_MM = 1e-3


# --------------------------------------------------------------------------------------------------
# Pairing files
# --------------------------------------------------------------------------------------------------
def case_name(path: Path, suffixes: Sequence[str]) -> str | None:
    """Return the file name without its recognised suffix, or None when the suffix is not one of them."""
    for suffix in suffixes:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _index_folder(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path, suffixes) if path.is_file() and not path.name.startswith(".") else None
        if name is None:
            continue
        if name in files:
            raise DataError(folder, f"two files for case {name!r}: {files[name].name}, {path.name}")
        files[name] = path
    return files


def pair_files(pred: str | Path, ref: str | Path, suffixes: Sequence[str]) -> list[tuple[str, Path, Path]]:
    """Return ``(case, pred_file, ref_file)`` for two files or two folders matched by case name.

    Args:
        pred: a prediction file or a folder of them.
        ref: a reference file or a folder of them.
        suffixes: recognised file endings, longest first (e.g. ``(".nii.gz", ".nii")``).

    Returns:
        The pairs, sorted by case name (a single pair named after the reference for two files).

    Raises:
        DataError: a path is missing, a file and a folder are mixed, a folder holds no such files,
            or some cases have no partner (all of them are listed).
    """
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        if not path.exists():
            raise DataError(path, "not found")
    if pred.is_file() and ref.is_file():
        return [(case_name(ref, suffixes) or ref.stem, pred, ref)]
    if not (pred.is_dir() and ref.is_dir()):
        kinds = {True: "a folder", False: "a file"}
        raise DataError(
            pred,
            f"is {kinds[pred.is_dir()]} but --ref {ref} is {kinds[ref.is_dir()]}: they must both be files or both folders",
        )
    preds, refs = _index_folder(pred, suffixes), _index_folder(ref, suffixes)
    if not refs:
        raise DataError(ref, f"no {' / '.join(suffixes)} files found")
    _check_partners(preds, refs, pred, ref)
    return [(name, preds[name], refs[name]) for name in sorted(refs)]


def _check_partners(preds: dict[str, Path], refs: dict[str, Path], pred_dir: Path, ref_dir: Path) -> None:
    no_pred = [refs[name].name for name in sorted(set(refs) - set(preds))]
    no_ref = [preds[name].name for name in sorted(set(preds) - set(refs))]
    if no_pred or no_ref:
        parts = []
        if no_pred:
            parts.append(f"no prediction in {pred_dir} for {', '.join(no_pred)}")
        if no_ref:
            parts.append(f"no reference in {ref_dir} for {', '.join(no_ref)}")
        raise DataError(pred_dir if no_ref else ref_dir, "missing partners: " + "; ".join(parts))


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
def summarise(cases: Scores) -> dict[str, Any]:
    """Return ``{"cases": cases, "mean": {metric: unweighted mean over cases}}``."""
    metrics = list(next(iter(cases.values()))) if cases else []
    mean = {m: float(np.mean([scores[m] for scores in cases.values()])) for m in metrics}
    return {"cases": cases, "mean": mean}


def _load_pair(pred_path: Path, ref_path: Path) -> tuple[Volume, Volume]:
    pred = load_nifti(pred_path, ndim=(2, 3), allow_constant=True)
    ref = load_nifti(ref_path, ndim=(2, 3), allow_constant=True)
    if pred.shape != ref.shape:
        raise DataError(pred_path, f"shape {pred.shape} differs from the reference {ref_path} {ref.shape}")
    if not np.allclose(pred.affine, ref.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        raise DataError(pred_path, f"affine differs from the reference {ref_path} (not the same voxel grid)")
    return pred, ref


def evaluate_seg(pred: str | Path, ref: str | Path, empty_score: float = 1.0) -> dict[str, Any]:
    """Return per-case and mean Dice, IoU, precision, recall and HD95 (mm) of NIfTI masks.

    Args:
        pred: predicted mask file or folder (voxels > 0 are foreground).
        ref: reference mask file or folder, same grid as the predictions.
        empty_score: score of a ratio whose denominator is zero (see ``common.metrics.segmentation``).

    Returns:
        ``{"cases": {case: {"dice", "iou", "precision", "recall", "hd95"}}, "mean": {...}}``.

    Raises:
        DataError: missing partner, unreadable file, shape or affine mismatch.
    """
    cases: Scores = {}
    for name, pred_path, ref_path in pair_files(pred, ref, NIFTI_SUFFIXES):
        pred_vol, ref_vol = _load_pair(pred_path, ref_path)
        cases[name] = seg_scores(pred_vol.data > 0, ref_vol.data > 0, ref_vol.spacing, empty_score)
    return summarise(cases)


def evaluate_sr(
    pred: str | Path, ref: str | Path, data_range: float | None = None, ssim_axis: int = -1
) -> dict[str, Any]:
    """Return per-case and mean PSNR (dB) and slice-wise SSIM of NIfTI volumes.

    Args:
        pred: predicted volume file or folder.
        ref: reference volume file or folder, same grid as the predictions.
        data_range: intensity range for PSNR and SSIM; None uses each reference's max - min.
        ssim_axis: array axis whose slices are scored by 2-D SSIM (negative counts from the end).

    Returns:
        ``{"cases": {case: {"psnr", "ssim"}}, "mean": {...}}``.

    Raises:
        DataError: missing partner, unreadable file, shape or affine mismatch, not 3-D, constant
            reference without ``data_range``.
    """
    cases: Scores = {}
    for name, pred_path, ref_path in pair_files(pred, ref, NIFTI_SUFFIXES):
        pred_vol, ref_vol = _load_pair(pred_path, ref_path)
        if ref_vol.data.ndim != 3:
            raise DataError(ref_path, f"SR scoring needs 3-D volumes, got shape {ref_vol.shape}")
        peak = float(ref_vol.data.max() - ref_vol.data.min()) if data_range is None else float(data_range)
        if not peak > 0:
            raise DataError(ref_path, "reference is constant (max = min): pass --data-range")
        try:
            cases[name] = {
                "psnr": psnr(pred_vol.data, ref_vol.data, peak),
                "ssim": ssim_slices(pred_vol.data, ref_vol.data, peak, axis=ssim_axis),
            }
        except ValueError as err:  # slices smaller than the SSIM window, bad axis
            raise DataError(pred_path, str(err)) from err
    return summarise(cases)


def center_crop(volume: np.ndarray, height: int, width: int, path: Path) -> np.ndarray:
    """Return the central ``height x width`` region of the last two axes (fastMRI's crop rule).

    Raises:
        DataError: the volume is smaller than the crop.
    """
    h, w = volume.shape[-2:]
    if h < height or w < width:
        raise DataError(path, f"image size {h} x {w} is smaller than the {height} x {width} evaluation crop")
    top, left = (h - height) // 2, (w - width) // 2
    return volume[..., top : top + height, left : left + width]


def _keep_target(path: Path, acceleration: int | None, acquisition: str | None) -> bool:
    if acceleration is None and acquisition is None:
        return True
    with FastMRIFile(path) as file:
        attrs = file.attrs
    for key, wanted in (("acceleration", acceleration), ("acquisition", acquisition)):
        if wanted is not None and key not in attrs:
            raise DataError(path, f"no {key!r} attribute to filter on (has {sorted(attrs)})")
    if acceleration is not None and int(attrs["acceleration"]) != int(acceleration):
        return False
    return acquisition is None or str(attrs["acquisition"]) == acquisition


def _recon_pairs(
    pred: Path, ref: Path, acceleration: int | None, acquisition: str | None
) -> list[tuple[str, Path, Path]]:
    """Pairs whose target passes the filters; predictions whose target is filtered out are ignored."""
    if Path(ref).is_dir() and Path(pred).is_dir():
        refs = _index_folder(ref, HDF5_SUFFIXES)
        kept = {name: path for name, path in refs.items() if _keep_target(path, acceleration, acquisition)}
        preds = {n: p for n, p in _index_folder(pred, HDF5_SUFFIXES).items() if n in kept or n not in refs}
        if not kept:
            raise DataError(ref, "no target .h5 files found (or none passes the filters)")
        _check_partners(preds, kept, pred, ref)
        return [(name, preds[name], kept[name]) for name in sorted(kept)]
    pairs = pair_files(pred, ref, HDF5_SUFFIXES)
    if not _keep_target(pairs[0][2], acceleration, acquisition):
        raise DataError(ref, "the target does not pass the --acceleration / --acquisition filters")
    return pairs


def evaluate_recon(
    pred: str | Path,
    ref: str | Path,
    target_key: str = "reconstruction_esc",
    acceleration: int | None = None,
    acquisition: str | None = None,
) -> dict[str, Any]:
    """Return per-volume and mean NMSE, PSNR (dB) and SSIM of fastMRI reconstructions.

    Args:
        pred: a reconstruction ``.h5`` (dataset ``reconstruction`` ``[S, h, w]``) or a folder of them.
        ref: the matching fastMRI file (dataset ``target_key``) or a folder of them.
        target_key: ``reconstruction_esc`` (single-coil) or ``reconstruction_rss`` (multi-coil).
        acceleration: keep only targets whose ``acceleration`` attribute equals this.
        acquisition: keep only targets whose ``acquisition`` attribute equals this (e.g. ``CORPD_FBK``).

    Returns:
        ``{"cases": {volume: {"nmse", "psnr", "ssim"}}, "mean": {...}}``.

    Raises:
        DataError: missing partner, unreadable file, missing dataset or attribute, size mismatch.
    """
    cases: Scores = {}
    for name, pred_path, ref_path in _recon_pairs(Path(pred), Path(ref), acceleration, acquisition):
        target = read_reconstruction(ref_path, target_key)
        recon = read_reconstruction(pred_path, "reconstruction")
        width = target.shape[-1]
        target = center_crop(target, width, width, ref_path)
        recon = center_crop(recon, width, width, pred_path)
        if recon.shape != target.shape:
            raise DataError(
                pred_path, f"shape {recon.shape} after the crop differs from the target {target.shape}"
            )
        try:
            cases[name] = fastmri_volume_metrics(target, recon)
        except ValueError as err:  # a target whose maximum is zero
            raise DataError(ref_path, str(err)) from err
    return summarise(cases)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of an evaluation result with non-finite numbers replaced by None (JSON null)."""

    def clean(scores: dict[str, float]) -> dict[str, float | None]:
        return {k: (float(v) if math.isfinite(v) else None) for k, v in scores.items()}

    return {
        "cases": {name: clean(scores) for name, scores in result["cases"].items()},
        "mean": clean(result["mean"]),
    }


def render_table(result: dict[str, Any], title: str) -> None:
    """Print per-case rows and the mean row as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    metrics = list(result["mean"])
    table = Table(title=title)
    table.add_column("case")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, scores in result["cases"].items():
        table.add_row(name, *(f"{scores[m]:.4f}" for m in metrics))
    table.add_section()
    table.add_row(f"mean ({len(result['cases'])})", *(f"{result['mean'][m]:.4f}" for m in metrics))
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m common.evaluate``."""
    parser = argparse.ArgumentParser(prog="python -m common.evaluate", description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    seg = modes.add_parser("seg", help="NIfTI masks: Dice, IoU, precision, recall, HD95 (mm)")
    seg.add_argument(
        "--empty-score", type=float, default=1.0, help="score of a ratio with a zero denominator"
    )
    sr = modes.add_parser("sr", help="NIfTI volumes: PSNR and slice-wise 2-D SSIM")
    sr.add_argument("--data-range", type=float, default=None, help="default: each reference's max - min")
    sr.add_argument("--ssim-axis", type=int, default=-1, help="array axis of the SSIM slices (default: last)")
    recon = modes.add_parser("recon", help="fastMRI HDF5 reconstructions: NMSE, PSNR, SSIM (official rules)")
    recon.add_argument(
        "--target-key", default="reconstruction_esc", choices=("reconstruction_esc", "reconstruction_rss")
    )
    recon.add_argument("--acceleration", type=int, default=None, help="keep targets with this acceleration")
    recon.add_argument(
        "--acquisition", default=None, help="keep targets with this acquisition (e.g. CORPD_FBK)"
    )
    for sub in (seg, sr, recon):
        sub.add_argument("--pred", required=True, type=Path, help="prediction file or folder")
        sub.add_argument("--ref", required=True, type=Path, help="reference file or folder")
        sub.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        sub.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "seg": lambda: evaluate_seg(args.pred, args.ref, args.empty_score),
        "sr": lambda: evaluate_sr(args.pred, args.ref, args.data_range, args.ssim_axis),
        "recon": lambda: evaluate_recon(
            args.pred, args.ref, args.target_key, args.acceleration, args.acquisition
        ),
    }
    return runners[args.mode]()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        result = _run(args)
        if args.out is not None:
            save_json(args.out, json_ready(result))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. --out in a folder that cannot be written
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_ready(result), allow_nan=False))
    else:
        render_table(result, f"{args.mode}: {args.pred} vs {args.ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
