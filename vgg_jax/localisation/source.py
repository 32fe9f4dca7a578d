"""The localisation data source ``data.source = "loc_records"`` (Appendix A).

Reads ``DATA_DIR/<split>.array_record`` written by ``vgg_jax.data.loc_records``
(ILSVRC-2012 tars, VOC folders; ``python -m vgg_jax.data prepare
imagenet2012_loc``) or by ``python -m vgg_jax.localisation.synth``.  Class
names: ``DATA_DIR/class_index.json`` when present (the synthetic set, users'
folders), else the 1000 ILSVRC classes.

Training (paper §3.1 applied to image AND boxes): S drawn in the configured
range, the shorter side rescaled to S, a random crop, a random horizontal
flip; the image's boxes follow (``boxes.to_crop_frame``) and the target is
chosen by ``boxes.crop_target`` (OverFeat's >= ``min_visible`` rule, the
largest visible box of the image's class), encoded by ``boxes.encode``.
Batches follow the other sources' global order (``input_pipeline.
train_batches``: the same global batch on any number of hosts, each host its
own rows) and the example at global position g draws from
``input_pipeline.example_rng(seed, g)``: deterministic and resumable, and
hosts draw differently.  An undecodable image is skipped, counted in
``num_skipped`` and its slot refilled.

The box options live in the data config (``data.box_normalisation``,
``data.min_visible``, ``data.multi_box``) so the source needs only it.
"""

from __future__ import annotations

import json
import logging
import pathlib

import numpy as np

from vgg_jax import input_pipeline
from vgg_jax import preprocess
from vgg_jax.data import loc_records
from vgg_jax.data import readers
from vgg_jax.data.readers import DatasetInfo
from vgg_jax.localisation import boxes as boxes_lib

log = logging.getLogger(__name__)


def records_path(data_cfg, split: str) -> pathlib.Path:
  if not data_cfg.data_dir:
    raise ValueError("data.source='loc_records' needs data.data_dir (the "
                     "folder with <split>.array_record)")
  return pathlib.Path(data_cfg.data_dir) / f"{split}.array_record"


def class_names(data_cfg) -> list[str]:
  p = pathlib.Path(data_cfg.data_dir) / "class_index.json"
  if data_cfg.get("class_index_path", None):
    p = pathlib.Path(data_cfg.class_index_path)
  if p.is_file():
    index = json.loads(p.read_text())
    return sorted(index, key=index.get)
  from vgg_jax import imagenet_classes  # pylint: disable=g-import-not-at-top
  return list(imagenet_classes.wordnet_ids())


class LocEvalSource:
  """Random access for evaluation: ``get(i, min_side)`` -> (uint8 image,
  label, image id); ``ground_truth(i)`` -> (boxes, box_labels, label)."""

  prescaled = False

  def __init__(self, data_cfg, split):
    self.records = loc_records.LocRecordSource(records_path(data_cfg, split))

  def __len__(self):
    return len(self.records)

  def read(self, i):
    r = self.records[int(i)]
    return r["image"], int(r["label"]), r["image_id"]

  def get(self, i, min_side=None):
    data, label, name = self.read(i)
    return readers.decode_named(data, name, min_side), label, name

  def label_and_name(self, i):
    r = self.records[int(i)]
    return int(r["label"]), r["image_id"]

  def record(self, i) -> dict:
    return self.records[int(i)]


