"""EasySR inference: through-plane axis from the affine, output affine overlays the input (a marker lands at the
same mm position), sliding window, isotropic resampling, and the command line on good and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from common.errors import DataError
from common.io import Volume, load_nifti, save_nifti, scale_axis_affine
from projects.easysr.infer import super_resolve, upsample_normalised
from projects.easysr.model import EasySRGenerator
from projects.easysr.predict import main, predict
from tests.contract import check_eval_report

REPO = Path(__file__).resolve().parents[2]


def replicating_generator(width: int = 32, n_res: int = 2) -> EasySRGenerator:
    """An EasySR generator whose weights copy each thick voxel into its three thin voxels (nearest neighbour)."""
    gen = EasySRGenerator(width=width, n_res=n_res)
    with torch.no_grad():
        for p in gen.parameters():
            p.zero_()
        for bn in (m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm3d)):
            bn.weight.fill_(1.0)
        gen.conv_block1[0].weight[0, 0, 1, 1, 1] = 1.0
        gen.deup.deupblock[0].weight[0, 0, 0, :, 0] = 1.0
        gen.conv3.weight[0, 0, 1, 1, 1] = 1.0
    return gen.eval()


def _rotation(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(a / 2), -np.sin(a / 2), 0], [np.sin(a / 2), np.cos(a / 2), 0], [0, 0, 1]])
    return rz @ rx


def _scan(shape, spacing, rotation=None, permutation=(0, 1, 2), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    data = (100 + 20 * rng.random(shape)).astype(np.float32)
    affine = np.eye(4)
    direction = (np.eye(3) if rotation is None else rotation)[:, list(permutation)]
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 3] = [12.5, -30.0, 7.25]
    return Volume(data=data, affine=affine, path="scan.nii.gz")


def _world(affine: np.ndarray, index) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


@pytest.mark.parametrize("thick_axis,permutation", [(2, (0, 1, 2)), (0, (2, 0, 1)), (1, (1, 2, 0))])
def test_marker_lands_at_same_mm_on_oblique_and_permuted_grids(thick_axis, permutation):
    spacing = [0.2, 0.2, 0.2]
    spacing[thick_axis] = 0.6
    scan = _scan((9, 10, 11), spacing, _rotation(25), permutation)
    marker = (4, 5, 6)
    scan.data[marker] = 1000.0  # clipped at +2.58 SD by the normalisation, still the brightest voxel
    out = super_resolve(scan, replicating_generator())
    expected_shape = list(scan.shape)
    expected_shape[thick_axis] *= 3
    assert list(out.shape) == expected_shape
    np.testing.assert_allclose(out.spacing, [0.2, 0.2, 0.2], atol=1e-9)
    # Direction cosines are unchanged: the output is the same oblique grid, only thinner.
    np.testing.assert_allclose(out.affine[:3, :3] / out.spacing, scan.affine[:3, :3] / scan.spacing, atol=1e-12)
    peak = np.argwhere(out.data > out.data.max() - 1e-3)
    assert len(peak) == 3 and sorted(peak[:, thick_axis]) == [3 * marker[thick_axis] + k for k in range(3)]
    centre = peak[1]
    np.testing.assert_allclose(_world(out.affine, centre), _world(scan.affine, marker), atol=1e-9)
    # Both grids cover the same field of view: the outer voxel edges coincide.
    edge_in = -0.5 * np.eye(3)[thick_axis]
    np.testing.assert_allclose(_world(out.affine, edge_in), _world(scan.affine, edge_in), atol=1e-9)
    # Intensities come back in the scan's units.
    other = np.array([1, 2, 3])
    thin = other.copy()
    thin[thick_axis] = 3 * other[thick_axis] + 1
    np.testing.assert_allclose(out.data[tuple(thin)], scan.data[tuple(other)], rtol=1e-4)


def test_sliding_window_equals_whole_volume():
    gen = replicating_generator(width=2, n_res=1)
    lr = torch.rand(12, 6, 13) * 255
    whole = upsample_normalised(gen, lr)
    patched = upsample_normalised(gen, lr, patch=(8, 4, 8), overlap=0.25)
    assert patched.shape == (12, 18, 13)
    torch.testing.assert_close(patched, whole, atol=1e-3, rtol=1e-5)


def test_resampling_to_isotropic_target_keeps_the_field_of_view():
    scan = _scan((10, 12, 8), [0.3, 0.3, 0.9], _rotation(10))
    out = super_resolve(scan, replicating_generator(), target_spacing=0.15)
    assert out.shape == (20, 24, 48)
    np.testing.assert_allclose(out.spacing, [0.15] * 3, atol=1e-9)
    corner = (-0.5, -0.5, -0.5)
    np.testing.assert_allclose(_world(out.affine, corner), _world(scan.affine, corner), atol=1e-9)


def _cfg(tmp_path: Path, src: Path, weights: Path):
    return OmegaConf.create({"input": str(src), "output": str(tmp_path / "sr.nii.gz"), "ckpt_path": None,
                             "weights": str(weights), "axis": None, "patch": [64, 32, 64], "overlap": 0.25,
                             "intensity": "input", "target_spacing": None, "precision": "32",
                             "model": {"generator": {"_target_": "projects.easysr.model.EasySRGenerator",
                                                     "width": 2, "n_res": 1}}})


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "G_latest_T1.pth"
    torch.save(replicating_generator(width=2, n_res=1).state_dict(), path)
    return path


@pytest.mark.parametrize("problem", ["nan", "4d", "single_slice"])
def test_bad_input_raises_data_error_and_writes_nothing(tmp_path, weights, problem):
    data = np.random.default_rng(0).random((8, 8, 6)).astype(np.float32)
    if problem == "nan":
        data[2, 3, 1] = np.nan
    elif problem == "4d":
        data = np.stack([data, data], axis=-1)
    else:
        data = data[:, :, :1]
    src = tmp_path / f"{problem}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.2, 0.2, 0.6, 1.0])), src)
    with pytest.raises(DataError, match=f"{problem}.nii.gz"):
        predict(_cfg(tmp_path, src, weights))
    assert not (tmp_path / "sr.nii.gz").exists()


def test_good_input_writes_an_overlaying_nifti(tmp_path, weights):
    scan = _scan((10, 12, 6), [0.2, 0.2, 0.6], _rotation(30))
    src = tmp_path / "scan.nii.gz"
    save_nifti(src, scan.data, scan.affine)
    cfg = _cfg(tmp_path, src, weights)
    cfg.patch = [6, 4, 6]
    out = predict(cfg)
    result = load_nifti(out)
    assert result.shape == (10, 12, 18)
    np.testing.assert_allclose(result.affine[:3, 2] * 3, scan.affine[:3, 2], atol=1e-6)
    np.testing.assert_allclose(result.data[:, :, 1::3], scan.data, rtol=1e-4)


def test_command_line_2d_input_exits_2_without_output(tmp_path, weights):
    flat = tmp_path / "slice2d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), flat)
    bad_out = tmp_path / "bad.nii.gz"
    reference_size = tmp_path / "G_reference_size.pth"  # the generator of conf/easysr/model/easysr.yaml
    torch.save(replicating_generator().state_dict(), reference_size)
    done = subprocess.run([sys.executable, "-m", "projects.easysr.predict", "-i", str(flat), "-o", str(bad_out),
                           "--ckpt", str(reference_size)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {flat}") and done.stderr.count("\n") == 1
    assert not bad_out.exists()
    # the former key=value form still works for one release, and says so
    done = subprocess.run([sys.executable, "-m", "projects.easysr.predict", f"input={flat}", f"output={bad_out}",
                           f"weights={weights}", "model.generator.width=2", "model.generator.n_res=1"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "note: the key=value form" in done.stderr and "slice2d.nii.gz" in done.stderr
    assert not bad_out.exists()


def test_generator_from_a_training_checkpoint_uses_its_own_config(tmp_path):
    from projects.easysr.predict import load_generator

    gen = EasySRGenerator(width=4, n_res=1, input_skip="linear")
    ckpt = {"state_dict": {**{f"generator.{k}": v for k, v in gen.state_dict().items()},
                           "discriminator.fc.bias": torch.zeros(1)},
            "run_config": {"model": {"generator": {"_target_": "projects.easysr.model.EasySRGenerator", "width": 4,
                                                   "n_res": 1, "input_skip": "linear", "scale": 3}}}}
    path = tmp_path / "best.ckpt"
    torch.save(ckpt, path)
    loaded = load_generator(OmegaConf.create({"ckpt_path": str(path), "weights": None, "model": {"generator": {}}}))
    assert loaded.input_skip == "linear" and not loaded.training
    torch.testing.assert_close(loaded.conv3.weight, gen.conv3.weight)
    with pytest.raises(DataError, match="do not fit"):
        torch.save({"conv3.weight": torch.zeros(1)}, tmp_path / "bad.pth")
        load_generator(OmegaConf.create({"ckpt_path": None, "weights": str(tmp_path / "bad.pth"),
                                         "model": {"generator": {"_target_": "projects.easysr.model.EasySRGenerator"}}}))


# Eval and predict of a tiny trained run: scale 2 along raw axis 2 and a fixed eval patch, none of them the code's
# or eval.yaml's defaults (scale 3, axis 1, predict's former [128, 32, 128] window).
TRAINED = ["data.scale=2", "data.axis=2", "model.eval_patch=[6,4,6]", "model.generator.width=4",
           "model.generator.n_res=1"]


def _compose(config: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from common.run import CONF_ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "easysr"), version_base="1.3"):
        return compose(config, overrides=overrides)


def _eval_outputs(cfg) -> tuple[list[torch.Tensor], list]:
    """Runs eval.py's test with `cfg`; returns the volumes its test step super-resolved and their patches."""
    from projects.easysr import module as easysr_module
    from projects.easysr.eval import evaluate_easysr

    outputs, patches = [], []
    upsample = easysr_module.upsample_normalised

    def spy(generator, lr, patch=None, *args, **kwargs):
        outputs.append(upsample(generator, lr, patch, *args, **kwargs))
        patches.append(None if patch is None else list(patch))
        return outputs[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(easysr_module, "upsample_normalised", spy)
        evaluate_easysr(cfg)
    return outputs, patches


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of a narrow `experiment=demo`; eval's output for the held-out validation volume; its thick NIfTI."""
    from common.run import train
    from common.synthetic import isotropic_volume, write_ratbrain_nifti
    from projects.easysr.ops import make_lr

    out = tmp_path_factory.mktemp("easysr_demo_run")
    raw = out / "train_data"
    write_ratbrain_nifti(raw, {f"rat{i}": isotropic_volume(i, (16, 18, 16)) for i in range(3)}, "training")
    held_out = write_ratbrain_nifti(raw, {"held": isotropic_volume(7, (16, 18, 16))}, "validation")[0]
    data = [f"data.raw_dir={raw}", f"data.cache_dir={out / 'cache'}", "logger=none", "callbacks=minimal"]
    train(_compose("train", ["experiment=demo", *data, *TRAINED, "trainer.max_epochs=1", "data.batch_size=2",
                             "data.patches_per_volume=1", "+trainer.limit_val_batches=0", "test_after_fit=false",
                             f"paths.output_dir={out / 'run'}"]))
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    outputs, patches = _eval_outputs(_compose("eval", [*data, f"ckpt_path={ckpt}", f"paths.output_dir={out}",
                                                       "inference_precision=32"]))
    source = load_nifti(held_out)  # the raw layout: made thick along axis 2 by 2, as training did
    hr = np.moveaxis(source.data.astype(np.float32), 2, 1)
    affine = source.affine[:, [0, 2, 1, 3]]
    thick = save_nifti(out / "held_thick.nii.gz", make_lr(hr, axis=1, scale=2),
                       scale_axis_affine(affine, 1, 0.5, anchor="extent"))
    return {"ckpt": ckpt, "thick": thick, "hr_affine": affine, "out": out, "eval": outputs, "patches": patches}


def _predict_checkpoint(run: dict, name: str, **given) -> Volume:
    cfg = OmegaConf.create({"input": str(run["thick"]), "output": str(run["out"] / name), "ckpt_path": str(run["ckpt"]),
                            "weights": None, "axis": None, "patch": None, "overlap": 0.25, "intensity": "normalised",
                            "target_spacing": None, "precision": "32", "model": {"generator": {}}, **given})
    return load_nifti(predict(cfg), dtype=np.float32)


def test_predict_equals_eval_with_the_checkpoints_scale_and_patch(demo_run: dict, capsys) -> None:
    assert len(demo_run["eval"]) == 1 and demo_run["patches"] == [[6, 4, 6]]  # the checkpoint's, not eval.yaml's
    expected = demo_run["eval"][0].numpy()
    predicted = _predict_checkpoint(demo_run, "sr.nii.gz")
    assert predicted.shape == expected.shape == (16, 16, 18)  # 8 thick voxels x 2 along the thick axis
    np.testing.assert_allclose(predicted.data, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(predicted.affine, demo_run["hr_affine"], atol=1e-6)  # the HR grid it came from
    assert "overrides" not in capsys.readouterr().err


def test_patch_given_overrides_the_checkpoint_and_says_so(demo_run: dict, capsys) -> None:
    whole = _predict_checkpoint(demo_run, "sr_whole.nii.gz", patch=[16, 8, 18])
    assert not np.allclose(whole.data, demo_run["eval"][0].numpy(), atol=1e-3)  # a window changes the voxels
    err = capsys.readouterr().err
    assert "note: patch [16, 8, 18] overrides the checkpoint's model.eval_patch" in err and "has [6, 4, 6])" in err
    cfg = _compose("eval", [f"data.raw_dir={demo_run['out'] / 'train_data'}", f"data.cache_dir={demo_run['out'] / 'cache'}",
                            "logger=none", "callbacks=minimal", f"ckpt_path={demo_run['ckpt']}",
                            f"paths.output_dir={demo_run['out'] / 'eval_whole'}", "eval.patch=[16,8,18]",
                            "inference_precision=32"])
    outputs, patches = _eval_outputs(cfg)
    assert patches == [[16, 8, 18]] and "note: eval.patch [16, 8, 18] overrides" in capsys.readouterr().err
    np.testing.assert_allclose(whole.data, outputs[0].numpy(), rtol=1e-5, atol=1e-4)


def test_eval_writes_the_contract_report(demo_run: dict) -> None:
    report = check_eval_report(demo_run["out"] / "eval_metrics.json")
    assert list(report["cases"]) == ["held"] and set(report["mean"]) == {"psnr", "ssim"}
    assert set(report["spline"]["held"]) == {"psnr", "ssim"} and report["protocol"]["scale"] == 2


def test_a_folder_of_two_scans_gives_a_folder_of_two_volumes(demo_run: dict, tmp_path: Path) -> None:
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).symlink_to(demo_run["thick"])
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(demo_run["ckpt"]),
                 "--precision", "32", "--intensity", "normalised"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    for name in ("a.nii.gz", "b.nii.gz"):
        np.testing.assert_allclose(load_nifti(tmp_path / "out" / name).data, demo_run["eval"][0].numpy(),
                                   rtol=1e-5, atol=1e-4)  # eval's output for that scan
