"""stylish-fastmri: accelerated single-coil knee MRI reconstruction, baseline and generative texture model."""
