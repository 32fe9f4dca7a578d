"""Descriptor extraction (paper Appendix B) through the one dense engine.

For each image of a split and each net (a training workdir or imported
weights, ``model_dir.load_model``; the last layer is not used, only FC2's
map after its ReLU):

1-2. on device, ``eval.dense.DenseEngine`` with ``PooledDescriptor``: the
     image rescaled so that its smallest side is Q, the FC2 map over the
     whole image (masked canvases: batched, any aspect ratio), averaged over
     its valid positions, averaged with the same for the flipped image;
3-5. on the host, ``descriptor.py``'s functions: scales averaged or stacked,
     L2, nets stacked; VOC action's image+box variant stacks the whole
     image's descriptor and the person box's (the box cut from the image
     before rescaling).

Output: ``store.SplitWriter`` (chunks written atomically; a rerun with the
same settings continues after the last finished chunk).  Several hosts:
each process computes every ``process_count``-th image of a chunk, the rows
are gathered (``sharding.allgather_rows``) and process 0 writes, so every
image is counted once.  Undecodable images are named in the index.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from vgg_jax import preprocess
from vgg_jax import progress as progress_lib
from vgg_jax import sharding as sharding_lib
from vgg_jax.eval import dense as dense_lib
from vgg_jax.models import geometry
from vgg_jax.transfer import descriptor
from vgg_jax.transfer import sources
from vgg_jax.transfer import store

POOLED_DESCRIPTOR = dense_lib.PooledDescriptor()


@dataclasses.dataclass
class Net:
  """One net of a (possibly fused) descriptor."""
  name: str
  model: object
  convention: object
  in_channels: int
  path: str = ""


def net_from_loaded(loaded, name: str | None = None) -> Net:
  """A ``model_dir.LoadedModel`` as a descriptor net."""
  meta = loaded.metadata["model"]
  return Net(name or loaded.label, loaded.model, loaded.convention,
             int(meta.get("in_channels", 3)),
             str(pathlib.Path(loaded.path).resolve()))


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
  """uint8 RGB (H, W, 3) -> the net's channels (grey: PIL's ITU-R 601 L)."""
  if channels == 3:
    return img
  if channels == 1:
    return np.asarray(Image.fromarray(img).convert("L"))[..., None]
  raise ValueError(f"nets with {channels} input channels are not supported "
                   "(expected 1 or 3)")


def cut_box(img: np.ndarray, box) -> np.ndarray:
  """The (xmin, ymin, xmax, ymax) inclusive-pixel box of an image."""
  h, w = img.shape[:2]
  x0, y0, x1, y1 = (int(round(v)) for v in box)
  x0, y0 = max(0, x0), max(0, y0)
  x1, y1 = min(w - 1, x1), min(h - 1, y1)
  if x1 < x0 or y1 < y0:
    raise ValueError(f"box {tuple(box)} has no pixel inside the "
                     f"{w}x{h} image")
  return img[y0:y1 + 1, x0:x1 + 1]


def check_scales(nets: Sequence[Net], spec: descriptor.DescriptorSpec):
  for net in nets:
    smallest = geometry.min_input_size(net.model.spec)
    small = [q for q in spec.scales if q < smallest]
    if small:
      raise ValueError(f"net {net.name} needs images of at least {smallest} "
                       f"px (one FC position); scales {small} are smaller")


def describe_images(images: Sequence[np.ndarray], nets: Sequence[Net],
                    spec: descriptor.DescriptorSpec, *, boxes=None,
                    engines=None, batch_size: int = 8,
                    bucket_step: int = 32) -> np.ndarray:
  """Descriptors (n, spec.dim(width)) of decoded uint8 RGB images.

  ``boxes``: one (xmin, ymin, xmax, ymax) per image when ``spec.box``.
  ``engines``: one ``DenseEngine`` per net (built when not given).
  """
  n = len(images)
  views = list(images)
  if spec.box:
    if boxes is None or len(boxes) != n or any(b is None for b in boxes):
      raise ValueError("the image+box descriptor needs a person box for "
                       "every image")
    views += [cut_box(img, b) for img, b in zip(images, boxes)]
  if engines is None:
    engines = [dense_lib.DenseEngine(net.model, net.convention,
                                     POOLED_DESCRIPTOR) for net in nets]
  per_net = []
  for net, engine in zip(nets, engines):
    pooled = {}
    for q in spec.scales:
      out = np.zeros((len(views), engine.width), np.float32)

      def sink(rows, values, out=out):
        out[rows] = values
      batcher = dense_lib.DenseBatcher(engine, sink, bucket_step=bucket_step,
                                       batch_size=batch_size, flips=spec.flip)
      for row, v in enumerate(views):
        batcher.add(row, preprocess.rescale_shorter_side(
            to_channels(v, net.in_channels), q))
      batcher.flush()
      pooled[q] = out
    # Steps 1-2 (pooling, flip) ran in the engine; 3-4 here.
    per_net.append(descriptor.net_descriptor(
        pooled, dataclasses.replace(spec, flip=False)))
  fused = descriptor.stack_nets(per_net, spec.renormalise)
  if spec.box:
    return descriptor.action_descriptor(fused[:n], fused[n:])
  return fused


def decode(item: sources.ImageItem) -> np.ndarray:
  """An item's image as uint8 RGB; DecodeError / OSError when it cannot be."""
  data = item.read()
  img = preprocess.decode_image(data)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=2)
  return img


