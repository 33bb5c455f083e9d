"""Reading SAINT weights: Lightning checkpoints of this project or the reference's plain state dicts."""

from __future__ import annotations

from pathlib import Path

import torch

from common.checkpoint import read_checkpoint
from common.errors import DataError
from projects.saint.model import SAINT, reference_state_dict


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Returns the network state dict stored in `path`, with reference parameter names.

    Accepts a Lightning checkpoint of this project (`state_dict` with `net.` keys) or a plain state dict such
    as the reference's `model_comb.pt` (optionally with DataParallel's `module.` prefix).

    Raises:
        DataError: missing or unreadable file, or no tensors in it.
    """
    ckpt = read_checkpoint(path)
    if "state_dict" in ckpt:
        state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    else:
        state = ckpt
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "no SAINT network weights in this file")
    return reference_state_dict(state)


def load_weights(net: SAINT, path: str | Path, parts: str = "all") -> SAINT:
    """Loads the weights of `path` into `net` and returns it.

    Args:
        net: the network (its configuration must match the stored one).
        path: see `read_state_dict`.
        parts: "all" (MSR and RFN, strict) or "msr" (only the MSR; the file's RFN, if any, is ignored).

    Raises:
        DataError: unreadable file, or weights that do not fit the configured network.
    """
    state = read_state_dict(path)
    if parts == "msr":
        state = {k: v for k, v in state.items() if not k.startswith("RFN.")}
    elif parts != "all":
        raise ValueError(f"parts must be 'all' or 'msr', got {parts!r}")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise DataError(path, f"weights do not fit the configured network: {err}") from err
    if parts == "msr":
        missing = [k for k in missing if not k.startswith("RFN.")]
    if missing or unexpected:
        raise DataError(path, f"weights do not fit the configured network: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]} ({len(missing)} / {len(unexpected)} keys)")
    return net


def read_run_config(path: str | Path) -> dict | None:
    """Returns the run config stored in a Lightning checkpoint of this project, or None (plain state dict)."""
    return read_checkpoint(path).get("run_config")


def has_trained_rfn(run_config: dict | None) -> bool:
    """Returns whether the weights saved with `run_config` include a trained RFN (stage 2, or started from one).

    A plain state dict (no run config, e.g. the reference's combined checkpoint) is taken to include it.
    """
    if run_config is None:
        return True
    model = run_config.get("model", {})
    return model.get("stage") == "rfn" or bool(model.get("init_ckpt"))


def load_saint(path: str | Path, default_net: dict | None = None) -> tuple[SAINT, bool]:
    """Returns the network stored in `path` (eval mode) and whether its RFN is trained.

    The architecture comes from the checkpoint's run config; a plain state dict uses `default_net` (keyword
    arguments of `SAINT`, `_target_` allowed) or the paper's configuration. A checkpoint imported from the
    reference's combined file (`import_weights.py`, it records `imported_from`) counts as that file: RFN trained.
    """
    ckpt = read_checkpoint(path)
    run_config = ckpt.get("run_config")
    net_cfg = dict(run_config["model"]["net"]) if run_config else dict(default_net or {})
    net_cfg.pop("_target_", None)
    net = load_weights(SAINT(**net_cfg), path, "all").eval()
    return net, bool(ckpt.get("imported_from")) or has_trained_rfn(run_config)
