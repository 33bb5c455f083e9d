"""Checks of the command contract shared by the project tests (projects/README.md, "The contract")."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
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


def check_waits_for_the_prepare_lock(folder: str | Path, prepare: Callable[[], Any], written: Path) -> None:
    """Asserts that `prepare()` writes `written` only after another holder of `folder`'s prepare lock leaves.

    The other holder stands for a second node or sweep job preparing the same shared folder: it holds
    `common.io.lock.prepare_lock(folder)` on its own file descriptor (flock excludes those within one process
    too) while `prepare` runs in a thread.
    """
    from common.io.lock import prepare_lock

    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_writer() -> None:
        with prepare_lock(folder) as held:
            assert held
            entered.set()
            release.wait(60)

    def run() -> None:
        try:
            prepare()
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    holder, worker = threading.Thread(target=other_writer), threading.Thread(target=run)
    holder.start()
    assert entered.wait(60)
    worker.start()
    try:
        time.sleep(0.5)
        assert worker.is_alive() and not Path(written).exists(), "prepare did not wait for the folder's lock"
    finally:
        release.set()
        holder.join(60)
        worker.join(600)
    if errors:
        raise errors[0]
    assert Path(written).exists()