def _record(item: sources.ImageItem, error: str | None = None) -> dict:
  rec = {"name": item.name, **item.labels}
  if error is not None:
    rec["error"] = error
  return rec


def extract_split(images: sources.ImageList, split: str, out_dir,
                  nets: Sequence[Net], spec: descriptor.DescriptorSpec, *,
                  batch_size: int = 8, bucket_step: int = 32,
                  chunk_size: int = 256, mesh=None,
                  max_chunks: int | None = None,
                  show_progress: bool = True) -> pathlib.Path | None:
  """Writes ``out_dir/<split>.{npy,json}``; resumes an interrupted run.

  ``max_chunks``: stop after this many new chunks (the file is then left
  unfinished in ``<split>.parts/``; returns None).  Returns the .npy path.
  """
  if [n.name for n in nets] != list(spec.nets):
    raise ValueError(f"spec.nets {list(spec.nets)} must name the given nets "
                     f"in order, got {[n.name for n in nets]}")
  check_scales(nets, spec)
  sources.check_unique(images.items)
  by_name = {it.name: it for it in images.items}
  settings = {"descriptor": "vgg_fc2_dense", "spec": spec.to_json(),
              "nets": [{"name": n.name, "path": n.path} for n in nets],
              "image_set": images.source}
  pi, pc = jax.process_index(), jax.process_count()
  writer = None
  if pi == 0:
    writer = store.SplitWriter(out_dir, split, settings=settings,
                               task=images.task, classes=images.classes,
                               names=list(by_name))
    todo = writer.remaining()
  else:
    todo = None
  if pc > 1:  # the writer's view of what is left, on every process
    todo = sharding_lib.allgather_json(todo)[0]
  engines = [dense_lib.DenseEngine(n.model, n.convention, POOLED_DESCRIPTOR,
                                   mesh=mesh) for n in nets]
  bar = progress_lib.Progress(len(todo), desc=f"extract {split}",
                              unit="images") if show_progress else None
  chunks = 0
  try:
    for start in range(0, len(todo), chunk_size):
      if max_chunks is not None and chunks >= max_chunks:
        return None
      chunk = todo[start:start + chunk_size]
      mine = list(range(pi, len(chunk), pc))
      ok_pos, decoded, boxes, errors = [], [], [], {}
      for pos in mine:
        item = by_name[chunk[pos]]
        try:
          img = decode(item)
          if spec.box:
            if item.box is None:
              raise ValueError("no person box given (image+box descriptor)")
            cut_box(img, item.box)
        except (OSError, ValueError, preprocess.DecodeError) as e:
          # Without object addresses: a rerun writes the same index.
          errors[item.name] = re.sub(r" at 0x[0-9a-fA-F]+", "",
                                     f"{type(e).__name__}: {e}")
          continue
        ok_pos.append(pos)
        decoded.append(img)
        boxes.append(item.box)
      dim = spec.dim(engines[0].width)
      feats = (describe_images(decoded, nets, spec, boxes=boxes,
                               engines=engines, batch_size=batch_size,
                               bucket_step=bucket_step)
               if decoded else np.zeros((0, dim), np.float32))
      pos_arr = np.asarray(ok_pos, np.int64)
      if pc > 1:
        g = sharding_lib.allgather_rows({"pos": pos_arr, "x": feats},
                                        {"pos": -1, "x": 0.0})
        pos_arr, feats = g["pos"], g["x"]
        merged = {}
        for e in sharding_lib.allgather_json(errors):
          merged.update(e or {})
        errors = merged
      order = np.argsort(pos_arr, kind="stable")
      feats = feats[order]
      if writer is not None:
        records = [_record(by_name[name], errors.get(name)) for name in chunk]
        if len(records) != len(pos_arr) + len(errors):
          raise RuntimeError(
              f"chunk at {start}: {len(pos_arr)} descriptors and "
              f"{len(errors)} failures for {len(records)} images; every "
              "image must be counted once")
        writer.add_chunk(records, feats)
      chunks += 1
      if bar is not None:
        bar.update(len(chunk))
    return writer.finish() if writer is not None else None
  finally:
    if bar is not None:
      bar.close()
    if writer is not None:
      writer.close()


def load_nets(paths: Sequence[str], names: Sequence[str] | None = None, *,
              dtype=None) -> list[Net]:
  """Nets from model directories (workdirs or imported weights)."""
  from vgg_jax import model_dir  # pylint: disable=g-import-not-at-top
  nets = []
  for i, p in enumerate(paths):
    loaded = model_dir.load_model(p, dtype=dtype)
    name = names[i] if names else loaded.label
    nets.append(net_from_loaded(loaded, name))
  seen = [n.name for n in nets]
  if len(set(seen)) != len(seen):
    raise ValueError(f"nets need distinct names, got {seen}: pass --names")
  return nets

