"""Checks of the command contract shared by the project tests (projects/README.md, "The contract")."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def check_eval_report(report: dict[str, Any] | str | Path) -> dict[str, Any]:
    """Asserts that an eval JSON (a path or the object) has the contract's shape; returns the object.

    `cases` maps every case to the same metrics, `mean` holds each metric's unweighted mean over the cases
    (null where a case is infinite), `protocol` names the protocol and carries the paper's figures (or null).
    """
    if not isinstance(report, dict):
        report = json.loads(Path(report).read_text())
    assert {"cases", "mean", "protocol"} <= set(report)
    cases, mean = report["cases"], report["mean"]
    assert cases and all(isinstance(scores, dict) and scores for scores in cases.values())
    metrics = set(next(iter(cases.values())))
    assert all(set(scores) == metrics for scores in cases.values()) and set(mean) == metrics
    for metric in metrics:
        values = [scores[metric] for scores in cases.values()]
        if all(v is not None and math.isfinite(v) for v in values):
            assert math.isclose(mean[metric], sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-12)
    assert isinstance(report["protocol"]["name"], str) and report["protocol"]["name"]
    assert "paper" in report["protocol"]
    return report
