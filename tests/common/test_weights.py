"""Third-party weights: safe reading, imported checkpoints, and `model.init_weights=` fine-tuning (toy project)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import common.model_card
from common.checkpoint import init_from_checkpoint, instantiate_model, module_from_checkpoint, read_checkpoint
from common.errors import DataError
from common.run import train
from common.weights import import_main, load_third_party, require_keys, write_imported_checkpoint

TOY = Path(__file__).resolve().parent / "toy"


class _Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tensors(n: int = 3) -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": torch.arange(6.0).reshape(2, 3) + 1000 * i for i in range(n)}


@pytest.fixture()
def toy(monkeypatch):
    """The toy project as if it were `conf/toyconf/`: importable module, configs found by compose_experiment."""
    monkeypatch.syspath_prepend(str(TOY))
    monkeypatch.setattr(common.model_card, "CONF_ROOT", TOY)
    return "toyconf"


def _toy_cfg(out: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(TOY / "toyconf"), version_base="1.3"):
        return compose("train", overrides=["experiment=quick", "callbacks=default", "logger=tensorboard",
                                           f"paths.output_dir={out}", "test_after_fit=false", *overrides])


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "net", "nested+module"])
def test_load_third_party_unwraps_the_usual_containers(tmp_path, wrap):
    state = _tensors()
    stored = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
              "net": {"net": state, "optimizer": {"lr": 1}},
              "nested+module": {"state_dict": {"model": {f"module.{k}": v for k, v in state.items()}}}}[wrap]
    torch.save(stored, tmp_path / "w.pth")
    loaded = load_third_party(tmp_path / "w.pth")
    assert list(loaded) == list(state)
    for key in state:
        torch.testing.assert_close(loaded[key], state[key])


def test_a_pickle_with_a_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(DataError) as err:
        load_third_party(tmp_path / "evil.pth")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'evil.pth'}: refused") and "system" in message
    assert not marker.exists()


def test_bad_files_are_one_line_naming_the_file(tmp_path):
    torch.save(_tensors(), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("not a torch file")
    torch.save({"weights": [1, 2], "name": "x"}, tmp_path / "list.pth")
    cases = {"missing.pth": "checkpoint file not found", "cut.pth": "cannot read checkpoint",
             "text.pth": "cannot read checkpoint", "list.pth": "not a state dict"}
    for name, problem in cases.items():
        with pytest.raises(DataError) as err:
            load_third_party(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: {problem}") and "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"not an RSTN snapshot: no weights named fine\.\*"):
        require_keys(_tensors(), ["layer0.", "fine."], tmp_path / "good.pth", "an RSTN snapshot")


def test_imported_checkpoint_is_strict_and_loads_everywhere(tmp_path, toy):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1))
    state = {f"net.body.{k}": v + 1000 * i for i, (k, v) in enumerate(net.state_dict().items())}
    out = write_imported_checkpoint(tmp_path / "imported.ckpt", toy, "quick", state, "release.pth")
    ckpt = read_checkpoint(out)  # weights_only=True
    assert ckpt["imported_from"] == ["release.pth"] and ckpt["global_step"] == 0
    assert ckpt["run_config"]["model"]["net"]["width"] == 8
    module, config = module_from_checkpoint(out)
    assert config["experiment_name"] == "quick"
    for key, value in state.items():
        torch.testing.assert_close(module.state_dict()[key], value)

    del state["net.body.2.bias"]
    state["net.head.weight"] = torch.zeros(1)
    with pytest.raises(DataError, match=r"release\.pth: weights do not fit toyconf experiment=quick: 1 missing "
                                        r"keys \['net\.body\.2\.bias'\], 1 unexpected keys \['net\.head\.weight'\]"):
        write_imported_checkpoint(tmp_path / "bad.ckpt", toy, "quick", state, "release.pth")
    assert not (tmp_path / "bad.ckpt").exists()


def test_import_command_prints_one_line_and_fails_cleanly(tmp_path, toy, capsys):
    def convert(sources: list[Path], experiment: str) -> dict[str, torch.Tensor]:
        loaded = load_third_party(sources[0])
        return {f"net.body.{k}": v for k, v in loaded.items()}

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    torch.save({"state_dict": net.state_dict()}, tmp_path / "release.pth")
    argv = [str(tmp_path / "release.pth"), "--out", str(tmp_path / "w.ckpt"), "--set", "model.net.width=4"]
    assert import_main(toy, convert, "quick", "Import toy weights.", argv) == 0
    assert capsys.readouterr().out.strip() == (f"{tmp_path / 'w.ckpt'}: 4 tensors from {tmp_path / 'release.pth'} "
                                               f"as {toy} experiment=quick")
    wrong = [str(tmp_path / "release.pth"), "--out", str(tmp_path / "x.ckpt")]  # width 8, the file has 4
    assert import_main(toy, convert, "quick", "Import toy weights.", wrong) == 2
    assert "size mismatch" in capsys.readouterr().err and not (tmp_path / "x.ckpt").exists()


def _adam_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


def test_init_weights_loads_weights_only_fresh_optimiser_step_0_new_version(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TOY))
    run = tmp_path / "run"
    train(_toy_cfg(run, "trainer.max_epochs=1"))
    first = read_checkpoint(run / "checkpoints" / "last.ckpt")  # a real training run's file, weights_only=True
    assert first["global_step"] == 4 and _adam_steps(first) == {4}
    assert isinstance(first["hyper_parameters"]["net"], dict)  # plain containers, not DictConfig
    shutil.copy(run / "checkpoints" / "last.ckpt", tmp_path / "start.ckpt")

    module = instantiate_model(_toy_cfg(run, f"model.init_weights={tmp_path / 'start.ckpt'}").model)
    init_from_checkpoint(module, tmp_path / "start.ckpt")
    for key, value in first["state_dict"].items():
        torch.testing.assert_close(module.state_dict()[key], value)

    # lr 0: the weights stay what init_weights loaded, so the run's checkpoint shows them
    train(_toy_cfg(run, f"model.init_weights={tmp_path / 'start.ckpt'}", "model.optimizer.lr=0",
                   "trainer.max_epochs=1"))
    second = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 4 and _adam_steps(second) == {4}  # counted from 0, not continued
    assert second["run_config"]["model"]["init_weights"] == str(tmp_path / "start.ckpt")
    for key, value in first["state_dict"].items():
        torch.testing.assert_close(second["state_dict"][key], value)
    assert sorted(p.name for p in (run / "tb").iterdir()) == ["version_0", "version_1"]

    with pytest.raises(DataError, match="weights do not fit"):
        train(_toy_cfg(tmp_path / "other", f"model.init_weights={tmp_path / 'start.ckpt'}", "model.net.width=4"))
