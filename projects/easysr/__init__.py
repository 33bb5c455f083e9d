"""EasySR: 3D GAN super-resolution of thick-slice rat-brain MRI (one axis, x3), NIfTI in and out."""
