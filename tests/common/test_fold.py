"""BatchNorm folding: the folded network computes the same outputs with fewer modules."""

from __future__ import annotations

import torch
from torch import nn

from common.fold import fold_batchnorm, fold_network


def _randomise(net: nn.Module) -> nn.Module:
    """Gives every BatchNorm statistics and affine parameters far from the identity."""
    gen = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return net.eval()


class ConvNormAct(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Mixed(nn.Module):
    """2-D, grouped, biased, transposed and 3-D pairs, a norm after a non-conv op, and a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = ConvNormAct(3, 8)
        self.b = ConvNormAct(8, 8, groups=4, bias=True)
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 4, 2, stride=2), nn.BatchNorm2d(4))
        self.pool_norm = nn.BatchNorm2d(4)  # follows a pooling: must stay
        self.vol = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.up(self.b(self.a(x)))
        z = self.pool_norm(nn.functional.avg_pool2d(y, 2))
        return {"y": y, "z": z, "v": self.vol(y[:, :1, None])}


class Escaping(nn.Module):
    """The conv output also feeds a residual sum that bypasses the norm: folding it would change the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.tail = ConvNormAct(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        return self.tail(self.norm(c) + c)


def test_folded_network_matches_and_drops_the_norms() -> None:
    net = _randomise(Mixed())
    x = torch.randn(2, 3, 16, 16)
    folded, count = fold_batchnorm(net, x)
    assert count == 4
    norms = [m for m in folded.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == [folded.pool_norm]
    other = torch.randn(3, 3, 24, 20)  # not the example the pairs were found on
    with torch.no_grad():
        expected, got = net(other), folded(other)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
    assert isinstance(net.a.norm, nn.BatchNorm2d)  # the original is untouched


def test_a_conv_output_used_elsewhere_is_not_folded() -> None:
    net = _randomise(Escaping())
    x = torch.randn(1, 4, 8, 8)
    folded, count = fold_batchnorm(net, x)
    assert count == 1 and isinstance(folded.norm, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-5)


def test_fold_network_replaces_the_wrapped_network() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _randomise(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).sum(1)

    wrapper = Wrapper().train()
    x = torch.randn(2, 1, 9, 9)
    with torch.no_grad():
        expected = wrapper.eval()(x)
    assert fold_network(wrapper.train(), x) == 1
    assert not wrapper.training and len(wrapper.net) == 2 and isinstance(wrapper.net[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), expected, rtol=0, atol=1e-5)


def test_spectrally_normalised_convolutions_are_folded_at_their_eval_weight() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(2, 4, 3, padding=1, bias=False)), nn.BatchNorm2d(4),
                        nn.LeakyReLU(0.01))
    net(torch.randn(4, 2, 8, 8))  # a training call: one power iteration moves u and v
    _randomise(net)
    x = torch.randn(2, 2, 8, 8)
    folded, count = fold_batchnorm(net, x)
    assert count == 1 and not hasattr(folded[0], "weight_orig")
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-5)
