"""Per-case torchmetrics classes: agreement with the numpy functions, deduplication, real DDP sync."""

from __future__ import annotations

import importlib
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from skimage.metrics import structural_similarity

from common.metrics import functional as fm
from common.metrics.volume import (
    ReconstructionVolumeMetric,
    SegmentationVolumeMetric,
    case_key,
    ssim_uniform,
)


def _recon_cases(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two small magnitude volumes [S, H, W] with their noisy reconstructions (float32)."""
    rng = np.random.default_rng(seed)
    cases = {}
    for name, slices in (("file_a", 4), ("file_b", 3)):
        target = (rng.random((slices, 12, 14)) * 3e-4).astype(np.float32)
        recon = (target + 3e-5 * rng.standard_normal(target.shape)).astype(np.float32)
        cases[name] = (target, recon)
    return cases


def _seg_cases(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three small 3-D (pred, ref) mask pairs, one of them with both masks empty."""
    rng = np.random.default_rng(seed)
    ref = rng.random((5, 8, 8)) > 0.7
    pred = np.roll(ref, 1, axis=2) | (rng.random(ref.shape) > 0.9)
    ref2 = rng.random((3, 8, 8)) > 0.5
    pred2 = ref2 & (rng.random(ref2.shape) > 0.3)
    empty = np.zeros((2, 8, 8), bool)
    return {"case_1": (pred, ref), "case_2": (pred2, ref2), "case_empty": (empty, empty)}


def _feed_recon(metric, cases, order):
    for name, index in order:
        target, recon = cases[name]
        metric.update(
            torch.from_numpy(recon[index][None]),
            torch.from_numpy(target[index][None]),
            [name],
            torch.tensor([index]),
            data_range=torch.tensor([float(target.max())]),
        )


def _all_slices(cases) -> list[tuple[str, int]]:
    return [(name, i) for name, (vol, _) in cases.items() for i in range(vol.shape[0])]


def test_case_key_is_stable_int64():
    assert case_key("file1000000.h5") == case_key("file1000000.h5")
    assert case_key("a") != case_key("b")
    assert -(2**63) <= case_key("x" * 500) < 2**63


def test_ssim_uniform_matches_skimage():
    rng = np.random.default_rng(3)
    ref = rng.random((3, 15, 18))
    pred = ref + 0.2 * rng.standard_normal(ref.shape)
    ranges = torch.tensor([1.0, 2.0, 0.5])
    got = ssim_uniform(torch.from_numpy(pred), torch.from_numpy(ref), ranges)
    expected = [structural_similarity(p, r, data_range=float(d)) for p, r, d in zip(pred, ref, ranges)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    assert len(set(np.round(expected, 6))) == 3  # the data_range of each sample is used


def test_reconstruction_metric_equals_functional_in_shuffled_order():
    cases = _recon_cases()
    order = _all_slices(cases)
    np.random.default_rng(7).shuffle(order)
    metric = ReconstructionVolumeMetric()
    _feed_recon(metric, cases, order)
    per_case = metric.compute_per_case()
    assert set(per_case) == set(cases)
    expected = {name: fm.fastmri_volume_metrics(t, r) for name, (t, r) in cases.items()}
    for name in cases:
        for key in ("nmse", "psnr", "ssim"):
            assert per_case[name][key] == pytest.approx(expected[name][key], rel=1e-6, abs=1e-6)
    means = metric.compute()
    for key in ("nmse", "psnr", "ssim"):
        assert float(means[key]) == pytest.approx(np.mean([e[key] for e in expected.values()]), rel=1e-6)


def test_reconstruction_psnr_peak_given_reference_max_or_reference_range():
    target = np.full((2, 8, 8), 0.5, np.float32)
    target[1, 0, 0] = 2.0  # the volume max lives in slice 1 only
    target[0, 0, 0] = -2.0  # the volume min in slice 0: range 4
    recon = target + 0.1  # MSE 0.01
    given, from_ref = ReconstructionVolumeMetric(), ReconstructionVolumeMetric(psnr_range="ref_max")
    from_range = ReconstructionVolumeMetric(psnr_range="ref_range")
    for metric in (given, from_ref, from_range):
        for i in range(2):
            metric.update(
                torch.from_numpy(recon[i : i + 1]),
                torch.from_numpy(target[i : i + 1]),
                ["v"],
                [i],
                data_range=1.0,
            )
    assert float(given.compute()["psnr"]) == pytest.approx(20.0, abs=1e-5)
    assert float(from_ref.compute()["psnr"]) == pytest.approx(20 * math.log10(2.0) + 20.0, abs=1e-5)
    assert float(from_range.compute()["psnr"]) == pytest.approx(20 * math.log10(4.0) + 20.0, abs=1e-5)
    with pytest.raises(ValueError, match="psnr_range"):
        ReconstructionVolumeMetric(psnr_range="volume")


def test_segmentation_metric_equals_functional_per_case_and_handles_empty():
    cases = _seg_cases()
    order = [(name, i) for name, (pred, _) in cases.items() for i in range(pred.shape[0])]
    np.random.default_rng(1).shuffle(order)
    for empty_score in (1.0, 0.0):
        metric = SegmentationVolumeMetric(empty_score=empty_score)
        for name, i in order:
            pred, ref = cases[name]
            metric.update(torch.from_numpy(pred[i][None]), torch.from_numpy(ref[i][None]), [name], [i])
        per_case = metric.compute_per_case()
        for name, (pred, ref) in cases.items():
            expected = fm.seg_scores(pred, ref, empty_score=empty_score)
            for key in ("dice", "iou", "precision", "recall"):
                assert per_case[name][key] == pytest.approx(expected[key], abs=1e-12)
        assert per_case["case_empty"]["dice"] == empty_score
        assert float(metric.compute()["dice"]) == pytest.approx(
            np.mean([v["dice"] for v in per_case.values()])
        )


def test_segmentation_thresholds_probabilities_and_logits():
    ref = torch.tensor([[[1, 1, 0, 0]]])
    probs = torch.tensor([[[0.9, 0.4, 0.6, 0.1]]])
    logits = torch.logit(probs)
    by_prob, by_logit = SegmentationVolumeMetric(), SegmentationVolumeMetric(from_logits=True)
    by_prob.update(probs, ref, ["c"], [0])
    by_logit.update(logits, ref, ["c"], [0])
    for metric in (by_prob, by_logit):  # pred {0, 2}: TP 1, FP 1, FN 1
        assert float(metric.compute()["dice"]) == pytest.approx(0.5)
    strict = SegmentationVolumeMetric(threshold=0.95)
    strict.update(probs, ref, ["c"], [0])
    assert float(strict.compute()["recall"]) == 0.0


def test_duplicate_slices_are_counted_once():
    cases = _recon_cases()
    once, twice = ReconstructionVolumeMetric(), ReconstructionVolumeMetric()
    slices = _all_slices(cases)
    _feed_recon(once, cases, slices)
    _feed_recon(twice, cases, slices + [("file_a", 2), ("file_b", 0), ("file_a", 2)])
    for key, value in once.compute().items():
        assert float(twice.compute()[key]) == pytest.approx(float(value), abs=1e-12)
    skewed = ReconstructionVolumeMetric()  # control: a biased set of slices does change the result
    _feed_recon(skewed, cases, slices + [("file_a", 2)])
    skewed.case_key.append(torch.tensor([case_key("file_a")]))
    skewed.slice_index.append(torch.tensor([99]))
    skewed.stats.append(skewed.stats[0].clone())
    assert float(skewed.compute()["ssim"]) != pytest.approx(float(once.compute()["ssim"]), abs=1e-9)


def test_update_validates_and_reset_clears():
    metric = ReconstructionVolumeMetric()
    with pytest.raises(ValueError, match="do not agree"):
        metric.update(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), ["a"], [0, 1], data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        metric.update(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), ["a"], [0])
    _feed_recon(metric, _recon_cases(), [("file_a", 0)])
    assert metric.compute_per_case()
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute_per_case() == {}
        assert math.isnan(float(metric.compute()["psnr"]))


def test_forward_returns_the_batch_value_and_accumulates():
    cases = _recon_cases()
    metric = ReconstructionVolumeMetric()
    target, recon = cases["file_a"]
    batch = metric(
        torch.from_numpy(recon[:2]), torch.from_numpy(target[:2]), ["file_a"] * 2, [0, 1], data_range=1.0
    )
    expected = fm.fastmri_volume_metrics(target[:2], recon[:2])
    assert float(batch["nmse"]) == pytest.approx(expected["nmse"], rel=1e-9)
    metric(torch.from_numpy(recon[2:]), torch.from_numpy(target[2:]), ["file_a"] * 2, [2, 3], data_range=1.0)
    assert float(metric.compute()["nmse"]) == pytest.approx(fm.nmse(recon, target), rel=1e-9)
    with pytest.raises(ValueError, match="images"):
        metric.update(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), ["x"], [0], data_range=1.0)


