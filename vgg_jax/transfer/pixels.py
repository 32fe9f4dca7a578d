"""The raw-pixel baseline descriptor for the transfer protocols.

Each image decoded, converted to ``mode`` ("L" grey or "RGB"), resized to
side x side (bilinear), flattened, averaged with its horizontal mirror image
when ``flip`` (as the paper's descriptor is, Appendix B) and L2-normalised.
It reads the image sets of ``vgg_jax.data.transfer_sets`` (an index
ROOT/<split>.json and images under ROOT/<split>/) and writes descriptor files
through ``store.SplitWriter``: chunked, resumable, undecodable images named.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from vgg_jax.data import transfer_sets
from vgg_jax.transfer import descriptor
from vgg_jax.transfer import store


def pixel_descriptor(img: Image.Image, side: int, mode: str = "L",
                     flip: bool = True) -> np.ndarray:
  x = np.asarray(img.convert(mode).resize((side, side), Image.BILINEAR),
                 np.float32).reshape(side, side, -1)
  if flip:
    x = (x + x[:, ::-1]) / 2
  return descriptor.l2_normalise(x.reshape(-1))


def write_pixel_split(set_root, split: str, out_dir, *, side: int = 16,
                      mode: str = "L", flip: bool = True,
                      chunk_size: int = 256) -> pathlib.Path:
  """Raw-pixel descriptors of one split of an image set; resumable."""
  set_root = pathlib.Path(set_root)
  index = transfer_sets.read_index(set_root, split)
  labels = {r["name"]: r for r in index["images"]}
  names = list(labels)
  settings = {"descriptor": "raw_pixels", "side": side, "mode": mode,
              "flip": flip, "image_set": index.get("source", str(set_root))}
  writer = store.SplitWriter(out_dir, split, settings=settings,
                             task=index["task"], classes=index["classes"],
                             names=names)
  todo = writer.remaining()
  for start in range(0, len(todo), chunk_size):
    records, rows = [], []
    for name in todo[start:start + chunk_size]:
      rec = {k: v for k, v in labels[name].items()
             if k in ("name", "label", "positive", "difficult")}
      try:
        with Image.open(set_root / split / name) as img:
          rows.append(pixel_descriptor(img, side, mode, flip))
      except (OSError, ValueError) as e:  # PIL: undecodable / truncated
        rec["error"] = f"{type(e).__name__}: {e}"
      records.append(rec)
    writer.add_chunk(records, np.stack(rows) if rows else
                     np.zeros((0, side * side * len(mode)), np.float32))
  return writer.finish()
