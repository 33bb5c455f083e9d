"""Run matrix, second axis: every RSTN experiment runs `fast_dev_run` on the CPU in fp32 and in bf16 autocast.

The demo's data path (organ-free slices in the batch, so some samples have no crop box) is the one that broke
under bf16: it runs here with its own data settings, on a tiny synthetic cache.
"""

from __future__ import annotations

import math

import pytest
import torch

from common.model_card import experiments
from projects.rstn.model import RSTN


def _data(cache) -> list[str]:
    return [f"data.cache_dir={cache}", f"data.split_file={cache}/splits.json", "data.synthetic=null",
            "model.net.width=0.0625"]


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("experiment", experiments("rstn"))
def test_fast_dev_run(experiment: str, precision: str, synthetic_cache, tmp_path, fast_dev_run) -> None:
    metrics = fast_dev_run("rstn", experiment, tmp_path, _data(synthetic_cache), precision)
    losses = {k: v for k, v in metrics.items() if k.endswith("/train/loss")}
    assert losses and all(math.isfinite(v) and v >= 0 for v in losses.values()), metrics
    assert all(0 <= v <= 1 for k, v in metrics.items() if k.endswith("/val/dice"))


@pytest.mark.parametrize("mode", ["S", "I", "J"])
def test_bf16_training_pass_with_a_slice_without_box(mode: str) -> None:
    torch.manual_seed(0)
    model = RSTN(width=0.0625)
    x = torch.rand(2, 3, 48, 48)
    y = torch.zeros(2, 3, 48, 48)
    y[0, :, 20:28, 18:30] = 1  # sample 1 is organ-free: no crop box in modes S and I
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coarse, fine = model.forward_train(x, y, mode, 5, logits=True)
    assert fine.shape == x.shape and torch.isfinite(fine.float()).all()
    (coarse.float().mean() + fine.float().mean()).backward()
    assert model.fine_model.score_fr.weight.grad is not None
