"""Random-access readers of the data sources: Fashion-MNIST's IDX files,
TFDS ArrayRecord, folders of class sub-folders.

A reader is a random-access sequence of encoded images:
  len(reader); reader.get(i, min_side) -> (uint8 (H, W, 3) RGB, label, name)
  (raises preprocess.DecodeError); optionally reader.read(i) -> (encoded
  bytes or such an array, label, name), which lets training and centre-
  crop evaluation decode only the crop (preprocess.decode_rescaled_crop);
  reader.label_and_name(i); reader.num_classes; reader.class_names;
  reader.prescaled (False).

The pipelines (``vgg_jax/input_pipeline.py``) build batches from readers;
``input_pipeline.register_source`` names a source kind for ``data.source``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import pathlib
import struct
from typing import Any

import numpy as np

from vgg_jax import preprocess
from vgg_jax import tfds_shards

log = logging.getLogger("vgg_jax.data")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot")
# Fashion-MNIST training-set pixel mean and std (0-255), from the 60,000
# training images (tests/test_input_pipeline.py recomputes them).
FASHION_MNIST_MEAN = 72.940
FASHION_MNIST_STD = 90.021

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff", ".ppm", ".pgm")



@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  class_names: list[str] | None
  image_channels: int



def _read_idx(path: pathlib.Path) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not a uint8 IDX file")
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f"{path}: expected {shape} values, found {arr.size} "
                     "(truncated file? reinstall dataset-fashion-mnist)")
  return arr.reshape(shape)


_FMNIST_CACHE: dict[Any, tuple[np.ndarray, np.ndarray]] = {}


def fashion_mnist_split(data_cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28), labels int32 (N,)) of "train" or "test"."""
  if split not in ("train", "test"):
    raise ValueError(
        f"Fashion-MNIST has splits 'train' (60,000) and 'test' (10,000), "
        f"not {split!r}")
  root = pathlib.Path(data_cfg.data_dir or FASHION_MNIST_DIR)
  key = (str(root), split)
  if key in _FMNIST_CACHE:
    return _FMNIST_CACHE[key]
  prefix = "train" if split == "train" else "t10k"
  img_path = root / f"{prefix}-images-idx3-ubyte.gz"
  lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
  if img_path.exists() and lbl_path.exists():
    images, labels = _read_idx(img_path), _read_idx(lbl_path).astype(np.int32)
  else:
    images, labels = _fashion_mnist_from_tfds(data_cfg, split, root)
  if len(images) != len(labels):
    raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but "
                     f"{len(labels)} labels")
  _FMNIST_CACHE[key] = (images, labels)
  return images, labels


def _fashion_mnist_from_tfds(data_cfg, split, root):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds_dir = data_cfg.data_dir if data_cfg.data_dir else None
    source = tfds.data_source("fashion_mnist", split=split, data_dir=tfds_dir,
                              download=False)
    n = len(source)
    images = np.empty((n, 28, 28), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
      ex = source[i]
      images[i] = np.asarray(ex["image"]).reshape(28, 28)
      labels[i] = ex["label"]
    return images, labels
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"Fashion-MNIST not found: no IDX files in {root} "
        "(train-images-idx3-ubyte.gz etc.) and no prepared TFDS "
        f"'fashion_mnist' ({type(e).__name__}: {e}).  Install Debian's copy "
        "with `apt-get install dataset-fashion-mnist` (as root; it lands in "
        f"{FASHION_MNIST_DIR}), or where the internet is reachable run "
        "`python -m vgg_jax.data prepare fashion_mnist --data_dir DIR`.") from e


def _resize_batch(images: np.ndarray, side: int) -> np.ndarray:
  """(N, h, w) uint8 -> (N, side, side'), shorter side = side, vectorised."""
  import cv2  # pylint: disable=g-import-not-at-top
  n, h, w = images.shape
  new_h, new_w = preprocess.rescaled_size(h, w, side)
  if (new_h, new_w) == (h, w):
    return images
  interp = cv2.INTER_AREA if new_h < h else cv2.INTER_LINEAR
  out = np.empty((n, new_h, new_w), np.uint8)
  chunk = 128  # OpenCV 5 resizes at most a few hundred channels at once
  for start in range(0, n, chunk):
    block = np.ascontiguousarray(images[start:start + chunk].transpose(1, 2, 0))
    res = cv2.resize(block, (new_w, new_h), interpolation=interp)
    out[start:start + chunk] = res.reshape(new_h, new_w, -1).transpose(2, 0, 1)
  return out


