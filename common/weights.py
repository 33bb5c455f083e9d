"""Weights released with a paper: read them safely and turn them into checkpoints of this project.

`load_third_party` reads a `.pth`/`.pt` with `weights_only=True` (nothing in the file runs) and unwraps the usual
containers; a project's `import_weights.py` renames the tensors to its LightningModule's names and calls
`write_imported_checkpoint`, which checks them strictly against the experiment's model and writes a checkpoint
that every eval/predict entry point, and `model.init_weights=` for fine-tuning, accept. `import_main` is the
shared command line of those `import_weights.py` files.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from common.checkpoint import instantiate_model, load_state_strict, read_checkpoint
from common.cli import exit_code_on_data_error
from common.errors import DataError
from common.io.atomic import atomic_path

# Keys under which training scripts commonly nest the state dict, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
DATA_PARALLEL_PREFIX = "module."


def _unwrap(obj: object) -> object:
    """Returns the innermost state dict of the usual containers (`{"state_dict": {...}}`, `{"model": ...}`)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def load_third_party(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Returns the tensors of a third-party `.pth`/`.pt` file, read on the CPU with `weights_only=True`.

    The usual containers are unwrapped (`state_dict`, `model_state_dict`, `model`, `net`) and DataParallel's
    leading `module.` is removed from every key.

    Raises:
        DataError: one line naming the file: missing, truncated, not a torch file, refused by `weights_only`
            (e.g. a pickle with a code payload: refused, never run), or holding no state dict of tensors.
    """
    state = _unwrap(read_checkpoint(path))
    if not isinstance(state, Mapping) or not state:
        raise DataError(path, "no state dict of tensors in this file")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise DataError(path, f"not a state dict: {len(others)} entries are not tensors (e.g. {others[:3]})")
    keys = list(state)
    if all(str(k).startswith(DATA_PARALLEL_PREFIX) for k in keys):
        return {str(k)[len(DATA_PARALLEL_PREFIX):]: state[k] for k in keys}
    return {str(k): state[k] for k in keys}


def require_keys(state: Mapping[str, torch.Tensor], prefixes: Sequence[str], path: str | os.PathLike,
                 what: str) -> None:
    """Checks that `state` has keys starting with each of `prefixes`.

    Raises:
        DataError: names the file, what it should be, and the prefixes it lacks.
    """
    missing = [p for p in prefixes if not any(k.startswith(p) for k in state)]
    if missing:
        raise DataError(path, f"not {what}: no weights named {', '.join(p + '*' for p in missing)}"
                              f" (found {sorted(state)[:3]}...)")


def _kept_from_config(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                      optional_parts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Returns the module's own entries that an import need not provide (see `write_imported_checkpoint`)."""
    kept = {}
    for name, child in module.named_children():
        own = {f"{name}.{k}": v for k, v in child.state_dict().items()}
        given = any(k.startswith(f"{name}.") for k in state_dict)
        if own and (not any(True for _ in child.parameters()) or (name in optional_parts and not given)):
            kept.update(own)
    return kept


def write_imported_checkpoint(out: str | os.PathLike, project: str, experiment: str,
                              state_dict: Mapping[str, torch.Tensor], source: str | Sequence[str],
                              overrides: Sequence[str] = (), optional_parts: Sequence[str] = ()) -> Path:
    """Writes (atomically) a checkpoint of `project`'s LightningModule holding imported weights; returns `out`.

    The module is built from `conf/<project>/train.yaml` with `experiment=<experiment>` and `overrides`, and
    `state_dict` (the module's own key names, e.g. `net.conv.weight`) is loaded strictly. The file holds what
    `common.checkpoint.module_from_checkpoint`, the projects' eval/predict and `model.init_weights=` read:
    `state_dict`, `run_config` (the resolved config, plain containers), `hyper_parameters`, `imported_from`,
    plus Lightning's `epoch`, `global_step` and `pytorch-lightning_version`. It carries no optimiser or loop
    state, so it starts training through `model.init_weights=`, not through `ckpt_path=` (resume).

    Sub-modules that hold buffers but no parameters (e.g. a loss's `pos_weight`) come from the config, not from
    training, and keep their configured values. A sub-module named in `optional_parts` (e.g. a GAN's
    discriminator) may be absent from `state_dict` as a whole: it then keeps its fresh initialisation, and the
    checkpoint lists it under `fresh_init`.

    Raises:
        DataError: the weights do not fit the model (the first few missing and unexpected keys are listed).
    """
    import lightning.pytorch as pl  # Lightning and Hydra only when writing: reading stays light for predict.py

    from common.model_card import compose_experiment

    cfg = compose_experiment(project, experiment, list(overrides))
    module = instantiate_model(cfg.model)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    kept = _kept_from_config(module, state_dict, optional_parts)
    load_state_strict(module, {**kept, **state_dict}, ", ".join(map(str, sources)),
                      f"{project} experiment={experiment}")
    run_config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hyper_parameters = {k: v for k, v in dict(run_config["model"]).items() if k != "_target_"}
    checkpoint = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": pl.__version__,
                  "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
                  "hyper_parameters": hyper_parameters, "run_config": run_config,
                  "imported_from": [str(s) for s in sources],
                  "fresh_init": sorted({k.split(".")[0] for k in kept if k.split(".")[0] in optional_parts})}
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
    return Path(out)


Converter = Callable[[list[Path], str], Mapping[str, torch.Tensor]]


def import_main(project: str, convert: Converter, default_experiment: str, description: str,
                argv: Sequence[str] | None = None, experiments: Sequence[str] | None = None,
                optional_parts: Sequence[str] = (),
                extra_overrides: Callable[[Path, str], Sequence[str]] | None = None) -> int:
    """The command line of `python -m projects.<project>.import_weights SRC [SRC ...] --out CKPT`.

    Args:
        project: the project whose configs build the model.
        convert: `(source files, experiment) -> state dict` with the LightningModule's key names.
        default_experiment: the experiment when `--experiment` is not given.
        description: the help text (the first line is used).
        argv: the arguments (None: `sys.argv[1:]`).
        experiments: the experiments the importer supports (None: any).
        optional_parts: sub-modules the released files may lack (see `write_imported_checkpoint`).
        extra_overrides: `(output checkpoint, experiment) -> config overrides` the project adds (e.g. a stage-2
            model naming its stage-1 checkpoint).

    Returns:
        0 on success; 2 after printing one line on stderr for bad input (see `common.cli`).
    """
    parser = argparse.ArgumentParser(prog=f"python -m projects.{project}.import_weights",
                                     description=description.strip().splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="the released weights file(s)")
    parser.add_argument("--out", required=True, type=Path, help="the checkpoint to write")
    parser.add_argument("--experiment", default=default_experiment, choices=experiments,
                        help=f"the experiment whose model receives the weights (default {default_experiment})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the model, e.g. model.net.width=32 (repeatable)")
    args = parser.parse_args(argv)
    if extra_overrides is not None:
        args.overrides = [*extra_overrides(args.out, args.experiment), *args.overrides]
    return _run_import(project, convert, args, optional_parts)


@exit_code_on_data_error
def _run_import(project: str, convert: Converter, args: argparse.Namespace, optional_parts: Sequence[str]) -> int:
    state = convert(list(args.sources), args.experiment)
    out = write_imported_checkpoint(args.out, project, args.experiment, state, [str(s) for s in args.sources],
                                    args.overrides, optional_parts)
    print(f"{out}: {len(state)} tensors from {', '.join(map(str, args.sources))} "
          f"as {project} experiment={args.experiment}")
    return 0
