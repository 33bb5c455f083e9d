"""The JSON every project's `eval.py` writes: `common.evaluate`'s per-case scores and means, plus the protocol.

    {"cases": {case: {metric: value}}, "mean": {metric: value},
     "protocol": {"name": "...", "paper": {...}, ...}, <project blocks>...}

`cases` holds one project's `score_case` per case, the very function its LightningModule scores validation and
test with; `mean` is the unweighted mean over cases (`common.evaluate.summarise`); `protocol` names the protocol
and gives the paper's own figures to read ours against. A project's further results (a weighted mean, pooled
scores, baselines, other accelerations) go under their own keys. Infinite scores are written as null.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import DataError
from common.evaluate import json_ready, summarise
from common.io.atomic import save_json

REPORT_KEYS = ("cases", "mean", "protocol")


def eval_report(cases: Mapping[str, Mapping[str, float]], protocol: Mapping[str, Any], **blocks: Any
                ) -> dict[str, Any]:
    """Returns the eval JSON object of `cases` (case -> metric -> value).

    Args:
        cases: per-case scores, every case with the same metrics.
        protocol: at least `name` (the protocol) and `paper` (the paper's figures).
        **blocks: project-specific blocks, each under its own key (none may be a contract key).

    Raises:
        ValueError: `protocol` lacks `name` or `paper`, or a block takes a contract key.
    """
    if "name" not in protocol or "paper" not in protocol:
        raise ValueError(f"the protocol block needs 'name' and 'paper', got {sorted(protocol)}")
    clash = sorted(set(blocks) & set(REPORT_KEYS))
    if clash:
        raise ValueError(f"extra blocks may not be named {clash}")
    scores = {str(case): {str(k): float(v) for k, v in values.items()} for case, values in cases.items()}
    return {**json_ready(summarise(scores)), "protocol": dict(protocol), **blocks}


def write_eval_report(path: str | os.PathLike, cases: Mapping[str, Mapping[str, float]],
                      protocol: Mapping[str, Any], **blocks: Any) -> dict[str, Any]:
    """Writes `eval_report(cases, protocol, **blocks)` to `path` atomically and returns it.

    Raises:
        DataError: no case was scored (nothing is written), or the folder cannot take the file.
    """
    if not cases:
        raise DataError(path, "no case was scored: nothing to report")
    report = eval_report(cases, protocol, **blocks)
    save_json(Path(path), report)
    return report
