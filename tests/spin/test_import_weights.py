"""The reference's SPiN checkpoint (five sub-network dicts, its own names) becomes ours and runs through predict."""

from __future__ import annotations

import numpy as np
import torch

from common.checkpoint import module_from_checkpoint
from common.io.nifti import load_nifti, save_nifti
from projects.spin import import_weights, predict

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def ref_conv(name: str, c_in: int, c_out: int, k: int, bn: bool = True) -> dict[str, torch.Tensor]:
    """The reference's `net_utils.Conv2d`: `<name>.conv.weight` (no bias) and `<name>.batch_norm.*`."""
    layer = {f"{name}.conv.weight": torch.empty(c_out, c_in, k, k)}
    if bn:
        layer |= {f"{name}.batch_norm.{p}": torch.empty(c_out) for p in BN[:4]}
        layer[f"{name}.batch_norm.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return layer


def ref_block(name: str, c_in: int, c_out: int) -> dict[str, torch.Tensor]:
    """The reference's `ResNetBlock`: conv1, conv2 and a 1x1 projection that is always built."""
    return (ref_conv(f"{name}.conv1", c_in, c_out, 3) | ref_conv(f"{name}.conv2", c_out, c_out, 3)
            | ref_conv(f"{name}.projection", c_in, c_out, 1, bn=False))


def reference_checkpoint() -> dict[str, dict[str, torch.Tensor]]:
    """Empty tensors in the layout the reference's `SPiNModel.save_model` writes (paper configuration)."""
    spe_enc = ref_conv("conv0", 5, 16, 5) | ref_block("blocks.0", 16, 16) | ref_block("blocks.1", 16, 16)
    spe_enc |= ref_conv("conv1", 16, 16, 3)
    spe_dec = ref_conv("upsampling_blocks.0", 16, 64, 1) | ref_conv("output", 16, 8, 3, bn=False)
    spg = ref_conv("conv_modules.0.0", 8, 8, 3) | ref_conv("conv_modules.1.0", 32, 8, 3)
    seg_enc = ref_conv("conv1", 5, 32, 7)
    for stage, (c_in, c_out) in zip(range(2, 6), [(32, 64), (64, 128), (128, 196), (196, 196)]):
        seg_enc |= ref_block(f"blocks{stage}.0", c_in, c_out) | ref_block(f"blocks{stage}.1", c_out, c_out)
    seg_dec = {}
    for block, c_in, skip, c_out in [("deconv4", 196, 196, 196), ("deconv3", 196, 128, 128), ("deconv2", 128, 64, 64),
                                     ("deconv1", 64, 32, 32), ("deconv0", 32, 8, 16),
                                     ("deconv_super_resolution", 16, 8, 16)]:
        seg_dec |= ref_conv(f"{block}.deconv.conv", c_in, c_out, 3) | ref_conv(f"{block}.conv", c_out + skip, c_out, 3)
    seg_dec |= ref_conv("output", 16, 1, 3, bn=False)
    seg_dec |= ref_conv("learnable_downsampler.conv_block.0", 64, 16, 3, bn=False)
    seg_dec |= ref_conv("learnable_downsampler.conv_block.1", 16, 16, 3, bn=False)
    seg_dec |= ref_conv("learnable_downsampler.weights", 16, 4, 1, bn=False)
    return {"encoder_subpixel_embedding_state_dict": spe_enc, "decoder_subpixel_embedding_state_dict": spe_dec,
            "subpixel_guidance_state_dict": spg, "encoder_segmentation_state_dict": seg_enc,
            "decoder_segmentation_state_dict": seg_dec}


def _trainable(section: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in section.items() if not k.rsplit(".", 1)[-1].startswith(("running", "num")))


def test_reference_checkpoint_imports_and_predicts(tmp_path, distinct_like, capsys):
    layout = reference_checkpoint()
    assert sum(_trainable(s) for s in layout.values()) == 5_263_808  # the reference's count (spec)
    ckpt = {entry: distinct_like(section) for entry, section in layout.items()}
    for k, entry in enumerate(ckpt):  # distinct across sections too
        ckpt[entry] = {n: v + 10**6 * k if v.is_floating_point() else v for n, v in ckpt[entry].items()}
    torch.save({**ckpt, "train_step": 43200, "optimizer_state_dict": {"state": {}, "param_groups": []}},
               tmp_path / "spin_atlas.pth")

    out = tmp_path / "imported.ckpt"
    assert import_weights.main([str(tmp_path / "spin_atlas.pth"), "--out", str(out)]) == 0
    assert "spin experiment=atlas_traintest" in capsys.readouterr().out
    module, _ = module_from_checkpoint(out)
    ours = module.state_dict()
    assert sum(p.numel() for p in module.net.parameters()) == 5_165_984  # the dead 97,824 were dropped
    pairs = {("encoder_subpixel_embedding_state_dict", "blocks.1.conv2.batch_norm.running_var"):
             "net.embedding.blocks.1.conv2.norm.running_var",
             ("decoder_subpixel_embedding_state_dict", "upsampling_blocks.0.conv.weight"): "net.embedding.expand.conv.weight",
             ("decoder_subpixel_embedding_state_dict", "output.conv.weight"): "net.embedding.output.conv.weight",
             ("subpixel_guidance_state_dict", "conv_modules.0.0.conv.weight"): "net.guidance.level2x.conv.weight",
             ("subpixel_guidance_state_dict", "conv_modules.1.0.batch_norm.bias"): "net.guidance.level1x.norm.bias",
             ("encoder_segmentation_state_dict", "blocks5.0.projection.conv.weight"): "net.encoder.blocks5.0.shortcut.weight",
             ("encoder_segmentation_state_dict", "blocks3.1.conv1.conv.weight"): "net.encoder.blocks3.1.conv1.conv.weight",
             ("decoder_segmentation_state_dict", "deconv0.deconv.conv.conv.weight"): "net.decoder.deconv0.up_conv.conv.weight",
             ("decoder_segmentation_state_dict", "deconv_super_resolution.conv.batch_norm.weight"):
             "net.decoder.deconv_super_resolution.fuse_conv.norm.weight",
             ("decoder_segmentation_state_dict", "learnable_downsampler.conv_block.1.conv.weight"):
             "net.downsampler.weights.1.conv.weight",
             ("decoder_segmentation_state_dict", "learnable_downsampler.weights.conv.weight"):
             "net.downsampler.weights.2.conv.weight"}
    for (entry, name), our_name in pairs.items():
        torch.testing.assert_close(ours[our_name], ckpt[entry][name], rtol=0, atol=0)
    floats = [v for v in ours.values() if v.is_floating_point()]
    assert len({float(v.flatten()[0]) for v in floats}) == len(floats)  # every tensor came from its own source

    rng = np.random.default_rng(0)
    save_nifti(tmp_path / "t1.nii.gz", rng.uniform(0, 100, (20, 24, 7)).astype(np.float32), np.eye(4))
    assert predict.main(["--ckpt", str(out), "--input", str(tmp_path / "t1.nii.gz"), "--output",
                         str(tmp_path / "mask.nii.gz")]) == 0
    assert load_nifti(tmp_path / "mask.nii.gz", allow_constant=True).shape == (20, 24, 7)


def test_a_file_that_is_no_spin_checkpoint_is_one_clear_line(tmp_path, capsys):
    layout = reference_checkpoint()
    del layout["subpixel_guidance_state_dict"]  # a U-Net run of the reference saves no subpixel parts
    torch.save(layout, tmp_path / "unet.pth")
    assert import_weights.main([str(tmp_path / "unet.pth"), "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'unet.pth'}: not a SPiN checkpoint of the reference: no "
                          "subpixel_guidance_state_dict") and "\n" not in err
    assert not (tmp_path / "x.ckpt").exists()
