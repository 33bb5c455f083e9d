"""predict.py gives eval's voxels for a held-out case of a tiny trained run, with the checkpoint's own settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.io.nifti import load_nifti
from common.run import CONF_ROOT, train
from common.synthetic.dicom_series import write_ct_series
from projects.saint.demo import thick_slice_copy
from projects.saint.eval import evaluate
from projects.saint.model import SAINT
from projects.saint.predict import main
from tests.contract import check_eval_report
from tests.saint.test_matrix import SHRINK

# Factor 3 and a fixed plane batch of 7: neither is a code default (4, and a batch by pixel budget).
TRAINED = ["model.eval_factors=[3]", "model.plane_batch=7"]
HELD_OUT = "liver_0"  # the first paper-test case of the fixture: never trained on
HELD_OUT_2 = "liver_1"  # the second


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "saint"), version_base="1.3"):
        return compose(config, overrides=overrides)


def _eval(run: dict, name: str, *overrides: str) -> Path:
    """Runs eval.py on the held-out case (the eval config's own model: the paper's); returns its run folder."""
    out = run["out"] / name
    evaluate(_compose("eval", [f"ckpt_path={run['ckpt']}", f"data.cache_dir={run['cache']}", "max_cases=1",
                               "write_volumes=true", "baselines=[]", "fuse=[mean]", f"paths.output_dir={out}",
                               "inference_precision=32", *overrides]))
    return out


def _plane_batches(fn, *args) -> tuple[Any, set]:
    """Returns `fn(*args)` and the plane batches SAINT's views ran with."""
    batches = set()
    infer_views = SAINT.infer_views

    def spy(self, vol, spacing, f, plane_batch=None, max_memory=None):
        batches.add(plane_batch)
        return infer_views(self, vol, spacing, f, plane_batch, max_memory)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SAINT, "infer_views", spy)
        return fn(*args), batches


