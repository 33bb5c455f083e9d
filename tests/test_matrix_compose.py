"""Run matrix, first axis: every experiment of every project composes with every hardware and runtime choice.

A user's path next to the demo is one override away: a GPU, many GPUs, mixed precision, one thread, no logger.
Each cell composes the real config and checks that the choice arrived where the driver reads it.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from common.model_card import compose_experiment, experiments, projects
from common.run import ddp_strategy

VARIANTS = {
    "default": [],
    "cpu": ["trainer=cpu"],
    "gpu": ["trainer=gpu"],
    "ddp4": ["trainer=ddp", "trainer.devices=4"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "fp16": ["trainer.precision=16-mixed"],
    "threads1": ["threads=1"],
    "no_logger": ["logger=none"],
}
CELLS = [(p, e, v) for p in projects() for e in experiments(p) for v in VARIANTS]


@pytest.mark.parametrize(("project", "experiment", "variant"), CELLS, ids=["-".join(c) for c in CELLS])
def test_experiment_composes_with(project: str, experiment: str, variant: str) -> None:
    cfg = compose_experiment(project, experiment, VARIANTS[variant])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    trainer = cfg.trainer
    expected = {"default": ("auto", 1), "cpu": ("cpu", 1), "gpu": ("gpu", 1), "ddp4": ("gpu", 4)}
    if variant in expected:
        assert (trainer.accelerator, trainer.devices) == expected[variant]
    if variant == "ddp4":
        assert ddp_strategy(trainer.strategy) == "ddp_find_unused_parameters_true"
    if variant in ("bf16", "fp16"):
        assert str(trainer.precision) == {"bf16": "bf16-mixed", "fp16": "16-mixed"}[variant]
    if variant == "threads1":
        assert cfg.threads == 1
    if variant == "no_logger":
        assert not cfg.logger
    else:
        assert cfg.logger.tensorboard._target_.endswith("TensorBoardLogger")
    assert cfg.num_workers == "auto" and "num_workers" in cfg.data
