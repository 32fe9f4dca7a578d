"""python -m vgg_jax.weights --from {keras,torchvision} --input F --output D."""

import sys

from vgg_jax.weights.cli import main

if __name__ == "__main__":
  sys.exit(main())
