"""Appendix A.2's two test protocols as evaluators (``c.evals.NAME =
dict(type="localisation", protocol="centre-gt" | "dense", ...)``) and the
functions ``python -m vgg_jax.evaluate --task localisation`` runs.

* ``centre-gt`` (protocol 1, Table 8): the central crop of the image rescaled
  to Q, the box predicted for the ground-truth class, mapped back to the
  stored image; error = share of images whose box has IoU <= 0.5 with every
  ground-truth box of that class (``metric.centre_gt_localisation_error``).
* ``dense`` (protocol 2, Table 9): the box head applied at every position of
  the whole image rescaled to each Q (the dense engine, ``BoxMap`` output
  through a custom sink); every position's box for each of the classifier's
  top-5 classes, in stored-image pixels, scored by the classifier's
  posterior of that class; the union over localisers and scales merged per
  class (``boxes.top_k_localisations``); ILSVRC top-5 localisation error
  (``metric.top5_localisation_error``).

Every image of the split is processed once over all hosts (the eval
iterator shards and pads; results are gathered with
``sharding.allgather_json``).  An undecodable image is named in
``undecodable`` and counted as an error.  Images without any box of their
label cannot be scored: they are counted (``images_without_boxes``) and
named, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import watchdog
from vgg_jax import preprocess
from vgg_jax import sharding as sharding_lib
from vgg_jax.eval import dense as dense_lib
from vgg_jax.eval import evaluators
from vgg_jax.localisation import boxes as boxes_lib
from vgg_jax.localisation import metric as metric_lib
from vgg_jax.models import geometry

log = logging.getLogger(__name__)

PROTOCOLS = ("centre-gt", "dense")


def class_boxes(outputs: np.ndarray, cls: int) -> np.ndarray:
  """(..., 4) boxes for class ``cls`` from (..., 4) SCR or (..., 4C) PCR."""
  if outputs.shape[-1] == 4:
    return outputs
  return outputs[..., 4 * int(cls):4 * int(cls) + 4]


def window_size(model) -> int:
  """The input window of one output position (the training crop)."""
  return int(model.spec.head_window * geometry.map_stride(model.spec))


class BoxMap(dense_lib.DenseOutput):
  """The head's output map over the whole image (not pooled), with the
  valid map size of each image; flips are not merged (a mirrored box map
  would need mirrored boxes), so run the engine with ``flips=False``."""

  name = "box_map"

  def image(self, model, x, valid_hw):
    m, hw = model.output_map(x, valid_hw=valid_hw)
    return {"map": m.astype(jnp.float32), "hw": hw}

  def merge_flips(self, tree, n):
    raise ValueError("box maps are computed without flips (flips=False)")

  def width(self, model) -> int:
    return int(model.num_classes)


@dataclasses.dataclass
class SplitGroundTruth:
  ground_truth: dict  # image id -> metric.GroundTruth
  stored_hw: dict  # image id -> (h, w)
  without_boxes: list  # image ids with no box of their label


def load_ground_truth(source) -> SplitGroundTruth:
  gt, hw, without = {}, {}, []
  for i in range(len(source)):
    r = source.record(i)
    iid, label = r["image_id"], int(r["label"])
    hw[iid] = (int(r["height"]), int(r["width"]))
    if label < 0 or not np.any(r["box_labels"] == label):
      without.append(iid)
      continue
    gt[iid] = metric_lib.GroundTruth.make(r["boxes"], r["box_labels"],
                                          labels=(label,))
  return SplitGroundTruth(gt, hw, without)


def _examples(data_cfg, split, convention, scale, *, limit, failed: dict):
  """This process's decoded examples (at most ``limit``); undecodable ones
  go to ``failed`` (name -> reason) instead of being yielded."""
  from vgg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  it = input_pipeline.create_eval_iterator(
      data_cfg, split=split, global_batch_size=jax.process_count(),
      input_convention=convention, protocol="dense", scale=scale,
      batch=False)
  n = 0
  for ex in iter(it):
    watchdog.heartbeat("the next localisation evaluation example")
    if not (ex["mask"] or ex["decode_error"]):  # padding rows have neither
      continue
    if limit is not None and n >= limit:
      break
    n += 1
    if ex["decode_error"]:
      failed[ex["name"]] = str(ex["decode_error"])
      continue
    yield ex


def _gather(local: dict) -> dict:
  out = {}
  for part in sharding_lib.allgather_json(local):
    out.update(part)
  return out


def centre_gt_boxes(model, data_cfg, *, convention, split, scale: int,
                    normalisation: str, stored_hw: dict, batch_size: int = 16,
                    limit=None):
  """Image id -> predicted box (stored-image pixels) for its label, and
  image id -> reason for undecodable images (all hosts)."""
  crop = int(data_cfg.crop_size)
  engine = dense_lib.DenseEngine(model, convention, BoxMap())
  preds, failed, pending = {}, {}, []

  def run():
    if not pending:
      return
    crops = np.stack([p[0] for p in pending])
    out = engine.images(crops, np.full((len(crops), 2), crop, np.int32),
                        batch_size, flips=False)
    for (_, name, label, geo), m in zip(pending, out["map"]):
      box = boxes_lib.decode(class_boxes(m[0, 0], label), (crop, crop),
                             normalisation)
      resized_hw, top, left, stored_hw = geo
      box = box + np.array([left, top, left, top])
      preds[name] = boxes_lib.rescale(box, resized_hw, stored_hw).tolist()
    pending.clear()

  for ex in _examples(data_cfg, split, convention, scale, limit=limit,
                     failed=failed):
    img = ex["image"]
    h, w = img.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2  # preprocess.center_crop
    stored = stored_hw[ex["name"]]
    pending.append((preprocess.center_crop(img, crop), ex["name"],
                    int(ex["label"]), ((h, w), top, left, stored)))
    if len(pending) >= batch_size:
      run()
  run()
  return _gather(preds), _gather(failed)


def position_boxes(box_map, valid_hw, resized_hw, stored_hw, classes,
                   class_scores, *, window: int, stride: int,
                   normalisation: str):
  """One image's box map -> (boxes (N, 4) in stored pixels, scores, classes):
  position (i, j) sees the window at (i * stride, j * stride) of the
  rescaled image; one box per valid position and class in ``classes``,
  scored by ``class_scores[class]``."""
  hm, wm = int(valid_hw[0]), int(valid_hw[1])
  ii, jj = np.meshgrid(np.arange(hm), np.arange(wm), indexing="ij")
  offs = np.stack([jj, ii, jj, ii], -1).reshape(-1, 4) * stride
  bs, ss, cs = [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)]
  for c in classes:
    t = class_boxes(np.asarray(box_map)[:hm, :wm], c).reshape(-1, 4)
    b = boxes_lib.decode(t, (window, window), normalisation) + offs
    bs.append(boxes_lib.rescale(b, resized_hw, stored_hw))
    ss.append(np.full(len(b), class_scores[c]))
    cs.append(np.full(len(b), c))
  return np.concatenate(bs), np.concatenate(ss), np.concatenate(cs)


def dense_boxes(model, data_cfg, *, convention, split, scale: int,
                normalisation: str, top_classes: dict, class_scores: dict,
                stored_hw: dict, batch_size: int = 8, bucket_step: int = 32,
                limit=None):
  """Image id -> (boxes (N, 4) stored pixels, scores, classes) of every
  position of the box map at Q = ``scale``, for the image's top classes."""
  window = window_size(model)
  stride = geometry.map_stride(model.spec)
  engine = dense_lib.DenseEngine(model, convention, BoxMap())
  out, failed, geo = {}, {}, {}

  def sink(rows, values):
    for name, m, hw in zip(rows, values["map"], values["hw"]):
      b, sc, c = position_boxes(
          m, hw, geo[name], stored_hw[name], top_classes[name],
          class_scores[name], window=window, stride=stride,
          normalisation=normalisation)
      out[name] = (b.tolist(), sc.tolist(), c.tolist())

  batcher = dense_lib.DenseBatcher(engine, sink, bucket_step=bucket_step,
                                   batch_size=batch_size, flips=False)
  for ex in _examples(data_cfg, split, convention, scale, limit=limit,
                     failed=failed):
    geo[ex["name"]] = ex["image"].shape[:2]
    batcher.add(ex["name"], ex["image"])
  batcher.flush()
  return _gather(out), _gather(failed)


