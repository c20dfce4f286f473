"""rpu-ray: the Ray-native implementation of rPU-VAE (Estermann, Marks, Yanik, NeurIPS 2020)."""

__version__ = "0.1.0"
