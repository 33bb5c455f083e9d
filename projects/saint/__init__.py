"""SAINT: spatially aware interpolation network for CT slice synthesis (Peng et al., CVPR 2020)."""