_RESIZED_CACHE: dict[Any, np.ndarray] = {}


def fashion_mnist_resized(data_cfg, split: str, side: int):
  images, labels = fashion_mnist_split(data_cfg, split)
  key = (str(data_cfg.data_dir or FASHION_MNIST_DIR), split, side)
  if key not in _RESIZED_CACHE:
    _RESIZED_CACHE[key] = _resize_batch(images, side)
  return _RESIZED_CACHE[key], labels



def decode_named(data: bytes, name: str, min_side=None) -> np.ndarray:
  """Decodes an encoded image; a failure names the example it came from."""
  try:
    return preprocess.decode_image(data, min_side=min_side)
  except preprocess.DecodeError as e:
    raise preprocess.DecodeError(f"{name}: {e}") from e


class FashionMnistEvalSource:
  """Fashion-MNIST split as (uint8 (Q, Q) grey image, label, name) records."""

  prescaled = True  # already rescaled to Q in memory

  def __init__(self, data_cfg, split, scale):
    # scale None: the stored 28x28 images, not rescaled
    self.images, self.labels = (
        fashion_mnist_split(data_cfg, split) if scale is None
        else fashion_mnist_resized(data_cfg, split, scale))
    self.split = split
    self.channels = data_cfg.image_channels

  def __len__(self):
    return len(self.labels)

  def get(self, i, min_side=None):
    del min_side
    return (grey_to_channels(self.images[i][None], self.channels)[0],
            int(self.labels[i]), f"fashion_mnist/{self.split}/{i}")

  def label_and_name(self, i):
    return int(self.labels[i]), f"fashion_mnist/{self.split}/{i}"



def tfds_module():
  # TFDS' builder code imports `importlib_resources`, a backport that is not
  # a dependency; the standard library's module has what it uses.
  import importlib.resources  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.modules.setdefault("importlib_resources", importlib.resources)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


class TfdsImageSource:
  """A split of a prepared TFDS image-classification dataset (ArrayRecord).

  Images are read as the stored encoded bytes (``SkipDecoding``) and decoded
  here, so that JPEG DCT-domain downscaling and our bad-input handling apply.
  """

  prescaled = False

  def __init__(self, name: str, split: str, data_dir: str | None):
    tfds = tfds_module()
    self.name, self.split, self.data_dir = name, split, data_dir
    hint = (f"prepare it with `python -m vgg_jax.data prepare {name} "
            f"--data_dir {data_dir or '~/tensorflow_datasets'}` "
            + ("--manual_dir DIR_WITH_ILSVRC2012_TARS`"
               if name.startswith("imagenet2012") else "")
            ).replace("` --manual", " --manual")
    try:
      self._source = tfds.data_source(
          name, split=split, data_dir=data_dir, download=False,
          decoders={"image": tfds.decode.SkipDecoding()})
    except ValueError as e:  # unknown split
      raise ValueError(f"TFDS dataset {name!r} in {data_dir}: {e}; set "
                       "data_cfg.train_split / eval_split to one of those, "
                       f"or {hint}") from e
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(
          f"TFDS dataset {name!r} split {split!r} is not prepared as "
          f"ArrayRecord under data_dir={data_dir!r} "
          f"({type(e).__name__}: {str(e).splitlines()[0]}); {hint}") from e
    tfds_shards.check_shards_exist(self._source, f"TFDS {name}/{split}")
    features = self._source.dataset_info.features
    for key in ("image", "label"):
      if key not in features:
        raise ValueError(f"TFDS dataset {name!r} has features "
                         f"{list(features)}; an image-classification dataset "
                         "needs 'image' and 'label'")
    self.class_names = list(features["label"].names)
    self.num_classes = int(features["label"].num_classes)
    self._has_file_name = "file_name" in features

  def __len__(self):
    return len(self._source)

  def _name(self, i, ex):
    if self._has_file_name:
      fn = ex["file_name"]
      return fn.decode() if isinstance(fn, bytes) else str(fn)
    return f"{self.name}/{self.split}/{i}"

  def read(self, i):
    """(encoded image bytes, or an RGB array for a dataset without encoded
    images, label, name)."""
    ex = tfds_shards.read_record(self._source, i, f"{self.name}/{self.split}")
    img = ex["image"]
    if isinstance(img, np.ndarray):  # a dataset without encoded images
      img = img if img.shape[-1] == 3 else np.repeat(img[..., :1], 3, -1)
    return img, int(ex["label"]), self._name(i, ex)

  def get(self, i, min_side=None):
    img, label, name = self.read(i)
    if not isinstance(img, np.ndarray):
      img = decode_named(img, name, min_side)
    return img, label, name

  def label_and_name(self, i):
    try:
      ex = tfds_shards.read_record(self._source, i, self.name)
    except preprocess.DecodeError:  # unreadable record: label -1, a miss
      return -1, f"{tfds_shards.shard_of(self._source, i)}#record{i}"
    return int(ex["label"]), self._name(i, ex)