def _score(predicted_error: metric_lib.LocalisationResult, gt: SplitGroundTruth,
           failed: dict) -> dict:
  """The error over every image with a box of its label; undecodable images
  are errors (their e_i = 1), named."""
  scored = set(predicted_error.per_image)
  extra = [k for k in failed if k in gt.ground_truth and k not in scored]
  n = predicted_error.num_images + len(extra)
  err = (predicted_error.error * predicted_error.num_images + len(extra)) / n
  return {"localisation_error": float(err), "num_examples": int(n),
          "undecodable": sorted(failed), "num_undecodable": len(failed),
          "images_without_boxes": len(gt.without_boxes),
          "images_without_boxes_names": sorted(gt.without_boxes)[:100]}


def evaluate_centre_gt(model, data_cfg, *, convention, split, scale,
                       normalisation, batch_size=16, limit=None,
                       blacklist=None, rule="paper") -> dict:
  """Protocol 1 (Table 8) over a split; the dict the report shows."""
  from vgg_jax.localisation.source import LocEvalSource  # pylint: disable=g-import-not-at-top
  gt = load_ground_truth(LocEvalSource(data_cfg, split))
  preds, failed = centre_gt_boxes(
      model, data_cfg, convention=convention, split=split, scale=scale,
      normalisation=normalisation, stored_hw=gt.stored_hw,
      batch_size=batch_size, limit=limit)
  wanted = {k: v for k, v in gt.ground_truth.items() if k in preds}
  if limit is None:
    missing = set(gt.ground_truth) - set(preds) - set(failed)
    if missing:
      raise RuntimeError(f"{len(missing)} images got no prediction, e.g. "
                         f"{sorted(missing)[:5]}")
  res = metric_lib.centre_gt_localisation_error(
      {k: np.asarray(preds[k]) for k in wanted}, wanted, blacklist=blacklist,
      rule=rule)
  return {**_score(res, gt, failed), "protocol": "centre-gt",
          "scale": int(scale), "per_image": res.per_image}


