"""PASCAL-VOC XML box annotations (ILSVRC-2012's published form), parsed
safely, with every defect of the real files counted and none fatal.

ILSVRC's ``ILSVRC2012_bbox_train_v2.tar.gz`` holds one XML per annotated
training image (``<folder>n01440764</folder><filename>n01440764_96``...) and
``ILSVRC2012_bbox_val_v3.tgz`` one per validation image, named like it.  Each
file has ``<size><width>W</width><height>H</height>`` and ``<object>``s with a
``<name>`` (a WordNet id) and a ``<bndbox>`` of ``xmin ymin xmax ymax``.

Stored convention (what :func:`fix_boxes` returns and the localisation
records keep): ``(xmin, ymin, xmax, ymax)`` float, INCLUSIVE pixel ends (the
ILSVRC devkit's; width = xmax - xmin + 1), in pixels of the image as it is
stored and decoded, clipped to ``[0, W-1] x [0, H-1]``.

Safety: the files are parsed with the standard library's expat driven by
``xml.etree.ElementTree.TreeBuilder``, with any document type declaration
rejected (``StartDoctypeDeclHandler`` raises), so no entity can be declared
and none is ever expanded (no "billion laughs", no external entities); an
undeclared ``&name;`` is an expat error.  This is what ``defusedxml``
forbids by default, without the dependency.  Such a file is counted as
``unsafe_xml`` and its image treated as having no boxes.

Defects and what is done (the key counted in the ``counts`` Counter):

- ``unparseable_xml`` / ``unsafe_xml``: the file yields no boxes.
- ``malformed_box``: an object without a numeric ``bndbox``: dropped.
- ``swapped_coordinates``: ``xmin > xmax`` or ``ymin > ymax``: the two are
  swapped (annotation tools record the drag direction; the box is intact).
- ``missing_size``: no usable ``<size>``: the decoded image's size is used.
- ``size_mismatch``: ``<size>`` differs from the decoded image: the boxes are
  rescaled from ``<size>`` to the decoded size (the annotator drew on an
  image of that size; rescaling keeps the box on the same object).
- ``clipped``: a box partly outside the image: clipped to it.
- ``outside_image``: a box with no pixel inside the image: dropped.
- ``unknown_name``: a ``<name>`` that is not a known synset: dropped.
- ``other_class_object``: a known synset other than the image's class: kept,
  with that class as its box label (the per-class target and the metric
  only use the boxes of the class they ask for).
- ``several_classes``: a file with objects of more than one class (counted
  once per file).
- ``boxes``: boxes kept.
"""

from __future__ import annotations

import collections
import dataclasses
import xml.etree.ElementTree as ET
from typing import Mapping
from xml.parsers import expat

import numpy as np

from vgg_jax.localisation import boxes as boxes_lib

DEFECTS = ("unparseable_xml", "unsafe_xml", "malformed_box",
           "swapped_coordinates", "missing_size", "size_mismatch", "clipped",
           "outside_image", "unknown_name", "other_class_object",
           "several_classes")


class UnsafeXML(ValueError):
  """The XML declares a DTD or entities (never present in VOC/ILSVRC files)."""


@dataclasses.dataclass(frozen=True)
class VocObject:
  name: str
  box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
  folder: str
  filename: str
  size_wh: tuple[int, int] | None  # None when absent or unusable
  objects: tuple[VocObject, ...]


def safe_parse(data: bytes) -> ET.Element:
  """XML bytes -> root Element; DTDs and entities refused (module doc)."""
  builder = ET.TreeBuilder()
  parser = expat.ParserCreate()

  def refuse(*_):
    raise UnsafeXML("document type / entity declarations are not allowed")

  parser.StartDoctypeDeclHandler = refuse
  parser.EntityDeclHandler = refuse
  parser.UnparsedEntityDeclHandler = refuse
  parser.ExternalEntityRefHandler = refuse
  parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
  parser.StartElementHandler = builder.start
  parser.EndElementHandler = builder.end
  parser.CharacterDataHandler = builder.data
  parser.Parse(data, True)
  return builder.close()


def _text(el, path) -> str | None:
  found = el.find(path)
  if found is None or found.text is None:
    return None
  return found.text.strip()


def _number(el, path) -> float | None:
  t = _text(el, path)
  try:
    v = float(t) if t is not None else None
  except ValueError:
    return None
  return v if v is not None and np.isfinite(v) else None


