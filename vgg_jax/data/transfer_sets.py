"""Small real datasets for the transfer protocols, made offline (no download).

* ``write_digits_set``: Caltech-style multi-class, scikit-learn's bundled
  handwritten digits (1,797 8x8 images, 10 classes, ~180 a class), each
  written as a grey PNG rescaled to ``side`` pixels, in class folders.
* ``write_canvas_set``: VOC-style multi-label with "difficult" flags: 1-4
  Fashion-MNIST items (Debian's dataset-fashion-mnist IDX files; training
  items for "trainval", test items for "test") pasted, tinted, at random
  sizes and places on a crop of a real colour photo (the photos scikit-image
  and scikit-learn ship).  An item is difficult when it is tiny (side under
  ``tiny_side``) or mostly hidden by items pasted over it (under
  ``min_visible`` of its pixels still showing).  As in VOC, a class is
  positive for an image when it has a non-difficult instance there, and
  difficult when all its instances are.

Both write ``ROOT/<split>.json``, {"task", "classes", "images": [{"name",
labels...}]}, names relative to ``ROOT/<split>/``, read back with
``read_index``.  Everything is deterministic given the seed.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

from vgg_jax import files

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _atomic_write(path: pathlib.Path, data: bytes, fsync: bool = True
                  ) -> None:
  """Temporary name, then rename.  Images skip the per-file fsync (slow for
  thousands of files): the writers call os.sync() once before writing the
  index, which is what makes a split count as written."""
  files.atomic_write(path, lambda f: f.write(data), fsync=fsync)


def _png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=92)
  return buf.getvalue()


def read_index(root, split: str) -> dict:
  """The index a writer here made: {"task", "classes", "images", ...}."""
  path = pathlib.Path(root) / f"{split}.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: write the set first "
                            "(vgg_jax.data.transfer_sets)")
  return json.loads(path.read_text())


def write_digits_set(root, side: int = 32, split: str = "all") -> dict:
  """scikit-learn's digits as ROOT/<split>/<digit>/digit_NNNN.png + index.

  Pixel values 0-16 become 0-255, rescaled bilinearly to side x side.
  Returns the index (also written to ROOT/<split>.json).
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  digits = load_digits()
  images = []
  for i, (img, label) in enumerate(zip(digits.images, digits.target)):
    grey = np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(grey).resize((side, side),
                                                  Image.BILINEAR))
    name = f"{int(label)}/digit_{i:04d}.png"
    _atomic_write(root / split / name, _png(big), fsync=False)
    images.append({"name": name, "label": int(label)})
  index = {"task": "multiclass", "classes": list(DIGIT_CLASSES),
           "images": images, "source": "sklearn.datasets.load_digits",
           "side": side}
  os.sync()
  _atomic_write(root / f"{split}.json",
                json.dumps(index, indent=1).encode())
  return index


def read_fashion_mnist(split: str, data_dir: str = FASHION_MNIST_DIR):
  """(images uint8 (N, 28, 28), labels (N,)) from the IDX files; split is
  "train" or "t10k"."""
  root = pathlib.Path(data_dir)
  paths = [root / f"{split}-images-idx3-ubyte.gz",
           root / f"{split}-labels-idx1-ubyte.gz"]
  missing = [str(p) for p in paths if not p.exists()]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files missing: {missing}. Install Debian's "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
        "pass the folder holding them.")
  out = []
  for p in paths:
    raw = gzip.decompress(p.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
                  for i in range(ndim))
    out.append(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim
                             ).reshape(shape))
  return out[0], out[1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
  try:
    import skimage.data  # pylint: disable=g-import-not-at-top
    from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the canvas set needs scikit-image and scikit-learn "
                      "(their bundled photos): pip install -e '.[test]'"
                      ) from e
  ps = [skimage.data.astronaut(), skimage.data.coffee(),
        skimage.data.chelsea(), skimage.data.rocket()]
  ps += list(load_sample_images().images)
  return tuple(np.ascontiguousarray(p[..., :3]) for p in ps)


def _canvas(photos, rng, side):
  p = photos[int(rng.integers(len(photos)))]
  h, w = p.shape[:2]
  crop = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
  top = int(rng.integers(0, h - crop + 1))
  left = int(rng.integers(0, w - crop + 1))
  img = Image.fromarray(p[top:top + crop, left:left + crop])
  return np.asarray(img.resize((side, side), Image.BILINEAR), np.float32)


