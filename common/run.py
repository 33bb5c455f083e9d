"""The Hydra + Lightning driver every project's `train.py` and `eval.py` call.

What it guarantees, for every project:
- everything is seeded once (`seed=`), workers included;
- the run folder is resolved once by Hydra (`outputs/<project>/<run_name>`); Lightning's DDP launcher re-runs the
  script per rank with that same folder, so ranks never create their own;
- `ckpt_path=last` resumes the run's `checkpoints/last.ckpt` into the same TensorBoard version;
- checkpoints are written atomically (temp file + rename);
- after DDP training, testing runs as a separate single-process step on rank 0 (no padded duplicate samples);
- a Hydra multirun (`-m`) with DDP runs each job as a child process with only that job's overrides, because the
  DDP launcher would otherwise replay the whole sweep in every rank.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import (
    INIT_WEIGHTS_KEY,
    checkpoint_progress,
    init_from_checkpoint,
    instantiate_model,
    module_from_checkpoint,
    plain_containers,
)
from common.cli import exit_on_data_error
from common.errors import DataError
from common.io.atomic import atomic_path, save_json
from common.preflight import DATA_STAGES, check_inputs
from common.runtime import set_threads
from common.tb_events import trim_after_resume

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_ROOT = REPO_ROOT / "conf"
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
OmegaConf.register_new_resolver("eval", eval, replace=True)

# Variables a DDP rank inherits; cleared before a single-process step so Lightning does not think it is a rank.
_DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
             "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it, so a crash never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class ConfigInCheckpoint(pl.Callback):
    """Stores the resolved run config inside every checkpoint, so `eval.py ckpt_path=...` can rebuild the model.

    It also turns the hyper-parameters Lightning stores (DictConfig objects, from `save_hyperparameters`) into
    plain containers, so that every checkpoint loads with `torch.load(..., weights_only=True)`. Allow-listing
    DictConfig for such loading instead would not be safe: with the `eval` resolver registered above, a crafted
    DictConfig runs code when it is read.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["run_config"] = self.config
        checkpoint["saved_at"] = time.time()  # what a resumed run repeats in TensorBoard is logged after this
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_containers(checkpoint[key])


def _instantiate_dict(node: DictConfig | None) -> list:
    if not node:
        return []
    return [instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def output_dir(cfg: DictConfig) -> Path:
    """Returns the run folder (created)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """Returns the checkpoint to resume from: `ckpt_path=last` means this run's `checkpoints/last.ckpt`."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    if ckpt == "last":
        last = output_dir(cfg) / "checkpoints" / "last.ckpt"
        if not last.exists():
            log.warning("ckpt_path=last but %s does not exist: starting a fresh run", last)
            return None
        return str(last)
    if not Path(ckpt).is_file():
        raise DataError(ckpt, "checkpoint file not found")
    return str(ckpt)


def _is_primary_process() -> bool:
    """Returns True in the process that becomes global rank 0 (before any process group exists)."""
    ranks = (os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))
    return all(int(r) == 0 for r in ranks if r not in (None, ""))


def _loggers(cfg: DictConfig, resume_from: str | None) -> list:
    """Returns the configured loggers; a resumed run continues its newest TensorBoard version.

    The events that version holds from after the checkpoint (the steps run before a kill) are dropped first, so
    that TensorBoard shows each step once (`common.tb_events`).
    """
    loggers = _instantiate_dict(cfg.get("logger"))
    for lg in loggers:
        if resume_from and isinstance(lg, pl.loggers.TensorBoardLogger):
            root = Path(lg.root_dir)
            versions = sorted(int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name[8:].isdigit())
            if versions:
                lg._version = versions[-1]
                if _is_primary_process():
                    _trim_events(root / f"version_{versions[-1]}", resume_from)
    return loggers


def _trim_events(version_dir: Path, ckpt_path: str) -> None:
    trim_after_resume(version_dir, *checkpoint_progress(ckpt_path))


