"""The reference's combined SAINT checkpoint (`model_comb.pt`) becomes ours and runs through predict."""

from __future__ import annotations

import numpy as np
import torch

from common.checkpoint import read_checkpoint
from common.io.nifti import load_nifti, save_nifti
from projects.saint import import_weights, predict
from projects.saint.checkpoint import load_saint


def conv(name: str, c_in: int, c_out: int, k: int) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": torch.empty(c_out, c_in, k, k), f"{name}.bias": torch.empty(c_out)}


def rdn(prefix: str, in_ch: int, g0: int, n_rdb: int, n_layers: int, growth: int) -> dict[str, torch.Tensor]:
    """The reference RDN trunk: SFENet1/2, RDBs.i.convs.c.conv.0, RDBs.i.LFF, GFF.{0,1}."""
    layers = conv(f"{prefix}SFENet1", in_ch, g0, 3) | conv(f"{prefix}SFENet2", g0, g0, 3)
    for i in range(n_rdb):
        for c in range(n_layers):
            layers |= conv(f"{prefix}RDBs.{i}.convs.{c}.conv.0", g0 + c * growth, growth, 3)
        layers |= conv(f"{prefix}RDBs.{i}.LFF", g0 + n_layers * growth, g0, 1)
    return layers | conv(f"{prefix}GFF.0", n_rdb * g0, g0, 1) | conv(f"{prefix}GFF.1", g0, g0, 3)


def reference_layout() -> dict[str, torch.Tensor]:
    """Empty tensors named and shaped as the reference's MSR (config C, G0 64) + RFN (D 4, C 6, G 12)."""
    msr = rdn("", 3, 64, 6, 8, 32)
    for index, (c_in, c_out) in zip((0, 2, 4, 6, 8), [(1, 32), (32, 64), (64, 64), (64, 64), (64, 64)]):
        msr |= conv(f"GW.meta_block.{index}", c_in, c_out, 3)
    return msr | rdn("RFN.", 2, 64, 4, 6, 12) | conv("RFN.UPNet.0", 64, 1, 3)


def test_combined_checkpoint_imports_as_stage_2_and_predicts(tmp_path, distinct_like, capsys):
    layout = reference_layout()
    counts = {part: sum(v.numel() for k, v in layout.items() if k.startswith("RFN.") == (part == "rfn"))
              for part in ("msr", "rfn")}
    assert counts == {"msr": 2_787_712, "rfn": 371_105}  # the spec's counts: the layout is the reference's
    weights = distinct_like(layout, scale=1e-7)
    torch.save({f"module.{k}": v for k, v in weights.items()}, tmp_path / "model_comb.pt")  # DataParallel

    out = tmp_path / "imported" / "model_comb.ckpt"
    assert import_weights.main([str(tmp_path / "model_comb.pt"), "--out", str(out)]) == 0
    assert "saint experiment=msd_rfn" in capsys.readouterr().out
    ckpt = read_checkpoint(out)
    assert ckpt["run_config"]["model"]["stage"] == "rfn"
    assert ckpt["run_config"]["model"]["msr_ckpt"] == str(out.resolve())  # stage 2 finds its MSR in the file
    net, rfn_trained = load_saint(out)
    assert rfn_trained
    for name, value in weights.items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0)

    thick = np.random.default_rng(0).uniform(-200, 200, (10, 12, 3)).astype(np.float32)
    save_nifti(tmp_path / "thick.nii.gz", thick, np.diag([0.8, 0.8, 5.0, 1.0]))
    assert predict.main(["--input", str(tmp_path / "thick.nii.gz"), "--output", str(tmp_path / "thin.nii.gz"),
                         "--ckpt", str(out), "--factor", "4"]) == 0
    assert load_nifti(tmp_path / "thin.nii.gz", allow_constant=True).shape == (10, 12, 12)


def test_a_file_that_is_no_saint_checkpoint_is_one_clear_line(tmp_path, capsys):
    msr_only = {k: v for k, v in reference_layout().items() if not k.startswith("RFN.")}
    torch.save(msr_only, tmp_path / "msr.pt")
    assert import_weights.main([str(tmp_path / "msr.pt"), "--out", str(tmp_path / "x.ckpt"),
                                "--experiment", "msd_msr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'msr.pt'}: not a combined SAINT checkpoint (MSR + RFN): no weights named "
                   f"RFN.* (found {sorted(msr_only)[:3]}...)")
    assert not (tmp_path / "x.ckpt").exists()
