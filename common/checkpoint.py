"""Reading checkpoints written by `common.run` (or plain state dicts) safely, with clear errors.

Every file is read with `torch.load(..., weights_only=True)`: tensors and plain containers only, so a file
carrying a pickled code payload is refused instead of run. This also holds for our own checkpoints, whose
hyper-parameters and run config are therefore stored as plain containers (see `common.run.ConfigInCheckpoint`).
"""

from __future__ import annotations

import copy
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import Container, DictConfig, OmegaConf, open_dict

from common.errors import DataError

# The config key of a model that names starting weights; it is no argument of any module.
INIT_WEIGHTS_KEY = "init_weights"


def _one_line(err: BaseException, limit: int = 160) -> str:
    """Returns the first line of an exception message, shortened: torch's messages run over many lines."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _unpickling_error(path: Path, err: pickle.UnpicklingError) -> DataError:
    """Returns the error for a file that `weights_only` loading stopped: a refused object, or not a torch file."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found and found.group(1).startswith("omegaconf."):
        return DataError(path, f"refused: a checkpoint of an older version holds config objects ({found.group(1)}); "
                               f"if the file is yours, `python -m common.checkpoint upgrade {path}` rewrites it")
    if found:
        return DataError(path, f"refused: the file holds Python objects other than tensors and plain containers "
                               f"({found.group(1)}); it was not loaded and nothing in it was run")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
    return DataError(path, f"cannot read checkpoint (not a torch file or corrupt: {detail[:120]})")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Returns the dict stored in a checkpoint file (on the CPU), read with `weights_only=True`.

    Raises:
        DataError: the file is missing, unreadable (truncated, not a torch file), holds objects other than
            tensors and plain containers (refused unread), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from err
    except Exception as err:  # torch raises many types for a corrupt file
        raise DataError(path, f"cannot read checkpoint ({type(err).__name__}: {_one_line(err)})") from err
    if not isinstance(ckpt, dict):
        raise DataError(path, f"expected a dict of tensors, found {type(ckpt).__name__}")
    return ckpt


def plain_containers(value: Any) -> Any:
    """Returns `value` with every omegaconf container turned into plain dicts and lists (resolved)."""
    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain_containers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_containers(v) for v in value)
    return value


def instantiate_model(model_cfg: Any) -> Any:
    """Returns the LightningModule of a model config; its `init_weights` entry (see `init_from_checkpoint`) is
    left out, since it names where the weights come from rather than an argument of the module."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = copy.copy(model_cfg)  # keeps the parent, so interpolations such as ${monitor.metric} resolve
        with open_dict(model_cfg):
            model_cfg.pop(INIT_WEIGHTS_KEY, None)
    else:
        model_cfg = {k: v for k, v in dict(model_cfg).items() if k != INIT_WEIGHTS_KEY}
    try:
        return instantiate(model_cfg, _recursive_=False)
    except InstantiationException as err:  # Hydra wraps what the module raised: bad input stays one line
        if isinstance(err.__cause__, DataError):
            raise err.__cause__ from None
        raise


def upgrade_stored_config(model_cfg: Any) -> Any:
    """Returns a model config read from a checkpoint in the vocabulary its module speaks today.

    A LightningModule whose arguments were renamed or restructured defines a classmethod
    `upgrade_config(config: dict) -> dict` that maps what earlier versions stored (and returns today's configs
    unchanged); the class comes from the config's `_target_`. Such a config comes back as a plain, resolved dict;
    configs of modules without the hook, or whose class does not import (instantiation then reports it), come
    back as they are.
    """
    try:
        cls = get_class(str(model_cfg.get("_target_")))
    except Exception:  # noqa: BLE001 - instantiate_model names the bad target
        return model_cfg
    upgrade = getattr(cls, "upgrade_config", None)
    return dict(upgrade(dict(plain_containers(model_cfg)))) if callable(upgrade) else model_cfg


def load_state_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                      source: str | os.PathLike | None, what: str = "the configured model") -> None:
    """Loads `state_dict` into `module` strictly.

    Raises:
        DataError: names `source` and lists the first few missing and unexpected keys, or the shape mismatch.
    """
    missing, unexpected = module.state_dict().keys() - state_dict.keys(), state_dict.keys() - module.state_dict()
    if missing or unexpected:
        raise DataError(source, f"weights do not fit {what}: {len(missing)} missing keys {sorted(missing)[:4]}, "
                                f"{len(unexpected)} unexpected keys {sorted(unexpected)[:4]}")
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as err:  # shape mismatches
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise DataError(source, f"weights do not fit {what}: {'; '.join(shapes[:2]) or _one_line(err)}") from err


def module_from_checkpoint(path: str | os.PathLike, model_cfg: Any = None) -> tuple[torch.nn.Module, dict]:
    """Returns (the LightningModule in eval mode with the checkpoint's weights, the run config it was trained with).

    Args:
        path: a checkpoint written by `common.run.train` or `common.weights.write_imported_checkpoint` (it
            carries `run_config`).
        model_cfg: the model config to build instead of the checkpoint's own (None: use the checkpoint's). Either
            goes through `upgrade_stored_config`, since an eval config may carry the checkpoint's stored one.

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
    module = instantiate_model(upgrade_stored_config(model_cfg))
    load_state_strict(module, ckpt["state_dict"], path)
    return module.eval(), config