def top5_from_posteriors(posteriors: np.ndarray, names) -> tuple[dict, dict]:
  top, scores = {}, {}
  for name, p in zip(names, posteriors):
    if not np.all(np.isfinite(p)):
      continue  # undecodable for the classifier: counted as an error later
    order = np.argsort(-p, kind="stable")[:5]
    top[str(name)] = [int(c) for c in order]
    scores[str(name)] = {int(c): float(p[c]) for c in order}
  return top, scores


def evaluate_dense(localisers, classifier_posteriors: np.ndarray,
                   classifier_names, data_cfg, *, convention, split, scales,
                   normalisation, threshold=boxes_lib.DEFAULT_MERGE_THRESHOLD,
                   batch_size=8, bucket_step=32, limit=None, blacklist=None,
                   return_dense=False) -> dict:
  """Protocol 2 (Table 9): ``localisers`` a list of (model, convention,
  normalisation or None[, scales or None]); the union of their boxes at
  every scale, merged per top class; ILSVRC top-5 localisation error.

  A localiser's own scales (the optional 4th entry) replace ``scales`` for
  it: Table 9's fusion unites a localiser tested at 256 with one tested at
  352 and 384."""
  from vgg_jax.localisation.source import LocEvalSource  # pylint: disable=g-import-not-at-top
  gt = load_ground_truth(LocEvalSource(data_cfg, split))
  top, scores = top5_from_posteriors(classifier_posteriors, classifier_names)
  per_loc, failed, used_scales = [], {}, []
  for entry in localisers:
    if len(entry) not in (3, 4):
      raise ValueError("each localiser is (model, convention, normalisation"
                       f"[, scales]); got {len(entry)} entries")
    model, conv, norm = entry[:3]
    own = entry[3] if len(entry) == 4 and entry[3] else scales
    if not own:
      raise ValueError("a localiser has no test scale: pass scales")
    used_scales.append([int(q) for q in own])
    for q in own:
      got, f = dense_boxes(model, data_cfg, convention=conv or convention,
                           split=split, scale=int(q),
                           normalisation=norm or normalisation,
                           top_classes={k: top.get(k, []) for k in
                                        gt.stored_hw},
                           class_scores=scores, stored_hw=gt.stored_hw,
                           batch_size=batch_size, bucket_step=bucket_step,
                           limit=limit)
      per_loc.append(got)
      failed.update(f)
  dense = {}
  for name in gt.ground_truth:
    parts = [(np.asarray(p[name][0]).reshape(-1, 4), np.asarray(p[name][1]),
              np.asarray(p[name][2])) for p in per_loc if name in p]
    if not parts or name not in top:
      continue
    b, s, c = boxes_lib.union(*parts)
    dense[name] = metric_lib.DensePredictions(b, s, c, tuple(top[name]))
  guesses = metric_lib.merged_guesses(dense, threshold=threshold)
  for name in gt.ground_truth:
    if name not in guesses:
      if limit is None and name not in failed:
        raise RuntimeError(f"image {name} got no prediction")
      if name in failed:
        guesses[name] = []
  wanted = {k: v for k, v in gt.ground_truth.items() if k in guesses}
  res = metric_lib.top5_localisation_error(guesses, wanted,
                                           blacklist=blacklist)
  out = {"localisation_error": float(res.error),
         "num_examples": int(res.num_images),
         "undecodable": sorted(failed), "num_undecodable": len(failed),
         "images_without_boxes": len(gt.without_boxes),
         "protocol": "dense", "scales": sorted({q for u in used_scales
                                                for q in u}),
         "localiser_scales": used_scales,
         "merge_threshold": float(threshold), "per_image": res.per_image}
  if return_dense:
    out["dense"] = dense
    out["ground_truth"] = wanted
  return out


