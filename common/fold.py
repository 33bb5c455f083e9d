"""Inference-time graph simplification: BatchNorm folded into the convolution that feeds it.

In evaluation mode a BatchNorm is an affine map per channel, `y = (x - mean) / sqrt(var + eps) * gamma + beta`,
so when its input is a convolution's output it can be absorbed into that convolution's weight and bias. The
folded network computes the same function (to float rounding) with one pass over each activation fewer: on the
narrow, memory-bound convolutions of SPiN, EasySR and the fastMRI U-Nets that pass is a large part of the time.

Which BatchNorm follows which convolution is read from a real forward pass (`example`), not guessed from module
names: a pair is folded only when the BatchNorm's input is the very tensor the convolution returned, on every
call. The folded copy is checked against the original on the same example before it is returned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pairs(net: nn.Module, run: Callable[[nn.Module], Any]) -> list[tuple[str, str]]:
    """Returns (conv name, batchnorm name) pairs where the norm only ever consumed that conv's output."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (conv, output kept alive: ids stay unique)
    consumed: dict[str, set[str | None]] = {}  # norm -> the convs (None: anything else) that fed it
    calls: dict[str, int] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, _CONV + _CONV_T):
            def after(mod: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
                produced[id(out)] = (name, out)
                calls[name] = calls.get(name, 0) + 1
            handles.append(module.register_forward_hook(after))
        elif isinstance(module, _NORM):
            def before(mod: nn.Module, args: tuple, name: str = name) -> None:
                source = produced.get(id(args[0]))
                feeding = source[0] if source is not None and source[1] is args[0] else None
                consumed.setdefault(name, set()).add(feeding)
                calls[name] = calls.get(name, 0) + 1
            handles.append(module.register_forward_pre_hook(before))
    try:
        with torch.no_grad():
            run(net)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for norm, sources in consumed.items():
        conv = next(iter(sources))
        # one source, and as many conv calls as norm calls: no conv output escaped the norm on another call
        if len(sources) == 1 and conv is not None and calls[conv] == calls[norm]:
            pairs.append((conv, norm))
    return pairs


def fold_into(conv: nn.modules.conv._ConvNd, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Rescales `conv`'s weight and sets its bias so that `conv` alone computes `norm(conv(x))` (eval mode).

    Args:
        conv: a Conv{1,2,3}d, or a ConvTranspose{1,2,3}d with groups = 1.
        norm: a BatchNorm with running statistics whose `num_features` is the conv's output channels.

    Raises:
        ValueError: a grouped transposed convolution, or a norm without running statistics.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded")
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        if isinstance(conv, _CONV_T):
            if conv.groups != 1:
                raise ValueError("folding into a grouped transposed convolution is not supported")
            view = (1, -1) + (1,) * (conv.weight.dim() - 2)  # weight [in, out, k...]
        else:
            view = (-1,) + (1,) * (conv.weight.dim() - 1)  # weight [out, in / groups, k...]
        weight: torch.Tensor = conv.weight
        old_bias: torch.Tensor | None = conv.bias
        bias = old_bias.double() if old_bias is not None else torch.zeros_like(shift)
        weight.copy_((weight.double() * scale.view(view)).to(weight.dtype))
        new_bias = (bias * scale + shift).to(weight.dtype)
        if old_bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
        else:
            old_bias.copy_(new_bias)


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _folded(net: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """Returns an eval-mode copy of `net` with the given (conv, norm) pairs folded."""
    folded = copy.deepcopy(net).eval()
    for conv, norm in pairs:
        fold_into(folded.get_submodule(conv), folded.get_submodule(norm))  # type: ignore[arg-type]
        _set(folded, norm, nn.Identity())
    return folded


def _same(expected: list[torch.Tensor], net: nn.Module, call: Callable[[nn.Module], Any], tolerance: float) -> bool:
    with torch.no_grad():
        outputs = list(_tensors(call(net)))
    if not all(bool(torch.isfinite(a).all()) for a in expected):
        return False  # no check possible on overflowing outputs: keep the network as it is
    return len(outputs) == len(expected) and all(
        torch.allclose(a.float(), b.float(), rtol=0.0, atol=tolerance * max(float(a.abs().max()), 1.0))
        for a, b in zip(expected, outputs))


def _has_spectral_norm(net: nn.Module) -> bool:
    from torch.nn.utils.spectral_norm import SpectralNorm

    return any(isinstance(hook, SpectralNorm) for m in net.modules() for hook in m._forward_pre_hooks.values())


def _bake_weights(net: nn.Module) -> None:
    """Replaces weights computed at each call (spectral norm, parametrizations) by their current eval value."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm

    for module in net.modules():
        if any(isinstance(hook, SpectralNorm) for hook in module._forward_pre_hooks.values()):
            nn.utils.remove_spectral_norm(module)
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def fold_batchnorm(net: nn.Module, example: Any, run: Callable[[nn.Module], Any] | None = None,
                   tolerance: float = 1e-4) -> tuple[nn.Module, int]:
    """Returns (an eval-mode copy of `net` with every foldable BatchNorm folded, the number folded).

    Weights computed from others at each call (spectral normalisation, parametrizations) are fixed at their
    eval-mode value first. A pair whose folding changes the outputs (the conv's output also used elsewhere, e.g. by a residual sum that
    bypasses the norm) is found by folding the pairs one at a time and is left as it is.

    Args:
        net: any network; it is not modified.
        example: an input for the forward pass that finds the conv -> BatchNorm pairs (small is enough, but with
            the real channel count); the same pass checks the folded copy.
        run: calls the network on `example` (default: `net(example)`), e.g. for several inputs.
        tolerance: the largest accepted difference of any output, relative to its largest magnitude (at least 1).
    """
    call = run or (lambda module: module(example))
    if _has_spectral_norm(net):  # its weight from a training call has a graph and cannot be copied: recompute
        training = net.training
        with torch.no_grad():
            call(net.eval())
        net.train(training)
    original = copy.deepcopy(net).eval()
    with torch.no_grad():
        _bake_weights(original)
    with torch.no_grad():
        expected = list(_tensors(call(original)))
    pairs = _pairs(copy.deepcopy(original), call)
    folded = _folded(original, pairs)
    if not _same(expected, folded, call, tolerance):
        pairs = [pair for pair in pairs if _same(expected, _folded(original, [pair]), call, tolerance)]
        folded = _folded(original, pairs)
    return folded, len(pairs)


def fold_network(module: nn.Module, example: Any, attribute: str = "net", through_wrapper: bool = False) -> int:
    """Folds the BatchNorms of the network `module.<attribute>` in place for inference; returns how many.

    The network is replaced by its folded copy (`fold_batchnorm`) and `module` is put in eval mode: a
    LightningModule keeps its wrapping code (input layout, output selection) around the faster network.

    Args:
        module: a wrapper holding the network as `attribute`.
        example: an input of the network, e.g. `torch.randn(1, C, 32, 32)`; of the wrapper with `through_wrapper`.
        attribute: the wrapper's attribute holding the network.
        through_wrapper: run each candidate network through `module(example)`, for networks whose inputs the
            wrapper builds (k-space, masks).

    Raises:
        ValueError: `module` has no such network (fold a bare network with `fold_batchnorm`).
    """
    inner = getattr(module, attribute, None)
    if not isinstance(inner, nn.Module):
        raise ValueError(f"{type(module).__name__} has no network `{attribute}` to fold")
    module.eval()
    run = None
    if through_wrapper:
        def run(net: nn.Module) -> Any:
            setattr(module, attribute, net)
            return module(example)
    try:
        folded, count = fold_batchnorm(inner, example, run=run)
    finally:
        setattr(module, attribute, inner)
    setattr(module, attribute, folded)
    return count
