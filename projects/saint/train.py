"""Trains SAINT: `python -m projects.saint.train experiment=msd_msr` (stage 1), then `experiment=msd_rfn`."""

from __future__ import annotations

from common.run import entry, train

if __name__ == "__main__":
    entry("saint", train)()