def parse_voc_xml(data: bytes, counts: collections.Counter
                  ) -> VocAnnotation | None:
  """Parses one annotation file; returns None (counted) if it cannot be read.

  Coordinates are returned as written, except that reversed ends are
  swapped (counted); sizes and names are checked by :func:`fix_boxes`.
  """
  try:
    root = safe_parse(data)
  except UnsafeXML:
    counts["unsafe_xml"] += 1
    return None
  except expat.ExpatError:
    counts["unparseable_xml"] += 1
    return None
  w, h = _number(root, "size/width"), _number(root, "size/height")
  size = (int(w), int(h)) if w and h and w > 0 and h > 0 else None
  objects = []
  for obj in root.iter("object"):
    name = _text(obj, "name") or ""
    coords = [_number(obj, f"bndbox/{k}")
              for k in ("xmin", "ymin", "xmax", "ymax")]
    if any(c is None for c in coords):
      counts["malformed_box"] += 1
      continue
    x0, y0, x1, y1 = coords
    if x0 > x1 or y0 > y1:
      counts["swapped_coordinates"] += 1
      x0, x1 = min(x0, x1), max(x0, x1)
      y0, y1 = min(y0, y1), max(y0, y1)
    objects.append(VocObject(name, (x0, y0, x1, y1)))
  return VocAnnotation(_text(root, "folder") or "",
                       _text(root, "filename") or "", size, tuple(objects))


def fix_boxes(ann: VocAnnotation | None, image_hw: tuple[int, int], *,
              synset_to_label: Mapping[str, int], image_synset: str | None,
              counts: collections.Counter) -> tuple[np.ndarray, np.ndarray]:
  """An annotation's boxes in the stored convention for a decoded image of
  size ``image_hw`` = (H, W): ``(boxes (M, 4) float64, box_labels (M,))``.

  ``image_synset``: the image's class (the folder of a training image, or the
  validation label), for counting ``other_class_object``; None to skip that.
  """
  empty = (np.zeros((0, 4)), np.zeros((0,), np.int64))
  if ann is None:
    return empty
  h, w = image_hw
  if ann.size_wh is None:
    counts["missing_size"] += 1
    scale_from = None
  elif ann.size_wh != (w, h):
    counts["size_mismatch"] += 1
    scale_from = (ann.size_wh[1], ann.size_wh[0])
  else:
    scale_from = None
  out_boxes, out_labels = [], []
  for obj in ann.objects:
    if obj.name not in synset_to_label:
      counts["unknown_name"] += 1
      continue
    if image_synset is not None and obj.name != image_synset:
      counts["other_class_object"] += 1
    box = np.asarray(obj.box, np.float64)
    if scale_from is not None:
      box = boxes_lib.rescale(box, scale_from, (h, w))
    if box[2] < 0 or box[3] < 0 or box[0] > w - 1 or box[1] > h - 1:
      counts["outside_image"] += 1
      continue
    clipped = boxes_lib.clip(box, (h, w))
    if not np.array_equal(clipped, box):
      counts["clipped"] += 1
    out_boxes.append(clipped)
    out_labels.append(synset_to_label[obj.name])
  if len(set(out_labels)) > 1:
    counts["several_classes"] += 1
  counts["boxes"] += len(out_boxes)
  if not out_boxes:
    return empty
  return np.stack(out_boxes), np.asarray(out_labels, np.int64)


def to_voc_xml(*, folder: str, filename: str, size_wh: tuple[int, int],
               objects: list[tuple[str, tuple]]) -> bytes:
  """Writes an annotation in the ILSVRC/PASCAL-VOC layout (for the synthetic
  dataset and the tests); coordinates as given (integers stay integers)."""
  root = ET.Element("annotation")
  ET.SubElement(root, "folder").text = folder
  ET.SubElement(root, "filename").text = filename
  src = ET.SubElement(root, "source")
  ET.SubElement(src, "database").text = "vgg_jax"
  size = ET.SubElement(root, "size")
  ET.SubElement(size, "width").text = str(size_wh[0])
  ET.SubElement(size, "height").text = str(size_wh[1])
  ET.SubElement(size, "depth").text = "3"
  ET.SubElement(root, "segmented").text = "0"
  for name, box in objects:
    obj = ET.SubElement(root, "object")
    ET.SubElement(obj, "name").text = name
    ET.SubElement(obj, "pose").text = "Unspecified"
    ET.SubElement(obj, "truncated").text = "0"
    ET.SubElement(obj, "difficult").text = "0"
    bb = ET.SubElement(obj, "bndbox")
    for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
      ET.SubElement(bb, k).text = (str(int(v)) if float(v).is_integer()
                                   else repr(float(v)))
  return ET.tostring(root, encoding="utf-8")
