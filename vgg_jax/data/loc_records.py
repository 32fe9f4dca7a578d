"""Localisation data (paper Appendix A): ILSVRC-2012 images joined with their
box annotations, and ArrayRecord files holding (image, label, boxes, id).

Readers (each yields :class:`LocExample` and fills a :class:`PrepareLog`):

- :func:`iter_ilsvrc_train`: ``ILSVRC2012_img_train.tar`` (a tar of per-class
  tars ``n01440764.tar`` of ``n01440764_96.JPEG`` ...) joined with
  ``ILSVRC2012_bbox_train_v2.tar.gz`` (per-class folders of XML,
  ``n01440764/n01440764_96.xml``) by file stem.  Training uses only images
  with boxes (the others are counted, ``images_without_boxes``).
- :func:`iter_ilsvrc_val`: ``ILSVRC2012_img_val.tar`` joined with
  ``ILSVRC2012_bbox_val_v3.tgz`` (one XML per image, named like it:
  ``val/ILSVRC2012_val_00000001.xml``).  The label is the synset of the
  file's objects (the most frequent one if a file names several, counted).
- :func:`iter_voc_folder`: ``ROOT/<split>/<class>/x.jpg`` with ``x.xml``
  beside it, for users' own data (and the synthetic set).

Record format (:func:`write_records`, :class:`LocRecordSource`): one
ArrayRecord record per image, a msgpack map ``{"image": encoded bytes,
"image_id": str, "label": int, "height": int, "width": int, "boxes": [[xmin,
ymin, xmax, ymax], ...], "box_labels": [int, ...], "box_convention":
"xyxy_inclusive_pixels"}``.  Boxes are floats with INCLUSIVE pixel ends
(the ILSVRC devkit's: width = xmax - xmin + 1) in pixels of the stored image
(``height`` x ``width``, the decoded size), clipped to the image -- see
:mod:`vgg_jax.data.voc_xml`.  msgpack (already a Flax dependency) rather than
TFDS' tf.train.Example: TFDS has no ImageNet boxes builder and writing
Examples needs TensorFlow, which nothing else here loads.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import os
import pathlib
import tarfile
from typing import Iterable, Iterator, Sequence

import msgpack
import numpy as np
from PIL import Image

from vgg_jax.data import voc_xml

log = logging.getLogger(__name__)

BOX_CONVENTION = "xyxy_inclusive_pixels"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
TRAIN_IMAGES = "ILSVRC2012_img_train.tar"
VAL_IMAGES = "ILSVRC2012_img_val.tar"
TRAIN_BOXES = "ILSVRC2012_bbox_train_v2.tar.gz"
VAL_BOXES = "ILSVRC2012_bbox_val_v3.tgz"


@dataclasses.dataclass
class LocExample:
  image_id: str
  image: bytes  # encoded, as stored in the source
  label: int
  height: int
  width: int
  boxes: np.ndarray  # (M, 4) float64, module doc's convention
  box_labels: np.ndarray  # (M,) int64


@dataclasses.dataclass
class PrepareLog:
  """What a reader met: defect counts (:mod:`vgg_jax.data.voc_xml` keys plus
  ``images``, ``images_with_boxes``, ``images_without_boxes``,
  ``undecodable_image``, ``annotations_without_image``) and the names of
  undecodable images."""
  counts: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  undecodable: list = dataclasses.field(default_factory=list)

  def as_dict(self) -> dict:
    return {"counts": dict(sorted(self.counts.items())),
            "undecodable": list(self.undecodable)}


def image_size(data: bytes) -> tuple[int, int]:
  """(height, width) from the image header, without decoding the pixels.

  Raises ValueError for data that is not a readable image.  (Truncated pixel
  data is found later, by the decoder of the input pipeline, which names the
  image.)
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      w, h = im.size
  except Exception as e:  # PIL raises OSError, SyntaxError, ...
    raise ValueError(f"not a readable image ({len(data)} bytes): {e}") from e
  if w <= 0 or h <= 0:
    raise ValueError(f"image header gives size {w}x{h}")
  return h, w


def _stem(name: str) -> str:
  return pathlib.PurePosixPath(name).name.rsplit(".", 1)[0]


def read_annotation_tar(path, counts: collections.Counter
                        ) -> dict[str, voc_xml.VocAnnotation | None]:
  """Every ``*.xml`` in a (possibly gzipped) tar, parsed, by file stem.

  Works for both published layouts (per-class folders, or one flat folder),
  and for per-class tars nested inside (some mirrors repack it that way).
  Unreadable files map to None (counted by the parser).
  """
  out = {}

  def scan(tar):
    for m in tar:
      if not m.isfile():
        continue
      name = m.name.lower()
      if name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(fileobj=tar.extractfile(m), mode="r|*") as inner:
          scan(inner)
        continue
      if not name.endswith(".xml"):
        continue
      data = tar.extractfile(m).read()
      stem = _stem(m.name)
      if stem in out:
        counts["duplicate_annotation"] += 1
        continue
      out[stem] = voc_xml.parse_voc_xml(data, counts)

  with tarfile.open(path, "r:*") as tar:
    scan(tar)
  counts["annotation_files"] += len(out)
  return out


