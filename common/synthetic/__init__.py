"""Seeded synthetic data: demo and test volumes, emulated k-space, and writers into public layouts.

Every generator takes a ``seed`` (``np.random.default_rng(seed)``): the same seed gives bit-identical
arrays, another seed gives different anatomy. Volumes come with a 4 x 4 RAS affine in millimetres and
are indexed ``[i, j, k]`` like the NIfTI files they are written to.

| generator | mimics | shapes (defaults) |
|---|---|---|
| ``ct_abdomen`` | contrast CT of the abdomen (HU) with a small low-contrast pancreas | ``[96, 96, 40]`` at 0.8 x 0.8 x 2.5 mm |
| ``brain_t1`` | ATLAS R1.2-like T1 (0-100) with stroke lesions, or the MNI152 template | ``[96, 112, 80]`` at 1 mm |
| ``isotropic_volume`` | rat-brain-like 0.15 mm isotropic MRI with fine detail on every axis | ``[64, 96, 64]`` |
| ``knee_images`` | coronal proton-density knee magnitudes (fastMRI-like content) | ``[8, 320, 320]`` |
| ``single_coil_kspace`` | fastMRI single-coil k-space + ``reconstruction_esc`` target | ``[S, 640, 368]``, ``[S, 320, 320]`` |

Each module's docstring says what its generator mimics and what it does not. The writers in
``common.synthetic.layouts`` put these arrays into the real public folder layouts (MSD, ATLAS R1.2, NIH
Pancreas-CT DICOM, fastMRI HDF5, plain NIfTI) so that the projects' real loaders can be tested on them.
"""

from __future__ import annotations

from common.synthetic.brain import SMALL_LESION_MAX_AREA, T1_LEVELS, brain_t1
from common.synthetic.ct import CT_LABELS, ct_abdomen
from common.synthetic.isotropic import RAT_LEVELS, isotropic_volume
from common.synthetic.knee import knee_images
from common.synthetic.kspace import center_crop, fft2c, ifft2c, single_coil_kspace
from common.synthetic.layouts import (
    MSD_TASKS,
    write_atlas_tree,
    write_fastmri_singlecoil,
    write_msd_task,
    write_nih_pancreas,
    write_ratbrain_nifti,
)

__all__ = [
    "CT_LABELS",
    "MSD_TASKS",
    "RAT_LEVELS",
    "SMALL_LESION_MAX_AREA",
    "T1_LEVELS",
    "brain_t1",
    "center_crop",
    "ct_abdomen",
    "fft2c",
    "ifft2c",
    "isotropic_volume",
    "knee_images",
    "single_coil_kspace",
    "write_atlas_tree",
    "write_fastmri_singlecoil",
    "write_msd_task",
    "write_nih_pancreas",
    "write_ratbrain_nifti",
]
