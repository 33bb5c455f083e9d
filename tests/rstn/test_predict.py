"""predict.py gives eval's coarse-to-fine voxels for a checkpoint of a tiny demo run, with the model's own margin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.io.nifti import save_nifti
from common.run import CONF_ROOT
from common.synthetic.ct import ct_abdomen
from projects.rstn import inference
from projects.rstn.eval import evaluate_rstn
from projects.rstn.inference import fine_plane
from projects.rstn.predict import main
from projects.rstn.train import train_planes

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
    ct = save_nifti(out / "synth000_ct.nii.gz", hu, affine, dtype=np.float32)
    return {"ckpt": ckpt, "ct": ct, "eval_mask": out / "eval" / "coarse2fine" / "synth000.nii.gz", "out": out,
            "data": data, "eval_margins": eval_margins}


def _eval_config(data: list[str], out: Path, ckpt: Path, name: str, *overrides: str):
    """Eval's config without `experiment=demo`: its own model.margin is then the paper's 20, the checkpoint's 5."""
    data = ["data=synthetic" if item == "experiment=demo" else item for item in data]
    return _compose("eval", [*data, f"paths.output_dir={out}", f"checkpoints.Z={ckpt}", "eval.planes=[Z]",
                             "eval.stages=[coarse2fine]", f"eval.out_dir={out / name}", *overrides])


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
    assert main(["--input", str(run["ct"]), "--output", str(output), "--checkpoint", f"Z={run['ckpt']}",
                 *flags]) == 0
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
                 "--checkpoint", f"Z={demo_run['ckpt']}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'taken'}: cannot create the output folder (") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
