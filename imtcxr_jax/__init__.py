"""imtcxr_jax: a JAX/Flax reimplementation of IMT-CXR, the interpretable multi-task chest X-ray transformer."""

__version__ = "0.1.0"