def build_trainer(cfg: DictConfig, callbacks: list | None = None, loggers: list | None = None,
                  **overrides: Any) -> pl.Trainer:
    """Returns the Trainer of `cfg.trainer` with the project's callbacks, loggers and atomic checkpoints."""
    trainer_cfg = {**OmegaConf.to_container(cfg.trainer, resolve=True), **overrides}  # type: ignore[dict-item]
    trainer_cfg["strategy"] = ddp_strategy(trainer_cfg.get("strategy", "auto"))
    return instantiate(trainer_cfg, callbacks=callbacks or [],
                       logger=loggers if loggers else False, plugins=[AtomicCheckpointIO()], _convert_="all")


def launches_processes(cfg: DictConfig) -> bool:
    """Returns True when `cfg.trainer` starts its DDP ranks by running this command again (not `ddp_spawn`)."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    several = cfg.trainer.get("devices", 1) != 1 or int(cfg.trainer.get("num_nodes", 1) or 1) > 1
    return strategy.startswith("ddp") and not strategy.startswith("ddp_spawn") and several


def _is_multirun_ddp(cfg: DictConfig) -> bool:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return launches_processes(cfg)


def run_in_child(extra_overrides: list[str] | tuple[str, ...] = (), metrics_dir: str | os.PathLike | None = None
                 ) -> dict:
    """Runs this command again in a child process: the current job's overrides, then `extra_overrides`.

    DDP starts its other ranks by running the command line again, so a command that trains several runs in turn
    (a multirun's jobs, RSTN's three planes) must give each run a command line of its own, or every rank would
    replay all of them. The child gets the current run folder and none of the distributed variables.

    Returns:
        The child's `metrics.json` in `metrics_dir` (default: the run folder), {} if it wrote none.

    Raises:
        DataError: called outside a Hydra command (there is no command line to repeat).
        subprocess.CalledProcessError: the child failed.
    """
    import __main__

    if not HydraConfig.initialized():
        raise DataError(None, "distributed training of several runs needs the command line (train.py ...)")
    hc = HydraConfig.get()
    script = [sys.executable, os.path.abspath(sys.argv[0])] if __main__.__spec__ is None \
        else [sys.executable, "-m", __main__.__spec__.name]
    cmd = [*script, *hc.overrides.task, *extra_overrides, f"hydra.run.dir={hc.runtime.output_dir}"]
    log.info("running %s", " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    subprocess.run(cmd, check=True, env=env)
    metrics = Path(metrics_dir or hc.runtime.output_dir) / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else {}


def _single_process_after_ddp(trainer: pl.Trainer) -> bool:
    """Tears down the process group; returns True on rank 0 (which goes on alone), False on other ranks."""
    rank = trainer.global_rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank != 0:
        return False
    for key in _DIST_ENV:
        os.environ.pop(key, None)
    return True


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if hasattr(v, "__float__")}


def _set_threads(cfg: DictConfig) -> None:
    """Applies `threads=N` or `threads=auto` (torch intra-op threads per process); null keeps torch's default."""
    if cfg.get("threads"):
        set_threads(cfg.threads)


