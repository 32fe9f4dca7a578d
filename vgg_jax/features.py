"""``python -m vgg_jax.features extract|svm|pixels|presets``: the issue's name
for ``python -m vgg_jax.transfer`` (paper Appendix B); the same command."""

import sys

from vgg_jax.transfer.__main__ import main

if __name__ == "__main__":
  main(sys.argv[1:])
