"""Compiled whole-volume inference: one batch shape for every pass, the same predictions as the eager network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.compiled import FixedBatch, maybe_compiled
from common.inference import predict_by_slices


class Recording:
    """A `FixedBatch` stand-in without the compile: records the batch sizes each path sees."""

    fixed_batch = True

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.sizes, self.eager_sizes = net, [], []

    def eager(self, batch: torch.Tensor) -> torch.Tensor:
        self.eager_sizes.append(len(batch))
        return self.net(batch)[:, 0]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        return self.net(batch)[:, 0]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 1, 3, padding=1)).eval()


def test_every_pass_has_the_full_batch_and_the_padding_is_dropped() -> None:
    net = _net()
    volume = np.random.default_rng(0).normal(size=(9, 10, 11)).astype(np.float32)
    expected = predict_by_slices(lambda x: net(x)[:, 0], volume, axis=2, context=1, batch_size=4)
    fn = Recording(net)
    got = predict_by_slices(fn, volume, axis=2, context=1, batch_size=4)
    assert fn.sizes == [4, 4, 4]  # 11 slices: the last pass of 3 padded to 4
    torch.testing.assert_close(got, expected)


def test_a_volume_shorter_than_the_batch_is_one_pass_of_its_own_size() -> None:
    fn = Recording(_net())
    predict_by_slices(fn, np.zeros((6, 6, 3), np.float32), axis=2, context=1, batch_size=8)
    assert fn.sizes == [3]


def test_the_memory_budget_probes_run_the_eager_function(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.memory

    peaks = iter([10_000, 20_000])  # 1 slice, then 2 slices: 10 kB per slice

    def fake_peak(call):
        call()
        return next(peaks)

    monkeypatch.setattr(common.memory, "peak_bytes_of", fake_peak)  # the same on every platform
    monkeypatch.setattr(common.memory, "resident_bytes", lambda: 0)
    fn = Recording(_net())
    # 0.75 x 50 kB, less the 12 slices' 256-byte results held to the end, leaves room for 3 slices of 10 kB
    predict_by_slices(fn, np.zeros((8, 8, 12), np.float32), axis=2, context=1, batch_size=8, max_memory=50_000)
    assert fn.eager_sizes == [1, 1, 2]  # the probes, never the compiled graph
    assert fn.sizes == [3, 3, 3, 3]  # one shape for the compiled passes, from the budget


def test_maybe_compiled_leaves_the_function_alone_when_off() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return x

    assert maybe_compiled(fn, False) is fn
    assert isinstance(maybe_compiled(fn, True), FixedBatch)


@pytest.mark.slow
def test_a_compiled_network_gives_the_eager_predictions_with_one_graph() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = _net()
    volume = np.random.default_rng(1).normal(size=(12, 10, 7)).astype(np.float32)
    expected = predict_by_slices(lambda x: net(x)[:, 0], volume, axis=2, context=1, batch_size=3)
    with torch.no_grad():
        got = predict_by_slices(FixedBatch(lambda x: net(x)[:, 0]), volume, axis=2, context=1, batch_size=3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # 7 slices in passes of 3, 3 and 1 padded to 3
