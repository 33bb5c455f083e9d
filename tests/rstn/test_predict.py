"""predict.py gives eval's coarse-to-fine voxels for a checkpoint of a tiny demo run, with the model's own margin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.io.nifti import load_nifti, save_nifti
from common.run import CONF_ROOT
from common.synthetic.ct import ct_abdomen
from common.synthetic.dicom_series import write_ct_series
from projects.rstn import inference
from projects.rstn.eval import evaluate_rstn
from projects.rstn.inference import fine_plane
from projects.rstn.predict import main
from projects.rstn.train import train_planes
from tests.contract import check_eval_report

# Five steps at a high rate, organ slices only and a per-slice Dice: the coarse stage then marks voxels, so the
# fine stage runs (at the default rate it marks none in five steps and coarse-to-fine stops at round 0).
TINY_RUN = ["trainer.max_steps=5", "trainer.limit_val_batches=0", "model.optimizer.lr=1e-2", "model.bce_weight=0",
            "data.empty_fraction=0", "model.batch_dice=false"]


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "rstn"), version_base="1.3"):
        return compose(config, overrides=overrides)


@pytest.fixture(scope="module")
def demo_run(synthetic_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny plane-Z run of `experiment=demo`, eval's coarse-to-fine masks of fold 0, and one test CT as NIfTI."""
    out = tmp_path_factory.mktemp("rstn_demo_run")
    data = ["experiment=demo", f"data.cache_dir={synthetic_cache}", f"data.split_file={synthetic_cache}/splits.json",
            "data.synthetic=null"]
    train_planes(_compose("train", [*data, "plane=Z", "logger=none", "test_after_fit=false",
                                    f"paths.output_dir={out / 'run'}", "+trainer.enable_progress_bar=false",
                                    "+trainer.enable_model_summary=false", *TINY_RUN]))
    ckpt = out / "run" / "Z" / "checkpoints" / "last.ckpt"
    _, eval_margins = _margins_used(evaluate_rstn, _eval_config(data, out, ckpt, "eval"))
    hu, _, affine = ct_abdomen(3, shape=(32, 32, 16))  # synth000 of the cache (prepare_synthetic seed 3), held out
    ct = save_nifti(out / "cts" / "synth000.nii.gz", np.round(hu), affine, dtype=np.float32)
    hu_2, _, affine_2 = ct_abdomen(4, shape=(32, 32, 16))
    save_nifti(out / "cts" / "synth001.nii.gz", np.round(hu_2), affine_2, dtype=np.float32)
    return {"ckpt": ckpt, "ct": ct, "eval_mask": out / "eval" / "coarse2fine" / "synth000.nii.gz", "out": out,
            "data": data, "eval_margins": eval_margins}


def _eval_config(data: list[str], out: Path, ckpt: Path, name: str, *overrides: str):
    """Eval's config without `experiment=demo`: its own model.margin is then the paper's 20, the checkpoint's 5."""
    data = ["data=synthetic" if item == "experiment=demo" else item for item in data]
    return _compose("eval", [*data, f"paths.output_dir={out}", f"checkpoints.Z={ckpt}", "eval.planes=[Z]",
                             "eval.stages=[coarse2fine]", f"eval.out_dir={out / name}", "inference_precision=32",
                             *overrides])


def _margins_used(fn, *args) -> tuple[Any, set[int]]:
    """Returns `fn(*args)` and the crop margins its fine stage used."""
    margins = []

    def fine_plane_spy(*spied, **kwargs):
        margins.append(spied[5])  # image, score, mask, plane, model, margin
        return fine_plane(*spied, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "fine_plane", fine_plane_spy)
        return fn(*args), set(margins)


def _predict(run: dict, name: str, *flags: str) -> np.ndarray:
    output = run["out"] / name
    assert main(["--input", str(run["ct"]), "--output", str(output), "--ckpt", f"Z={run['ckpt']}",
                 "--precision", "32", *flags]) == 0
    return np.asarray(nib.load(output).dataobj)


def test_predict_equals_eval_with_the_checkpoints_margin(demo_run: dict, capsys) -> None:
    expected = np.asarray(nib.load(demo_run["eval_mask"]).dataobj)
    assert expected.any()  # the fine stage ran
    predicted, margins = _margins_used(_predict, demo_run, "default.nii.gz")
    np.testing.assert_array_equal(predicted, expected)
    assert margins == demo_run["eval_margins"] == {5}  # the demo model's margin, not the eval config's 20
    assert "overrides" not in capsys.readouterr().err


