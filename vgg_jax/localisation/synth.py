"""A synthetic localisation dataset for the CPU experiment (paper Appendix A
on a 2-core machine): Fashion-MNIST items pasted at random scales, aspects
and positions onto crops of real photographs, with the boxes known exactly.

``python -m vgg_jax.localisation.synth --out DIR`` writes

- ``DIR/<split>/<class>/<id>.jpg`` + ``<id>.xml`` (PASCAL-VOC, the same layout
  users' own data takes, read by :func:`vgg_jax.data.loc_records.
  iter_voc_folder`), splits ``train`` and ``validation``;
- ``DIR/<split>.array_record`` + ``<split>.log.json``: the same images as
  localisation records (:mod:`vgg_jax.data.loc_records`), written by reading
  the folder back through the real annotation loader;
- ``DIR/class_index.json``: ``{class name: label}`` in Fashion-MNIST's label
  order, the index the classification folder source
  (``data.source="folder"``, ``data.data_dir=DIR``) reads, so a classifier
  trained on the folders and the localisation records agree on labels.

Everything is a function of ``--seed``: image ``i`` of a split draws from
``np.random.default_rng([seed, split_number, i])``, so any image can be
regenerated alone and two runs give identical files.  Training items come from
Fashion-MNIST's training split, validation items from its test split; the
backgrounds are random crops (random position and scale) of the colour photos
bundled with scikit-image and scikit-learn, for both splits.

The box: an item (28x28, grey on black) is resized to ``h x w`` and its grey
level becomes the paste's opacity; opacities under ``ALPHA_FLOOR`` are set to
0, and the box is the tight box of the pixels with non-zero opacity (the
ILSVRC convention, inclusive ends).  So the image differs from the background
exactly inside the box, and every edge row and column of the box holds a
pasted pixel (checked by the tests before JPEG encoding).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import logging
import os
import pathlib
import struct
import sys

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Fashion-MNIST's classes, in label order, as folder-safe names.
CLASS_NAMES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal",
               "shirt", "sneaker", "bag", "ankle_boot")
SPLITS = {"train": ("train", 0), "validation": ("test", 1)}
ALPHA_FLOOR = 0.05
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  side: int = 64  # images are side x side
  min_item: int = 16  # pasted item's longer side, pixels
  max_item: int = 48
  max_aspect: float = 1.5  # item width/height drawn in [1/max, max] (log)
  jpeg_quality: int = 95
  # "random": each channel uniform in [0, 255]; "contrast": each channel
  # uniform in the half of the range away from the background's mean under
  # the item ([0, 80] over a bright channel, [175, 255] over a dark one), so
  # the item stands out of the photo (a small net learns the classes in
  # minutes; with "random" colours it stayed at chance, docs/localisation.md).
  colour: str = "random"


def backgrounds() -> list[np.ndarray]:
  """The bundled colour photos (no download): RGB uint8."""
  try:
    import skimage.data  # pylint: disable=g-import-not-at-top
    from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "the synthetic localisation set pastes onto the photos bundled with "
        "scikit-image and scikit-learn: pip install 'vgg_jax[synth]'") from e
  out = [skimage.data.astronaut(), skimage.data.coffee(),
         skimage.data.chelsea(), skimage.data.rocket(),
         skimage.data.hubble_deep_field(),
         skimage.data.immunohistochemistry()]
  out += list(load_sample_images().images)
  return [np.ascontiguousarray(p[..., :3]) for p in out]


def _read_idx_ubyte(path: pathlib.Path) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if zero != 0 or dtype_code != 0x08 or arr.size != int(np.prod(shape)):
    raise ValueError(f"{path} is not a complete uint8 IDX file (reinstall "
                     "dataset-fashion-mnist)")
  return arr.reshape(shape)


def load_fashion_mnist(split: str, data_dir: str | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28) uint8, labels (N,)) of "train" or "test" from the
  IDX files of Debian's dataset-fashion-mnist (the classifier's source).

  A reader of its own: the input pipeline's IDX reader is private to it.
  """
  root = pathlib.Path(data_dir or FASHION_MNIST_DIR)
  prefix = {"train": "train", "test": "t10k"}[split]
  img, lbl = (root / f"{prefix}-images-idx3-ubyte.gz",
              root / f"{prefix}-labels-idx1-ubyte.gz")
  if not img.exists() or not lbl.exists():
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {root}; install them with "
        "`apt-get install dataset-fashion-mnist` or pass --fashion_mnist_dir")
  images, labels = _read_idx_ubyte(img), _read_idx_ubyte(lbl)
  if images.shape[1:] != (28, 28) or len(images) != len(labels):
    raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape}, "
                     f"{labels.shape} in {root}")
  return images, labels.astype(np.int64)


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  h, w = hw
  interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else (
      cv2.INTER_LINEAR)
  return cv2.resize(img, (w, h), interpolation=interp)


