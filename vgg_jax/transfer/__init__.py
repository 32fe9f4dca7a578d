"""Transfer features (paper Appendix B): descriptors, feature files, linear
SVMs and the VOC / Caltech protocols.

* ``descriptor``: the descriptor math (pooling, flips, scales, L2, D & E).
* ``store``: one feature file per split, written atomically and resumably.
* ``metrics``: VOC-2007 / VOC-2012 AP, mAP, mean class recall.
* ``svm``: linear SVMs with C chosen on a held-out 20%, the Caltech splits.
* ``pixels``: the raw-pixel baseline descriptor.
* ``sources``: image sets (offline sets, Caltech folders, VOC action,
  TFDS VOC / Caltech-101): bytes, labels, difficult flags, person boxes.
* ``extract``: descriptors of nets through the dense engine, resumable.
* ``presets``: the columns of Tables 11-12.
* ``python -m vgg_jax.transfer extract|svm|pixels|presets`` (also
  ``python -m vgg_jax.features``): docs/transfer.md.
"""