def test_flags_override_the_checkpoint_and_say_so(demo_run: dict, capsys) -> None:
    assert np.asarray(nib.load(demo_run["eval_mask"]).dataobj).any()
    assert not _predict(demo_run, "strict.nii.gz", "--threshold", "0.999").any()
    err = capsys.readouterr().err
    assert "--threshold 0.999 overrides the checkpoint's eval.threshold" in err and "has 0.5" in err
    _predict(demo_run, "margin20.nii.gz", "--margin", "20")
    assert "--margin 20 overrides the checkpoint's eval.margin" in capsys.readouterr().err


def test_eval_margin_given_overrides_the_checkpoint_and_says_so(demo_run: dict, capsys) -> None:
    cfg = _eval_config(demo_run["data"], demo_run["out"], demo_run["ckpt"], "eval_margin20", "eval.margin=20")
    _, margins = _margins_used(evaluate_rstn, cfg)
    assert margins == {20}
    err = capsys.readouterr().err
    assert "note: eval.margin 20 overrides the checkpoint's eval.margin" in err and "has 5)" in err
    wide = np.asarray(nib.load(demo_run["out"] / "eval_margin20" / "coarse2fine" / "synth000.nii.gz").dataobj)
    np.testing.assert_array_equal(_predict(demo_run, "margin20_again.nii.gz", "--margin", "20"), wide)


def test_an_unwritable_output_folder_is_one_line_and_leaves_nothing(demo_run: dict, tmp_path: Path, capsys) -> None:
    # Tests run as root, which chmod does not stop: a regular file where the folder should be blocks it instead.
    (tmp_path / "taken").write_text("")
    assert main(["--input", str(demo_run["ct"]), "--output", str(tmp_path / "taken" / "mask.nii.gz"),
                 "--ckpt", f"Z={demo_run['ckpt']}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'taken'}: cannot create the output folder (") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_eval_writes_the_contract_report(demo_run: dict) -> None:
    report = check_eval_report(demo_run["out"] / "eval" / "summary.json")
    case = next(iter(report["cases"]))
    assert report["cases"][case]["dice"] == report["cases"][case]["dice_coarse2fine"]
    assert "coarse2fine" in report["protocol"]["paper"] and report["stages"]["coarse2fine"]["n"] == len(report["cases"])


def test_a_run_folder_and_a_folder_of_two_cts_give_two_masks(demo_run: dict, capsys) -> None:
    out = demo_run["out"] / "masks"
    assert main(["-i", str(demo_run["ct"].parent), "-o", str(out), "--ckpt", str(demo_run["out"] / "run"),
                 "--precision", "32"]) == 0  # the run folder holds Z/ only
    assert sorted(p.name for p in out.iterdir()) == ["synth000.nii.gz", "synth001.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(out / "synth000.nii.gz").dataobj),
                                  np.asarray(nib.load(demo_run["eval_mask"]).dataobj))
    assert main(["-i", str(demo_run["ct"]), "-o", str(out / "old.nii.gz"), "--checkpoint", f"Z={demo_run['ckpt']}",
                 "--precision", "32"]) == 0
    assert "note: --checkpoint is now --ckpt" in capsys.readouterr().err


def test_a_dicom_series_gives_the_mask_of_its_nifti(demo_run: dict) -> None:
    ct = load_nifti(demo_run["ct"])
    series = demo_run["out"] / "dicom" / "synth000"
    write_ct_series(series / "study" / "series", ct.data, ct.affine, patient_id="synth000",
                    study_uid="1.2.826.0.2.1", series_uid="1.2.826.0.2.1.1")
    output = demo_run["out"] / "from_dicom.nii.gz"
    assert main(["-i", str(series), "-o", str(output), "--ckpt", f"Z={demo_run['ckpt']}", "--precision", "32"]) == 0
    expected = nib.load(demo_run["eval_mask"])
    assert np.asarray(expected.dataobj).any()
    np.testing.assert_array_equal(np.asarray(nib.load(output).dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(nib.load(output).affine, ct.affine, atol=1e-4)


def test_a_memory_budget_changes_the_passes_not_the_mask(demo_run: dict, capsys) -> None:
    """`--max-memory` at the current resident size leaves the fewest slices per coarse pass: the same mask."""
    from common.memory import resident_bytes

    expected = np.asarray(nib.load(demo_run["eval_mask"]).dataobj)
    np.testing.assert_array_equal(_predict(demo_run, "budget.nii.gz", "--max-memory", str(resident_bytes())),
                                  expected)
    assert main(["--input", str(demo_run["ct"]), "--output", str(demo_run["out"] / "bad.nii.gz"),
                 "--ckpt", f"Z={demo_run['ckpt']}", "--max-memory", "lots"]) == 2
    assert "--max-memory" in capsys.readouterr().err and not (demo_run["out"] / "bad.nii.gz").exists()
