"""Training diagnostics: overfit the slices of one cached case, mode by mode, and measure what reaches what.

`python -m projects.rstn.diagnose --cache outputs/demo/rstn/cache --case synth004 --steps 100,100,100`
trains a fresh RSTN (the `model` config of `experiment=demo` unless overridden) on the foreground slices of
one case, in modes S, I, J for the given numbers of steps, and prints every `--every` steps: the coarse and
fine soft-Dice losses, the gradient norm of the coarse net, the saliency module and the fine net, and the
learning rate of each group. At the end it prints the hard Dice (p >= 0.5) of the coarse stage and of the
fine stage in the ground-truth box (oracle) on those slices. A stage that cannot overfit one case has a
wiring or optimisation problem, not a data problem.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor

from common.checkpoint import instantiate_model
from common.cli import exit_code_on_data_error
from common.run import CONF_ROOT
from projects.rstn.data import PlaneSlices, collate
from projects.rstn.metrics import score_case
from projects.rstn.model import RSTN, sample_margins, soft_dice_loss
from projects.rstn.module import RSTNModule

PARTS = ("coarse_model.", "saliency", "fine_model.")


def grad_norms(net: RSTN) -> dict[str, float]:
    """Returns the L2 norm of the gradients of the coarse net, the saliency module and the fine net."""
    sums = dict.fromkeys(PARTS, 0.0)
    for name, param in net.named_parameters():
        if param.grad is not None:
            sums[next(p for p in PARTS if name.startswith(p))] += float(param.grad.pow(2).sum())
    return {part.rstrip("."): value ** 0.5 for part, value in sums.items()}


def hard_dice(prob: Tensor, label: Tensor) -> float:
    """Returns the Dice of (prob >= 0.5) against the 0/1 label, pooled over the batch (`metrics.score_case`)."""
    return score_case((prob >= 0.5).cpu().numpy(), (label >= 0.5).cpu().numpy())["dice"]


def build_module(overrides: Sequence[str]) -> RSTNModule:
    """Returns the RSTNModule of `experiment=demo` (plus overrides) with fresh weights."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "rstn"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", *overrides])
    return instantiate_model(cfg.model)


def train_modes(module: RSTNModule, batches: list, steps: Sequence[int], every: int = 20) -> list[dict]:
    """Trains `module` for steps[0] / steps[1] / steps[2] steps of modes S / I / J; returns the printed rows."""
    optimizer = module.configure_optimizers()
    net, hp = module.net.train(), module.hparams
    rows, step = [], 0
    for mode, n in zip("SIJ", steps, strict=False):
        for _ in range(n):
            batch = batches[step % len(batches)]
            margins = sample_margins(hp.margin, hp.margin_jitter_prob)
            p_c, p_f = net.forward_train(batch.image, batch.label, mode, margins)  # type: ignore[arg-type]
            loss_c, loss_f = soft_dice_loss(p_c, batch.label), soft_dice_loss(p_f, batch.label)
            optimizer.zero_grad(set_to_none=True)
            (hp.coarse_weight * loss_c + (1 - hp.coarse_weight) * loss_f).backward()
            norms = grad_norms(net)
            optimizer.step()
            step += 1
            if step % every == 0 or step == 1:
                rows.append({"step": step, "mode": mode, "loss_coarse": float(loss_c), "loss_fine": float(loss_f),
                             **{f"grad_{k}": v for k, v in norms.items()},
                             **{f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}})
                print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                      flush=True)
    return rows


@torch.no_grad()
def stage_dice(net: RSTN, batches: list, margin: int) -> dict[str, float]:
    """Returns the hard Dice of the coarse stage and of the fine stage in the label box (oracle)."""
    net.eval()
    probs: dict[str, list[Tensor]] = {"coarse": [], "oracle": []}
    labels = []
    for batch in batches:
        p_c = net.forward_coarse(batch.image)
        probs["coarse"].append(p_c)
        probs["oracle"].append(net.forward_fine(batch.image, p_c, batch.label >= 0.5, margin))
        labels.append(batch.label)
    net.train()
    label = torch.cat(labels)
    return {k: hard_dice(torch.cat(v), label) for k, v in probs.items()}


@exit_code_on_data_error
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cache", required=True, help="volume cache (e.g. the demo's)")
    parser.add_argument("--case", action="append", required=True, help="case id(s) to overfit")
    parser.add_argument("--plane", default="Z")
    parser.add_argument("--steps", default="100,100,100", help="steps of modes S, I, J")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the model, e.g. model.optimizer.lr=1e-3")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = PlaneSlices(Path(args.cache), args.case, args.plane, slice_threshold=1.0)
    order = torch.randperm(len(data)).tolist()
    batches = [collate([data[i] for i in order[s:s + args.batch]]) for s in range(0, len(order), args.batch)]
    module = build_module(args.overrides)
    print(f"{len(data)} slices of {args.case}, {len(batches)} batches; before: "
          f"{stage_dice(module.net, batches, module.hparams.margin)}", flush=True)
    start = time.perf_counter()
    train_modes(module, batches, [int(s) for s in args.steps.split(",")], args.every)
    print(f"after ({time.perf_counter() - start:.0f} s): {stage_dice(module.net, batches, module.hparams.margin)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
