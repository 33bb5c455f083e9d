"""The import command end to end: authors' file -> checkpoint -> eval, predict, fine-tuning; errors in one line."""

from __future__ import annotations

import torch

from common.checkpoint import module_from_checkpoint
from common.run import train
from projects.fastmri_gen.eval import evaluate
from projects.fastmri_gen.import_weights import main
from projects.fastmri_gen.predict import predict
from tests.fastmri_gen.test_import_weights import reference_state
from tests.fastmri_gen.test_proxy_weights import torchvision_mobilenet_v2_state
from tests.fastmri_gen.test_train import compose_cfg, tiny


def test_import_command_writes_a_checkpoint_that_eval_predict_and_fine_tuning_accept(fastmri_root, tmp_path, capsys):

    state = reference_state(False, 32, 512)  # the paper's widths
    torch.save(state, tmp_path / "authors.pth")
    ckpt = tmp_path / "imported.ckpt"
    assert main([str(tmp_path / "authors.pth"), "--out", str(ckpt)]) == 0
    module, config = module_from_checkpoint(ckpt)
    assert config["experiment_name"] == "knee_reference" and config["model"]["net"]["data_consistency"] == "reference"
    assert config["data"]["fidelity"]["zero_one_norm"] and config["model"]["fidelity"]["train_mode_validation"]
    threshold = module.net.blocks[0].thresholds[3].threshold.reshape(1)
    assert torch.equal(threshold, state["rec_blocks.0.soft_thresholders.1.lambd"])
    scored = evaluate(compose_cfg(["experiment=knee_reference", f"ckpt_path={ckpt}", "eval.accelerations=[4]",
                                   *tiny(fastmri_root, tmp_path / "eval")], name="eval"))
    assert len(scored["x4"]["cases"]) == 3 and torch.isfinite(torch.tensor(scored["x4"]["mean"]["psnr"]))
    assert [p.name for p in predict(ckpt, fastmri_root / "singlecoil_test", tmp_path / "pred")] == ["file1200001.h5"]
    tuned = train(compose_cfg(["experiment=knee_reference", f"model.init_weights={ckpt}", "debug=fdr",
                               "data.sample_rate=1.0", "data.val_sample_rate=1.0",
                               *tiny(fastmri_root, tmp_path / "ft")]))
    assert torch.isfinite(torch.tensor(tuned["train/loss"]))
    # the wrong model for the experiment: one line on stderr, exit code 2, nothing written
    capsys.readouterr()
    torch.save(reference_state(True, 4, 64), tmp_path / "generative.pth")
    assert main([str(tmp_path / "generative.pth"), "--out", str(tmp_path / "no.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generative.pth" in err and "knee_reference_generative" in err
    assert not (tmp_path / "no.ckpt").exists()


def test_import_generative_with_the_proxy_file(tmp_path):

    state = reference_state(True, 32, 512)
    torch.save(state, tmp_path / "authors_generative.pth")
    proxy = torchvision_mobilenet_v2_state(seed=1)
    torch.save(proxy, tmp_path / "mobilenet_v2.pth")
    ckpt = tmp_path / "generative.ckpt"
    assert main([str(tmp_path / "mobilenet_v2.pth"), str(tmp_path / "authors_generative.pth"), "--out", str(ckpt),
                 "--experiment", "knee_reference_generative"]) == 0
    module, _ = module_from_checkpoint(ckpt)
    assert torch.equal(module.proxy.trunk.features[18][0].weight, proxy["features.18.0.weight"])  # ImageNet proxy
    assert torch.equal(module.net.z_encoder.trunk.features[18][0].weight, state["z_encoder.features.18.0.weight"])
    assert torch.equal(module.net.mapping[2].weight_orig, state["w_encoder.model.2.weight_orig"])