def _example(image_id, data, label, synset, ann, synset_to_label,
             plog: PrepareLog) -> LocExample | None:
  plog.counts["images"] += 1
  try:
    hw = image_size(data)
  except ValueError as e:
    plog.counts["undecodable_image"] += 1
    plog.undecodable.append(f"{image_id}: {e}")
    return None
  boxes, box_labels = voc_xml.fix_boxes(
      ann, hw, synset_to_label=synset_to_label, image_synset=synset,
      counts=plog.counts)
  plog.counts["images_with_boxes" if len(boxes) else
              "images_without_boxes"] += 1
  return LocExample(image_id, data, label, hw[0], hw[1], boxes, box_labels)


def _synset_index(synsets: Sequence[str]) -> dict[str, int]:
  if len(set(synsets)) != len(synsets) or not synsets:
    raise ValueError("synsets must be a non-empty list of distinct WordNet "
                     "ids in label order")
  return {s: i for i, s in enumerate(synsets)}


def iter_ilsvrc_train(images_tar, boxes_tar, synsets: Sequence[str],
                      plog: PrepareLog, *, only_with_boxes: bool = True
                      ) -> Iterator[LocExample]:
  """Training images joined with their boxes (module doc).  ``synsets``: the
  WordNet ids in label order (ILSVRC: ``imagenet_classes.wordnet_ids()``)."""
  index = _synset_index(synsets)
  anns = read_annotation_tar(boxes_tar, plog.counts)
  seen = set()
  with tarfile.open(images_tar, "r:*") as outer:
    for cm in outer:
      if not cm.isfile() or not cm.name.endswith(".tar"):
        continue
      synset = _stem(cm.name)
      if synset not in index:
        plog.counts["unknown_class_tar"] += 1
        log.warning("skipping %s: %s is not one of the %d synsets", cm.name,
                    synset, len(index))
        continue
      with tarfile.open(fileobj=outer.extractfile(cm), mode="r|*") as inner:
        for m in inner:
          if not m.isfile():
            continue
          stem = _stem(m.name)
          seen.add(stem)
          data = inner.extractfile(m).read()
          ann = anns.get(stem)
          if ann is None and only_with_boxes:
            plog.counts["images"] += 1
            plog.counts["images_without_boxes"] += 1
            continue
          ex = _example(stem, data, index[synset], synset, ann, index, plog)
          if ex is not None and (len(ex.boxes) or not only_with_boxes):
            yield ex
  plog.counts["annotations_without_image"] += len(set(anns) - seen)


def iter_ilsvrc_val(images_tar, boxes_tar, synsets: Sequence[str],
                    plog: PrepareLog, *, labels: dict | None = None
                    ) -> Iterator[LocExample]:
  """Validation images joined with their boxes (module doc).

  ``labels`` (optional): image stem -> synset, e.g. from the devkit's ground
  truth; by default the label is the (most frequent) synset of the file's
  objects.  An image with no usable box is still yielded (label -1 when
  unknown) so that evaluation can name it instead of dropping it.
  """
  index = _synset_index(synsets)
  anns = read_annotation_tar(boxes_tar, plog.counts)
  seen = set()
  with tarfile.open(images_tar, "r:*") as tar:
    for m in tar:
      if not m.isfile() or not m.name.lower().endswith(IMAGE_EXTENSIONS):
        continue
      stem = _stem(m.name)
      seen.add(stem)
      ann = anns.get(stem)
      synset = labels.get(stem) if labels else None
      if synset is None and ann is not None:
        names = [o.name for o in ann.objects if o.name in index]
        if names:
          synset = collections.Counter(names).most_common(1)[0][0]
      label = index.get(synset, -1) if synset else -1
      ex = _example(stem, tar.extractfile(m).read(), label, synset, ann,
                    index, plog)
      if ex is not None:
        yield ex
  plog.counts["annotations_without_image"] += len(set(anns) - seen)


def iter_voc_folder(root, split: str, synsets: Sequence[str],
                    plog: PrepareLog) -> Iterator[LocExample]:
  """``root/<split>/<class>/x.<jpg|jpeg|png>`` with ``x.xml`` beside it, in
  sorted order; the class folder names must be in ``synsets``."""
  index = _synset_index(synsets)
  split_dir = pathlib.Path(root) / split
  if not split_dir.is_dir():
    raise FileNotFoundError(f"no folder {split_dir}; expected "
                            "ROOT/<split>/<class>/<image> + <image stem>.xml")
  for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
    if class_dir.name not in index:
      raise ValueError(f"class folder {class_dir.name!r} is not in the "
                       f"{len(index)} given classes")
    for img in sorted(class_dir.iterdir()):
      if img.suffix.lower() not in IMAGE_EXTENSIONS:
        continue
      xml_path = img.with_suffix(".xml")
      ann = (voc_xml.parse_voc_xml(xml_path.read_bytes(), plog.counts)
             if xml_path.exists() else None)
      ex = _example(img.stem, img.read_bytes(), index[class_dir.name],
                    class_dir.name, ann, index, plog)
      if ex is not None:
        yield ex


