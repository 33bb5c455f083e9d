"""The reference's RSTN snapshot (PyTorch port) becomes one of our checkpoints and runs through predict.py."""

from __future__ import annotations

import numpy as np
import torch

from common.io.nifti import load_nifti, save_nifti
from projects.rstn import import_weights, predict
from projects.rstn.eval import load_plane_model
from projects.rstn.model import RSTN

# The reference FCN8s's parameter names (OrganSegRSTN/model.py): 13 VGG convs, fc6/fc7, three score layers with
# bias, three bias-free deconvolutions; RSTN adds coarse_model / saliency1 / saliency2 / fine_model around them.
FCN_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
             "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "score_fr", "score_pool3", "score_pool4"]
FCN_DECONVS = ["upscore2", "upscore8", "upscore_pool4"]


def reference_names() -> list[str]:
    fcn = [f"{c}.{p}" for c in FCN_CONVS for p in ("weight", "bias")] + [f"{d}.weight" for d in FCN_DECONVS]
    return ([f"coarse_model.{n}" for n in fcn] + [f"saliency{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
            + [f"fine_model.{n}" for n in fcn])


def test_reference_snapshot_imports_and_predicts(tmp_path, distinct_like, small_case, capsys):
    width = 0.0625  # experiment=demo: the reference layout at 1/16 of the channels
    shapes = RSTN(3, width).state_dict()
    assert set(shapes) == set(reference_names())  # our names are the reference's, one for one
    snapshot = distinct_like({name: shapes[name] for name in reference_names()}, scale=1e-7)
    torch.save(snapshot, tmp_path / "FD0:XJ3_1_20180101.pkl")

    out = tmp_path / "imported" / "X" / "checkpoints" / "last.ckpt"
    code = import_weights.main([str(tmp_path / "FD0:XJ3_1_20180101.pkl"), "--out", str(out), "--experiment",
                                "demo"])
    assert code == 0 and "rstn experiment=demo" in capsys.readouterr().out
    net = load_plane_model(out)
    for name, value in snapshot.items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0)

    hu, _, affine = small_case(1)
    save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    assert predict.main(["--input", str(tmp_path / "ct.nii.gz"), "--output", str(tmp_path / "mask.nii.gz"),
                         "--checkpoint", f"X={out}", "--max-rounds", "2"]) == 0
    mask = load_nifti(tmp_path / "mask.nii.gz", allow_constant=True)
    assert mask.shape == hu.shape and np.allclose(mask.affine, affine)


def test_a_file_that_is_no_rstn_snapshot_is_one_clear_line(tmp_path, capsys):
    vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(2, 8)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    assert import_weights.main([str(tmp_path / "vgg16.pth"), "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'vgg16.pth'}: not an RSTN snapshot") and "\n" not in err
    assert "coarse_model.*" in err and "fine_model.*" in err and not (tmp_path / "x.ckpt").exists()
