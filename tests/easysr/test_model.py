"""EasySR networks: shapes, parameter counts, reference state-dict names, discriminator heads."""

from __future__ import annotations

import pytest
import torch

import projects.easysr.model as model_module
from projects.easysr.model import EasySRGenerator, PatchDiscriminator3D, conv_trunk_shape, count_parameters

# Names and shapes of the reference checkpoints' tensors (Core-BMC/easysr G_latest_*.pth / D_latest_*.pth).
_BN = {"weight": (32,), "bias": (32,), "running_mean": (32,), "running_var": (32,), "num_batches_tracked": ()}


def _reference_generator_state() -> dict[str, tuple[int, ...]]:
    shapes = {"conv_block1.0.weight": (32, 1, 3, 3, 3), "conv_block1.0.bias": (32,)}
    for block in ("residual_block1", "residual_block2"):
        for conv in (0, 3):
            shapes[f"{block}.conv_block.{conv}.weight"] = (32, 32, 3, 3, 3)
            shapes[f"{block}.conv_block.{conv}.bias"] = (32,)
        for bn in (1, 4):
            shapes.update({f"{block}.conv_block.{bn}.{k}": s for k, s in _BN.items()})
    shapes.update({"conv_block2.0.weight": (32, 32, 3, 3, 3), "conv_block2.0.bias": (32,)})
    shapes.update({f"conv_block2.1.{k}": s for k, s in _BN.items()})
    shapes.update({"deup.deupblock.0.weight": (32, 32, 1, 3, 1), "deup.deupblock.0.bias": (32,),
                   "conv3.weight": (1, 32, 3, 3, 3), "conv3.bias": (1,)})
    return shapes


def _reference_discriminator_state() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i, (cin, cout) in enumerate([(1, 3), (3, 6), (6, 12), (12, 24)], start=1):
        shapes[f"conv{i}.0.weight"] = (cout, cin, 4, 4, 4)
        shapes[f"conv{i}.0.bias"] = (cout,)
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"conv{i}.1.{k}"] = (cout,)
        shapes[f"conv{i}.1.num_batches_tracked"] = ()
    shapes.update({"conv5.weight": (24, 24, 4, 4, 4), "conv5.bias": (24,), "fc.weight": (1, 12936), "fc.bias": (1,)})
    return shapes


def _synthetic_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(54)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * 0.05
    return state


def test_generator_parameter_count_matches_reference():
    gen = EasySRGenerator()
    assert count_parameters(gen) == 143_585
    assert len(gen.state_dict()) == 41
    buffers = sum(b.numel() for b in gen.buffers())
    assert buffers == 325


def test_discriminator_linear_parameter_count_matches_reference():
    assert count_parameters(PatchDiscriminator3D(head="linear")) == 74_344
    assert conv_trunk_shape((128, 192, 128)) == (7, 11, 7)


@pytest.mark.parametrize("shape", [(8, 5, 7), (9, 4, 10)])
def test_generator_upsamples_h_only_including_odd_sizes(shape):
    gen = EasySRGenerator().eval()
    with torch.no_grad():
        out = gen(torch.rand(2, 1, *shape) * 255)
    assert out.shape == (2, 1, shape[0], shape[1] * 3, shape[2])


@pytest.mark.parametrize("up_dim,scale", [(-3, 2), (-1, 4)])
def test_generator_other_axis_and_factor(up_dim, scale):
    gen = EasySRGenerator(width=8, n_res=1, scale=scale, up_dim=up_dim).eval()
    x = torch.rand(1, 1, 5, 6, 7)
    expected = [1, 1, 5, 6, 7]
    expected[up_dim] *= scale
    assert list(gen(x).shape) == expected


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError):
        EasySRGenerator(up_dim=1)
    with pytest.raises(ValueError):
        EasySRGenerator(scale=0)
    with pytest.raises(ValueError, match="output_layers"):
        EasySRGenerator(output_layers="fft")


