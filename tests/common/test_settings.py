"""given_settings tells the eval settings a user gave from the ones eval.yaml writes (interpolations unresolved)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from common.settings import CONF_ROOT, given_settings


def _rstn_eval(**changes: object) -> DictConfig:
    written = OmegaConf.load(CONF_ROOT / "rstn" / "eval.yaml")
    cfg = OmegaConf.create({"model": {"margin": 20}, "eval": OmegaConf.to_container(written.eval, resolve=False),
                            "paths": {"outputs_root": "out"}, "project": "rstn", "run_name": "r"})
    for key, value in changes.items():
        cfg.eval[key] = value
    return cfg


def test_settings_as_written_are_not_given_even_when_they_resolve_differently() -> None:
    cfg = _rstn_eval()
    cfg.model.margin = 5  # an experiment's model: eval.margin still reads ${model.margin}, so it is not given
    assert given_settings(cfg.eval, "rstn") == {}


def test_changed_settings_are_given_resolved() -> None:
    cfg = _rstn_eval(margin=7, threshold=0.6, stages=["coarse"])
    assert given_settings(cfg.eval, "rstn") == {"margin": 7, "threshold": 0.6, "stages": ["coarse"]}
    cfg = _rstn_eval(margin="${model.margin}", max_rounds=10)  # the written values again
    assert given_settings(cfg.eval, "rstn") == {}
