"""ILSVRC-2012 class ids and names, read from the installed TFDS package.

Nothing is downloaded: TFDS ships the 1000 WordNet ids in label order
(``datasets/imagenet2012/labels.txt``, the order of TFDS' ``imagenet2012``
labels) and the matching human-readable names (``IMAGENET_LABELS_LIST`` in
``datasets/siscore/labels.py``, the same order).  The files are parsed, not
imported, so TensorFlow is never loaded.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pathlib

NUM_CLASSES = 1000


def _tfds_root() -> pathlib.Path:
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        "tensorflow_datasets is not installed; it ships the ImageNet class "
        "names (pip install tensorflow-datasets)")
  return pathlib.Path(spec.origin).parent


@functools.cache
def wordnet_ids() -> tuple[str, ...]:
  """The 1000 synset ids ('n01440764', ...) in label order."""
  path = _tfds_root() / "datasets" / "imagenet2012" / "labels.txt"
  ids = tuple(path.read_text().split())
  if len(ids) != NUM_CLASSES:
    raise ValueError(f"{path}: expected {NUM_CLASSES} ids, found {len(ids)}")
  return ids


@functools.cache
def class_names(short: bool = True) -> tuple[str, ...]:
  """The 1000 class names in label order.

  ``short`` keeps the first synonym ('tench' rather than 'tench, Tinca
  tinca').
  """
  path = _tfds_root() / "datasets" / "siscore" / "labels.py"
  tree = ast.parse(path.read_text())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], "id", None) == "IMAGENET_LABELS_LIST"):
      names = ast.literal_eval(node.value)
      break
  else:
    raise ValueError(f"{path} has no IMAGENET_LABELS_LIST")
  if len(names) != NUM_CLASSES:
    raise ValueError(f"{path}: expected {NUM_CLASSES} names, found "
                     f"{len(names)}")
  if short:
    names = [n.split(",")[0].strip() for n in names]
  return tuple(names)
