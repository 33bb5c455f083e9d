"""`make demo`: runs every project's embedded-data demo end to end and writes one summary.

Each `projects/<p>/demo.py` trains `experiment=demo` on synthetic data, evaluates on held-out cases next to a
classical baseline, predicts one volume, and writes `<out>/result.json` (see projects/README.md). This runner
starts each in its own process (a failure in one does not hide the others), then writes
`outputs/demo/summary.md` and `outputs/demo/summary.json`. It exits non-zero if any demo failed.

Usage: `python -m common.demo [--only spin saint] [--out outputs/demo]`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common.io.atomic import save_json, save_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def discover() -> list[str]:
    """Returns the projects that have a demo, in name order."""
    return sorted(p.parent.name for p in (REPO_ROOT / "projects").glob("*/demo.py"))


def run_one(project: str, out_root: Path) -> dict:
    """Runs one project's demo in a child process; returns its result.json plus status and wall time."""
    out = out_root / project
    start = time.perf_counter()
    print(f"\n=== demo: {project} ===", flush=True)
    proc = subprocess.run([sys.executable, "-m", f"projects.{project}.demo", "--out", str(out)], cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    result_file = out / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        return {"project": project, "status": f"failed (exit {proc.returncode})", "seconds": seconds}
    result = json.loads(result_file.read_text())
    result.update(status="ok", seconds=seconds)
    return result


def _verdict(row: dict) -> str:
    if row.get("status") != "ok":
        return ""
    better = row["model_value"] > row["baseline_value"] if row.get("higher_is_better", True) \
        else row["model_value"] < row["baseline_value"]
    return "model better" if better else "baseline better"


def summary_markdown(rows: list[dict]) -> str:
    """Returns the summary table: per project, the model's metric next to the classical baseline's."""
    lines = ["# Demo summary (embedded synthetic data, this machine)", "",
             "| project | task | metric | model | value | baseline | value | verdict | held-out cases | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['project']} | {r['status']} | | | | | | | | {r['seconds']:.0f} |")
            continue
        lines.append(f"| {r['project']} | {r.get('task', '')} | {r['metric']} | {r['model']} | "
                     f"{r['model_value']:.4g} | {r['baseline']} | {r['baseline_value']:.4g} | {_verdict(r)} | "
                     f"{r.get('n_cases', '')} | {r['seconds']:.0f} |")
    lines += ["", "Predictions written by each demo are listed in summary.json (`prediction`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="projects to run (default: every project with a demo)")
    parser.add_argument("--out", default=str(REPO_ROOT / "outputs" / "demo"))
    args = parser.parse_args(argv)
    projects = args.only or discover()
    out_root = Path(args.out)
    rows = [run_one(p, out_root) for p in projects]
    save_json(out_root / "summary.json", rows)
    text = summary_markdown(rows)
    save_text(out_root / "summary.md", text)
    print("\n" + text)
    failed = [r["project"] for r in rows if r.get("status") != "ok"]
    if failed:
        print(f"demo failed for: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
