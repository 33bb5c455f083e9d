"""SAINT networks: distance map, phase layout, parameter counts, reference state-dict names, inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.saint.model import (
    RFN,
    SAINT,
    MSRNet,
    distance_map,
    interleave,
    reference_state_dict,
    split_phases,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_distance_map_matches_the_worked_example() -> None:
    dist = distance_map(4, 1.0, 0.8)
    assert dist.shape == (4, 3, 3) and dist.dtype == np.float32
    expected_k1 = [[5.06, 5.0, 5.06], [1.28, 1.0, 1.28], [3.11, 3.0, 3.11]]
    np.testing.assert_allclose(dist[1], expected_k1, atol=0.01)
    # phase 0 sits on the centre slice: zero distance at the centre, one LR spacing (f * dz) above and below
    np.testing.assert_allclose(dist[0, :, 1], [4.0, 0.0, 4.0])


def test_distance_map_pads_phases_beyond_the_factor_with_zeros() -> None:
    dist = distance_map(4, 1.25, 0.7, n_phase=6)
    assert dist.shape == (6, 3, 3)
    assert np.all(dist[4:] == 0) and np.all(dist[:4, 0] > 0)
    with pytest.raises(ValueError):
        distance_map(7, 1.0, 1.0, n_phase=6)


def test_interleave_puts_phase_k_of_column_w_at_slice_w_times_f_plus_k() -> None:
    f, w = 3, 5
    y = torch.zeros(1, f, 2, w)
    for k in range(f):
        for col in range(w):
            y[0, k, :, col] = col * f + k
    line = interleave(y)
    assert line.shape == (1, 2, w * f)
    assert torch.equal(line[0, 0], torch.arange(w * f, dtype=torch.float32))
    assert torch.equal(split_phases(line, f), y)


def test_parameter_counts_match_the_paper() -> None:
    model = SAINT()
    assert n_params(model) == 3_158_817
    assert n_params(model.RFN) == 371_105
    assert sum(p.numel() for p in model.msr_parameters()) == 2_787_712
    assert n_params(MSRNet()) == 2_787_712 and n_params(RFN()) == 371_105


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the reference combined checkpoint, written out from the spec's tables."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def trunk(prefix: str, in_ch: int, n_rdb: int, n_layers: int, growth: int) -> None:
        conv(f"{prefix}SFENet1", in_ch, 64, 3)
        conv(f"{prefix}SFENet2", 64, 64, 3)
        for i in range(n_rdb):
            for c in range(n_layers):
                conv(f"{prefix}RDBs.{i}.convs.{c}.conv.0", 64 + growth * c, growth, 3)
            conv(f"{prefix}RDBs.{i}.LFF", 64 + growth * n_layers, 64, 1)
        conv(f"{prefix}GFF.0", 64 * n_rdb, 64, 1)
        conv(f"{prefix}GFF.1", 64, 64, 3)

    trunk("", 3, 6, 8, 32)
    for idx, (cin, cout) in zip((0, 2, 4, 6, 8), ((1, 32), (32, 64), (64, 64), (64, 64), (64, 64))):
        conv(f"GW.meta_block.{idx}", cin, cout, 3)
    trunk("RFN.", 2, 4, 6, 12)
    conv("RFN.UPNet.0", 64, 1, 3)
    return shapes


def test_reference_checkpoint_names_load_strictly() -> None:
    shapes = reference_shapes()
    assert sum(int(np.prod(s)) for s in shapes.values()) == 3_158_817
    generator = torch.Generator().manual_seed(0)
    state = {f"module.{k}": torch.randn(s, generator=generator) for k, s in shapes.items()}
    model = SAINT()
    model.load_state_dict(reference_state_dict(state), strict=True)
    assert torch.equal(model.GW.meta_block[8].weight, state["module.GW.meta_block.8.weight"])
    assert torch.equal(model.RFN.UPNet[0].bias, state["module.RFN.UPNet.0.bias"])


def tiny_saint(seed: int = 0) -> SAINT:
    torch.manual_seed(seed)
    return SAINT(g0=8, n_rdb=2, n_layers=2, growth=4, gw_hidden=(4, 8, 8, 8),
                 rfn={"g0": 8, "n_rdb": 1, "n_layers": 2, "growth": 4}).eval()


def test_msr_per_sample_kernels_match_separate_convolutions_on_odd_sizes() -> None:
    model = tiny_saint()
    lr = torch.rand(3, 3, 37, 7) * 4000
    dist = torch.stack([torch.from_numpy(distance_map(f, dz, 0.7, n_phase=6))
                        for f, dz in ((4, 1.0), (6, 0.8), (5, 2.0))])
    out = model(lr, dist)
    assert out.shape == (3, 6, 37, 7)
    for b in range(3):
        alone = model(lr[b:b + 1], dist[b:b + 1].expand(1, 6, 3, 3))
        torch.testing.assert_close(out[b], alone[0], rtol=1e-4, atol=1e-2)
    # a shared map ([1, F, 3, 3]) is the same as the map repeated per sample
    shared = model(lr, dist[:1])
    torch.testing.assert_close(shared, model(lr, dist[:1].expand(3, 6, 3, 3)), rtol=1e-4, atol=1e-2)


def test_whole_volume_inference_on_odd_sizes_matches_plane_by_plane() -> None:
    model = tiny_saint(1)
    vol = torch.rand(13, 11, 5) * 4000
    f, spacing = 3, (0.7, 0.9, 1.5)
    view_x, view_y = model.infer_views(vol, spacing, f, plane_batch=4)
    assert view_x.shape == view_y.shape == (13, 11, 15)
    one_x, one_y = model.infer_views(vol, spacing, f, plane_batch=1)
    torch.testing.assert_close(view_x, one_x, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(view_y, one_y, rtol=1e-4, atol=1e-2)
    # the last plane of constant y has a zero neighbour beyond the border; its H axis is x (spacing 0.7)
    zero = torch.zeros(13, 5)
    planes = torch.stack([vol[:, 9], vol[:, 10], zero])[None]
    dist = torch.from_numpy(distance_map(f, 1.5, 0.7))[None]
    with torch.no_grad():
        expected = interleave(model(planes, dist)).clamp(0, 4000)[0]
    torch.testing.assert_close(view_y[:, 10], expected, rtol=1e-4, atol=1e-2)
    fused = model.infer_volume(vol, spacing, f, fuse="rfn", plane_batch=4)
    assert fused.shape == (13, 11, 15) and fused.min() >= 0 and fused.max() <= 4000
    torch.testing.assert_close(model.fuse(view_x, view_y, "mean"), (view_x + view_y) / 2)


def test_rfn_predicts_a_residual_on_the_mean_of_the_views() -> None:
    rfn = RFN(g0=8, n_rdb=1, n_layers=2, growth=4)
    torch.nn.init.zeros_(rfn.UPNet[0].weight)
    torch.nn.init.zeros_(rfn.UPNet[0].bias)
    x = torch.rand(2, 2, 9, 7)
    torch.testing.assert_close(rfn(x), x.mean(1, keepdim=True))
    with pytest.raises(ValueError):
        tiny_saint().fuse(x[0], x[1], "median")


def test_linear_skip_reads_the_phase_fraction_off_the_distance_map() -> None:
    from projects.saint.model import linear_phases

    centre = torch.tensor([[[0.0, 4.0, 8.0]]])  # [B=1, H=1, W=3]
    dist = torch.from_numpy(distance_map(4, 1.0, 0.8, n_phase=6))[None]
    phases = linear_phases(centre, dist)
    assert phases.shape == (1, 6, 1, 3)
    line = interleave(phases[:, :4])[0, 0]
    torch.testing.assert_close(line, torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8]))
    # with the linear skip the network starts at the interpolation, whatever the intensity scale
    model = SAINT(g0=8, n_rdb=1, n_layers=1, growth=4, gw_hidden=(4, 4, 4, 4), intensity_scale=2.5e-4,
                  skip="linear")
    lr = torch.rand(2, 3, 5, 3) * 4000
    torch.testing.assert_close(model(lr, dist), linear_phases(lr[:, 1], dist))


def test_a_memory_budget_gives_the_same_views() -> None:
    """A budget that allows few planes per pass changes the batching, not the result."""
    from common.memory import resident_bytes

    model = tiny_saint(1)
    vol = torch.rand(13, 11, 5) * 4000
    expected = model.infer_views(vol, (0.7, 0.9, 1.5), 3, plane_batch=13)
    budgeted = model.infer_views(vol, (0.7, 0.9, 1.5), 3, plane_batch=13, max_memory=resident_bytes())
    for a, b in zip(budgeted, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-2)
