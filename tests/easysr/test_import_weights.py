"""The reference's G_latest / D_latest files become one of our checkpoints: predict reads it, training starts
from it (`model.init_weights=`), and a file that is neither network is one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.checkpoint import read_checkpoint
from common.io.nifti import load_nifti, save_nifti
from common.run import CONF_ROOT, train
from common.synthetic import isotropic_volume, write_ratbrain_nifti
from projects.easysr import import_weights
from projects.easysr.predict import predict
from tests.easysr.test_model import _reference_discriminator_state, _reference_generator_state


def _templates(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in shapes.items()}


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / "easysr"), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture
def reference_files(tmp_path, distinct_like) -> tuple[Path, Path, dict, dict]:
    generator = distinct_like(_templates(_reference_generator_state()), scale=1e-6)
    discriminator = distinct_like(_templates(_reference_discriminator_state()), scale=1e-6)
    torch.save(generator, tmp_path / "G_latest_T1.pth")
    torch.save({f"module.{k}": v for k, v in discriminator.items()}, tmp_path / "D_latest_T1.pth")
    return tmp_path / "G_latest_T1.pth", tmp_path / "D_latest_T1.pth", generator, discriminator


def test_generator_and_discriminator_import_and_predict(tmp_path, reference_files, capsys):
    g_file, d_file, generator, discriminator = reference_files
    out = tmp_path / "T1.ckpt"
    assert import_weights.main([str(d_file), str(g_file), "--out", str(out)]) == 0  # any order
    assert "easysr experiment=reference" in capsys.readouterr().out
    ckpt = read_checkpoint(out)
    assert ckpt["fresh_init"] == []
    for part, state in (("generator", generator), ("discriminator", discriminator)):
        for name, value in state.items():
            torch.testing.assert_close(ckpt["state_dict"][f"{part}.{name}"], value, rtol=0, atol=0)

    scan = np.random.default_rng(0).uniform(0, 100, (10, 12, 4)).astype(np.float32)
    save_nifti(tmp_path / "thick.nii.gz", scan, np.diag([0.2, 0.2, 0.6, 1.0]))
    cfg = _compose("predict", [f"input={tmp_path / 'thick.nii.gz'}", f"output={tmp_path / 'sr.nii.gz'}",
                               f"ckpt_path={out}", "patch=null"])
    assert load_nifti(predict(cfg), allow_constant=True).shape == (10, 12, 12)


def test_generator_only_import_starts_a_fine_tuning_run(tmp_path, reference_files):
    g_file, _, generator, _ = reference_files
    shape = "model.discriminator.input_shape=[32,33,32]"  # the linear head sized for the test volumes
    out = tmp_path / "G.ckpt"
    assert import_weights.main([str(g_file), "--out", str(out), "--set", shape]) == 0
    assert read_checkpoint(out)["fresh_init"] == ["discriminator"]

    raw = tmp_path / "raw"
    write_ratbrain_nifti(raw, {f"rat{i}": isotropic_volume(i, (32, 33, 32)) for i in range(3)})
    run = tmp_path / "run"
    train(_compose("train", ["experiment=reference", shape, f"model.init_weights={out}", f"data.raw_dir={raw}",
                             f"paths.data_dir={tmp_path}", f"paths.output_dir={run}", "logger=none",
                             "callbacks=minimal", "data.patch_size=null", "data.batch_size=2", "debug=limit", "trainer.max_epochs=1",
                             "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
                             "model.optimizer.lr=0", "model.d_optimizer.lr=0", "test_after_fit=false"]))
    tuned = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert tuned["global_step"] > 0 and tuned["run_config"]["model"]["init_weights"] == str(out)
    for name, value in generator.items():
        if "running" not in name and "num_batches" not in name:  # batch-norm statistics move in train mode
            torch.testing.assert_close(tuned["state_dict"][f"generator.{name}"], value, rtol=0, atol=0)


def test_a_file_that_is_neither_network_is_one_clear_line(tmp_path, reference_files, capsys):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    assert import_weights.main([str(tmp_path / "other.pth"), "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'other.pth'}: neither an EasySR generator (conv_block1.0.weight)"
                          " nor discriminator (conv5.weight)") and "\n" not in err
    _, d_file, _, _ = reference_files
    assert import_weights.main([str(d_file), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "no generator: give the G_latest_*.pth file" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()
