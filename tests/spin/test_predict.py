"""predict keeps the input grid and affine (oblique, flipped axes) and gives eval's mask with the checkpoint's
settings; augmentation keeps image and label aligned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.io.nifti import save_nifti
from common.run import CONF_ROOT, train
from projects.spin import predict as spin_predict
from projects.spin.augment import augment_batch
from projects.spin.data import normalise
from projects.spin.eval import evaluate_spin
from projects.spin.predict import logits_function, predict_volume, segment_nifti
from tests.contract import check_eval_report
from tests.spin.test_train import TINY_SPIN


def _threshold_net(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: lesion where the centre slice is brighter than a level and its W-neighbour darker."""
    centre = x[:, x.shape[1] // 2: x.shape[1] // 2 + 1]
    return centre - normalise(np.float32(50.0)) + 0.5 * (centre - centre.roll(1, dims=-1))


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    # Array axes stored as (S, -R, A) with 1.2 / 1.0 / 0.9 mm voxels, rotated about S.
    axes = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], dtype=float).T * np.array([1.2, 1.0, 0.9])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes
    affine[:3, 3] = [-30.0, 12.5, 40.0]
    return affine


def test_predict_keeps_the_grid_of_an_oblique_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 100, size=(14, 17, 11)).astype(np.float32)
    affine = _oblique_affine()
    src = tmp_path / "oblique_t1.nii.gz"
    save_nifti(src, data, affine)
    out = segment_nifti(logits_function(_threshold_net), src, tmp_path / "mask.nii.gz", n_chunk=5, batch_size=4)
    img = nib.load(out)
    assert img.shape == data.shape
    assert np.allclose(img.affine, affine, atol=1e-5)
    assert img.get_data_dtype() == np.uint8
    mask = np.asarray(img.dataobj)
    assert set(np.unique(mask)) <= {0, 1} and 0 < mask.sum() < mask.size
    # The same voxels as segmenting the RAS-ordered array directly: axes were permuted back correctly.
    ras = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    expected = predict_volume(logits_function(_threshold_net), np.asarray(ras.dataobj), 5, 4)
    back = nib.as_closest_canonical(nib.Nifti1Image(mask, affine))
    assert np.array_equal(np.asarray(back.dataobj), expected)
    assert np.allclose(back.affine, ras.affine)


def test_flip_tta_is_flip_equivariant() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 12, 9)
    tta = logits_function(_threshold_net, tta_flip=True)
    assert torch.allclose(tta(x.flip(-1)), tta(x).flip(-1), atol=1e-6)


def test_augmentation_moves_image_and_label_together() -> None:
    torch.manual_seed(0)
    label = (torch.rand(16, 1, 21, 27) > 0.7).long()
    image = torch.cat([label.float(), torch.randn(16, 2, 21, 27)], dim=1)
    out_image, out_label = augment_batch(image, label, gate_prob=1.0, noise_prob=0.0)
    assert out_image.shape == image.shape and out_label.dtype == label.dtype
    assert torch.equal(out_image[:, :1].long(), out_label)
    assert set(out_label.unique().tolist()) <= {0, 1}
    assert not torch.equal(out_label, label)
    same_image, same_label = augment_batch(image, label, gate_prob=0.0, noise_prob=0.0)
    assert torch.equal(same_image, image) and torch.equal(same_label, label)
    noisy, _ = augment_batch(image, label, gate_prob=0.0, noise_prob=1.0)
    assert 0.005 < float((noisy - image).std()) < 0.02


def test_zoom_crops_the_true_centre() -> None:
    label = torch.zeros(1, 1, 41, 41, dtype=torch.long)
    label[0, 0, 20, 20] = 1
    image = label.float()
    for _ in range(10):
        _, out = augment_batch(image, label, gate_prob=1.0, noise_prob=0.0, max_degrees=0.0, zoom=(1.09, 1.1))
        # A centre pixel stays at the centre whatever the flips and zoom (a corner crop would shift it).
        assert out[0, 0, 20, 20] == 1


# Where the synthetic scans are (data group), not what the model is: eval's own model config stays the paper's.
DATA = ["data=synthetic", "data.n_train=4", "data.n_test=2", "data.shape=[32,40,24]"]


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "spin"), version_base="1.3"):
        return compose(config, overrides=overrides)


def _contexts(fn, *args) -> tuple[Any, set[int]]:
    """Returns `fn(*args)` and the slice contexts (neighbours per side) the segmentation ran with."""
    contexts = set()
    by_slices = spin_predict.predict_by_slices

    def spy(*spied, **kwargs):
        contexts.add(kwargs["context"])
        return by_slices(*spied, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spin_predict, "predict_by_slices", spy)
        return fn(*args), contexts


def _eval(run: dict, name: str, *overrides: str) -> Path:
    out = run["out"] / name
    evaluate_spin(_compose("eval", [*DATA, f"data.root={run['data']}", f"ckpt_path={run['ckpt']}",
                                    "eval.write_masks=true", f"paths.output_dir={out}", "inference_precision=32",
                                    *overrides]))
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of a narrow `experiment=demo` with 3-slice inputs; eval's masks of the two test scans."""
    out = tmp_path_factory.mktemp("spin_demo_run")
    run = {"out": out, "data": out / "synthetic", "ckpt": out / "run" / "checkpoints" / "last.ckpt"}
    train(_compose("train", ["experiment=demo", *DATA, f"data.root={run['data']}", *TINY_SPIN, "data.n_chunk=3",
                             "data.samples_per_scan=2", "data.batch_size=4", "trainer.max_epochs=1",
                             "+trainer.limit_val_batches=0", "test_after_fit=false", "logger=none",
                             f"paths.output_dir={out / 'run'}"]))
    run["eval"], run["eval_contexts"] = _contexts(_eval, run, "eval")
    scan = json.loads((run["data"] / "split.json").read_text())["test"][0]
    run["scan"], run["t1"] = scan, run["data"] / "raw" / scan[:5] / scan / f"{scan}_t1w_stx.nii.gz"
    return run


