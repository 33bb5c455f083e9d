from __future__ import annotations

import pytest
import torch

from common.checkpoint import module_from_checkpoint, read_checkpoint
from common.errors import DataError
from common.module import ConfiguredModule

MODEL = {"_target_": "common.module.ConfiguredModule",
         "net": {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}}


def _save(path, **extra):
    module = ConfiguredModule(net=MODEL["net"])
    torch.save({"state_dict": module.state_dict(), **extra}, path)
    return module


def test_module_from_checkpoint_restores_weights_and_config(tmp_path):
    trained = _save(tmp_path / "a.ckpt", run_config={"model": MODEL, "seed": 3})
    module, config = module_from_checkpoint(tmp_path / "a.ckpt")
    assert config["seed"] == 3 and not module.training
    torch.testing.assert_close(module.net.weight, trained.net.weight)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.ckpt: checkpoint file not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    _save(tmp_path / "b.ckpt", run_config={"model": MODEL})
    data = (tmp_path / "b.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.ckpt: cannot read checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")
    _save(tmp_path / "noconf.ckpt")
    with pytest.raises(DataError, match="no run config"):
        module_from_checkpoint(tmp_path / "noconf.ckpt")
    wrong = {**MODEL, "net": {**MODEL["net"], "in_features": 5}}
    with pytest.raises(DataError, match="do not fit"):
        module_from_checkpoint(tmp_path / "b.ckpt", wrong)


def test_an_older_checkpoint_with_config_objects_is_refused_then_upgraded(tmp_path):
    from omegaconf import OmegaConf

    from common.checkpoint import main

    old = tmp_path / "old.ckpt"
    trained = _save(old, run_config={"model": MODEL}, hyper_parameters=OmegaConf.create({"net": MODEL["net"]}))
    with pytest.raises(DataError, match="python -m common.checkpoint upgrade"):
        read_checkpoint(old)
    assert main(["upgrade", str(old)]) == 0
    assert read_checkpoint(old)["hyper_parameters"] == {"net": MODEL["net"]}  # plain containers now
    module, _ = module_from_checkpoint(old)
    torch.testing.assert_close(module.net.weight, trained.net.weight)
    assert main(["upgrade", str(tmp_path / "absent.ckpt")]) == 2