def render(rng: np.random.Generator, item: np.ndarray, photos: list,
           cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One image: (composite uint8 (S, S, 3), background uint8, box (4,) int).

  Draws, in order: the photo, the background crop's size and position, the
  item's size and aspect, its position, its colour.
  """
  s = cfg.side
  photo = photos[int(rng.integers(len(photos)))]
  ph, pw = photo.shape[:2]
  crop = int(rng.integers(min(ph, pw) // 4, min(ph, pw) + 1))
  top = int(rng.integers(0, ph - crop + 1))
  left = int(rng.integers(0, pw - crop + 1))
  bg = _resize(photo[top:top + crop, left:left + crop], (s, s))
  longer = int(rng.integers(cfg.min_item, cfg.max_item + 1))
  aspect = float(np.exp(rng.uniform(-np.log(cfg.max_aspect),
                                    np.log(cfg.max_aspect))))
  if aspect >= 1:
    iw, ih = longer, max(4, int(round(longer / aspect)))
  else:
    ih, iw = longer, max(4, int(round(longer * aspect)))
  alpha = _resize(item, (ih, iw)).astype(np.float32) / 255.0
  alpha[alpha < ALPHA_FLOOR] = 0.0
  y0 = int(rng.integers(0, s - ih + 1))
  x0 = int(rng.integers(0, s - iw + 1))
  colour = rng.uniform(0, 255, 3).astype(np.float32)
  out = bg.astype(np.float32)
  a = alpha[..., None]
  region = out[y0:y0 + ih, x0:x0 + iw]
  if cfg.colour == "contrast":
    bright = region.reshape(-1, 3).mean(0) >= 128
    colour = np.where(bright, colour * (80 / 255), 175 + colour * (80 / 255)
                      ).astype(np.float32)
  elif cfg.colour != "random":
    raise ValueError(f"colour must be 'random' or 'contrast'; got "
                     f"{cfg.colour!r}")
  out[y0:y0 + ih, x0:x0 + iw] = region * (1 - a) + colour * a
  ys, xs = np.nonzero(alpha > 0)
  if not len(ys):  # an empty item (never in Fashion-MNIST); be explicit
    raise ValueError("the pasted item has no visible pixel")
  box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max(),
                  y0 + ys.max()], np.int64)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8), bg, box


def _jpeg(img: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _atomic_write(path: pathlib.Path, data: bytes):
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_split(out_dir, split: str, num_images: int, *, seed: int = 0,
                cfg: SynthConfig = SynthConfig(),
                data_dir: str | None = None) -> list[dict]:
  """Writes ``num_images`` images of ``split`` in the VOC folder layout;
  returns [{"image_id", "label", "box"}] in order."""
  from vgg_jax.data import voc_xml  # pylint: disable=g-import-not-at-top
  if split not in SPLITS:
    raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
  if not 4 <= cfg.min_item <= cfg.max_item <= cfg.side:
    raise ValueError(f"need 4 <= min_item <= max_item <= side; got {cfg}")
  fm_split, split_no = SPLITS[split]
  items, labels = load_fashion_mnist(fm_split, data_dir)
  photos = backgrounds()
  root = pathlib.Path(out_dir) / split
  for name in CLASS_NAMES:
    (root / name).mkdir(parents=True, exist_ok=True)
  meta = []
  for i in range(num_images):
    rng = np.random.default_rng([seed, split_no, i])
    k = int(rng.integers(len(items)))
    label = int(labels[k])
    img, _, box = render(rng, items[k], photos, cfg)
    image_id = f"synth_{split}_{i:06d}"
    cls = CLASS_NAMES[label]
    _atomic_write(root / cls / f"{image_id}.jpg", _jpeg(img, cfg.jpeg_quality))
    _atomic_write(root / cls / f"{image_id}.xml", voc_xml.to_voc_xml(
        folder=cls, filename=image_id, size_wh=(cfg.side, cfg.side),
        objects=[(cls, tuple(int(v) for v in box))]))
    meta.append({"image_id": image_id, "label": label,
                 "box": [int(v) for v in box]})
  return meta


def make_dataset(out_dir, *, num_train: int = 2000, num_val: int = 500,
                 seed: int = 0, cfg: SynthConfig = SynthConfig(),
                 records: bool = True, data_dir: str | None = None) -> dict:
  """Both splits as folders (and ArrayRecords); returns a summary dict."""
  from vgg_jax.data import loc_records  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # The folder source's class index (vgg_jax.input_pipeline reads it rather
  # than sorting the folder names), so a classifier trained on the folders
  # and the localisation records share Fashion-MNIST's label order.
  _atomic_write(out / "class_index.json", (json.dumps(
      {name: i for i, name in enumerate(CLASS_NAMES)}, indent=1) + "\n"
                                           ).encode())
  summary = {"seed": seed, "config": dataclasses.asdict(cfg), "splits": {}}
  for split, n in (("train", num_train), ("validation", num_val)):
    write_split(out, split, n, seed=seed, cfg=cfg, data_dir=data_dir)
    entry = {"images": n}
    if records:
      plog = loc_records.PrepareLog()
      res = loc_records.prepare_split(
          loc_records.iter_voc_folder(out, split, CLASS_NAMES, plog), out,
          split, plog)
      entry.update(records=res["records"], counts=res["counts"])
    summary["splits"][split] = entry
  return summary


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m vgg_jax.localisation.synth",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--train", type=int, default=2000, help="training images")
  p.add_argument("--val", type=int, default=500, help="validation images")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--side", type=int, default=SynthConfig.side)
  p.add_argument("--min_item", type=int, default=SynthConfig.min_item)
  p.add_argument("--max_item", type=int, default=SynthConfig.max_item)
  p.add_argument("--colour", default=SynthConfig.colour,
                 choices=("random", "contrast"))
  p.add_argument("--no_records", action="store_true",
                 help="only the VOC folders, no ArrayRecord files")
  p.add_argument("--fashion_mnist_dir", default=None,
                 help=f"IDX files (default {FASHION_MNIST_DIR})")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  cfg = SynthConfig(side=args.side, min_item=args.min_item,
                    max_item=args.max_item, colour=args.colour)
  try:
    summary = make_dataset(args.out, num_train=args.train, num_val=args.val,
                           seed=args.seed, cfg=cfg,
                           records=not args.no_records,
                           data_dir=args.fashion_mnist_dir)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
