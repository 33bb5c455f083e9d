"""Volume testing: triplet averaging, post-processing, the stop rule, fine batching, the eval chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.rstn.inference import (
    average_triplets,
    coarse_to_fine,
    dsc,
    fine_plane,
    keep_large_components,
    predict_plane,
)
from projects.rstn.model import RSTN


def test_dsc_rule_for_empty_masks() -> None:
    a = np.zeros((4, 4, 4), bool)
    assert dsc(a, a) == 0.0
    b = a.copy()
    b[0, 0, :2] = True
    c = a.copy()
    c[0, 0, 1:3] = True
    assert dsc(b, c) == pytest.approx(0.5)


def test_keep_large_components_on_hand_made_blobs() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[1:5, 1:5, 1:5] = 1  # 64 voxels, the largest
    mask[10:14, 10:14, 10:12] = 1  # 32 voxels: exactly half, kept
    mask[16:18, 16:18, 16:18] = 1  # 8 voxels, dropped
    mask[5, 5, 5] = 1  # touches the largest by a corner only: 6-connectivity keeps it apart, dropped
    out = keep_large_components(mask)
    assert out.sum() == 64 + 32 and out[5, 5, 5] == 0 and out[16, 16, 16] == 0
    assert keep_large_components(mask, ratio=0.6).sum() == 64
    empty = np.zeros_like(mask)
    assert keep_large_components(empty).sum() == 0
    huge = np.ones_like(mask)
    huge[0, 0, 0] = 0
    assert np.array_equal(keep_large_components(huge), huge)  # >= half the volume: unchanged


def test_average_triplets_counts_three_or_two() -> None:
    n = 5
    maps = torch.zeros(3, 2, 2, n)
    for j in range(n):  # the triplet centred at j says slice j - 1 + c has value 10 * j + c
        for c in range(3):
            maps[c, :, :, j] = 10 * j + c
    out = average_triplets(maps, axis=2)
    assert out.shape == (2, 2, n)
    assert out[0, 0, 0] == pytest.approx((1 + 10) / 2)
    assert out[0, 0, 2] == pytest.approx((12 + 21 + 30) / 3)
    assert out[0, 0, 4] == pytest.approx((41 + 32) / 2)


@pytest.fixture(scope="module")
def net() -> RSTN:
    torch.manual_seed(0)
    model = RSTN(width=1 / 16, dropout=0.0).eval()
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 0.05)
    return model


def test_predict_plane_shapes(net: RSTN) -> None:
    image = np.random.default_rng(0).random((10, 12, 6), dtype=np.float32)
    for plane in "XYZ":
        prob = predict_plane(image, plane, net, batch_size=4)
        assert prob.shape == image.shape and 0 <= prob.min() and prob.max() <= 1


def test_fine_batches_match_slice_by_slice(net: RSTN) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((16, 18, 8), dtype=np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[4:9, 5:11, 2:5] = 1
    one = fine_plane(image, mask * 0.9, mask, "Z", net, margin=2, batch_size=1)
    many = fine_plane(image, mask * 0.9, mask, "Z", net, margin=2, batch_size=8)
    assert np.allclose(one, many, atol=1e-6)
    assert (one[:, :, 7] == 0).all()  # its triplet (6, 7, 7) holds no mask: not run
    assert (one[:1] == 0).all()  # outside every crop box


def test_coarse_to_fine_stop_rule(net: RSTN, monkeypatch: pytest.MonkeyPatch) -> None:
    import projects.rstn.inference as inference

    label = np.zeros((12, 12, 12), bool)
    label[3:8, 3:8, 3:8] = True
    calls = []
    sequence = [label.copy() for _ in range(10)]
    sequence[0][3:8, 3:8, 8] = True  # round 1 differs from round 0 ...
    sequence[1][3:8, 3:7, 3:8] = False  # ... round 2 from round 1, round 3 from 2; round 4 agrees with 3

    def fake_fine(image, score, mask, plane, model, margin, precision, batch_size):
        calls.append(plane)
        return sequence[len(calls) - 1].astype(np.float32)

    monkeypatch.setattr(inference, "fine_plane", fake_fine)
    coarse = {"Z": label.astype(np.float32) * 0.7}
    result = coarse_to_fine(np.zeros(label.shape, np.float32), {"Z": net}, coarse, max_rounds=10,
                            stop_inter_dsc=0.99, label=label)
    assert result.rounds == 4 and len(calls) == 4
    assert result.inter_dsc[-1] == pytest.approx(1.0) and result.inter_dsc[0] < 0.99
    assert result.dsc[0] == pytest.approx(1.0) and len(result.dsc) == 5 and result.dsc[2] < 0.5
    calls.clear()
    capped = coarse_to_fine(np.zeros(label.shape, np.float32), {"Z": net}, coarse, max_rounds=2,
                            stop_inter_dsc=0.99, label=label)
    assert capped.rounds == 2


def test_predict_keeps_the_grid_of_an_oblique_input(net: RSTN, tmp_path) -> None:
    import nibabel as nib

    from common.io.nifti import save_nifti
    from projects.rstn.predict import main

    angle = np.deg2rad(20)
    affine = np.array([[0.8 * np.cos(angle), -0.8 * np.sin(angle), 0, -30], [0.8 * np.sin(angle), 0.8 * np.cos(angle), 0, 12],
                       [0, 0, 2.5, 40], [0, 0, 0, 1]])
    hu = np.random.default_rng(0).normal(40, 30, (14, 12, 6)).astype(np.float32)
    save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    ckpt = tmp_path / "z.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "run_config": {"model": {"_target_": "projects.rstn.module.RSTNModule",
                                         "net": {"_target_": "projects.rstn.model.RSTN", "width": 0.0625},
                                         "optimizer": None, "margin": 20}}}, ckpt)
    assert main(["--input", str(tmp_path / "ct.nii.gz"), "--output", str(tmp_path / "mask.nii.gz"),
                 "--checkpoint", f"Z={ckpt}", "--max-rounds", "1"]) == 0
    out = nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == hu.shape and np.allclose(out.affine, affine, atol=1e-5)
    assert set(np.unique(np.asanyarray(out.dataobj))) <= {0, 1}
    assert main(["--input", str(tmp_path / "missing.nii.gz"), "--output", str(tmp_path / "m.nii.gz"),
                 "--checkpoint", f"Z={ckpt}"]) == 2
    assert main(["--input", str(tmp_path / "ct.nii.gz"), "--output", str(tmp_path / "m.nii.gz"),
                 "--checkpoint", f"Q={ckpt}"]) == 2
