"""lgd_jax: Human Body Model Fitting by Learned Gradient Descent (Song, Chen, Hilliges, ECCV 2020)
in JAX."""

__version__ = "0.1.0"
