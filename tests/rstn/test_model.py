"""RSTN networks: sizes, parameter counts, state-dict names, crop box, mode wiring, loss."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from projects.rstn.model import (
    RSTN,
    UNCROP_FILL,
    FCN8s,
    SaliencyTransform,
    bilinear_kernel,
    count_parameters,
    crop_box,
    crop_boxes,
    load_vgg16,
    rstn_loss,
    sample_margins,
    soft_dice_loss,
    stage_losses,
)


@pytest.fixture(scope="module")
def small() -> RSTN:
    torch.manual_seed(0)
    return RSTN(width=1 / 16).eval()


def test_paper_parameter_count_and_names() -> None:
    with torch.device("meta"):  # counts only: no memory, no forward at full size
        net = RSTN(width=1.0)
    assert count_parameters(net) == 268_555_786
    assert count_parameters(net.coarse_model) == 134_277_737
    assert count_parameters(net, trainable_only=True) == 268_555_786 - 2 * 2_592
    assert count_parameters(net.saliency1) == 84 and count_parameters(net.saliency2) == 228
    names = set(net.state_dict())
    for prefix in ("coarse_model", "fine_model"):
        for layer in ("conv1_1", "conv5_3", "fc6", "fc7", "score_fr", "score_pool3", "score_pool4"):
            assert f"{prefix}.{layer}.weight" in names and f"{prefix}.{layer}.bias" in names
        for layer in ("upscore2", "upscore_pool4", "upscore8"):
            assert f"{prefix}.{layer}.weight" in names and f"{prefix}.{layer}.bias" not in names
    assert net.coarse_model.fc6.weight.shape == (4096, 512, 7, 7)
    assert len(names) == 82


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 64), (65, 31), (101, 3)])
def test_fcn8s_output_matches_odd_inputs(shape: tuple[int, int]) -> None:
    net = FCN8s(width=1 / 16).eval()
    out = net(torch.rand(2, 3, *shape))
    assert out.shape == (2, 3, *shape)


def test_score_layers_run_in_fp32_under_bf16_autocast() -> None:
    net = FCN8s(width=1 / 16)
    dtypes = {}
    for name in ("score_fr", "score_pool3", "score_pool4", "fc7"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(1, 3, 40, 40))
    out.float().sum().backward()
    assert dtypes == {"fc7": torch.bfloat16, "score_fr": torch.float32, "score_pool3": torch.float32,
                      "score_pool4": torch.float32}
    assert net.score_fr.weight.grad is not None and net.score_fr.weight.grad.dtype == torch.float32


def test_paper_width_score_layer_bf16_backward_survives() -> None:
    """The paper's score_fr (4096 -> 3, 1x1): its bf16 weight gradient aborted the process on AMX CPUs."""
    code = (
        "import torch\n"
        "from projects.rstn.model import score_in_fp32\n"
        "conv = torch.nn.Conv2d(4096, 3, 1)\n"
        "h = torch.rand(1, 4096, 9, 9, requires_grad=True)\n"
        "for _ in range(4):\n"
        "    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "        out = score_in_fp32(conv, torch.relu(h).bfloat16())\n"
        "    out.sum().backward()\n"
        "print(float(conv.weight.grad.abs().sum()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) > 0


def test_fcn8s_is_trainable_and_score_layers_start_at_zero() -> None:
    net = FCN8s(width=1 / 16)
    assert torch.count_nonzero(net.score_fr.weight) == 0
    assert not net.upscore8.weight.requires_grad
    out = net(torch.rand(1, 3, 20, 20))
    assert torch.allclose(out, torch.zeros_like(out))  # zero scores: probabilities start at 0.5
    out.sum().backward()
    assert net.score_pool3.weight.grad.abs().sum() > 0


def test_bilinear_kernel_is_the_separable_ramp() -> None:
    k = bilinear_kernel(4)
    assert torch.allclose(torch.from_numpy(k[0]), torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert k.shape == (4, 4) and abs(bilinear_kernel(16).sum() - 64.0) < 1e-4


def test_saliency_module_shape_and_reference_init() -> None:
    module = SaliencyTransform(3)
    out = module(torch.rand(2, 3, 9, 11))
    assert out.shape == (2, 3, 9, 11)
    # saliency2 starts at W = 0, bias (1, 1.5, 2): the image is scaled channel-wise
    assert torch.allclose(out[:, 1], torch.full((2, 9, 11), 1.5))
    caffe = SaliencyTransform(3, init="caffe")
    assert torch.count_nonzero(caffe.saliency2.weight) > 0


def test_crop_box_margins_clipping_and_empty_mask() -> None:
    mask = torch.zeros(1, 3, 50, 40, dtype=torch.bool)
    assert crop_box(mask, 20) == (0, 50, 0, 40)
    mask[0, 1, 10:15, 20:22] = True
    mask[0, 2, 16, 25] = True  # boxes cover every channel
    assert crop_box(mask, 0) == (10, 17, 20, 26)
    assert crop_box(mask, 20) == (0, 37, 0, 40)
    assert crop_box(mask, (1, 2, 3, 4)) == (9, 19, 17, 30)


@pytest.mark.parametrize("margin", [0, 3, (1, 2, 3, 4), 40])
def test_crop_boxes_of_a_batch_equal_each_samples_crop_box(margin: int | tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(3)
    mask = torch.rand(6, 3, 23, 17, generator=generator) > 0.985  # scattered pixels, some channels empty
    mask[2] = False  # an empty sample: the whole image
    mask[4] = False
    mask[4, 0, 22, 16] = True  # a single pixel in the last row and column
    expected = [crop_box(mask[n:n + 1], margin) for n in range(mask.shape[0])]
    assert crop_boxes(mask, margin) == expected
    assert expected[2] == (0, 23, 0, 17)
    assert len(set(expected)) > 2 or margin == 40  # 40 clips every box to the whole image


def test_fine_crops_follow_a_channels_last_network() -> None:
    """A channels-last RSTN gets its fine crops channels-last, with the same fine output as before."""
    torch.manual_seed(2)
    plain = RSTN(width=1 / 16).eval()
    fast = RSTN(width=1 / 16).eval()
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    seen = _spy_fine(fast)
    x = torch.rand(2, 3, 30, 26)
    mask = torch.zeros(2, 3, 30, 26, dtype=torch.bool)
    mask[0, :, 3:9, 4:8] = True
    mask[1, 1, 15:25, 10:20] = True
    score = torch.rand(2, 3, 30, 26)
    with torch.no_grad():
        expected = plain.forward_fine(x, score, mask, 2)
        got = fast.forward_fine(x.contiguous(memory_format=torch.channels_last), score, mask, 2)
    crop = seen[-1]
    assert crop.is_contiguous(memory_format=torch.channels_last) and not crop.is_contiguous()
    assert torch.allclose(got, expected, atol=1e-5)


def test_sample_margins_jitter() -> None:
    g = torch.Generator().manual_seed(1)
    draws = [sample_margins(20, 0.5, g) for _ in range(400)]
    fixed = sum(d == (20, 20, 20, 20) for d in draws)
    assert 150 < fixed < 250
    assert all(0 <= v <= 40 for d in draws for v in d)
    assert len({d for d in draws}) > 50
    assert all(sample_margins(20, 0.0, g) == (20,) * 4 for _ in range(10))


def _spy_fine(net: RSTN) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    net.fine_model.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    return seen


def test_modes_wire_the_fine_input(small: RSTN) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 40, 40)
    y = torch.zeros(1, 3, 40, 40)
    y[:, :, 10:14, 12:20] = 1
    seen = _spy_fine(small)
    _, p_s = small.forward_train(x, y, "S", 2)
    assert torch.equal(seen[-1], x[:, :, 8:16, 10:22])  # raw image, box of the labels
    assert (p_s[:, :, :8] == 0).all() and (p_s[:, :, 16:] == 0).all()
    _, _ = small.forward_train(x, y, "I", 2)
    weights = torch.tensor([1.0, 1.5, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(seen[-1], (x * weights)[:, :, 8:16, 10:22], atol=1e-6)
    # J: the coarse net starts at p = 0.5 everywhere, so the coarse mask is the whole image
    p_c, _ = small.forward_train(x, y, "J", 2)
    assert seen[-1].shape[-2:] == (40, 40) and (p_c >= 0.5).all()
    with pytest.raises(ValueError):
        small.forward_train(x, y, "K", 2)  # type: ignore[arg-type]


def test_mode_j_falls_back_to_labels_when_coarse_mask_empty(small: RSTN) -> None:
    with torch.no_grad():
        small.coarse_model.score_fr.bias.fill_(-50.0)
    try:
        seen = _spy_fine(small)
        y = torch.zeros(1, 3, 30, 30)
        y[:, 0, 5:8, 5:8] = 1
        small.forward_train(torch.rand(1, 3, 30, 30), y, "J", 0)
        assert seen[-1].shape[-2:] == (3, 3)
    finally:
        with torch.no_grad():
            small.coarse_model.score_fr.bias.zero_()


def test_fine_stage_batch_uses_each_samples_box(small: RSTN) -> None:
    x = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 3, 32, 32, dtype=torch.bool)
    mask[0, :, 2:4, 2:4] = True
    mask[1, :, 20:24, 20:24] = True
    seen = _spy_fine(small)
    score = torch.rand(2, 3, 32, 32)
    prob = small.forward_fine(x, score, mask, 1)
    crop = seen[-1]
    assert crop.shape[-2:] == (6, 6)  # the larger box (rows and cols 19 .. 24), not the union of the boxes
    weighted = x * small.saliency(score)
    assert torch.allclose(crop[0, :, :4, :4], weighted[0, :, 1:5, 1:5], atol=1e-6)
    assert (crop[0, :, 4:] == 0).all() and torch.allclose(crop[1], weighted[1, :, 19:25, 19:25], atol=1e-6)
    assert (prob[0, :, 5:] == 0).all() and (prob[0, :, :, 5:] == 0).all() and (prob[0, :, 1:5, 1:5] > 0).all()
    assert torch.count_nonzero(small.forward_fine(x, x, torch.zeros_like(mask))) == 0


def test_training_crops_each_sample_as_alone(small: RSTN) -> None:
    """A batch of slices with equal-size boxes gives every slice the fine output it gets alone (batch 1)."""
    torch.manual_seed(1)
    x = torch.rand(3, 3, 36, 36)
    y = torch.zeros(3, 3, 36, 36)
    for n, (r, c) in enumerate([(4, 6), (20, 18), (12, 25)]):
        y[n, :, r:r + 5, c:c + 7] = 1
    for mode in "SIJ":
        with torch.no_grad():
            small.coarse_model.score_fr.bias.fill_(-50.0 if mode == "J" else 0.0)  # J falls back to the labels
        _, batched = small.forward_train(x, y, mode, 3)
        alone = torch.cat([small.forward_train(x[n:n + 1], y[n:n + 1], mode, 3)[1] for n in range(3)])
        assert torch.allclose(batched, alone, atol=1e-5), mode
        assert (batched[1, :, :17] == 0).all() and (batched[0, :, 12:] == 0).all()
    with torch.no_grad():
        small.coarse_model.score_fr.bias.zero_()


def _grad_norms(net: RSTN, loss: torch.Tensor) -> dict[str, float]:
    net.zero_grad(set_to_none=True)
    loss.backward()
    parts = {"coarse": list(net.coarse_model.parameters()),
             "saliency": [*net.saliency1.parameters(), *net.saliency2.parameters()],
             "fine": list(net.fine_model.parameters())}
    return {k: sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) for k, params in parts.items()}


@pytest.mark.parametrize("mode", ["S", "I", "J"])
def test_fine_loss_reaches_the_right_parameters(mode: str) -> None:
    """S trains the fine net only; I and J also the saliency module and, through it, the coarse net."""
    torch.manual_seed(2)
    net = RSTN(width=1 / 16, dropout=0.0)
    with torch.no_grad():  # past the first step: non-zero score layers and saliency2 weights
        for m in (net.coarse_model.score_fr, net.fine_model.score_fr, net.saliency2):
            m.weight.normal_(0, 0.1)
    x = torch.rand(2, 3, 28, 28)
    y = torch.zeros(2, 3, 28, 28)
    y[:, :, 8:14, 6:18] = 1
    _, p_fine = net.forward_train(x, y, mode, 2)
    norms = _grad_norms(net, soft_dice_loss(p_fine, y))
    assert norms["fine"] > 0
    if mode == "S":
        assert norms["coarse"] == 0 and norms["saliency"] == 0
    else:
        assert norms["coarse"] > 0 and norms["saliency"] > 0
    p_coarse, _ = net.forward_train(x, y, mode, 2)
    norms = _grad_norms(net, soft_dice_loss(p_coarse, y))
    assert norms["coarse"] > 0 and norms["fine"] == 0 and norms["saliency"] == 0


def test_losses() -> None:
    y = torch.zeros(2, 3, 8, 8)
    y[:, :, 2:5, 2:5] = 1
    assert soft_dice_loss(y, y).item() < 1e-6
    assert abs(soft_dice_loss(1 - y, y).item() - 1) < 1e-6
    assert abs(rstn_loss(y, 1 - y, y).item() - 2 / 3) < 1e-5


@pytest.mark.parametrize("mode", ["S", "I"])
def test_organ_free_training_sample_gets_no_fine_box(small: RSTN, mode: str) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 24, 24)
    y = torch.zeros_like(x)
    y[0, :, 8:12, 9:13] = 1  # sample 1 is organ-free: no label box in modes S and I
    with torch.no_grad():
        _, p_fine = small.forward_train(x, y, mode, 4)
        _, alone = small.forward_train(x[:1], y[:1], mode, 4)
    assert p_fine[1].abs().max() == 0 and p_fine[0].max() > 0
    assert torch.allclose(p_fine[:1], alone, atol=1e-6)


def test_batch_dice_pushes_down_false_positives_on_empty_targets() -> None:
    y = torch.zeros(2, 3, 8, 8)
    y[0, :, 2:5, 2:5] = 1  # sample 1 is organ-free
    prob = torch.full_like(y, 0.3, requires_grad=True)
    grads = {}
    for batch in (False, True):
        (grad,) = torch.autograd.grad(soft_dice_loss(prob, y, batch=batch), prob)
        grads[batch] = grad[1]
    # per sample: the empty sample's Dice is eps / (sum p + eps), a plateau; over the batch its
    # probabilities are false positives, and the loss falls when they fall
    assert grads[False].abs().max() < 1e-8 and bool((grads[True] > 1e-4).all())
    assert torch.allclose(soft_dice_loss(prob[:1], y[:1], batch=True), soft_dice_loss(prob[:1], y[:1]))
    assert abs(rstn_loss(y, 1 - y, y, batch=True).item() - 2 / 3) < 1e-5


def test_stage_losses_train_the_fine_stage_on_organ_samples_only() -> None:
    y = torch.zeros(2, 3, 8, 8)
    y[0, :, 2:5, 2:5] = 1
    p_coarse = torch.full_like(y, 0.3, requires_grad=True)
    p_fine = torch.full_like(y, 0.3, requires_grad=True)
    coarse, fine = stage_losses(p_coarse, p_fine, y, batch=True)
    assert torch.allclose(coarse, soft_dice_loss(p_coarse, y, batch=True))
    assert torch.allclose(fine, soft_dice_loss(p_fine[:1], y[:1]))
    (grad,) = torch.autograd.grad(fine, p_fine)
    assert grad[1].abs().max() == 0 and grad[0].abs().max() > 0
    coarse, fine = stage_losses(p_coarse, p_fine, torch.zeros_like(y), batch=True)
    assert fine.item() == 0 and fine.requires_grad and coarse.item() > 0.99
    reference = stage_losses(p_coarse, p_fine, y)
    assert torch.allclose(reference[1], soft_dice_loss(p_fine, y))
    _, fine = stage_losses(p_coarse, p_fine, y, batch=True, fine_batch=True)
    assert torch.allclose(fine, soft_dice_loss(p_fine, y, batch=True))
    (grad,) = torch.autograd.grad(fine, p_fine)
    assert bool((grad[1] > 0).all())  # fine probabilities in an organ-free sample's box are pushed down


def test_bce_term_of_both_losses() -> None:
    y = torch.zeros(2, 3, 8, 8)
    y[0, :, 2:5, 2:5] = 1
    p = torch.full_like(y, 0.3, requires_grad=True)
    plain = stage_losses(p, p, y)
    with_bce = stage_losses(p, p, y, bce_weight=0.1)
    bce = -(y * torch.log(torch.tensor(0.3)) + (1 - y) * torch.log(torch.tensor(0.7))).mean()
    for stage in (0, 1):
        assert torch.allclose(with_bce[stage] - plain[stage], 0.1 * bce, atol=1e-6)
        (grad,) = torch.autograd.grad(with_bce[stage], p, retain_graph=True)
        assert bool((grad[1] > 0).all())  # the organ-free sample's probabilities are pushed down


def test_bce_from_logits_keeps_its_gradient_on_saturated_organ_pixels() -> None:
    y = torch.zeros(2, 3, 8, 8)
    y[0, :, 2:5, 2:5] = 1
    z = torch.full_like(y, -0.8)
    z[1, :, 4:, :] = UNCROP_FILL  # outside a fine box: adds no BCE
    z.requires_grad_(True)
    from_probs = stage_losses(torch.sigmoid(z), torch.sigmoid(z), y, bce_weight=0.1)
    from_logits = stage_losses(z, z, y, bce_weight=0.1, from_logits=True)
    live = torch.nn.functional.binary_cross_entropy_with_logits(z[z > UNCROP_FILL], y[z > UNCROP_FILL],
                                                                reduction="sum") / y.numel()
    plain = stage_losses(z, z, y, from_logits=True)
    for stage in (0, 1):
        assert torch.allclose(from_logits[stage] - plain[stage], 0.1 * live, atol=1e-6)
        assert float(from_probs[stage].detach()) > float(from_logits[stage].detach())  # the fill pixels' clamped log(1e-6) counted
    saturated = torch.full_like(y, -200.0, requires_grad=True)  # sigmoid is exactly 0 in float32
    (g_probs,) = torch.autograd.grad(stage_losses(torch.sigmoid(saturated), torch.sigmoid(saturated), y,
                                                  bce_weight=0.1)[0], saturated)
    (g_logits,) = torch.autograd.grad(stage_losses(saturated, saturated, y, bce_weight=0.1, from_logits=True)[0],
                                      saturated)
    organ = y > 0
    assert bool((g_probs == 0).all())  # from probabilities nothing pulls a saturated organ pixel back
    assert torch.allclose(g_logits[organ], torch.full_like(g_logits[organ], -0.1 / y.numel()))


def test_forward_train_logits_are_the_probabilities_before_the_sigmoid(small: RSTN) -> None:
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 40, 40), torch.zeros(2, 3, 40, 40)
    y[0, :, 10:20, 12:22] = 1  # sample 1 has no organ: no box in mode S
    for mode in ("S", "I", "J"):
        torch.manual_seed(4)
        probs = small.forward_train(x, y, mode, 3)  # type: ignore[arg-type]
        torch.manual_seed(4)
        logits = small.forward_train(x, y, mode, 3, logits=True)  # type: ignore[arg-type]
        for p, z in zip(probs, logits, strict=True):
            assert torch.allclose(torch.sigmoid(z), p, atol=1e-6)
        if mode == "S":
            assert bool((logits[1][1] == UNCROP_FILL).all())  # the box-less sample's fine logits are the fill


def test_load_vgg16_maps_torchvision_names() -> None:
    net = FCN8s(width=1 / 16)
    sd = {}
    for i, conv in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), net.trunk_convs(), strict=True):
        sd[f"features.{i}.weight"] = torch.full_like(conv.weight, float(i))
        sd[f"features.{i}.bias"] = torch.full_like(conv.bias, float(i))
    sd["classifier.0.weight"] = torch.ones(net.fc6.out_channels, net.fc6.in_channels * 49)
    sd["classifier.0.bias"] = torch.zeros(net.fc6.out_channels)
    sd["classifier.3.weight"] = torch.ones(net.fc7.out_channels, net.fc7.in_channels)
    sd["classifier.3.bias"] = torch.zeros(net.fc7.out_channels)
    load_vgg16(net, sd)
    assert (net.conv3_2.weight == 12).all() and (net.fc6.weight == 1).all()
    sd["classifier.3.weight"] = torch.ones(3, 3)
    with pytest.raises(ValueError, match="classifier.3"):
        load_vgg16(net, sd)
