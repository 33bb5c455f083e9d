"""The shared driver on a toy project: run folders, resume, bf16, DDP on 2 CPU processes, multirun, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.run import train

TOY = Path(__file__).resolve().parent / "toy"
REPO = TOY.parents[2]


def _compose(out: Path, *overrides: str, callbacks: str = "minimal"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(TOY / "toyconf"), version_base="1.3"):
        return compose("train", overrides=["experiment=quick", f"callbacks={callbacks}", f"paths.output_dir={out}",
                                           *overrides])


@pytest.fixture()
def toy_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TOY))


def _steps(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def test_bf16_fit_then_resume_continues_steps_and_tensorboard_run(tmp_path, toy_on_path):
    results = train(_compose(tmp_path, "trainer.precision=bf16-mixed"))
    assert results["test/psnr"] > 10
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert _steps(last) == 8  # 2 epochs x 4 batches
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["run_config"]["model"]["net"]["width"] == 8  # the config travels with the weights
    assert json.loads((tmp_path / "metrics.json").read_text())["test/psnr"] == pytest.approx(results["test/psnr"])

    train(_compose(tmp_path, "ckpt_path=last", "trainer.max_epochs=3"))
    assert _steps(last) == 12
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["version_0"]


def test_tensorboard_scalars_panels_and_new_version_per_fresh_run(tmp_path, toy_on_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_compose(tmp_path, "trainer.max_epochs=1", "test_after_fit=false", callbacks="default"))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_epoch", "val/psnr", "val/loss", "lr/adam"} <= scalars
    assert not any(tag.endswith("_step") for tag in scalars)
    assert set(events.Tags()["images"]) == {"val/case0/z0", "val/case1/z0", "val/case2/z0", "val/case3/z0"}
    panel = events.Images("val/case0/z0")[0]
    assert panel.height >= 256 and panel.width > 4 * 256  # input | prediction | reference | error, 16x enlarged

    train(_compose(tmp_path, "trainer.max_epochs=1", "test_after_fit=false"))
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["version_0", "version_1"]


def test_last_checkpoint_follows_training_even_without_improvement(tmp_path, toy_on_path):
    train(_compose(tmp_path, "model.optimizer.lr=0", "trainer.max_epochs=3", "test_after_fit=false"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], best["epoch"]) == (2, 0)  # lr 0: the score never improves after epoch 0


def test_every_ddp_run_tolerates_unused_parameters_unless_it_opts_out():
    from common.run import ddp_strategy

    assert ddp_strategy("ddp") == "ddp_find_unused_parameters_true"
    assert ddp_strategy("ddp_spawn") == "ddp_spawn_find_unused_parameters_true"
    assert ddp_strategy("ddp_find_unused_parameters_false") == "ddp_find_unused_parameters_false"
    assert ddp_strategy("auto") == "auto"


def test_no_logger_with_the_default_callbacks(tmp_path, toy_on_path):
    results = train(_compose(tmp_path, "logger=none", "trainer.max_epochs=1", callbacks="default"))
    assert results["test/psnr"] > 10 and not (tmp_path / "tb").exists()


def _tag_steps(version: Path) -> Counter:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen: Counter = Counter()
    for path in sorted(version.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            seen.update((value.tag, event.step) for value in event.summary.value)
    return seen


def test_a_run_resumed_after_a_kill_logs_each_step_once(tmp_path, toy_on_path):
    common = ["test_after_fit=false", "~callbacks.progress_bar"]
    train(_compose(tmp_path / "straight", "trainer.max_epochs=4", *common, callbacks="default"))
    run = tmp_path / "killed"
    train(_compose(run, "trainer.max_epochs=2", *common, callbacks="default"))
    epoch2 = run / "epoch2.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", epoch2)
    train(_compose(run, "trainer.max_epochs=4", "ckpt_path=last", *common, callbacks="default"))
    shutil.copy(epoch2, run / "checkpoints" / "last.ckpt")  # as if killed after logging epochs 3-4, before saving
    train(_compose(run, "trainer.max_epochs=4", "ckpt_path=last", *common, callbacks="default"))
    assert sorted(p.name for p in (run / "tb").iterdir()) == ["version_0"]
    resumed, straight = _tag_steps(run / "tb" / "version_0"), _tag_steps(tmp_path / "straight" / "tb" / "version_0")
    assert resumed == straight  # the same (tag, step) points as a run never interrupted, each as often
    assert max(step for tag, step in resumed if tag == "train/loss") == 15


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    return subprocess.run([sys.executable, str(TOY / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ddp_on_two_cpu_processes_one_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run("experiment=quick", "callbacks=minimal", "trainer=ddp_cpu", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/psnr"] > 10
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # ranks did not make folders of their own
    assert sorted(p.name for p in (run_dir / "tb").iterdir()) == ["version_0"]
    assert _steps(run_dir / "checkpoints" / "last.ckpt") == 4  # 2 epochs x 2 batches per rank


def test_multirun_with_ddp_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run("-m", "experiment=quick", "callbacks=minimal", "trainer=ddp_cpu", "trainer.max_epochs=1",
                "model.net.width=4,6", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job, width in zip(jobs, (4, 6)):
        cfg = (sweep / job / ".hydra" / "config.yaml").read_text()
        assert f"width: {width}" in cfg
        assert "test/psnr" in json.loads((sweep / job / "metrics.json").read_text())
        assert not list((sweep / job).glob("**/multirun*"))


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    proc = _run("experiment=quick", "ckpt_path=/nonexistent/x.ckpt", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "/nonexistent/x.ckpt: checkpoint file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_last_checkpoint_is_written_every_epoch_when_validation_is_sparse(tmp_path, toy_on_path):
    train(_compose(tmp_path, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", "test_after_fit=false"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 12)  # epoch 3 had no validation, yet last.ckpt has it