@evaluators.register_evaluator("localisation")
class LocalisationEvaluator(evaluators.Evaluator):
  """Protocol 1 during training (``protocol="centre-gt"``, the default):
  options ``scale`` (default data.eval_scale), ``batch_size``, ``limit``.
  Returns ``localisation_error`` and, so that it can be the "val" entry that
  drives the plateau rule and the best checkpoint, ``top1`` = 1 - error and
  ``top1_error`` = ``top5_error`` = the error (one box per image)."""

  def run(self, model, *, convention, mesh=None):
    del mesh
    data = self.data_config()
    protocol = self.options.get("protocol", "centre-gt")
    if protocol != "centre-gt":
      raise ValueError("the training-time localisation evaluator runs "
                       "protocol centre-gt; protocol 2 needs a classifier: "
                       "python -m vgg_jax.evaluate --task localisation "
                       "--protocol dense")
    r = evaluate_centre_gt(
        model, data, convention=convention, split=data.eval_split,
        scale=int(self.options.get("scale") or data.eval_scale),
        normalisation=data.get("box_normalisation", "crop_fraction"),
        batch_size=int(self.options.get("batch_size", 16)),
        limit=self.options.get("limit"))
    e = r["localisation_error"]
    return {"localisation_error": e, "top1_error": e, "top5_error": e,
            "top1": 1.0 - e, "examples": r["num_examples"]}