def init_from_checkpoint(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Loads the weights (only) of one of our checkpoints, trained or imported, into `module`, strictly.

    Raises:
        DataError: unreadable file, no `state_dict`, or weights that do not fit the module.
    """
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt:
        raise DataError(path, "not a checkpoint of this project (no 'state_dict'); import third-party weights"
                              " with `python -m projects.<p>.import_weights` first")
    load_state_strict(module, ckpt["state_dict"], path)
    # lets a module tell trained starting weights from its random init (RSTN warns about the latter)
    module.initialised_from = str(path)  # type: ignore[assignment]


def checkpoint_progress(path: str | os.PathLike) -> tuple[int, float]:
    """Returns `(global_step, the time it was saved)` of one of our training checkpoints.

    The file is memory-mapped, so the weights are not read (a paper-width RSTN checkpoint is over 1 GB). Our own
    run's file is read in full trust, as resuming reads it; a checkpoint without `saved_at` gives the file's time.

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise DataError(path, f"cannot read checkpoint ({type(err).__name__}: {_one_line(err)})") from err
    return int(ckpt.get("global_step", 0)), float(ckpt.get("saved_at", os.path.getmtime(path)))


def upgrade_checkpoint(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Rewrites one of our own older checkpoints with plain containers, so that it loads with weights_only.

    Checkpoints written before configs were stored as plain containers hold omegaconf objects, which safe loading
    refuses. This reads the file with full unpickling, which runs whatever the file holds: use it only on files
    your own runs wrote.

    Returns:
        The written path (`out`, or `path` itself, replaced atomically).

    Raises:
        DataError: the file is missing, unreadable, or not a checkpoint of this project (no `state_dict`).
    """
    from common.io.atomic import atomic_path

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise DataError(path, f"cannot read checkpoint ({type(err).__name__}: {_one_line(err)})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(path, "not a checkpoint of this project (no 'state_dict')")
    target = Path(out) if out else path
    with atomic_path(target) as tmp:
        torch.save(plain_containers(ckpt), tmp)
    read_checkpoint(target)  # it now loads safely
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m common.checkpoint upgrade FILE [--out NEW]`: see `upgrade_checkpoint`."""
    import argparse

    from common.cli import exit_code_on_data_error

    parser = argparse.ArgumentParser(description="Rewrite an older checkpoint of this project so it loads safely "
                                                 "(only for files your own runs wrote: reading it runs its pickle)")
    parser.add_argument("command", choices=["upgrade"])
    parser.add_argument("path")
    parser.add_argument("--out", default=None, help="write here instead of replacing the file")

    @exit_code_on_data_error
    def run(args: argparse.Namespace) -> int:
        print(f"wrote {upgrade_checkpoint(args.path, args.out)}")
        return 0

    return run(parser.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
