"""The demo trains its planes in parallel worker processes with the same result as one after the other."""

from __future__ import annotations

import torch

from projects.rstn.demo import RUN_NAME, plane_jobs, run

TINY = ["trainer.limit_val_batches=0", "logger=none", "model.optimizer.lr=1e-3"]


def _weights(out, plane: str) -> dict[str, torch.Tensor]:
    ckpt = torch.load(out / RUN_NAME / plane / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def test_planes_trained_in_worker_processes_equal_planes_trained_in_turn(tmp_path):
    kwargs = {"n_cases": 8, "shape": (32, 32, 16), "planes": "XZ", "steps": 3, "overrides": TINY, "threads": 1,
              "precision": "32"}  # float32 also on a CPU with bf16, where "auto" would train in bf16
    alone = run(tmp_path / "in_turn", jobs=1, **kwargs)
    workers = run(tmp_path / "workers", jobs=2, **kwargs)
    assert (alone["train_jobs"], workers["train_jobs"]) == (1, 2)
    assert alone["train_precision"] == workers["train_precision"] == "32"
    for key in ("model_value", "fusion_value", "oracle_value", "baseline_value", "coarse_values", "train_steps"):
        assert workers[key] == alone[key], key
    for plane in "XZ":
        ours, theirs = _weights(tmp_path / "workers", plane), _weights(tmp_path / "in_turn", plane)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not torch.equal(_weights(tmp_path / "workers", "X")["net.fine_model.fc6.weight"],
                           _weights(tmp_path / "workers", "Z")["net.fine_model.fc6.weight"])


def test_plane_jobs():
    assert plane_jobs("XYZ", 2) == 2 and plane_jobs("Z", 4) == 1 and plane_jobs("XY", 0) == 1
    assert plane_jobs("XYZ") in (1, 3)
