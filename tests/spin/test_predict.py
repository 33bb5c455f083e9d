"""predict keeps the input grid and affine (oblique, flipped axes); augmentation keeps image and label aligned."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from common.io.nifti import save_nifti
from projects.spin.augment import augment_batch
from projects.spin.data import normalise
from projects.spin.predict import logits_function, predict_volume, segment_nifti


def _threshold_net(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: lesion where the centre slice is brighter than a level and its W-neighbour darker."""
    centre = x[:, x.shape[1] // 2: x.shape[1] // 2 + 1]
    return centre - normalise(np.float32(50.0)) + 0.5 * (centre - centre.roll(1, dims=-1))


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    # Array axes stored as (S, -R, A) with 1.2 / 1.0 / 0.9 mm voxels, rotated about S.
    axes = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], dtype=float).T * np.array([1.2, 1.0, 0.9])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes
    affine[:3, 3] = [-30.0, 12.5, 40.0]
    return affine


def test_predict_keeps_the_grid_of_an_oblique_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 100, size=(14, 17, 11)).astype(np.float32)
    affine = _oblique_affine()
    src = tmp_path / "oblique_t1.nii.gz"
    save_nifti(src, data, affine)
    out = segment_nifti(logits_function(_threshold_net), src, tmp_path / "mask.nii.gz", n_chunk=5, batch_size=4)
    img = nib.load(out)
    assert img.shape == data.shape
    assert np.allclose(img.affine, affine, atol=1e-5)
    assert img.get_data_dtype() == np.uint8
    mask = np.asarray(img.dataobj)
    assert set(np.unique(mask)) <= {0, 1} and 0 < mask.sum() < mask.size
    # The same voxels as segmenting the RAS-ordered array directly: axes were permuted back correctly.
    ras = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    expected = predict_volume(logits_function(_threshold_net), np.asarray(ras.dataobj), 5, 4)
    back = nib.as_closest_canonical(nib.Nifti1Image(mask, affine))
    assert np.array_equal(np.asarray(back.dataobj), expected)
    assert np.allclose(back.affine, ras.affine)


def test_flip_tta_is_flip_equivariant() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 12, 9)
    tta = logits_function(_threshold_net, tta_flip=True)
    assert torch.allclose(tta(x.flip(-1)), tta(x).flip(-1), atol=1e-6)


def test_augmentation_moves_image_and_label_together() -> None:
    torch.manual_seed(0)
    label = (torch.rand(16, 1, 21, 27) > 0.7).long()
    image = torch.cat([label.float(), torch.randn(16, 2, 21, 27)], dim=1)
    out_image, out_label = augment_batch(image, label, gate_prob=1.0, noise_prob=0.0)
    assert out_image.shape == image.shape and out_label.dtype == label.dtype
    assert torch.equal(out_image[:, :1].long(), out_label)
    assert set(out_label.unique().tolist()) <= {0, 1}
    assert not torch.equal(out_label, label)
    same_image, same_label = augment_batch(image, label, gate_prob=0.0, noise_prob=0.0)
    assert torch.equal(same_image, image) and torch.equal(same_label, label)
    noisy, _ = augment_batch(image, label, gate_prob=0.0, noise_prob=1.0)
    assert 0.005 < float((noisy - image).std()) < 0.02


def test_zoom_crops_the_true_centre() -> None:
    label = torch.zeros(1, 1, 41, 41, dtype=torch.long)
    label[0, 0, 20, 20] = 1
    image = label.float()
    for _ in range(10):
        _, out = augment_batch(image, label, gate_prob=1.0, noise_prob=0.0, max_degrees=0.0, zoom=(1.09, 1.1))
        # A centre pixel stays at the centre whatever the flips and zoom (a corner crop would shift it).
        assert out[0, 0, 20, 20] == 1
