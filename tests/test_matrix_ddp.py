"""Run matrix, third and fifth axes: DDP on 2 CPU processes for every demo, and the cluster path.

Third axis: each project's demo (and the reference-mode GAN runs) trains with `trainer=ddp_cpu`: two gloo
processes in a subprocess (DDP must never start inside pytest), a few steps; the run has one folder with one
TensorBoard version, and the test step ran once, after the fit, in one process. Data is written small into the
test's folder in the layout each experiment reads.

Fifth axis, the cluster path on this machine: a demo trains as 2 nodes x 1 process, each "node" started on its
own with the node rank and master address in its environment, as SLURM or torchrun would; and a small `-m` sweep
runs through `hydra/launcher=submitit_local` (the launcher code of `submitit_slurm`, jobs as local processes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.run import REPO_ROOT
from common.synthetic import isotropic_volume, write_ratbrain_nifti

SHORT = ["trainer=ddp_cpu", "threads=1", "num_workers=0", "trainer.max_epochs=1", "trainer.max_steps=-1",
         "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2",
         "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1"]


def _saint(data: Path) -> list[str]:
    from projects.saint.demo import write_demo_msd
    from projects.saint.prepare import prepare

    prepare([write_demo_msd(data / "msd", n_train=3, n_test=1, shape=(20, 18, 28))], data / "cache")
    return [f"data.cache_dir={data / 'cache'}", "data.batch_size=2", "data.val_count=1", "model.net.g0=8",
            "model.net.n_rdb=1", "model.net.n_layers=2", "model.net.growth=4", "model.net.gw_hidden=[4,8,8,8]"]


def _easysr(data: Path) -> list[str]:
    write_ratbrain_nifti(data / "raw", {f"rat{i}": isotropic_volume(i, (32, 33, 32)) for i in range(4)})
    return [f"data.raw_dir={data / 'raw'}", f"paths.data_dir={data}", "data.patch_size=null", "data.batch_size=1",
            "model.discriminator.input_shape=[32,33,32]"]


def _fastmri(data: Path) -> list[str]:
    return [f"data.data_dir={data / 'fastmri'}", "data.cache_dir=null", "data.batch_size=2", "data.val_batch_size=2",
            "data.sample_rate=1.0", "data.val_sample_rate=1.0", "model.net.min_channels=8", "model.net.max_channels=16",
            "model.discriminator.base_channels=8",
            "+data.synthetic={train_volumes: 2, val_volumes: 2, slices: 2, size: 32, seed: 0}"]


def _rstn(data: Path) -> list[str]:
    return [f"data.cache_dir={data / 'cache'}", "data.synthetic.n_cases=8", "data.synthetic.shape=[32,32,16]",
            "data.val_cases=1", "model.net.width=0.0625"]


def _spin(data: Path) -> list[str]:
    return [f"data.root={data / 'synthetic'}", "data.n_train=4", "data.n_test=1", "data.shape=[32,40,24]",
            "data.batch_size=2", "data.eval_batch_size=8", "model.net.embedding_width=4",
            "model.net.encoder_widths=[8,8,8,8,8]", "model.net.decoder_widths=[8,8,8,8,8,8]",
            "model.net.downsampler_widths=[4,4]"]


CELLS = {("saint", "demo"): _saint, ("easysr", "demo"): _easysr, ("easysr", "reference"): _easysr,
         ("fastmri_gen", "demo"): _fastmri, ("fastmri_gen", "knee_reference"): _fastmri,
         ("rstn", "demo"): _rstn, ("spin", "demo"): _spin}


def _command(project: str, overrides: list[str], **env_vars: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    env.update(PYTHONPATH=str(REPO_ROOT), **env_vars)
    return [sys.executable, str(REPO_ROOT / "projects" / project / "train.py"), *overrides], env


def train_subprocess(project: str, overrides: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `projects/<project>/train.py` with `overrides` in a fresh process (no inherited DDP variables)."""
    cmd, env = _command(project, overrides)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _run_folders(run_dir: Path, project: str) -> list[Path]:
    return [run_dir / plane for plane in "XYZ"] if project == "rstn" else [run_dir]


@pytest.mark.slow
@pytest.mark.parametrize(("project", "experiment"), list(CELLS), ids=[f"{p}-{e}" for p, e in CELLS])
def test_ddp_two_cpu_processes(project: str, experiment: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [f"experiment={experiment}", *SHORT, f"hydra.run.dir={run_dir}",
                 *CELLS[(project, experiment)](tmp_path / "data")]
    proc = train_subprocess(project, overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no folder of a rank's own
    for folder in _run_folders(run_dir, project):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert any(k.startswith("test/") for k in metrics), metrics  # the test step ran, after the fit
        assert sorted(p.name for p in (folder / "tb").iterdir()) == ["version_0"]
        assert (folder / "checkpoints" / "last.ckpt").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_each(tmp_path: Path) -> None:
    data = _spin(tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = ["experiment=demo", *SHORT, "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={run_dir}",
                 *data]
    port = str(_free_port())
    nodes = []
    for rank in (0, 1):  # what a scheduler does: one launch per node, the rendezvous in the environment
        cmd, env = _command("spin", overrides, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank),
                            WORLD_SIZE="2")
        nodes.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]  # node 1 joined node 0's process group
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert any(k.startswith("test/") for k in metrics)
    assert sorted(p.name for p in (run_dir / "tb").iterdir()) == ["version_0"]
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # 2 batches per rank: the 2 nodes split each epoch between them


@pytest.mark.slow
def test_a_sweep_through_the_submitit_launcher(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = ["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", "experiment=demo",
                 "model.optimizer.lr=1e-3,2e-3", *SHORT, "trainer=cpu", *_spin(tmp_path / "data")]
    proc = train_subprocess("spin", overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job, lr in zip(jobs, ("0.001", "0.002")):
        assert f"lr: {lr}" in (sweep / job / ".hydra" / "config.yaml").read_text()
        assert "test/dice" in json.loads((sweep / job / "metrics.json").read_text())
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit, each in its own folder
