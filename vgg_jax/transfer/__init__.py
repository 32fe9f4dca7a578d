"""Transfer features (paper Appendix B): descriptors, feature files, linear
SVMs and the VOC / Caltech protocols.

* ``descriptor``: the descriptor math (pooling, flips, scales, L2, D & E).
* ``store``: one feature file per split, written atomically and resumably.
* ``metrics``: VOC-2007 / VOC-2012 AP, mAP, mean class recall.
* ``svm``: linear SVMs with C chosen on a held-out 20%, the Caltech splits.
* ``pixels``: the raw-pixel baseline descriptor.
* ``python -m vgg_jax.transfer svm|pixels``: classifiers and protocols on
  stored descriptors; raw-pixel descriptors (docs/transfer.md).
"""