def make_canvas_image(items, item_labels, photos, rng, *, side: int,
                      max_items: int, min_item: int, max_item: int,
                      tiny_side: int, min_visible: float):
  """One composed image: (uint8 (side, side, 3), objects list)."""
  img = _canvas(photos, rng, side)
  owner = np.full((side, side), -1, np.int64)  # which object shows there
  objects = []
  for j in range(int(rng.integers(1, max_items + 1))):
    k = int(rng.integers(len(items)))
    s = int(rng.integers(min_item, max_item + 1))
    item = np.asarray(Image.fromarray(items[k]).resize((s, s),
                                                       Image.BILINEAR),
                      np.float32)
    x0 = int(rng.integers(0, side - s + 1))
    y0 = int(rng.integers(0, side - s + 1))
    alpha = np.clip(item / 64.0, 0.0, 1.0)[..., None]
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    patch = item[..., None] * tint
    region = img[y0:y0 + s, x0:x0 + s]
    img[y0:y0 + s, x0:x0 + s] = alpha * patch + (1 - alpha) * region
    fg = item > 32
    owner[y0:y0 + s, x0:x0 + s][fg] = j
    objects.append({"class": int(item_labels[k]), "box": [x0, y0, x0 + s,
                                                          y0 + s],
                    "side": s, "pixels": int(fg.sum())})
  for j, o in enumerate(objects):
    visible = int((owner == j).sum()) / max(o.pop("pixels"), 1)
    o["visible"] = round(visible, 4)
    o["difficult"] = bool(o["side"] < tiny_side or visible < min_visible)
  return np.clip(img, 0, 255).astype(np.uint8), objects


def image_labels(objects) -> tuple[list[int], list[int]]:
  """VOC's image-level labels: (positive classes, difficult-only classes)."""
  pos = sorted({o["class"] for o in objects if not o["difficult"]})
  dif = sorted({o["class"] for o in objects if o["difficult"]} - set(pos))
  return pos, dif


def write_canvas_set(root, num_images: dict[str, int] | None = None, *,
                     seed: int = 0, side: int = 96, max_items: int = 4,
                     min_item: int = 14, max_item: int = 56,
                     tiny_side: int = 20, min_visible: float = 0.5,
                     data_dir: str = FASHION_MNIST_DIR) -> dict[str, dict]:
  """Writes ROOT/<split>/img_NNNNN.jpg and ROOT/<split>.json per split.

  num_images: {split: count}, default {"trainval": 400, "test": 400};
  "test" draws its items from Fashion-MNIST's test images, every other
  split from its training images.  Returns {split: index}.
  """
  root = pathlib.Path(root)
  num_images = num_images or {"trainval": 400, "test": 400}
  photos = _photos()
  out = {}
  for si, (split, n) in enumerate(sorted(num_images.items())):
    items, labels = read_fashion_mnist("t10k" if split == "test" else "train",
                                       data_dir)
    rng = np.random.default_rng([seed, si, n])
    images = []
    for i in range(n):
      img, objects = make_canvas_image(
          items, labels, photos, rng, side=side, max_items=max_items,
          min_item=min_item, max_item=max_item, tiny_side=tiny_side,
          min_visible=min_visible)
      name = f"img_{i:05d}.jpg"
      _atomic_write(root / split / name, _jpeg(img), fsync=False)
      pos, dif = image_labels(objects)
      images.append({"name": name, "positive": pos, "difficult": dif,
                     "objects": objects})
    index = {"task": "multilabel", "classes": list(FASHION_CLASSES),
             "images": images, "seed": seed, "side": side,
             "source": "Fashion-MNIST items on scikit-image/scikit-learn "
             "photos", "difficult_rule": {"tiny_side": tiny_side,
                                          "min_visible": min_visible}}
    os.sync()
    _atomic_write(root / f"{split}.json",
                  json.dumps(index, indent=1).encode())
    out[split] = index
  return out


def load_images(root, split: str, names: Sequence[str] | None = None,
                mode: str = "RGB"):
  """Decoded images of a written split as a list of uint8 arrays."""
  root = pathlib.Path(root)
  if names is None:
    names = [r["name"] for r in read_index(root, split)["images"]]
  return [np.asarray(Image.open(root / split / n).convert(mode))
          for n in names]
