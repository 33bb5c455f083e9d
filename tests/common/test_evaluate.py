"""`python -m common.evaluate`: known answers for seg / sr / recon, and bad input -> exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import evaluate as ev
from common.io.fastmri import write_fastmri_volume, write_reconstructions
from common.io.nifti import save_nifti
from common.metrics import functional as fm

REPO = Path(__file__).resolve().parents[2]
AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along array axis 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def seg_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Case 'overlap': ref 2 voxels, pred 1 of them (Dice 2/3); case 'empty': both masks empty."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    ref, pred = np.zeros((6, 5, 4), np.uint8), np.zeros((6, 5, 4), np.uint8)
    ref[1, 1, 1] = ref[2, 1, 1] = 1
    pred[1, 1, 1] = 1
    save_nifti(ref_dir / "overlap.nii.gz", ref, AFFINE)
    save_nifti(pred_dir / "overlap.nii", pred, AFFINE)  # the suffix may differ between the two sides
    save_nifti(ref_dir / "empty.nii.gz", np.zeros_like(ref), AFFINE)
    save_nifti(pred_dir / "empty.nii.gz", np.zeros_like(ref), AFFINE)
    return pred_dir, ref_dir


def test_seg_cli_json_and_out_known_answer(seg_dirs, tmp_path):
    pred_dir, ref_dir = seg_dirs
    out = tmp_path / "scores.json"
    proc = run_cli(
        "seg",
        "--pred",
        str(pred_dir),
        "--ref",
        str(ref_dir),
        "--json",
        "--out",
        str(out),
        "--empty-score",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"cases", "mean"}
    overlap = result["cases"]["overlap"]
    assert overlap["dice"] == pytest.approx(2 / 3)
    assert overlap["iou"] == pytest.approx(1 / 2)
    assert overlap["precision"] == pytest.approx(1.0)
    assert overlap["recall"] == pytest.approx(1 / 2)
    # surface distances {0 (pred), 0, 2 mm (ref)}: 95th percentile = 0.9 * 2 mm
    assert overlap["hd95"] == pytest.approx(1.8)
    assert result["cases"]["empty"] == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0, "hd95": 0.0}
    assert result["mean"]["dice"] == pytest.approx(1 / 3)
    assert json.loads(out.read_text()) == result


def test_seg_default_empty_score_and_infinite_hd95(seg_dirs):
    pred_dir, ref_dir = seg_dirs
    assert ev.evaluate_seg(pred_dir, ref_dir)["cases"]["empty"]["dice"] == 1.0
    save_nifti(pred_dir / "overlap.nii", np.zeros((6, 5, 4), np.uint8), AFFINE)  # prediction now empty
    result = ev.evaluate_seg(pred_dir, ref_dir)
    assert result["cases"]["overlap"]["hd95"] == math.inf and result["mean"]["hd95"] == math.inf
    assert ev.json_ready(result)["mean"]["hd95"] is None


def _sr_volume(rng: np.random.Generator) -> np.ndarray:
    ref = rng.random((8, 9, 10)).astype(np.float32)
    ref.flat[0], ref.flat[1] = 0.0, 1.0  # range exactly 1
    return ref


def test_sr_known_psnr_and_ssim_axis(tmp_path):
    ref = _sr_volume(np.random.default_rng(0))
    pred = ref + np.float32(0.1)  # MSE 0.01 -> 20 dB with data range 1
    save_nifti(tmp_path / "ref.nii.gz", ref, AFFINE)
    save_nifti(tmp_path / "pred.nii.gz", pred, AFFINE)
    result = ev.evaluate_sr(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz")
    assert list(result["cases"]) == ["ref"]
    assert result["mean"]["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert result["mean"]["ssim"] == pytest.approx(fm.ssim_slices(pred, ref, 1.0, axis=2), abs=1e-9)
    explicit = ev.evaluate_sr(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", data_range=10.0, ssim_axis=0)
    assert explicit["mean"]["psnr"] == pytest.approx(40.0, abs=1e-4)
    assert explicit["mean"]["ssim"] == pytest.approx(fm.ssim_slices(pred, ref, 10.0, axis=0), abs=1e-9)


def test_sr_cli_prints_a_table(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("vol_01", "vol_02"):
        ref = _sr_volume(rng)
        save_nifti(tmp_path / "ref" / f"{name}.nii.gz", ref, AFFINE)
        save_nifti(tmp_path / "pred" / f"{name}.nii.gz", ref + np.float32(0.05), AFFINE)
    proc = run_cli("sr", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"))
    assert proc.returncode == 0, proc.stderr
    assert "vol_01" in proc.stdout and "vol_02" in proc.stdout and "mean (2)" in proc.stdout
    assert "26.0206" in proc.stdout  # 20 log10(1 / 0.05)


@pytest.fixture
def recon_dirs(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Two target files (4x and 8x) with 12 x 10 targets; reconstructions are 16 x 12."""
    rng = np.random.default_rng(2)
    truth = {}
    for name, accel in (("file_4x", 4), ("file_8x", 8)):
        target = (rng.random((3, 12, 10)) * 1e-4).astype(np.float32)
        recon = (rng.random((3, 16, 12)) * 1e-4).astype(np.float32)
        recon[:, 2:14, 1:11] = target + (2e-6 * rng.standard_normal(target.shape)).astype(np.float32)
        attrs = {"acquisition": "CORPD_FBK", "acceleration": accel, "patient_id": name}
        kspace = np.zeros((3, 12, 10), np.complex64)
        write_fastmri_volume(
            tmp_path / "targets" / f"{name}.h5",
            kspace,
            "<ismrmrdHeader/>",
            attrs,
            {"reconstruction_esc": target},
        )
        truth[name] = (target[:, 1:11, :], recon[:, 3:13, 1:11])  # both centre-cropped to 10 x 10
        write_reconstructions(tmp_path / "recons", {name: recon})
    return tmp_path / "recons", tmp_path / "targets", truth


