"""vgg_jax: VGG (Simonyan & Zisserman, 2014) in JAX/Flax NNX, faithfully."""

__version__ = "0.1.0"
