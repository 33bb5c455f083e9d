"""Training options beyond the paper: MSE loss, the kernel generator's learning rate, the demo experiments, and
the benchmark keeping the speed rows of an earlier results file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.run import CONF_ROOT
from projects.saint.model import distance_map, linear_phases
from projects.saint.module import LOSSES, SaintModule, masked_mse

SMALL_NET = {"g0": 16, "n_rdb": 2, "n_layers": 3, "growth": 8, "gw_hidden": [8, 16, 16, 16],
             "rfn": {"g0": 8, "n_rdb": 1, "n_layers": 2, "growth": 4}}


def compose_model(experiment: str, overrides: list[str] = ()) -> dict:
    with initialize_config_dir(config_dir=str(CONF_ROOT / "saint"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def module_from(model_cfg: dict, **net: object) -> SaintModule:
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("_target_", "init_weights")}
    model_cfg["net"] = {**model_cfg["net"], **net}
    return SaintModule(**model_cfg)


def test_masked_mse_is_the_squared_error_in_units_of_4000_over_the_real_phases() -> None:
    target = torch.zeros(1, 6, 2, 3)
    pred = torch.full_like(target, 400.0)
    mask = torch.zeros_like(target)
    mask[:, :4] = 1
    pred[:, 4:] = 4000.0  # padded phases do not count
    torch.testing.assert_close(masked_mse(pred, target, mask), torch.tensor(0.01))


def test_kernel_generator_gets_its_own_learning_rate() -> None:
    module = module_from(compose_model("demo"), **SMALL_NET)
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {len(g["params"]): g["lr"] for g in optimizer.param_groups}
    gw = {id(p) for p in module.net.GW.parameters()}
    gw_group = next(g for g in optimizer.param_groups if {id(p) for p in g["params"]} == gw)
    assert gw_group["lr"] == 1e-5 and len(groups) == 2
    paper = module_from(compose_model("demo_paper"), **SMALL_NET).configure_optimizers()
    assert len(paper.param_groups) == 1 and paper.param_groups[0]["lr"] == 1e-4


def _first_step_jump(model_cfg: dict, seed: int = 0) -> float:
    """Mean |output - linear interpolation| (HU) after one training step from the initial weights."""
    torch.manual_seed(seed)
    module = module_from(model_cfg, **SMALL_NET)
    optimizer = module.configure_optimizers()["optimizer"]
    gen = torch.Generator().manual_seed(seed)
    lr = torch.rand(4, 3, 24, 6, generator=gen) * 2000 + 500
    dist = torch.from_numpy(distance_map(4, 1.25, 0.8, 6))[None].expand(4, -1, -1, -1).contiguous()
    target = linear_phases(lr[:, 1], dist) + torch.randn(4, 6, 24, 6, generator=gen) * 50
    mask = torch.zeros_like(target)
    mask[:, :4] = 1
    loss = LOSSES[module.hparams.loss](module.net(lr, dist), target, mask)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        return float(((module.net(lr, dist) - linear_phases(lr[:, 1], dist)) * mask).abs().mean())


def test_the_linear_skip_is_not_thrown_off_by_the_first_steps() -> None:
    """At the trunk's learning rate one Adam step of the kernel generator moves every output by hundreds of HU
    (the generated kernel multiplies every feature); at 1/100 of it the output stays near the interpolation."""
    demo = compose_model("demo")
    slow = _first_step_jump(demo)
    fast = _first_step_jump({**demo, "gw_lr_scale": 1.0})
    assert slow < 20.0 and fast > 10 * slow


def test_demo_paper_is_the_paper_formulation_at_the_demo_width() -> None:
    demo, paper = compose_model("demo"), compose_model("demo_paper")
    assert (paper["net"]["skip"], paper["net"]["intensity_scale"], paper["loss"]) == ("none", 1.0, "l1")
    assert paper["optimizer"]["lr"] == 1e-4 and paper["scheduler"] is None and paper["gw_lr_scale"] == 1.0
    assert {k: v for k, v in paper["net"].items() if k not in ("skip", "intensity_scale")} == \
        {k: v for k, v in demo["net"].items() if k not in ("skip", "intensity_scale")}
    assert demo["net"]["skip"] == "linear" and demo["loss"] == "mse"


def test_a_quality_only_benchmark_keeps_the_earlier_speed_rows(tmp_path: Path, monkeypatch) -> None:
    import benchmarks.harness as harness
    import benchmarks.saint as bench

    speed = {"measurement": "MSR train step", "seconds": 1.5}
    old_quality = {"factor": "x4", "method": "linear along z", "psnr_db": 30.0}
    results = tmp_path / "saint.json"
    results.write_text(json.dumps({"rows": [old_quality, speed], "when": "earlier", "threads": 2}))
    new_quality = [{"factor": "x4", "method": "SAINT rfn fusion", "psnr_db": 31.0}]
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "quality_rows", lambda *a, **k: new_quality)
    assert bench.main(["--skip-speed", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    written = json.loads(results.read_text())
    rows = written["rows"]
    assert rows == [*new_quality, speed]
    assert written["speed_rows_from"]["when"] == "earlier" and written["speed_rows_from"]["threads"] == 2
    assert np.isfinite(rows[0]["psnr_db"])

