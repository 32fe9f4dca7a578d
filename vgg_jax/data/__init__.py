"""The data: readers of each source, preparation and statistics.

- ``readers.py``: random-access readers (Fashion-MNIST IDX, TFDS ArrayRecord,
  class folders); the pipelines and the source registry
  (``data.source``) are in ``vgg_jax/input_pipeline.py``.
- ``python -m vgg_jax.data prepare imagenet2012 --manual_dir DIR --data_dir
  DIR``: builds TFDS' ``imagenet2012`` from the ILSVRC-2012 tars as
  ArrayRecord (no apache_beam needed), readable by ``tfds.data_source`` and
  the grain pipelines.
- ``prepare NAME --data_dir DIR``: any other TFDS dataset, the same way.
- ``prepare folder --data_dir DIR``: writes the class index of a folder of
  class sub-folders once and reports what it found (and, with ``--check``,
  every file that cannot be decoded, with progress).
- ``stats ...``: the training split's mean RGB (0-255) and the eigenvalues
  (0-1 scale) / eigenvectors of its RGB covariance, the numbers the paper's
  mean subtraction and PCA colour shift need (paper §3.1); with
  ``--mean_image FILE.npy`` also Krizhevsky's per-pixel mean image (the
  AlexNet baseline's ``data.mean_image``; ``vgg_jax/mean_image.py``).

Nothing is imported here, so that ``vgg_jax.input_pipeline`` can use the
readers without an import cycle.
"""