def _predict(run: dict, name: str, *flags: str) -> nib.Nifti1Image:
    output = run["out"] / name
    assert spin_predict.main(["--ckpt", str(run["ckpt"]), "--input", str(run["t1"]), "--output", str(output),
                              "--precision", "32", *flags]) == 0
    return nib.load(output)


def test_predict_equals_eval_with_the_checkpoints_network_and_context(demo_run: dict, capsys) -> None:
    expected = nib.load(demo_run["eval"] / "masks" / f"{demo_run['scan']}.nii.gz")
    predicted, contexts = _contexts(_predict, demo_run, "default.nii.gz")
    assert predicted.shape == nib.load(demo_run["t1"]).shape
    np.testing.assert_allclose(predicted.affine, nib.load(demo_run["t1"]).affine, atol=1e-5)  # the input's grid
    canonical = nib.as_closest_canonical(predicted)  # eval's masks lie on the cached scan's RAS grid
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(canonical.affine, expected.affine, atol=1e-5)
    assert contexts == demo_run["eval_contexts"] == {1}  # n_chunk 3 of the checkpoint, not the code's 5
    assert "overrides" not in capsys.readouterr().err


def test_flags_override_the_checkpoint_and_say_so(demo_run: dict, capsys) -> None:
    flipped = _predict(demo_run, "flipped.nii.gz", "--tta-flip", "--batch-size", "7")
    default = np.asarray(nib.load(demo_run["out"] / "default.nii.gz").dataobj)
    assert not np.array_equal(np.asarray(flipped.dataobj), default)  # the flag changes the mask
    err = capsys.readouterr().err
    assert "note: --tta-flip True overrides the checkpoint's eval.tta_flip" in err and "has False)" in err
    assert "note: --batch-size 7 overrides the checkpoint's eval.batch_size" in err and "has 32)" in err
    out = _eval(demo_run, "eval_flipped", "eval.tta_flip=true", "eval.batch_size=7")
    assert "note: eval.tta_flip True overrides the checkpoint's eval.tta_flip" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(flipped).dataobj),
                                  np.asarray(nib.load(out / "masks" / f"{demo_run['scan']}.nii.gz").dataobj))
    assert json.loads((out / "eval_spin.json").read_text())["settings"]["tta_flip"] is True


def test_eval_writes_the_contract_report(demo_run: dict) -> None:
    report = check_eval_report(demo_run["eval"] / "eval_spin.json")
    test_ids = json.loads((demo_run["data"] / "split.json").read_text())["test"]
    assert set(report["cases"]) == set(test_ids) and set(report["mean"]) == {"dice", "iou", "precision", "recall"}
    assert report["protocol"]["paper"]["SPiN"]["scans"]["dice"] == 0.703 and "small_lesion" in report


def test_a_folder_of_two_scans_gives_a_folder_of_two_masks(demo_run: dict, capsys) -> None:
    scans = json.loads((demo_run["data"] / "split.json").read_text())["test"]
    folder = demo_run["out"] / "t1"
    folder.mkdir()
    for scan in scans:
        (folder / f"{scan}.nii.gz").symlink_to(demo_run["data"] / "raw" / scan[:5] / scan / f"{scan}_t1w_stx.nii.gz")
    out = demo_run["out"] / "masks"
    assert spin_predict.main(["-i", str(folder), "-o", str(out), "--ckpt", str(demo_run["ckpt"]), "--bf16"]) == 0
    assert "note: --bf16 is now --precision bf16" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{scan}.nii.gz" for scan in scans)
    for scan in scans:
        mask = nib.load(out / f"{scan}.nii.gz")
        assert mask.shape == nib.load(folder / f"{scan}.nii.gz").shape and mask.get_data_dtype() == np.uint8


def test_folded_network_and_memory_budget_keep_the_logits() -> None:
    """Inference with BatchNorm folded and slices batched by a memory budget gives the plain network's logits."""
    from common.memory import resident_bytes
    from projects.spin.model import SPiN
    from projects.spin.predict import prepare_network

    torch.manual_seed(0)
    wrapper = torch.nn.Module()
    wrapper.net = SPiN(embedding_width=4, encoder_widths=(8, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 8, 8, 8),
                       downsampler_widths=(4, 4)).eval()
    for module in wrapper.net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    t1 = np.random.default_rng(0).uniform(0, 100, (40, 36, 12)).astype(np.float32)
    plain = predict_volume(logits_function(wrapper.net), t1, 5, batch_size=12, return_logits=True)
    prepare_network(wrapper, 5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in wrapper.net.modules())
    folded = predict_volume(logits_function(wrapper.net), t1, 5, batch_size=12, return_logits=True,
                            max_memory=resident_bytes() + 2**20)  # room for few slices
    np.testing.assert_allclose(folded, plain, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_compiled_predict_and_eval_give_the_eager_masks(demo_run: dict) -> None:
    """`--compile` / `eval.compile=true`: one compiled graph, the last short batch padded; the same voxels."""
    expected = np.asarray(_predict(demo_run, "eager.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(_predict(demo_run, "compiled.nii.gz", "--compile").dataobj), expected)
    out = _eval(demo_run, "eval_compiled", "eval.compile=true")
    for mask in (demo_run["eval"] / "masks").glob("*.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(out / "masks" / mask.name).dataobj),
                                      np.asarray(nib.load(mask).dataobj))
