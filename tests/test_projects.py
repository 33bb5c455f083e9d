"""Cross-project checks: every experiment of every project composes, builds, and matches the paper's counts."""

from __future__ import annotations

import importlib

import pytest

from common.demo import summary_markdown
from common.model_card import card_rows, compose_experiment, experiments, projects

CASES = [(p, e) for p in projects() for e in experiments(p)]


def test_every_project_has_a_demo_experiment():
    assert projects(), "no project configs found"
    for project in projects():
        assert "demo" in experiments(project), f"conf/{project}/experiment/demo.yaml is missing"


@pytest.mark.parametrize(("project", "experiment"), CASES, ids=[f"{p}-{e}" for p, e in CASES])
def test_experiment_composes_and_names_importable_targets(project, experiment):
    cfg = compose_experiment(project, experiment)
    assert cfg.project == project
    assert str(cfg.monitor.metric).startswith("val/")
    for node in (cfg.model, cfg.data):
        module_name, _, attr = node._target_.rpartition(".")
        assert hasattr(importlib.import_module(module_name), attr), node._target_


@pytest.mark.parametrize(("project", "experiment"), CASES, ids=[f"{p}-{e}" for p, e in CASES])
def test_parameter_counts_match_the_paper_where_it_gives_one(project, experiment):
    rows = card_rows(project, experiment)
    assert rows and all(r["params"] is None or r["params"] > 0 for r in rows)
    for row in rows:
        if row["reference"] is not None and row["params"] is not None:
            assert row["params"] == row["reference"], row


def test_demo_summary_says_which_side_wins():
    rows = [{"project": "a", "status": "ok", "task": "t", "metric": "psnr", "model": "m", "model_value": 30.0,
             "baseline": "cubic", "baseline_value": 28.0, "higher_is_better": True, "seconds": 5},
            {"project": "b", "status": "ok", "task": "t", "metric": "nmse", "model": "m", "model_value": 0.2,
             "baseline": "zero-filled", "baseline_value": 0.1, "higher_is_better": False, "seconds": 5},
            {"project": "c", "status": "failed (exit 1)", "seconds": 1}]
    text = summary_markdown(rows)
    assert "| a |" in text and "model better" in text.split("| b |")[0]
    assert "baseline better" in text.split("| b |")[1].split("| c |")[0]
    assert "failed (exit 1)" in text
