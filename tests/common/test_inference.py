from __future__ import annotations

import numpy as np
import pytest
import torch

from common.inference import predict_by_slices, sliding_window_3d


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_centre_channel_round_trip(axis):
    vol = np.random.default_rng(0).normal(size=(7, 5, 6)).astype(np.float32)
    out = predict_by_slices(lambda x: x[:, 2], vol, axis=axis, context=2, batch_size=3)
    np.testing.assert_array_equal(out.numpy(), vol)


def test_neighbours_are_edge_padded_or_constant():
    vol = np.arange(4, dtype=np.float32)[None, None, :].repeat(2, 0).repeat(3, 1)  # value = z index
    first = predict_by_slices(lambda x: x[:, 0], vol, axis=2, context=1)  # previous slice
    np.testing.assert_array_equal(first[0, 0].numpy(), [0, 0, 1, 2])
    padded = predict_by_slices(lambda x: x[:, 2], vol, axis=2, context=1, pad_value=-5)  # next slice
    np.testing.assert_array_equal(padded[0, 0].numpy(), [1, 2, 3, -5])


def test_channel_outputs_and_changed_size():
    vol = np.random.default_rng(1).normal(size=(4, 6, 5)).astype(np.float32)
    # two channels, width doubled (like a through-plane upsampling of the slice's last axis)
    fn = lambda x: torch.stack([x[:, 1], -x[:, 1]], 1).repeat_interleave(2, dim=-1)  # noqa: E731
    out = predict_by_slices(fn, vol, axis=0, context=1, batch_size=2)
    assert out.shape == (2, 4, 6, 10)
    np.testing.assert_allclose(out[1, :, :, ::2].numpy(), -vol)


def test_sliding_window_equals_whole_volume_with_upsampling():
    torch.manual_seed(0)
    vol = torch.randn(1, 9, 10, 11)
    fn = lambda x: (2 * x).repeat_interleave(3, dim=3)  # noqa: E731  pointwise: patching must not matter
    whole = fn(vol[None])[0]
    out = sliding_window_3d(fn, vol, patch=(4, 4, 5), overlap=0.5, scale=(1, 3, 1), batch_size=2)
    assert out.shape == whole.shape
    torch.testing.assert_close(out, whole)


def test_sliding_window_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_3d(lambda x: x, torch.zeros(1, 4, 4, 4), patch=(2, 2, 2), overlap=1.0)