def test_auto_tail_is_the_matmul_on_a_cpu_and_the_convolutions_elsewhere(monkeypatch):
    calls = []
    real = model_module.upsample_tail_matmul
    monkeypatch.setattr(model_module, "upsample_tail_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = EasySRGenerator(width=4, n_res=1)
    assert net.output_layers == "auto"
    assert net(torch.rand(1, 1, 4, 5, 6)).shape == (1, 1, 4, 15, 6) and calls == [1]
    on_meta = net.to("meta")(torch.empty(1, 1, 4, 5, 6, device="meta"))  # a device that is not a CPU, as a GPU is
    assert on_meta.shape == (1, 1, 4, 15, 6) and calls == [1]


def _max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("up_dim,scale,out_ch", [(-3, 2, 1), (-2, 3, 1), (-1, 4, 1), (-2, 3, 2)])
def test_matmul_tail_computes_the_convolutions_and_their_gradients(up_dim, scale, out_ch):
    """`output_layers="matmul"` (what "auto" takes on a CPU) is the reference's transposed conv + conv3 up to float
    rounding, at the borders too (odd sizes, every axis upsampled), for the output, the input gradient and every
    weight gradient."""
    torch.manual_seed(0)
    conv = EasySRGenerator(out_ch=out_ch, width=6, n_res=1, scale=scale, up_dim=up_dim, output_layers="conv")
    matmul = EasySRGenerator(out_ch=out_ch, width=6, n_res=1, scale=scale, up_dim=up_dim, output_layers="matmul")
    matmul.load_state_dict(conv.state_dict())
    x = torch.rand(2, 1, 5, 6, 7) * 255
    weights = None  # a fixed random weighting of the output (not zero-mean, so that no gradient is pure rounding)
    outs, grads = [], []
    for net in (conv, matmul):
        xi = x.clone().requires_grad_()
        out = net.train()(xi)
        weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(1)) if weights is None else weights
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad, net.deup.deupblock[0].weight.grad, net.deup.deupblock[0].bias.grad,
                      net.conv3.weight.grad, net.conv3.bias.grad, net.conv_block1[0].weight.grad])
    assert outs[0].shape == outs[1].shape
    assert _max_relative(outs[0], outs[1]) < 1e-5
    for expected, got in zip(*grads):
        assert _max_relative(expected, got) < 1e-4


def test_matmul_tail_with_channels_last_weights_and_under_bf16_autocast():
    torch.manual_seed(0)
    conv = EasySRGenerator(width=8, n_res=1, output_layers="conv").eval()
    matmul = EasySRGenerator(width=8, n_res=1, output_layers="matmul").eval()
    matmul.load_state_dict(conv.state_dict())
    x = torch.rand(1, 1, 6, 5, 7) * 255
    with torch.no_grad():
        expected = conv(x)
        layout = matmul.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = matmul(x)
    assert _max_relative(expected, layout) < 1e-5
    assert bf16.dtype == torch.float32  # its 27 tap maps are summed in float32
    assert _max_relative(expected, bf16.float()) < 0.05


@pytest.mark.parametrize("build,expected,probe", [
    (EasySRGenerator, _reference_generator_state, "conv3.weight"),
    (lambda: PatchDiscriminator3D(head="linear"), _reference_discriminator_state, "fc.weight"),
])
def test_reference_state_dict_loads_strict(build, expected, probe):
    net = build()
    shapes = expected()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes
    state = _synthetic_state(shapes)
    net.load_state_dict(state, strict=True)
    assert torch.equal(net.state_dict()[probe], state[probe])


def test_patch_discriminator_accepts_two_sizes():
    disc = PatchDiscriminator3D()
    small = disc(torch.rand(2, 1, 32, 48, 32))
    large = disc(torch.rand(1, 1, 48, 96, 64))
    assert small.shape == (2, 1, 1, 2, 1)
    assert large.shape == (1, 1, 2, 5, 3)
    assert small.dtype == torch.float32


def test_linear_discriminator_only_accepts_its_size():
    disc = PatchDiscriminator3D(head="linear", input_shape=(32, 48, 32))
    assert disc(torch.rand(2, 1, 32, 48, 32)).shape == (2, 1)
    with pytest.raises(ValueError, match="accepts only"):
        disc(torch.rand(1, 1, 32, 32, 32))


@pytest.mark.parametrize("skip", ["nearest", "linear"])
def test_input_skip_adds_the_interpolated_input(skip):
    gen = EasySRGenerator(width=4, n_res=1, input_skip=skip).eval()
    x = torch.rand(1, 1, 4, 5, 6) * 255
    with torch.no_grad():
        plain = gen.conv3(gen.deup(gen.conv_block2(gen.residual_block1(gen.conv_block1(x))) + gen.conv_block1(x)))
        residual = gen(x) - plain
    assert count_parameters(gen) == count_parameters(EasySRGenerator(width=4, n_res=1))
    # Each LR value reappears in the three HR voxels it covers (exactly for nearest, on average for linear).
    if skip == "nearest":
        torch.testing.assert_close(residual, x.repeat_interleave(3, dim=3), atol=1e-3, rtol=0)
    else:
        torch.testing.assert_close(residual[:, :, :, 4::3], x[:, :, :, 1:], atol=1e-3, rtol=0)
