"""`python -m benchmarks.summary`: the speed rows of every `results/<project>.json` as one Markdown table.

Each row: our time, efficiency (achieved GFLOP/s over the same run's fp32 matmul), the efficiency the target needs
(the target speed-up times the reference's efficiency: both compute the same FLOPs), peak memory, the reference's
time on the machine of PERF.md most like this one, the speed-up against it and the target, and the speed-up the
two efficiencies imply on one machine, which decides "met" where the reference's efficiency is known (a time
measured on another machine of this kind can be 2.5x off); above the table, each results file's machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS_DIR, machine_line

PROJECTS = ("saint", "spin", "rstn", "easysr", "fastmri_gen")
COLUMNS = ("row", "seconds", "efficiency", "needed_efficiency", "peak_rss_mb", "ref_seconds", "speedup",
           "target_speedup", "speedup_by_efficiency")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _met(row: dict[str, Any]) -> str:
    """Returns whether a row meets its speed-up target: by efficiency where the reference's is known (the
    reference ran on another machine of this kind, whose speed differs by up to 2.5x), else by time."""
    by_efficiency = row.get("speedup_by_efficiency")
    if by_efficiency is not None:
        return "yes" if by_efficiency >= row["target_speedup"] else "no"
    if row.get("speedup") is None:
        return "-"
    return ("yes" if row["speedup"] >= row["target_speedup"] else "no") + " (by time)"


def summary(results_dir: Path = RESULTS_DIR) -> str:
    """Returns the Markdown summary of the speed rows (with a reference time or an efficiency) of every results
    file."""
    machines, lines = [], ["| project | " + " | ".join(COLUMNS) + " | met |", "|---" * (len(COLUMNS) + 2) + "|"]
    for project in PROJECTS:
        path = results_dir / f"{project}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        machines.append(f"- {project} ({data.get('when', '?')}): {machine_line(data.get('machine', {}))}")
        for row in data.get("rows", []):
            if row.get("ref_seconds") is None and row.get("efficiency") is None:
                continue  # a quality row, or a time with nothing to compare it with
            met = _met(row)
            if row.get("ref_efficiency_12_07") and row.get("target_speedup"):
                # the same FLOPs on one machine: the target speed-up needs the target times the reference's efficiency
                row = {**row, "needed_efficiency": round(row["target_speedup"] * row["ref_efficiency_12_07"], 2)}
            lines.append(f"| {project} | " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + f" | {met} |")
    return "\n".join(["Machines:", *machines, "", *lines]) + "\n"


def main() -> int:
    sys.stdout.write(summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
