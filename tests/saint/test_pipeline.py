"""Configs compose; demo and paper experiments run a fast_dev_run; evaluation protocol; eval and predict CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.io.cache import VolumeCache
from common.io.nifti import load_nifti, save_nifti, scale_axis_affine
from common.run import CONF_ROOT, train
from projects.saint.evaluation import interpolate_z, psnr_saint, ssim_saint, weighted_mean
from projects.saint.fusion import SOURCE_FILE, build_fusion_inputs
from projects.saint.model import SAINT
from projects.saint.module import SaintModule, masked_l1
from tests.contract import check_waits_for_the_prepare_lock

TINY_NET = {"g0": 8, "n_rdb": 1, "n_layers": 2, "growth": 4, "gw_hidden": [4, 8, 8, 8],
            "rfn": {"g0": 8, "n_rdb": 1, "n_layers": 2, "growth": 4}}
EXPERIMENTS = sorted(p.stem for p in (CONF_ROOT / "saint" / "experiment").glob("*.yaml"))


def compose_saint(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_ROOT / "saint"), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment: str) -> None:
    cfg = compose_saint("train", [f"experiment={experiment}"])
    assert cfg.experiment_name == experiment
    assert cfg.model.stage in ("msr", "rfn")
    if cfg.model.stage == "rfn":
        assert cfg.data._target_.endswith("FusionDataModule") and cfg.model.msr_ckpt
    OmegaConf.to_container(cfg.model, resolve=True)
    assert {"msd_msr", "msd_rfn", "demo", "demo_rfn"} <= set(EXPERIMENTS)


def test_paper_experiments_keep_the_paper_network() -> None:
    cfg = compose_saint("train", ["experiment=msd_msr"])
    net = OmegaConf.to_container(cfg.model.net)
    assert (net["g0"], net["n_rdb"], net["n_layers"], net["growth"], net["skip"]) == (64, 6, 8, 32, "none")
    assert cfg.model.optimizer.lr == 1e-4 and list(cfg.data.factors) == [4, 6] and cfg.data.patch_lr == 10
    assert dict(cfg.reference_params) == {"msr": 2_787_712, "rfn": 371_105}
    module = SaintModule(**{k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in ("_target_", "init_weights")})
    assert module.network_parameter_counts() == {"msr": 2_787_712, "rfn": 371_105}
    assert module.count_parameters()["net"] == 2_787_712  # stage 1 trains the MSR only
    rfn_cfg = compose_saint("train", ["experiment=msd_rfn", "model.msr_ckpt=unused.ckpt"])
    stage2 = SaintModule(**{k: v for k, v in OmegaConf.to_container(rfn_cfg.model).items() if k not in ("_target_", "init_weights")})
    assert stage2.count_parameters()["net"] == 371_105  # stage 2 trains the RFN only


def run_fdr(experiment: str, cache_dir: Path, out: Path, extra: list[str] = ()) -> dict:
    cfg = compose_saint("train", [f"experiment={experiment}", "debug=fdr", f"data.cache_dir={cache_dir}",
                                  f"paths.output_dir={out}", "logger=none", "callbacks=minimal",
                                  "data.num_workers=0", "data.batch_size=2", *extra])
    return train(cfg)


def tiny_checkpoint(path: Path, stage: str = "rfn", seed: int = 0) -> Path:
    """A Lightning-style checkpoint of a tiny SAINT with its run config."""
    torch.manual_seed(seed)
    net = SAINT(**TINY_NET)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "run_config": {"model": {"net": {"_target_": "projects.saint.model.SAINT", **TINY_NET},
                                         "stage": stage}}}, path)
    return path


def test_paper_stage2_fast_dev_run_trains_the_rfn_on_stage1_views(cache_dir: Path, tmp_path: Path) -> None:
    stage1 = tiny_checkpoint(tmp_path / "stage1.ckpt", stage="msr")
    net_overrides = [f"model.net.{k}={v}" for k, v in TINY_NET.items() if k != "rfn"]
    net_overrides = [o.replace("'", "") for o in net_overrides] + [
        f"model.net.rfn.{k}={v}" for k, v in TINY_NET["rfn"].items()]
    metrics = run_fdr("msd_rfn", cache_dir, tmp_path / "rfn",
                      [f"model.msr_ckpt={stage1}", f"data.stage1_dir={tmp_path / 'stage1'}", "data.patch=8",
                       *net_overrides])
    assert np.isfinite(metrics["train/loss"]) and "val/psnr" in metrics
    assert len(list((tmp_path / "stage1").glob("*_x4.npy"))) == 5  # 4 training + 1 validation case
    stack = np.load(tmp_path / "stage1" / "liver_2_x6.npy")  # [Z', 3, X, Y]: view x, view y, HR
    hr = np.asarray(VolumeCache(cache_dir).load("liver_2", "image"))[:, :, 28 % 6:]
    assert stack.shape == (24, 3, 20, 18) and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack[:, 2], hr.transpose(2, 0, 1))


def test_masked_l1_ignores_padded_phases() -> None:
    target = torch.rand(2, 6, 4, 3)
    pred = target.clone()
    pred[:, 4:] += 100.0
    mask = torch.zeros_like(target)
    mask[:, :4] = 1
    assert masked_l1(pred, target, mask) == 0
    pred[:, :4] += 2.0
    torch.testing.assert_close(masked_l1(pred, target, mask), torch.tensor(2.0))


def test_psnr_protocol_on_a_hand_computed_case() -> None:
    hr = np.full((8, 8, 8), 2000.0)
    sr = hr.copy()
    sr[2:6, 2:6] += 400.0  # the central crop: error 400 / 4000 = 0.1 -> PSNR 20 dB
    sr[:, :, ::4] = 0.0  # observed slices are not scored
    sr[0] = 4000.0  # outside the central crop
    assert psnr_saint(sr, hr, 4) == 20.0
    sr[2:6, 2:6, 1] += 5000.0  # clipped at 4000 first: error 2000 / 4000 on one of 6 slices
    expected = 10 * np.log10(1 / ((5 * 0.01 + 0.25) / 6))
    assert psnr_saint(sr, hr, 4, decimals=None) == pytest.approx(expected)
    assert psnr_saint(sr, hr, 4) == round(expected, 2)
    assert ssim_saint(hr, hr, 4) == pytest.approx(1.0)
    assert weighted_mean([30.0, 40.0], [100, 300]) == pytest.approx(37.5)


def test_interpolation_baselines_along_z() -> None:
    z = np.arange(5, dtype=np.float32)
    lr = np.broadcast_to(100 + 10 * z**3, (3, 2, 5)).copy()
    cubic = interpolate_z(lr, 4, "cubic")
    assert cubic.shape == (3, 2, 20)
    fine = np.arange(17) / 4
    np.testing.assert_allclose(cubic[0, 0, :17], 100 + 10 * fine**3, rtol=1e-4)
    np.testing.assert_allclose(cubic[0, 0, 17:], cubic[0, 0, 16])  # beyond the last slice: its value
    linear = interpolate_z(lr, 4, "linear")
    np.testing.assert_allclose(linear[0, 0, 5], 0.75 * lr[0, 0, 1] + 0.25 * lr[0, 0, 2])


def test_eval_prints_saint_beside_cubic_and_linear(cache_dir: Path, tmp_path: Path, capsys) -> None:
    from projects.saint.eval import evaluate

    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt", stage="msr")
    cfg = compose_saint("eval", [f"ckpt_path={ckpt}", f"data.cache_dir={cache_dir}", "factor=6",
                                 f"paths.output_dir={tmp_path / 'eval'}", "max_cases=1"])
    rows = {r["method"]: r for r in evaluate(cfg)}
    assert torch.is_grad_enabled()  # evaluation turns gradients off for its own scope only
    assert "SAINT rfn fusion" not in rows  # stage-1 checkpoint: untrained RFN
    assert {"SAINT mean fusion", "cubic along z", "linear along z", "SAINT view x (MSR)"} <= set(rows)
    assert all(0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 for r in rows.values())
    assert "cubic along z" in capsys.readouterr().out
    assert (tmp_path / "eval" / "eval_x6.json").exists()


@pytest.mark.parametrize("slice_axis", [2, 0])
def test_predict_overlays_an_oblique_input(tmp_path: Path, slice_axis: int) -> None:
    from projects.saint.predict import predict_file

    rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]])
    columns = np.diag([0.8, 0.7, 3.0])
    if slice_axis == 0:  # array axis 0 is the axial axis
        columns = columns[:, [2, 0, 1]]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ columns
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    shape = [11, 9, 5] if slice_axis == 2 else [5, 11, 9]
    hu = np.random.default_rng(0).uniform(-1000, 1000, shape).astype(np.float32)
    src = save_nifti(tmp_path / "thick.nii.gz", hu, affine)
    out = predict_file(src, tmp_path / "thin.nii.gz", tiny_checkpoint(tmp_path / "tiny.ckpt"), factor=3)
    thin = load_nifti(out, dtype=np.float32)
    expected_shape = list(shape)
    expected_shape[slice_axis] *= 3
    assert list(thin.shape) == expected_shape
    np.testing.assert_allclose(thin.affine, scale_axis_affine(affine, slice_axis, 3, anchor="first"), atol=1e-4)
    first, third = np.zeros(3), np.zeros(3)
    third[slice_axis] = 2
    thin_index = third * 3
    np.testing.assert_allclose(thin.affine @ [*thin_index, 1], affine @ [*third, 1], atol=1e-4)
    np.testing.assert_allclose(thin.affine @ [*first, 1], affine @ [*first, 1], atol=1e-4)
    assert thin.data.min() >= -1024 and thin.data.max() <= 2976


def test_stage1_views_are_built_in_the_given_precision_and_rebuilt_when_it_changes(cache_dir: Path,
                                                                                     tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SAINT(**TINY_NET)
    cache, source = VolumeCache(cache_dir), {"msr_ckpt": "weights.ckpt", "size": 1, "mtime_ns": 1}
    out = tmp_path / "stage1"
    views = {}
    for precision in ("bf16", "32", "32"):
        files = build_fusion_inputs(net, cache, ["liver_2"], [4], out, source, precision=precision)
        assert json.loads((out / SOURCE_FILE).read_text())["precision"] == precision
        views.setdefault(precision, []).append((np.load(files[0]), files[0].stat().st_mtime_ns))
    (bf16, _), ((fp32, built), (again, kept)) = views["bf16"][0], views["32"]
    assert kept == built and np.array_equal(again, fp32)  # unchanged source and precision: not rebuilt
    assert not np.array_equal(bf16[:, :2], fp32[:, :2])  # the MSR's views differ by bf16 rounding ...
    np.testing.assert_allclose(bf16[:, :2].astype(float), fp32[:, :2].astype(float), atol=0.02 * fp32.max())
    np.testing.assert_array_equal(bf16[:, 2], fp32[:, 2])  # ... the HR reference does not


def test_stage1_views_wait_for_another_writer_of_their_folder(cache_dir: Path, tmp_path: Path) -> None:
    """Two nodes on one shared file system (or two jobs of a sweep) build stage 2's inputs in turn."""
    net, out = SAINT(**TINY_NET), tmp_path / "stage1"
    source = {"msr_ckpt": "weights.ckpt", "size": 1, "mtime_ns": 1}
    check_waits_for_the_prepare_lock(
        out, lambda: build_fusion_inputs(net, VolumeCache(cache_dir), ["liver_2"], [4], out, source), out / SOURCE_FILE)
