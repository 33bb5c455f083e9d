"""Trains RSTN: `python -m projects.rstn.train experiment=nih_pancreas fold=0 plane=Z` (plane=A: X, Y, Z in turn).

Each plane's run lives in `outputs/rstn/<experiment>_fd<fold>/<plane>/` (checkpoints, TensorBoard, metrics.json).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.run import entry, launches_processes, run_in_child, train

PLANES = ("X", "Y", "Z")


def train_planes(cfg: DictConfig) -> dict[str, float]:
    """Trains the configured plane, or every plane when `plane=A`; returns the metrics keyed `<plane>/<name>`."""
    planes = PLANES if cfg.plane == "A" else (str(cfg.plane),)
    base = Path(OmegaConf.select(cfg, "paths.output_dir"))
    results: dict[str, float] = {}
    if len(planes) > 1 and launches_processes(cfg):
        # DDP starts its ranks by running this command again: one child command per plane keeps them in step.
        for plane in planes:
            metrics = run_in_child([f"plane={plane}"], metrics_dir=base / plane)
            results.update({f"{plane}/{k}": v for k, v in metrics.items()})
        return results
    for plane in planes:
        plane_cfg = cfg.copy()
        OmegaConf.update(plane_cfg, "plane", plane)
        OmegaConf.update(plane_cfg, "paths.output_dir", str(base / plane))
        results.update({f"{plane}/{k}": v for k, v in train(plane_cfg).items()})
    return results


if __name__ == "__main__":
    entry("rstn", train_planes)()