# The DDP strategies that take a `find_unused_parameters` choice, by their registry names.
_DDP_FAMILIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def ddp_strategy(strategy: Any) -> Any:
    """Returns the strategy to train with: a plain DDP name becomes its `find_unused_parameters_true` variant.

    This is the one place that decides it, for every module: a GAN runs one backward pass for the generator and
    one for the discriminator (each leaves the other's parameters without gradient), RSTN's fine network sits idle
    in mode S, a module's optional branch may be off in an experiment. Plain DDP then stops with "parameters that
    were not used in producing loss". The search for unused parameters costs one walk over the autograd graph per
    step (small beside a convolution's backward). A run that knows every parameter is used asks for
    `trainer.strategy=ddp_find_unused_parameters_false` explicitly; any other name or a strategy object is kept.
    """
    if isinstance(strategy, str) and strategy in _DDP_FAMILIES:
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def _init_weights(cfg: DictConfig, module: pl.LightningModule, resuming: bool) -> None:
    """Loads `model.init_weights` (weights only: fresh optimiser, step 0) unless the run resumes."""
    init = cfg.model.get(INIT_WEIGHTS_KEY)
    if not init:
        return
    if resuming:
        log.warning("model.init_weights=%s is ignored: resuming restores the run's own weights", init)
        return
    init_from_checkpoint(module, init)
    log.info("initial weights from %s", init)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fits `cfg.model` on `cfg.data` with `cfg.trainer`, then tests the best checkpoint.

    Returns:
        The validation and test scalars of the run (also written to `<run dir>/metrics.json`).
    """
    if _is_multirun_ddp(cfg):
        return run_in_child()
    _set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    out = output_dir(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    datamodule = instantiate(cfg.data, _recursive_=False)
    module = instantiate_model(cfg.model)
    _init_weights(cfg, module, resuming=ckpt_path is not None)
    callbacks = _instantiate_dict(cfg.get("callbacks")) + [ConfigInCheckpoint(cfg)]
    trainer = build_trainer(cfg, callbacks, _loggers(cfg, resume_from=ckpt_path))
    # weights_only=False: resuming reads this run's own last.ckpt, whose loop and callback states Lightning
    # restores; third-party files never come this way (they are imported, then used as model.init_weights).
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    results = _scalars(trainer.callback_metrics)
    if cfg.get("test_after_fit", True) and not getattr(trainer, "fast_dev_run", False):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        if trainer.world_size > 1:
            if not _single_process_after_ddp(trainer):
                return results
            tester = build_trainer(cfg, loggers=trainer.loggers, devices=1, num_nodes=1, strategy="auto")
        else:
            tester = trainer
        log.info("testing %s", best or "the final weights")
        tested = tester.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
        results.update(_scalars(tested[0]) if tested else {})
    if trainer.global_rank == 0:
        save_json(out / "metrics.json", results)
    return results


def load_module(cfg: DictConfig, ckpt_path: str | os.PathLike) -> pl.LightningModule:
    """Returns `cfg.model` instantiated with the weights of `ckpt_path` (see `common.checkpoint`)."""
    module, _ = module_from_checkpoint(ckpt_path, cfg.model)
    return module  # type: ignore[return-value]


def test_checkpoint(cfg: DictConfig) -> tuple[pl.LightningModule, dict[str, float]]:
    """Tests `cfg.ckpt_path` on the configured test data in one process; returns the module and its test metrics.

    Raises:
        DataError: no checkpoint given or found.
    """
    if not cfg.get("ckpt_path"):
        raise DataError(None, "eval needs ckpt_path=PATH (or ckpt_path=last for this run's last checkpoint)")
    _set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    ckpt = resolve_ckpt_path(cfg)
    if ckpt is None:
        raise DataError(cfg.ckpt_path, "no checkpoint to evaluate")
    module = load_module(cfg, ckpt)
    datamodule = instantiate(cfg.data, _recursive_=False)
    trainer = build_trainer(cfg, devices=1, num_nodes=1, strategy="auto")
    tested = trainer.test(module, datamodule=datamodule)
    return module, _scalars(tested[0]) if tested else {}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Tests `cfg.ckpt_path` on the configured test data in one process; writes `<run dir>/eval_metrics.json`."""
    results = test_checkpoint(cfg)[1]
    save_json(output_dir(cfg) / "eval_metrics.json", results)
    return results


def entry(project: str, fn: Any = None, config_name: str = "train") -> Any:
    """Returns the Hydra main function of a project: `entry("spin", train)()` in `projects/spin/train.py`.

    The project's configs live in `conf/<project>/`; the shared groups (trainer, logger, callbacks, paths,
    hydra, debug) are found through the `hydra.searchpath` entry `pkg://conf` of its primary config. The
    command is the same whether started as `python -m projects.<p>.<cmd>` or `python projects/<p>/<cmd>.py`:
    the configs are found by absolute path and the run folder comes from `hydra.run.dir`.
    """
    import hydra

    @hydra.main(config_path=str(CONF_ROOT / project), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        return cli(fn or train, cfg, DATA_STAGES.get(config_name))

    return _main


def cli(fn: Any, cfg: DictConfig, stage: str | None = None) -> Any:
    """Runs `fn(cfg)` with the config's `threads`; a `DataError` becomes one line on stderr and exit code 2.

    With a `stage` the inputs are checked first (`check_inputs`), so that a missing checkpoint or data set
    stops the command before any model is built.
    """
    _set_threads(cfg)
    if stage is not None:
        exit_on_data_error(check_inputs, cfg, stage)
    return exit_on_data_error(fn, cfg)