# ----------------------------------------------------------------------------
# ArrayRecord


def encode_record(ex: LocExample) -> bytes:
  return msgpack.packb({
      "image": ex.image, "image_id": ex.image_id, "label": int(ex.label),
      "height": int(ex.height), "width": int(ex.width),
      "boxes": [[float(v) for v in b] for b in np.reshape(ex.boxes, (-1, 4))],
      "box_labels": [int(v) for v in ex.box_labels],
      "box_convention": BOX_CONVENTION}, use_bin_type=True)


def decode_record(data: bytes) -> dict:
  """A record -> dict with ``boxes`` (M, 4) float32 and ``box_labels`` (M,)."""
  r = msgpack.unpackb(data, raw=False)
  if r.get("box_convention") != BOX_CONVENTION:
    raise ValueError(f"record of image {r.get('image_id')!r} has box "
                     f"convention {r.get('box_convention')!r}, expected "
                     f"{BOX_CONVENTION!r}")
  r["boxes"] = np.asarray(r["boxes"], np.float32).reshape(-1, 4)
  r["box_labels"] = np.asarray(r["box_labels"], np.int64)
  return r


def write_records(examples: Iterable[LocExample], path) -> int:
  """Writes one ArrayRecord file atomically (temp name, fsync, rename);
  returns the number of records."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  n = 0
  # group_size:1 makes every record independently readable (random access),
  # as TFDS writes its ArrayRecord files.
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
  try:
    for ex in examples:
      writer.write(encode_record(ex))
      n += 1
  except BaseException:
    writer.close()
    tmp.unlink(missing_ok=True)
    raise
  writer.close()
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return n


class LocRecordSource:
  """Random access to localisation records (grain-compatible: ``len`` and
  ``[i]``), decoded by :func:`decode_record`."""

  def __init__(self, paths):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    paths = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                              else paths)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(f"no localisation records at {missing}; write "
                              "them with vgg_jax.data.loc_records")
    self._source = array_record_data_source.ArrayRecordDataSource(paths)

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i) -> dict:
    return decode_record(self._source[i])


def _write_json(path: pathlib.Path, obj):
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def prepare_split(examples: Iterable[LocExample], out_dir, split: str,
                  plog: PrepareLog) -> dict:
  """Writes ``out_dir/<split>.array_record`` and ``out_dir/<split>.log.json``
  (the counts and undecodable names); returns the log dict with
  ``records``."""
  out = pathlib.Path(out_dir)
  n = write_records(examples, out / f"{split}.array_record")
  summary = {"records": n, **plog.as_dict()}
  _write_json(out / f"{split}.log.json", summary)
  log.info("%s: %d records; %s", split, n, summary["counts"])
  return summary


def prepare_imagenet2012_loc(manual_dir, data_dir,
                             synsets: Sequence[str] | None = None) -> dict:
  """Both ILSVRC-2012 splits from the four published tars in ``manual_dir``
  into ``data_dir/{train,validation}.array_record`` (+ ``.log.json``)."""
  manual = pathlib.Path(manual_dir)
  if synsets is None:
    from vgg_jax import imagenet_classes  # pylint: disable=g-import-not-at-top
    synsets = imagenet_classes.wordnet_ids()
  result = {}
  for split, imgs, bxs, fn in (
      ("train", TRAIN_IMAGES, TRAIN_BOXES, iter_ilsvrc_train),
      ("validation", VAL_IMAGES, VAL_BOXES, iter_ilsvrc_val)):
    if not (manual / imgs).exists() or not (manual / bxs).exists():
      log.warning("skipping %s: need %s and %s in %s", split, imgs, bxs,
                  manual)
      continue
    plog = PrepareLog()
    result[split] = prepare_split(fn(manual / imgs, manual / bxs, synsets,
                                     plog), data_dir, split, plog)
  if not result:
    raise FileNotFoundError(
        f"{manual} holds neither ({TRAIN_IMAGES}, {TRAIN_BOXES}) nor "
        f"({VAL_IMAGES}, {VAL_BOXES}); download them from image-net.org")
  return result


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(
      prog="python -m vgg_jax.data.loc_records",
      description="ILSVRC-2012 images + box XML -> localisation ArrayRecords")
  p.add_argument("--manual_dir", required=True)
  p.add_argument("--data_dir", required=True)
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    result = prepare_imagenet2012_loc(args.manual_dir, args.data_dir)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: {"records": v["records"], "counts": v["counts"]}
                    for k, v in result.items()}, indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