@pytest.fixture(scope="module")
def demo_run(msd_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-step `experiment=demo` run at factor 3, eval's volume of the held-out case, its thick NIfTI."""
    out = tmp_path_factory.mktemp("saint_demo_run")
    train(_compose("train", ["experiment=demo", f"data.cache_dir={cache_dir}", *SHRINK, *TRAINED,
                             "trainer.max_steps=2", "data.batch_size=2", "data.samples_per_epoch=4",
                             "+trainer.limit_val_batches=0", "test_after_fit=false", "logger=none",
                             f"paths.output_dir={out / 'run'}", "+trainer.enable_progress_bar=false"]))
    run = {"ckpt": out / "run" / "checkpoints" / "last.ckpt", "cache": cache_dir, "out": out}
    run["eval"], run["eval_batches"] = _plane_batches(_eval, run, "eval")
    for key, case in (("thick", HELD_OUT), ("thick_2", HELD_OUT_2)):
        source = next((msd_root / "Task03_Liver").glob(f"images*/{case}.nii.gz"))  # the MSD layout, thin slices
        run[key] = thick_slice_copy(source, out / "thick" / f"{case}.nii.gz", 3)
    return run


def _predict(run: dict, name: str, *flags: str):
    output = run["out"] / name
    assert main(["--input", str(run["thick"]), "--output", str(output), "--ckpt", str(run["ckpt"]),
                 "--precision", "32", *flags]) == 0
    return load_nifti(output, dtype=np.float32)


def test_predict_equals_eval_with_the_checkpoints_factor_and_plane_batch(demo_run: dict, capsys) -> None:
    expected = load_nifti(demo_run["eval"] / "x3" / f"{HELD_OUT}.nii.gz", dtype=np.float32)
    predicted, batches = _plane_batches(_predict, demo_run, "default.nii.gz")
    assert predicted.shape == expected.shape  # factor 3, not the code's 4
    assert np.ptp(expected.data) > 100  # a real image, not a constant
    np.testing.assert_array_equal(predicted.data, expected.data)  # int16 HU, the same forward passes
    np.testing.assert_allclose(predicted.affine, expected.affine, atol=1e-4)
    assert batches == demo_run["eval_batches"] == {7}  # the checkpoint's plane batch in both
    assert "overrides" not in capsys.readouterr().err


def test_flags_override_the_checkpoint_and_say_so(demo_run: dict, capsys) -> None:
    thick = load_nifti(demo_run["thick"])
    predicted, batches = _plane_batches(_predict, demo_run, "x2.nii.gz", "--factor", "2", "--plane-batch", "5")
    assert predicted.shape == (*thick.shape[:2], thick.shape[2] * 2) and batches == {5}
    err = capsys.readouterr().err
    assert "note: --factor 2 overrides the checkpoint's model.eval_factors[0]" in err and "has 3)" in err
    assert "note: --plane-batch 5 overrides the checkpoint's model.plane_batch" in err and "has 7)" in err
    out, batches = _plane_batches(_eval, demo_run, "eval_x2", "factor=2")
    assert (out / "eval_x2.json").exists() and (out / "x2" / f"{HELD_OUT}.nii.gz").exists() and batches == {7}
    assert "note: factor 2 overrides the checkpoint's model.eval_factors[0]" in capsys.readouterr().err


def test_eval_writes_the_contract_report(demo_run: dict) -> None:
    report = check_eval_report(demo_run["eval"] / "eval_x3.json")
    assert set(report["cases"]) == {HELD_OUT} and set(report["mean"]) == {"psnr", "ssim"}
    assert report["protocol"]["factor"] == 3 and report["methods"][HELD_OUT]["SAINT mean fusion"]["psnr"] == \
        report["cases"][HELD_OUT]["psnr"]


def test_a_folder_of_two_cases_gives_a_folder_of_two_outputs(demo_run: dict) -> None:
    out = demo_run["out"] / "thin"
    assert main(["-i", str(demo_run["thick"].parent), "-o", str(out), "--ckpt", str(demo_run["ckpt"]),
                 "--precision", "32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{HELD_OUT}.nii.gz", f"{HELD_OUT_2}.nii.gz"]
    single = _predict(demo_run, "single.nii.gz")
    np.testing.assert_array_equal(load_nifti(out / f"{HELD_OUT}.nii.gz", dtype=np.float32).data, single.data)
    assert load_nifti(out / f"{HELD_OUT_2}.nii.gz").shape[2] == 3 * load_nifti(demo_run["thick_2"]).shape[2]


def test_a_dicom_series_gives_the_voxels_of_its_nifti(demo_run: dict) -> None:
    thick = load_nifti(demo_run["thick"], dtype=np.float32)
    series = demo_run["out"] / "dicom" / HELD_OUT
    write_ct_series(series, thick.data, thick.affine, patient_id=HELD_OUT, study_uid="1.2.826.0.1.1",
                    series_uid="1.2.826.0.1.1.1", file_order=np.arange(thick.shape[2])[::-1].copy())
    output = demo_run["out"] / "from_dicom.nii.gz"
    assert main(["-i", str(series), "-o", str(output), "--ckpt", str(demo_run["ckpt"]), "--precision", "32"]) == 0
    expected = _predict(demo_run, "from_nifti.nii.gz")
    predicted = load_nifti(output, dtype=np.float32)
    np.testing.assert_array_equal(predicted.data, expected.data)
    np.testing.assert_allclose(predicted.affine, expected.affine, atol=1e-4)


def test_a_memory_budget_changes_the_passes_not_the_volume(demo_run: dict, capsys) -> None:
    """`--max-memory` at the current resident size leaves the fewest planes per pass: the same HU to rounding."""
    from common.memory import resident_bytes

    expected = load_nifti(demo_run["eval"] / "x3" / f"{HELD_OUT}.nii.gz", dtype=np.float32)
    budgeted = _predict(demo_run, "budget.nii.gz", "--max-memory", str(resident_bytes()))
    np.testing.assert_allclose(budgeted.data, expected.data, atol=1)
    np.testing.assert_allclose(budgeted.affine, expected.affine, atol=1e-4)
    assert main(["--input", str(demo_run["thick"]), "--output", str(demo_run["out"] / "bad.nii.gz"),
                 "--ckpt", str(demo_run["ckpt"]), "--max-memory", "lots"]) == 2
    assert "--max-memory" in capsys.readouterr().err and not (demo_run["out"] / "bad.nii.gz").exists()