def load_or_create_class_index(data_dir, class_index_path=None,
                               train_split="train") -> dict[str, int]:
  """{class folder name: label}, written once (atomically) and then reused.

  Created from the sorted sub-folders of ``data_dir/train_split`` the first
  time, then always read back, so adding a class folder later cannot shift
  the labels of a trained model.
  """
  root = pathlib.Path(data_dir)
  path = pathlib.Path(class_index_path) if class_index_path else (
      root / "class_index.json")
  if path.exists():
    with open(path) as f:
      index = json.load(f)
    if not isinstance(index, dict) or sorted(index.values()) != list(
        range(len(index))):
      raise ValueError(f"{path} must map class names to 0..N-1, got {index}")
    return index
  train_dir = root / train_split
  if not train_dir.is_dir():
    raise FileNotFoundError(
        f"no class index at {path} and no training folder {train_dir} to "
        "build one from; expected DATA_DIR/<split>/<class>/<image files> "
        "(see docs/data.md)")
  classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
  if not classes:
    raise FileNotFoundError(f"{train_dir} has no class sub-folders")
  index = {c: i for i, c in enumerate(classes)}
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=1)
  os.replace(tmp, path)
  log.info("wrote class index of %d classes to %s", len(index), path)
  return index


class FolderImageSource:
  """``data_dir/split/<class>/<image>`` files, in sorted order."""

  prescaled = False

  def __init__(self, data_dir, split, class_index_path=None,
               train_split="train"):
    if not data_dir:
      raise ValueError("source='folder' needs data_cfg.data_dir (the folder "
                       "holding train/ and validation/ class sub-folders)")
    self.root = pathlib.Path(data_dir)
    split_dir = self.root / split
    if not split_dir.is_dir():
      have = sorted(d.name for d in self.root.iterdir() if d.is_dir()) \
          if self.root.is_dir() else None
      raise FileNotFoundError(
          f"split folder {split_dir} does not exist"
          + (f" (data_dir has {have})" if have is not None
             else f" (no data_dir {self.root})")
          + "; expected DATA_DIR/<split>/<class>/<image files>")
    self.class_index = load_or_create_class_index(
        self.root, class_index_path, train_split)
    self.class_names = sorted(self.class_index, key=self.class_index.get)
    self.num_classes = len(self.class_index)
    files, labels = [], []
    for cls_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
      if cls_dir.name not in self.class_index:
        raise ValueError(
            f"class folder {cls_dir} is not in the class index (classes "
            f"{self.class_names[:5]}...); the index is fixed once written: "
            "delete it only if you mean to relabel everything")
      for f in sorted(cls_dir.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
          files.append(f"{split}/{cls_dir.name}/{f.name}")
          labels.append(self.class_index[cls_dir.name])
    if not files:
      raise FileNotFoundError(f"no image files under {split_dir}/<class>/")
    self.files = files
    self.labels = np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.files)

  def read(self, i):
    """(the file's bytes, label, name); DecodeError if it cannot be read."""
    name = self.files[int(i)]
    try:
      data = (self.root / name).read_bytes()
    except OSError as e:
      raise preprocess.DecodeError(f"{name}: {e}") from e
    return data, int(self.labels[int(i)]), name

  def get(self, i, min_side=None):
    data, label, name = self.read(i)
    return decode_named(data, name, min_side), label, name

  def label_and_name(self, i):
    return int(self.labels[int(i)]), self.files[int(i)]




def grey_to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  images = images[..., None]
  if channels == 3:
    images = np.repeat(images, 3, axis=-1)
  elif channels != 1:
    raise ValueError(f"image_channels must be 1 or 3, got {channels}")
  return images
