"""The columns of the paper's Tables 11 and 12 as presets.

Each preset says which image set (``sources`` kind), which splits, which
descriptor (``DescriptorSpec``: scales, averaged or stacked, nets) and which
protocol (``svm voc`` / ``svm caltech`` arguments) make one number of the
paper.  ``python -m vgg_jax.transfer extract --preset NAME`` takes the
descriptor settings from it; ``python -m vgg_jax.transfer presets`` lists
them with the commands they stand for.  The ``paper`` field is the number
the paper reports (Net-D & Net-E fused unless the name says otherwise).
"""

from __future__ import annotations

import dataclasses

from vgg_jax.transfer import descriptor


@dataclasses.dataclass(frozen=True)
class Preset:
  name: str
  kind: str                  # sources reader
  splits: tuple[str, ...]    # splits to extract
  spec: descriptor.DescriptorSpec
  protocol: str              # "voc" | "caltech"
  svm_args: tuple[str, ...]  # the svm command's arguments
  paper: str                 # the paper's number
  doc: str


def _voc(year, nets, paper):
  spec = descriptor.voc_spec(nets)
  kind = f"tfds:voc/{year}"
  ap = "voc2007" if year == 2007 else "voc2012"
  # VOC-2012 test labels are not public: the paper's numbers are from the
  # evaluation server; locally, train on "train" and test on "validation".
  train, test = (("trainval", "test") if year == 2007 else
                 ("train", "validation"))
  return dict(kind=kind, splits=(train, test), spec=spec, protocol="voc",
              svm_args=("--train", train, "--test", test, "--ap", ap),
              paper=paper)


def _caltech(which, nets, paper):
  # The published folder layouts (101_ObjectCategories, 256_ObjectCategories)
  # as one split "all"; the svm command draws the 3 random splits.  (TFDS
  # caltech101's train + test pooled is the same set: --kind tfds:caltech101
  # --splits train,test and svm --splits train,test.)
  return dict(kind=f"caltech{which}", splits=("all",),
              spec=descriptor.caltech_spec(nets), protocol="caltech",
              svm_args=("--splits", "all", "--preset", f"caltech{which}"),
              paper=paper)


def voc2007_d():
  """Table 11, VOC-2007, Net-D: 89.3% mAP (5 scales averaged, 11-pt AP)."""
  return _voc(2007, ("D",), "89.3 mAP")


def voc2007_e():
  """Table 11, VOC-2007, Net-E: 89.3% mAP."""
  return _voc(2007, ("E",), "89.3 mAP")


def voc2007_de():
  """Table 11, VOC-2007, Net-D & Net-E: 89.7% mAP."""
  return _voc(2007, ("D", "E"), "89.7 mAP")


def voc2012_d():
  """Table 11, VOC-2012, Net-D: 89.0% mAP (test server; locally: val)."""
  return _voc(2012, ("D",), "89.0 mAP")


def voc2012_e():
  """Table 11, VOC-2012, Net-E: 89.0% mAP."""
  return _voc(2012, ("E",), "89.0 mAP")


def voc2012_de():
  """Table 11, VOC-2012, Net-D & Net-E: 89.3% mAP."""
  return _voc(2012, ("D", "E"), "89.3 mAP")


def caltech101_d():
  """Table 11, Caltech-101, Net-D: 91.8 ± 1.0% mean class recall (3 scales
  stacked; 30 train / up to 50 test per class, 3 splits)."""
  return _caltech(101, ("D",), "91.8 ± 1.0 mean class recall")


def caltech101_e():
  """Table 11, Caltech-101, Net-E: 92.3 ± 0.5% mean class recall."""
  return _caltech(101, ("E",), "92.3 ± 0.5 mean class recall")


def caltech101_de():
  """Table 11, Caltech-101, Net-D & Net-E: 92.7 ± 0.5% mean class recall."""
  return _caltech(101, ("D", "E"), "92.7 ± 0.5 mean class recall")


def caltech256_d():
  """Table 11, Caltech-256, Net-D: 85.0 ± 0.2% mean class recall (60 train
  per class, the rest test, 3 splits)."""
  return _caltech(256, ("D",), "85.0 ± 0.2 mean class recall")


def caltech256_e():
  """Table 11, Caltech-256, Net-E: 85.1 ± 0.3% mean class recall."""
  return _caltech(256, ("E",), "85.1 ± 0.3 mean class recall")


def caltech256_de():
  """Table 11, Caltech-256, Net-D & Net-E: 86.2 ± 0.3% mean class recall."""
  return _caltech(256, ("D", "E"), "86.2 ± 0.3 mean class recall")


def voc_action_image():
  """Table 12, VOC-2012 action, Net-D & Net-E, image only: 79.2% mAP."""
  return dict(kind="voc_action", splits=("train", "val"),
              spec=descriptor.voc_action_spec(box=False), protocol="voc",
              svm_args=("--train", "train", "--test", "val", "--ap",
                        "voc2012"), paper="79.2 mAP")


def voc_action_box():
  """Table 12, VOC-2012 action, Net-D & Net-E, image and person box: 84.0%
  mAP (the whole image's descriptor and the box's, stacked)."""
  return dict(kind="voc_action", splits=("train", "val"),
              spec=descriptor.voc_action_spec(box=True), protocol="voc",
              svm_args=("--train", "train", "--test", "val", "--ap",
                        "voc2012"), paper="84.0 mAP")


_FUNCS = (voc2007_d, voc2007_e, voc2007_de, voc2012_d, voc2012_e, voc2012_de,
          caltech101_d, caltech101_e, caltech101_de, caltech256_d,
          caltech256_e, caltech256_de, voc_action_image, voc_action_box)

PRESETS = {f.__name__: Preset(name=f.__name__, doc=f.__doc__.strip(), **f())
           for f in _FUNCS}


def get_preset(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; expected one of "
                     f"{sorted(PRESETS)}")
  return PRESETS[name]
