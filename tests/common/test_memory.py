"""Memory budgets of whole-volume inference: parsing, and a budget that the measured peak respects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.inference import predict_by_slices
from common.memory import high_water_of, parse_memory, resident_bytes
from common.runtime import release_memory


@pytest.mark.parametrize(("text", "expected"), [("1.7G", int(1.7 * 2**30)), ("1700m", 1700 * 2**20),
                                                ("512KiB", 512 * 2**10), ("4096", 4096), (None, None),
                                                ("none", None), (2048, 2048)])
def test_parse_memory(text: object, expected: int | None) -> None:
    assert parse_memory(text) == expected


def test_parse_memory_rejects_other_text() -> None:
    with pytest.raises(ValueError, match="1.7G"):
        parse_memory("lots")


def _budget_bounds_the_measured_peak() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 1, 1)).eval()
    volume = np.random.default_rng(0).random((96, 96, 40), dtype=np.float32)
    batches: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        batches.append(len(x))
        return net(x)[:, 0]

    full = predict_by_slices(predict, volume, axis=2, context=1, batch_size=40)
    release_memory()
    # about 5 MB of activations per slice: 40 slices need ~200 MB, the budget leaves room for far fewer
    budget = resident_bytes() + 48 * 2**20
    batches.clear()
    marks = high_water_of(lambda: predict_by_slices(predict, volume, axis=2, context=1, batch_size=40,
                                                    max_memory=budget))
    assert batches[:3] == [1, 1, 2]  # the probes (a first one unmeasured), then the chosen batch
    chosen = batches[3]
    assert 1 < chosen < 40, batches
    assert marks is not None and marks[1] <= budget, (marks[1] - budget) / 2**20
    torch.testing.assert_close(predict_by_slices(predict, volume, axis=2, context=1, batch_size=chosen), full)


def test_a_budget_bounds_the_measured_peak() -> None:
    """Runs in a fresh process: a resident-memory peak means little in a process that ran other tests first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", "import test_memory; test_memory._budget_bounds_the_measured_peak()"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
