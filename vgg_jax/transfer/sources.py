"""Image sets for the transfer protocols (Appendix B, Tables 11-12): readers
that give image bytes, labels, "difficult" flags and (VOC action) person
boxes, without decoding anything (decoding is the extractor's, so that an
undecodable image is named in the index, not lost).

A reader is ``reader(root, split) -> ImageList`` registered by name:

* ``set``: the offline sets of ``vgg_jax.data.transfer_sets`` (digits,
  canvas): ROOT/<split>.json + ROOT/<split>/<name>;
* ``caltech101``: the published folder layout ``101_ObjectCategories/<class>/
  image_NNNN.jpg`` (102 classes, BACKGROUND_Google included, as the paper
  counts them); split "all";
* ``caltech256``: ``256_ObjectCategories/NNN.<class>/NNN_NNNN.jpg`` (257
  classes, 257.clutter included); split "all";
* ``voc_action``: the VOC-2012 devkit layout (``VOC2012/`` or the folder
  itself: ``ImageSets/Action/<split>.txt``, ``Annotations/<id>.xml`` with
  each person's ``<actions>`` and ``<bndbox>``, ``JPEGImages/<id>.jpg``); one
  item per annotated person (name ``<id>/<person number>``), its box given;
* ``tfds:voc/2007``, ``tfds:voc/2012``, ``tfds:caltech101``: a TFDS dataset
  prepared ahead (``python -m vgg_jax.data prepare`` / ``tfds build``) under
  ``root`` (the TFDS data_dir); images read undecoded.  Thin on purpose: the
  labels are TFDS's (VOC: ``labels`` and ``labels_no_difficult``).

Folder and archive layouts are read from an unpacked folder (unpack the
published .tar first); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

from vgg_jax.data import transfer_sets
from vgg_jax.data import voc_xml

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VOC_ACTIONS = ("jumping", "phoning", "playinginstrument", "reading",
               "ridingbike", "ridinghorse", "running", "takingphoto",
               "usingcomputer", "walking", "other")


@dataclasses.dataclass(frozen=True)
class ImageItem:
  """One image of a split: its name, labels, how to read its bytes and, for
  VOC action, the person box ``(xmin, ymin, xmax, ymax)`` in pixels of the
  stored image, inclusive ends (VOC's convention)."""
  name: str
  labels: dict
  read: Callable[[], bytes]
  box: tuple[float, float, float, float] | None = None


@dataclasses.dataclass
class ImageList:
  task: str            # "multiclass" | "multilabel"
  classes: list[str]
  items: list[ImageItem]
  source: str


_READERS: dict[str, Callable[..., ImageList]] = {}


def register_reader(name: str):
  def deco(fn):
    _READERS[name] = fn
    return fn
  return deco


def reader_names() -> list[str]:
  return sorted(_READERS) + ["tfds:<name>"]


def read_images(kind: str, root, split: str) -> ImageList:
  """The images of one split of a set of kind ``kind`` (see module doc)."""
  if kind.startswith("tfds:"):
    return read_tfds(kind[len("tfds:"):], root, split)
  if kind not in _READERS:
    raise ValueError(f"unknown image set kind {kind!r}; expected one of "
                     f"{reader_names()}")
  return _READERS[kind](pathlib.Path(root), split)


def _file_reader(path: pathlib.Path) -> Callable[[], bytes]:
  return path.read_bytes


@register_reader("set")
def read_transfer_set(root: pathlib.Path, split: str) -> ImageList:
  index = transfer_sets.read_index(root, split)
  items = []
  for r in index["images"]:
    labels = {k: r[k] for k in ("label", "positive", "difficult") if k in r}
    box = tuple(r["person_box"]) if r.get("person_box") else None
    items.append(ImageItem(r["name"], labels,
                           _file_reader(root / split / r["name"]), box))
  return ImageList(index["task"], list(index["classes"]), items,
                   index.get("source", str(root)))


def _class_folders(base: pathlib.Path, what: str) -> list[pathlib.Path]:
  if not base.is_dir():
    raise FileNotFoundError(f"{base} is missing: unpack {what} so that its "
                            "class folders are under it")
  dirs = sorted(d for d in base.iterdir() if d.is_dir())
  if not dirs:
    raise FileNotFoundError(f"{base} has no class folders ({what})")
  return dirs


def _folder_list(base: pathlib.Path, split: str, what: str,
                 class_name=lambda d: d.name) -> ImageList:
  if split != "all":
    raise ValueError(f"{what} has one split, 'all' (the random train/test "
                     f"splits are drawn by the svm command), got {split!r}")
  dirs = _class_folders(base, what)
  items = []
  for label, d in enumerate(dirs):
    for f in sorted(d.iterdir()):
      if f.suffix.lower() in IMAGE_SUFFIXES:
        items.append(ImageItem(f"{d.name}/{f.name}", {"label": label},
                               _file_reader(f)))
  return ImageList("multiclass", [class_name(d) for d in dirs], items,
                   str(base))


@register_reader("caltech101")
def read_caltech101(root: pathlib.Path, split: str) -> ImageList:
  """102 classes: the 101 objects and BACKGROUND_Google (Appendix B)."""
  base = root / "101_ObjectCategories" if (
      root / "101_ObjectCategories").is_dir() else root
  out = _folder_list(base, split, "101_ObjectCategories.tar.gz")
  return out


@register_reader("caltech256")
def read_caltech256(root: pathlib.Path, split: str) -> ImageList:
  """257 classes: NNN.<name> folders, 257.clutter included (Appendix B)."""
  base = root / "256_ObjectCategories" if (
      root / "256_ObjectCategories").is_dir() else root
  return _folder_list(base, split, "256_ObjectCategories.tar",
                      class_name=lambda d: d.name.split(".", 1)[-1])


def _voc_base(root: pathlib.Path) -> pathlib.Path:
  for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
    if (cand / "ImageSets" / "Action").is_dir():
      return cand
  raise FileNotFoundError(f"no ImageSets/Action under {root} (or its VOC2012/"
                          ", VOCdevkit/VOC2012/): unpack VOC-2012's "
                          "trainval (action) archive there")


@register_reader("voc_action")
def read_voc_action(root: pathlib.Path, split: str) -> ImageList:
  """VOC-2012 action: one item per annotated person of the split's images,
  multi-label over the 11 action classes (10 actions and "other"), its
  person box given (Table 12's image+box setting)."""
  base = _voc_base(root)
  listing = base / "ImageSets" / "Action" / f"{split}.txt"
  if not listing.is_file():
    raise FileNotFoundError(f"{listing} is missing (splits: train, val, "
                            "trainval, test)")
  ids = [line.split()[0] for line in listing.read_text().splitlines()
         if line.strip()]
  items = []
  for image_id in ids:
    xml = voc_xml.safe_parse((base / "Annotations" / f"{image_id}.xml")
                             .read_bytes())
    person = 0
    for obj in xml.iter("object"):
      acts = obj.find("actions")
      if obj.findtext("name", "").strip() != "person" or acts is None:
        continue
      person += 1
      box_el = obj.find("bndbox")
      box = tuple(float(box_el.findtext(k)) for k in
                  ("xmin", "ymin", "xmax", "ymax"))
      positive = [i for i, a in enumerate(VOC_ACTIONS)
                  if (acts.findtext(a) or "0").strip() == "1"]
      items.append(ImageItem(
          f"{image_id}/{person}", {"positive": positive, "difficult": []},
          _file_reader(base / "JPEGImages" / f"{image_id}.jpg"), box))
  return ImageList("multilabel", list(VOC_ACTIONS), items, str(base))


def read_tfds(name: str, data_dir, split: str) -> ImageList:
  """A prepared TFDS ``voc/2007``, ``voc/2012`` or ``caltech101`` split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=str(data_dir))
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={
        "image": tfds.decode.SkipDecoding()})
  except AssertionError as e:  # TFDS: "Dataset ... not found / prepared"
    raise FileNotFoundError(f"TFDS {name} is not prepared under {data_dir}: "
                            f"{e}") from None
  classes = list(builder.info.features["labels" if name.startswith("voc")
                                       else "label"].names)
  items = []
  for i, ex in enumerate(tfds.as_numpy(ds)):
    data = bytes(ex["image"])
    fname = ex.get("image/filename", ex.get("image/file_name", b""))
    fname = fname.decode() if isinstance(fname, bytes) else str(fname)
    item_name = fname or f"{split}_{i:06d}"
    if name.startswith("voc"):
      positive = sorted({int(v) for v in ex["labels_no_difficult"]})
      difficult = sorted({int(v) for v in ex["labels"]} - set(positive))
      labels = {"positive": positive, "difficult": difficult}
    else:
      labels = {"label": int(ex["label"])}
    items.append(ImageItem(item_name, labels, (lambda d=data: d)))
  return ImageList("multilabel" if name.startswith("voc") else "multiclass",
                   classes, items, f"tfds:{name}")


def check_unique(items: Sequence[ImageItem]) -> None:
  seen, again = set(), []
  for it in items:
    if it.name in seen:
      again.append(it.name)
    seen.add(it.name)
  if again:
    raise ValueError(f"image names repeat in the set: {again[:5]}")
