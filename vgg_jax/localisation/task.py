"""Appendix A.1's training objective: box regression on the last layer.

The box head replaces FC3 (``models/heads.LinearHead`` stored as ``fc3``):
4 outputs for single-class regression (SCR, shared by all classes) or
4 x C for per-class regression (PCR).  The net is built with that many
outputs (``adapt_model_kwargs``), so a checkpoint reloads as the same tree
and ``train.copy_matching_layers`` (``config.init_from``) copies every layer
of a classification net except FC3, whose shape differs (Appendix A.1: "the
last fully-connected layer ... initialised randomly").

Batch keys: ``image``, ``box`` (the encoded target, ``boxes.encode``),
``box_valid`` (1 when the crop keeps >= ``min_visible`` of a box of its
class, else 0: such crops add no loss) and ``label`` (PCR reads the
ground-truth class's 4 outputs).  Loss: the Euclidean loss
``0.5 * ||pred - target||^2`` averaged over the valid crops of the batch.
Config (``config.localisation``): ``regression`` "scr" | "pcr".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import tasks

REGRESSIONS = ("scr", "pcr")


def box_outputs(regression: str, num_classes: int) -> int:
  """Outputs of the box head: 4 (SCR) or 4 x classes (PCR)."""
  if regression not in REGRESSIONS:
    raise ValueError(f"localisation.regression must be one of {REGRESSIONS}; "
                     f"got {regression!r}")
  return 4 if regression == "scr" else 4 * int(num_classes)


def select_class_boxes(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  """(N, 4) or (N, 4C) head outputs -> the (N, 4) box of each row's class
  (SCR: the outputs themselves; PCR: outputs[4*label : 4*label+4])."""
  if outputs.shape[-1] == 4:
    return outputs
  per_class = outputs.reshape(outputs.shape[0], -1, 4)
  return jnp.take_along_axis(per_class, labels[:, None, None].astype(jnp.int32),
                             axis=1)[:, 0]


def euclidean_loss(pred: jax.Array, target: jax.Array, valid: jax.Array
                   ) -> jax.Array:
  """Mean over valid rows of 0.5 * ||pred - target||^2 (0 if none valid)."""
  per_row = 0.5 * jnp.sum(jnp.square(pred.astype(jnp.float32) - target), -1)
  v = valid.astype(jnp.float32)
  return jnp.sum(per_row * v) / jnp.maximum(jnp.sum(v), 1.0)


def centre_size_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of (cx, cy, w, h) boxes in the same units (continuous areas; for
  the training metric only, the devkit IoU is ``boxes.iou``)."""
  def corners(t):
    w, h = jnp.maximum(t[..., 2], 1e-6), jnp.maximum(t[..., 3], 1e-6)
    return t[..., 0] - w / 2, t[..., 1] - h / 2, t[..., 0] + w / 2, \
        t[..., 1] + h / 2, w * h
  ax0, ay0, ax1, ay1, aa = corners(a)
  bx0, by0, bx1, by1, ba = corners(b)
  iw = jnp.maximum(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0)
  ih = jnp.maximum(jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0)
  inter = iw * ih
  return inter / (aa + ba - inter)


@tasks.register_task("box_regression")
class BoxRegression(tasks.Task):
  """Euclidean loss on the ground-truth class's box (Appendix A.1)."""

  batch_keys = ("image", "box", "box_valid", "label")
  # box_valid: 1 where the crop keeps >= 50% of a box of the image's class
  # (the source's crop_target); shapes for compiling without data (aot.py).
  example_specs = {**tasks.Task.example_specs, "box_valid": ((), np.int32)}

  def __init__(self, regression: str = "scr",
               normalisation: str = "crop_fraction"):
    box_outputs(regression, 1)
    self.regression = regression
    self.normalisation = normalisation

  @classmethod
  def from_config(cls, config):
    loc = config.get("localisation", None) or {}
    return cls(loc.get("regression", "scr"),
               loc.get("normalisation", "crop_fraction"))

  def adapt_model_kwargs(self, kwargs: dict) -> dict:
    return {**kwargs, "num_classes": box_outputs(self.regression,
                                                 kwargs["num_classes"])}

  def loss(self, model, batch, *, rngs):
    outputs = model(batch["image"], train=True, rngs=rngs)
    pred = select_class_boxes(outputs, batch["label"])
    return euclidean_loss(pred, batch["box"], batch["box_valid"]), pred

  def init_metrics(self):
    # Distinct buffers: the step donates its metrics.
    return {k: jnp.zeros((), jnp.float32)
            for k in ("loss_sum", "examples", "valid", "iou_sum")}

  def update_metrics(self, metrics, loss, outputs, batch):
    v = batch["box_valid"].astype(jnp.float32)
    nv = jnp.sum(v)
    iou = jnp.zeros((), jnp.float32)
    if self.normalisation == "crop_fraction":
      iou = jnp.sum(centre_size_iou(outputs.astype(jnp.float32),
                                    batch["box"]) * v)
    return {**metrics, "loss_sum": metrics["loss_sum"] + loss * nv,
            "examples": metrics["examples"] + jnp.float32(v.shape[0]),
            "valid": metrics["valid"] + nv,
            "iou_sum": metrics["iou_sum"] + iou}

  def summarise(self, metrics):
    nv = max(float(metrics["valid"]), 1.0)
    out = {"train_loss": float(metrics["loss_sum"]) / nv,
           "train_box_valid": float(metrics["valid"]) / max(
               float(metrics["examples"]), 1.0)}
    if self.normalisation == "crop_fraction":
      out["train_mean_iou"] = float(metrics["iou_sum"]) / nv
    return out
