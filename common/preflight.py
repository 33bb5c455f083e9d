"""Checks a command's inputs before it builds a model: a missing checkpoint or data set names what makes it.

Two hooks, the same for every project:

- checkpoints: `ckpt_path`, `model.init_weights` and, for a command that reads several (RSTN's eval), every
  entry of a `checkpoints` mapping that `eval.planes` selects. A missing file is a `DataError` that names the
  train command, the import command and the demo target.
- data: the data module of `cfg.data` may define `check_data(stage)`, cheap and writing nothing, that raises
  the `DataError` of `common.prepare.not_prepared` (which prepare command makes the data, where the raw data
  comes from) when what `stage` reads is missing. Data modules that build their data themselves (the synthetic
  demos) check only what they cannot build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.errors import DataError

#: The Lightning stage whose data a Hydra command reads, by its primary config (other commands read none).
DATA_STAGES = {"train": "fit", "eval": "test"}

_NOT_A_PATH = (None, "", "null", "last")


def _experiment(cfg: DictConfig) -> str:
    """Returns the experiment chosen on the command line, or NAME when there is none."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("experiment")
        if choice:
            return str(choice)
    return "NAME"


def checkpoint_hint(cfg: DictConfig) -> str:
    """Returns the commands that make a checkpoint of `cfg.project`: train, import, or the demo."""
    project = str(cfg.project)
    return (f"train one with python -m projects.{project}.train experiment={_experiment(cfg)}, import the "
            f"authors' weights with python -m projects.{project}.import_weights, or run make "
            f"demo-{project.replace('_', '-')} for the demo's")


def _checkpoints(cfg: DictConfig) -> list[tuple[str, Any]]:
    """Returns `(config key, value)` of every checkpoint the command reads."""
    found = [(key, OmegaConf.select(cfg, key, default=None)) for key in ("ckpt_path", "model.init_weights")]
    named = cfg.get("checkpoints")
    if isinstance(named, DictConfig):
        wanted = OmegaConf.select(cfg, "eval.planes", default=None) or list(named)
        found += [(f"checkpoints.{name}", named[name]) for name in wanted if name in named]
    return found


def check_checkpoints(cfg: DictConfig, stage: str) -> None:
    """Raises `DataError` when a checkpoint the command reads is missing (or, to evaluate, not given)."""
    if stage == "test" and OmegaConf.is_missing(cfg, "ckpt_path"):
        raise DataError(None, f"evaluation needs ckpt_path=PATH; {checkpoint_hint(cfg)}")
    for key, value in _checkpoints(cfg):
        if value not in _NOT_A_PATH and not Path(str(value)).is_file():
            raise DataError(value, f"checkpoint not found ({key}); {checkpoint_hint(cfg)}")


def check_data(cfg: DictConfig, stage: str) -> None:
    """Calls `check_data(stage)` of the configured data module, when it has one (no model is built)."""
    if "data" not in cfg or "_target_" not in cfg.data:
        return
    datamodule = instantiate(cfg.data, _recursive_=False)
    check = getattr(datamodule, "check_data", None)
    if callable(check):
        check(stage)


def check_inputs(cfg: DictConfig, stage: str) -> None:
    """Checks the checkpoints, then the data, of a command about to run `stage` ("fit" or "test").

    Raises:
        DataError: the first input that is missing, with the command that makes it.
    """
    check_checkpoints(cfg, stage)
    check_data(cfg, stage)