def test_recon_cli_matches_official_rules(recon_dirs):
    recons, targets, truth = recon_dirs
    proc = run_cli("recon", "--pred", str(recons), "--ref", str(targets), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for name, (target, recon) in truth.items():
        expected = fm.fastmri_volume_metrics(target, recon)
        assert result["cases"][name] == pytest.approx(expected, rel=1e-9)
    assert 0.0 < result["mean"]["nmse"] < 0.01  # the two crops line the volumes up


def test_recon_filters_on_target_attributes(recon_dirs):
    recons, targets, _ = recon_dirs
    assert list(ev.evaluate_recon(recons, targets, acceleration=8)["cases"]) == ["file_8x"]
    assert len(ev.evaluate_recon(recons, targets, acquisition="CORPD_FBK")["cases"]) == 2
    with pytest.raises(ev.DataError, match="none passes the filters"):
        ev.evaluate_recon(recons, targets, acquisition="AXT2")
    (targets / "file_8x.h5").unlink()  # the 4x-only evaluation must not ask for file_8x's partner
    with pytest.raises(ev.DataError, match="no reference .* file_8x.h5"):
        ev.evaluate_recon(recons, targets)


def test_recon_missing_dataset_is_named(recon_dirs, capsys):
    recons, targets, _ = recon_dirs
    code = ev.main(
        ["recon", "--pred", str(recons), "--ref", str(targets), "--target-key", "reconstruction_rss"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "file_4x.h5" in err and "reconstruction_rss" in err and "Traceback" not in err


# ---------------------------------------------------------------- bad input
def test_missing_partner_exits_2_listing_the_cases(seg_dirs, tmp_path):
    pred_dir, ref_dir = seg_dirs
    (pred_dir / "overlap.nii").unlink()
    save_nifti(pred_dir / "stray.nii.gz", np.zeros((6, 5, 4), np.uint8), AFFINE)
    out = tmp_path / "never.json"
    proc = run_cli("seg", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out))
    assert proc.returncode == 2
    assert "overlap.nii.gz" in proc.stderr and "stray.nii.gz" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("problem", "expect"),
    [("shape", "shape"), ("affine", "affine"), ("corrupt", "overlap.nii")],
)
def test_bad_prediction_exits_2_naming_the_file(seg_dirs, tmp_path, capsys, problem, expect):
    pred_dir, ref_dir = seg_dirs
    bad = pred_dir / "overlap.nii"
    if problem == "shape":
        save_nifti(bad, np.zeros((6, 5, 3), np.uint8), AFFINE)
    elif problem == "affine":
        save_nifti(bad, np.zeros((6, 5, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    else:
        bad.write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "never.json"
    code = ev.main(["seg", "--pred", str(pred_dir), "--ref", str(ref_dir), "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert str(bad) in captured.err and expect in captured.err
    assert captured.out == "" and not out.exists()


def test_file_against_folder_and_empty_folder_are_rejected(seg_dirs, tmp_path):
    pred_dir, ref_dir = seg_dirs
    with pytest.raises(ev.DataError, match="must both be files or both folders"):
        ev.evaluate_seg(pred_dir / "overlap.nii", ref_dir)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ev.DataError, match="no .nii.gz / .nii files"):
        ev.evaluate_seg(pred_dir, tmp_path / "nothing")
    with pytest.raises(ev.DataError, match="constant"):
        ev.evaluate_sr(pred_dir / "empty.nii.gz", ref_dir / "empty.nii.gz")


@pytest.mark.parametrize("problem", ["nan", "complex"])
def test_recon_with_nan_or_complex_values_is_named_without_scores(recon_dirs, tmp_path, capsys, problem):
    import h5py

    recons, targets, _ = recon_dirs
    path = recons / "file_8x.h5"
    with h5py.File(path, "r+") as f:
        volume = f["reconstruction"][()]
        del f["reconstruction"]
        if problem == "nan":
            volume[1, 5, 4] = np.nan
            f.create_dataset("reconstruction", data=volume)
        else:
            f.create_dataset("reconstruction", data=volume.astype(np.complex64))
    out = tmp_path / "scores.json"
    assert ev.main(["recon", "--pred", str(recons), "--ref", str(targets), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1
    assert ("NaN" in err and "slice 1" in err) if problem == "nan" else "complex dtype complex64" in err
    assert not out.exists()