# ---------------------------------------------------------------- real 2-process DDP (gloo)
def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        cases = _recon_cases()
        slices = _all_slices(cases)
        # rank 0: slices 0..3, rank 1: slices 3..6; slice 3 is seen by both (padded sampler)
        shard = slices[:4] if rank == 0 else slices[3:]
        overlap = ReconstructionVolumeMetric()
        _feed_recon(overlap, cases, shard)
        lonely = ReconstructionVolumeMetric()  # rank 1 never updates this one
        if rank == 0:
            _feed_recon(lonely, cases, slices)
        result = {
            "overlap": {k: float(v) for k, v in overlap.compute().items()},
            "overlap_cases": overlap.compute_per_case(),
            "lonely": {k: float(v) for k, v in lonely.compute().items()},
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_sync_equals_single_process(tmp_path, monkeypatch):
    # Spawned children import the worker by module name: make this file importable as a module.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    module = importlib.import_module(Path(__file__).stem)
    mp.spawn(module._ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = ReconstructionVolumeMetric()
    cases = _recon_cases()
    _feed_recon(single, cases, _all_slices(cases))
    expected = {k: float(v) for k, v in single.compute().items()}
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["overlap"] == pytest.approx(expected, rel=1e-12)
        assert result["lonely"] == pytest.approx(expected, rel=1e-12)
        assert set(result["overlap_cases"]) == {"file_a", "file_b"}