class LocTrainExample:
  """(record, rng) -> (uint8 crop, label, encoded box (4,), valid), or None
  when the image cannot be decoded.  The box goes through exactly the image's
  geometry: rescale to S, crop at (top, left), flip."""

  def __init__(self, data_cfg):
    self.scale_lo, self.scale_hi = input_pipeline.train_scale_range(data_cfg)
    self.crop = int(data_cfg.crop_size)
    self.flip = bool(data_cfg.flip)
    self.normalisation = data_cfg.get("box_normalisation", "crop_fraction")
    self.min_visible = float(data_cfg.get("min_visible", 0.5))
    self.multi_box = data_cfg.get("multi_box", "largest_visible")

  def __call__(self, record: dict, rng: np.random.Generator):
    s = int(rng.integers(self.scale_lo, self.scale_hi + 1))
    try:
      img = preprocess.decode_image(record["image"], min_side=s)
    except preprocess.DecodeError as e:
      log.warning("skipping training image %s: %s", record.get("image_id"), e)
      return None
    # Boxes are in pixels of the stored image (record height/width); the
    # decoder may have shrunk it (DCT scaling), which rescale accounts for.
    stored_hw = (int(record["height"]), int(record["width"]))
    img = preprocess.rescale_shorter_side(img, s)
    resized_hw = img.shape[:2]
    top, left = preprocess.random_crop_offsets(img.shape, self.crop, rng)
    img = img[top:top + self.crop, left:left + self.crop]
    flip = self.flip and rng.random() < 0.5
    if flip:
      img = preprocess.horizontal_flip(img)
    label = int(record["label"])
    b = record["boxes"]
    valid, box = False, np.zeros(4, np.float32)
    if len(b):
      moved = boxes_lib.to_crop_frame(
          b, stored_hw, resized_hw, top=top,
          left=left, crop_hw=(self.crop, self.crop), flip=flip)
      t = boxes_lib.crop_target(moved, (self.crop, self.crop),
                                box_labels=record["box_labels"], label=label,
                                min_visible=self.min_visible,
                                multi_box=self.multi_box)
      if t.valid:
        valid = True
        box = boxes_lib.encode(t.box, (self.crop, self.crop),
                               self.normalisation).astype(np.float32)
    return np.ascontiguousarray(img), label, box, valid


class LocTrainBatch:
  """{"position", "index"} -> {image, label, box, box_valid, num_skipped}."""

  def __init__(self, data_cfg, records, convention, seed):
    self.example = LocTrainExample(data_cfg)
    self.records = records
    self.convention = convention
    self.seed = int(seed)

  def __call__(self, batch: dict) -> dict:
    indices, positions = batch["index"], batch["position"]
    made = [self.example(self.records[int(i)],
                         input_pipeline.example_rng(self.seed, g))
            for i, g in zip(indices, positions)]
    good = [j for j, m in enumerate(made) if m is not None]
    if not good:
      raise ValueError(f"none of the {len(indices)} training images at "
                       f"positions {positions[0]}.. could be decoded: are "
                       "the records corrupt?")
    skipped = np.zeros(len(indices), np.int32)
    for n, j in enumerate(j for j, m in enumerate(made) if m is None):
      donor = int(indices[good[n % len(good)]])
      made[j] = self.example(self.records[donor], input_pipeline.example_rng(
          self.seed, positions[j], 1))
      skipped[j] = 1
    crop = self.example.crop
    images = np.empty((len(made), crop, crop, 3), np.float32)
    for j, m in enumerate(made):
      preprocess.normalise_into(images[j], m[0], self.convention)
    return {"image": images,
            "label": np.asarray([m[1] for m in made], np.int32),
            "box": np.stack([m[2] for m in made]).astype(np.float32),
            "box_valid": np.asarray([m[3] for m in made], np.int32),
            "num_skipped": skipped}


@input_pipeline.register_source("loc_records")
class LocRecords(input_pipeline.DataSource):
  """Localisation ArrayRecords (images, labels, every box)."""

  def configure(self, c):
    c.name = "imagenet2012_loc"
    c.box_normalisation = "crop_fraction"
    c.min_visible = 0.5
    c.multi_box = "largest_visible"

  def info(self, data_cfg) -> DatasetInfo:
    names = class_names(data_cfg)
    n_train = len(loc_records.LocRecordSource(
        records_path(data_cfg, data_cfg.train_split)))
    ev = records_path(data_cfg, data_cfg.eval_split)
    n_eval = len(loc_records.LocRecordSource(ev)) if ev.exists() else 0
    return DatasetInfo(len(names), n_train, n_eval, names, 3)

  def train_dataset(self, data_cfg, *, local_batch, seed, convention,
                    process_index, process_count):
    records = loc_records.LocRecordSource(
        records_path(data_cfg, data_cfg.train_split))
    ds = input_pipeline.train_batches(
        len(records), seed=seed, local_batch=local_batch,
        process_index=process_index, process_count=process_count,
        shuffle=data_cfg.shuffle)
    ds = ds.map(LocTrainBatch(
        data_cfg, records, convention,
        input_pipeline.derived_seed(seed, 1)))
    return ds.to_iter_dataset(input_pipeline.read_options(data_cfg))

  def eval_source(self, data_cfg, split, scale):
    del scale
    return LocEvalSource(data_cfg, split)
