"""`make bench` (`make bench-speed`: speed rows only): every benchmark script in its own process; which failed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.summary import summary

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Runs every project benchmark (`--speed`: their speed rows only, `--skip-quality` passed on)."""
    args = sys.argv[1:] if argv is None else argv
    speed_only = "--speed" in args
    extra = ["--skip-quality"] if speed_only else []
    skip = {"__init__", "harness", "run_all", "summary", *({"levers"} if speed_only else set())}
    scripts = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in skip)
    failed = []
    for name in scripts:
        print(f"\n=== benchmarks/{name}.py ===", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *extra], cwd=HERE.parent).returncode
        print(f"=== {name}: exit {code} in {time.perf_counter() - start:.0f} s ===", flush=True)
        if code:
            failed.append(name)
    print("\n" + summary())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
