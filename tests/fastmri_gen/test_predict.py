"""predict.py gives eval's reconstruction of a held-out volume with the checkpoint's own data settings."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.io import read_reconstruction
from common.run import train
from common.settings import CheckpointSettings
from projects.fastmri_gen.eval import evaluate, load_checkpoint_module
from projects.fastmri_gen.predict import main, reconstruct_file
from tests.contract import check_eval_report
from tests.fastmri_gen.test_train import compose_cfg, tiny

HELD_OUT = "file1100001.h5"  # a validation volume: never trained on


@pytest.fixture(scope="module")
def demo_run(fastmri_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A one-step run of `experiment=demo` at acceleration 8 and eval's reconstructions of the validation split."""
    out = tmp_path_factory.mktemp("fastmri_demo_run")
    train(compose_cfg(["experiment=demo", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                       "+trainer.limit_val_batches=1", "test_after_fit=false", "data.accelerations=[8]",
                       "data.mask_type=equispaced", *tiny(fastmri_root, out / "run")]))
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    evaluate(compose_cfg(["experiment=demo", f"ckpt_path={ckpt}", "eval.accelerations=[8]", "inference_precision=32",
                          "data.mask_type=equispaced", *tiny(fastmri_root, out / "eval")], name="eval"))
    return {"ckpt": ckpt, "input": fastmri_root / "singlecoil_val" / HELD_OUT, "out": out,
            "eval": read_reconstruction(out / "eval" / "reconstructions" / "x8" / HELD_OUT)}


def _predict(run: dict, name: str, *flags: str) -> np.ndarray:
    assert main(["--ckpt", str(run["ckpt"]), "-i", str(run["input"]), "-o", str(run["out"] / name / HELD_OUT),
                 "--precision", "32", *flags]) == 0
    return read_reconstruction(run["out"] / name / HELD_OUT)


def test_predict_equals_eval_with_the_checkpoints_acceleration_and_mask(demo_run: dict, capsys) -> None:
    # The code defaults (acceleration 4, random masks) would give another reconstruction.
    np.testing.assert_allclose(_predict(demo_run, "default"), demo_run["eval"], rtol=1e-5, atol=1e-7)
    assert "overrides" not in capsys.readouterr().err


def test_acceleration_flag_overrides_the_checkpoint_and_says_so(demo_run: dict, capsys) -> None:
    other = _predict(demo_run, "x4", "--acceleration", "4")
    assert not np.allclose(other, demo_run["eval"], rtol=1e-3)
    err = capsys.readouterr().err
    assert "--acceleration 4 overrides the checkpoint's data.accelerations[0]" in err and "has 8" in err


def test_a_bad_file_is_named_as_the_user_gave_it(demo_run: dict, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "inputs" / "file1100009.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"not an HDF5 file")
    assert main(["--ckpt", str(demo_run["ckpt"]), "--input", str(bad), "--output", str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:") and err.count("\n") == 1
    assert not (tmp_path / "out.h5").exists()


def test_an_unwritable_output_folder_is_one_line_and_leaves_nothing(demo_run: dict, tmp_path: Path, capsys) -> None:
    # Tests run as root, which chmod does not stop: a regular file where the folder should be blocks it instead.
    (tmp_path / "taken").write_text("")
    shutil.copy(demo_run["input"], tmp_path / HELD_OUT)
    assert main(["--ckpt", str(demo_run["ckpt"]), "--input", str(tmp_path), "--output", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'taken'}: is a file, but the input {tmp_path} is a folder: " \
                                      "give an output folder\n"
    assert main(["--ckpt", str(demo_run["ckpt"]), "--input", str(tmp_path / HELD_OUT),
                 "--output", str(tmp_path / "taken" / "recon.h5")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'taken'}: cannot create the output folder (")
    assert sorted(p.name for p in tmp_path.iterdir()) == [HELD_OUT, "taken"]


def test_eval_writes_the_contract_report(demo_run: dict) -> None:
    report = check_eval_report(demo_run["out"] / "eval" / "eval_metrics.json")
    assert report["protocol"]["acceleration"] == 8 and report["cases"] == report["x8"]["cases"]
    assert f"{HELD_OUT.removesuffix('.h5')}" in report["cases"] and set(report["mean"]) == {"nmse", "psnr", "ssim"}


def test_a_folder_of_volumes_gives_a_folder_of_reconstructions(demo_run: dict, fastmri_root: Path, capsys) -> None:
    out = demo_run["out"] / "folder"
    assert main(["--ckpt", str(demo_run["ckpt"]), "-i", str(fastmri_root / "singlecoil_val"), "--out", str(out),
                 "--precision", "32"]) == 0
    assert "note: --out is now --output" in capsys.readouterr().err
    names = sorted(p.name for p in (fastmri_root / "singlecoil_val").glob("*.h5"))
    assert len(names) >= 2 and sorted(p.name for p in out.iterdir()) == names
    np.testing.assert_allclose(read_reconstruction(out / HELD_OUT), demo_run["eval"], rtol=1e-5, atol=1e-7)


def _batchnorms(module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.net.modules())


def test_eval_and_predict_fold_the_batchnorms_into_the_same_reconstruction(demo_run: dict) -> None:
    plain, run_config = load_checkpoint_module(demo_run["ckpt"])
    settings = CheckpointSettings(demo_run["ckpt"], run_config)
    assert _batchnorms(plain) > 0
    plain._bn_folded = True  # as if already folded: nothing is folded
    unfolded = reconstruct_file(plain, settings, demo_run["input"])
    assert _batchnorms(plain) > 0
    folded_module, _ = load_checkpoint_module(demo_run["ckpt"])
    folded = reconstruct_file(folded_module, settings, demo_run["input"])
    assert _batchnorms(folded_module) == 0
    np.testing.assert_allclose(folded, unfolded, rtol=1e-4, atol=1e-4 * float(np.abs(unfolded).max()))
    np.testing.assert_allclose(folded, demo_run["eval"], rtol=1e-5, atol=1e-7)  # what eval wrote, folded too


def test_the_reference_fidelity_evaluates_with_batch_statistics_and_folds_nothing(demo_run: dict) -> None:
    module, run_config = load_checkpoint_module(demo_run["ckpt"])
    module.fidelity = dataclasses.replace(module.fidelity, train_mode_validation=True)  # defect 5
    reconstruct_file(module, CheckpointSettings(demo_run["ckpt"], run_config), demo_run["input"])
    assert _batchnorms(module) > 0
