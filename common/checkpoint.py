"""Reading checkpoints written by `common.run` (or plain state dicts) with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from common.errors import DataError


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Returns the dict stored in a checkpoint file (on the CPU).

    Raises:
        DataError: the file is missing, unreadable (truncated, not a torch file) or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise DataError(path, f"cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict):
        raise DataError(path, f"expected a dict of tensors, found {type(ckpt).__name__}")
    return ckpt


def module_from_checkpoint(path: str | os.PathLike, model_cfg: Any = None) -> tuple[torch.nn.Module, dict]:
    """Returns (the LightningModule in eval mode with the checkpoint's weights, the run config it was trained with).

    Args:
        path: a checkpoint written by `common.run.train` (it carries `run_config`).
        model_cfg: the model config to build instead of the checkpoint's own (None: use the checkpoint's).

    Raises:
        DataError: unreadable file, no weights, no config, or weights that do not fit the model.
    """
    ckpt = read_checkpoint(path)
    config = ckpt.get("run_config") or {}
    if "state_dict" not in ckpt:
        raise DataError(path, "not a Lightning checkpoint (no 'state_dict')")
    if model_cfg is None:
        if "model" not in config:
            raise DataError(path, "the checkpoint carries no run config: pass the model config")
        model_cfg = config["model"]
    module = instantiate(model_cfg, _recursive_=False)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise DataError(path, f"weights do not fit the configured model: {err}") from err
    return module.eval(), config
