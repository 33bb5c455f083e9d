"""The numpy metric functions against hand-computed values, scikit-image and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from common.metrics import functional as fm


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- image quality
def test_psnr_hand_computed_and_against_skimage(rng):
    ref = np.zeros((4, 4))
    pred = ref + 0.1  # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert fm.psnr(pred, ref, data_range=1.0) == pytest.approx(20.0, abs=1e-12)
    assert fm.psnr(pred, ref, data_range=10.0) == pytest.approx(40.0, abs=1e-12)
    a, b = rng.random((9, 11)), rng.random((9, 11))
    assert fm.psnr(a, b, 2.5) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=2.5), abs=1e-10)
    assert fm.psnr(a, a, 1.0) == math.inf


def test_psnr_rejects_bad_range_and_shapes():
    with pytest.raises(ValueError, match="data_range"):
        fm.psnr(np.ones(3), np.zeros(3), data_range=0.0)
    with pytest.raises(ValueError, match="shape"):
        fm.psnr(np.ones(3), np.zeros(4), data_range=1.0)


def test_nmse_hand_computed():
    assert fm.nmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == pytest.approx(1.0)
    assert fm.nmse(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert fm.nmse(np.zeros(3), np.zeros(3)) == 0.0
    assert fm.nmse(np.ones(3), np.zeros(3)) == math.inf


def test_ssim2d_matches_skimage_and_accepts_tensors(rng):
    ref = rng.random((20, 17))
    pred = ref + 0.2 * rng.standard_normal(ref.shape)
    expected = structural_similarity(pred, ref, data_range=1.0)
    assert fm.ssim2d(pred, ref, 1.0) == pytest.approx(expected, abs=1e-12)
    assert fm.ssim2d(torch.from_numpy(pred), torch.from_numpy(ref), 1.0) == pytest.approx(expected, abs=1e-12)
    assert fm.ssim2d(ref, ref, 1.0) == pytest.approx(1.0)
    assert fm.ssim2d(pred, ref, 1.0, win_size=5) == pytest.approx(
        structural_similarity(pred, ref, data_range=1.0, win_size=5), abs=1e-12
    )
    assert expected < 0.9  # the noise is visible: the check above compares a non-trivial value


def test_ssim2d_gaussian_is_the_wang_recipe(rng):
    ref = rng.random((24, 24))
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    expected = structural_similarity(
        pred, ref, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert fm.ssim2d(pred, ref, 1.0, gaussian=True) == pytest.approx(expected, abs=1e-12)
    assert fm.ssim2d(pred, ref, 1.0, gaussian=True) != pytest.approx(fm.ssim2d(pred, ref, 1.0), abs=1e-4)


def test_ssim2d_rejects_3d_and_small_images():
    with pytest.raises(ValueError, match="2-D"):
        fm.ssim2d(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), 1.0)
    with pytest.raises(ValueError, match="window"):
        fm.ssim2d(np.zeros((5, 9)), np.zeros((5, 9)), 1.0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_ssim_slices_is_the_mean_over_the_chosen_axis(rng, axis):
    ref = rng.random((8, 9, 10))
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    slices = [
        structural_similarity(np.take(pred, i, axis=axis), np.take(ref, i, axis=axis), data_range=1.0)
        for i in range(ref.shape[axis])
    ]
    assert fm.ssim_slices(pred, ref, 1.0, axis=axis) == pytest.approx(np.mean(slices), abs=1e-12)


def test_ssim_slices_accepts_one_range_per_slice(rng):
    ref = rng.random((4, 9, 9)) * np.arange(1, 5)[:, None, None]
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    ranges = [float(s.max() - s.min()) for s in ref]
    expected = np.mean([structural_similarity(p, r, data_range=d) for p, r, d in zip(pred, ref, ranges)])
    assert fm.ssim_slices(pred, ref, ranges, axis=0) == pytest.approx(expected, abs=1e-12)
    assert fm.ssim_slices(pred, ref, ranges, axis=0) != pytest.approx(
        fm.ssim_slices(pred, ref, 4.0), abs=1e-4
    )
    with pytest.raises(ValueError, match="3 values for 4 slices"):
        fm.ssim_slices(pred, ref, ranges[:3], axis=0)
    with pytest.raises(ValueError, match="data_range"):
        fm.ssim_slices(pred, ref, [1.0, 0.0, 1.0, 1.0], axis=0)


def test_ssim3d_matches_skimage_3d(rng):
    ref = rng.random((9, 10, 11))
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    expected = structural_similarity(pred, ref, data_range=1.0)
    assert fm.ssim3d(pred, ref, 1.0) == pytest.approx(expected, abs=1e-12)
    assert fm.ssim3d(pred, ref, 1.0) != pytest.approx(fm.ssim_slices(pred, ref, 1.0), abs=1e-4)


def test_fastmri_volume_metrics_follows_the_official_formulas(rng):
    target = (rng.random((3, 16, 16)) * 5e-4).astype(np.float32)
    recon = (target + 2e-5 * rng.standard_normal(target.shape)).astype(np.float32)
    got = fm.fastmri_volume_metrics(target, recon)
    peak = target.max()
    expected_nmse = (
        np.linalg.norm(target.astype(float) - recon) ** 2 / np.linalg.norm(target.astype(float)) ** 2
    )
    expected_psnr = peak_signal_noise_ratio(target, recon, data_range=peak)
    expected_ssim = np.mean([structural_similarity(t, r, data_range=peak) for t, r in zip(target, recon)])
    assert got["nmse"] == pytest.approx(expected_nmse, rel=1e-9)
    assert got["psnr"] == pytest.approx(expected_psnr, abs=1e-4)
    assert got["ssim"] == pytest.approx(expected_ssim, abs=1e-7)
    assert set(got) == {"nmse", "psnr", "ssim"}


# ---------------------------------------------------------------- segmentation
def test_overlap_scores_hand_computed():
    ref = np.zeros((3, 4, 5), dtype=bool)
    pred = np.zeros_like(ref)
    ref[1, 1, 1:3] = True  # 2 voxels
    pred[1, 1, 2:5] = True  # 3 voxels, 1 shared -> TP 1, FP 2, FN 1
    assert fm.confusion_counts(pred, ref) == (1, 2, 1)
    assert fm.dice(pred, ref) == pytest.approx(2 / 5)
    assert fm.iou(pred, ref) == pytest.approx(1 / 4)
    assert fm.precision(pred, ref) == pytest.approx(1 / 3)
    assert fm.recall(pred, ref) == pytest.approx(1 / 2)
    two_of_three = fm.seg_scores(np.array([1, 1, 0]), np.array([1, 0, 0]))
    assert two_of_three["dice"] == pytest.approx(2 / 3)
    assert two_of_three["recall"] == 1.0 and two_of_three["precision"] == 0.5


@pytest.mark.parametrize("empty_score", [1.0, 0.0])
def test_empty_rule(empty_score):
    empty, full = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    full[1:3, 1:3] = True
    both = fm.seg_scores(empty, empty, empty_score=empty_score)
    assert both == {
        "dice": empty_score,
        "iou": empty_score,
        "precision": empty_score,
        "recall": empty_score,
        "hd95": 0.0,
    }
    pred_empty = fm.seg_scores(empty, full, empty_score=empty_score)
    assert pred_empty == {"dice": 0.0, "iou": 0.0, "precision": empty_score, "recall": 0.0, "hd95": math.inf}
    ref_empty = fm.seg_scores(full, empty, empty_score=empty_score)
    assert ref_empty == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": empty_score, "hd95": math.inf}


def _brute_surface(mask: np.ndarray) -> list[tuple[int, ...]]:
    """Foreground voxels with at least one face neighbour outside the mask or outside the array."""
    points = []
    for index in itertools.product(*(range(n) for n in mask.shape)):
        if not mask[index]:
            continue
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                points.append(index)
                break
    return points


def _brute_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    a = np.array(_brute_surface(pred), dtype=float) * spacing
    b = np.array(_brute_surface(ref), dtype=float) * spacing
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((6, 7, 5)) > 0.6
    ref = np.roll(pred, 1, axis=1) | (rng.random(pred.shape) > 0.85)
    spacing = (2.0, 0.7, 1.3)
    assert fm.hd95(pred, ref, spacing) == pytest.approx(_brute_hd95(pred, ref, spacing), rel=1e-9)


def test_hd95_small_structures_in_a_large_array_and_on_its_border():
    rng = np.random.default_rng(5)
    pred, ref = np.zeros((14, 12, 10), bool), np.zeros((14, 12, 10), bool)
    pred[0:3, 4:7, 2:5] = rng.random((3, 3, 3)) > 0.3  # touches the array border on axis 0
    ref[5:9, 3:6, 6:10] = rng.random((4, 3, 4)) > 0.3  # touches the border on axis 2
    spacing = (1.5, 0.8, 2.2)
    assert fm.hd95(pred, ref, spacing) == pytest.approx(_brute_hd95(pred, ref, spacing), rel=1e-9)
    assert fm.hd95(pred, pred | ref, spacing) == pytest.approx(
        _brute_hd95(pred, pred | ref, spacing), rel=1e-9
    )


def test_hd95_hand_computed_with_spacing():
    pred, ref = np.zeros((8, 3, 3), bool), np.zeros((8, 3, 3), bool)
    pred[1, 1, 1], ref[4, 1, 1] = True, True  # 3 voxels apart along axis 0
    assert fm.hd95(pred, ref, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert fm.hd95(pred, ref) == pytest.approx(3.0)
    assert fm.hd95(pred, pred, spacing=(2.0, 1.0, 1.0)) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        fm.hd95(pred, ref, spacing=(1.0, 1.0))


def test_pooled_scores_sum_counts_before_dividing():
    preds = [np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0, 0, 0])]
    refs = [np.array([1, 0, 0, 0]), np.array([0, 1, 1, 1, 1, 0])]
    pooled = fm.pooled_seg_scores(preds, refs)  # TP 1, FP 2, FN 4
    assert pooled["dice"] == pytest.approx(2 / 8)
    assert pooled["iou"] == pytest.approx(1 / 7)
    assert pooled["precision"] == pytest.approx(1 / 3)
    assert pooled["recall"] == pytest.approx(1 / 5)
    per_case_mean = np.mean([fm.dice(p, r) for p, r in zip(preds, refs)])
    assert pooled["dice"] != pytest.approx(per_case_mean)
    assert fm.pooled_seg_scores([np.zeros(3)], [np.zeros(3)], empty_score=0.0)["dice"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        fm.pooled_seg_scores(preds, refs[:1])
