"""What the training step optimises: a ``Task`` gives the loss, the
device-side metrics and the batch keys; the loop (train.py) is the same for
every task.

* ``classification`` (paper §3.1): soft-max cross-entropy on the class
  scores; metrics: loss and top-1 hits.
* Appendix A's box regression plugs in as one more ``Task`` subclass
  registered with ``@register_task("box_regression")``: batch keys
  ("image", "box"), a Euclidean loss on the box head's output, its own
  metrics; ``config.task = "box_regression"`` selects it.  The loop is not
  touched.

A task's methods run inside the jitted step; they must be pure.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

_TASKS: dict[str, type["Task"]] = {}


def register_task(name: str):
  """Class decorator: makes a Task selectable as ``config.task = name``."""
  def deco(cls):
    if name in _TASKS:
      raise ValueError(f"task {name!r} is registered twice")
    cls.name = name
    _TASKS[name] = cls
    return cls
  return deco


def task_names() -> tuple[str, ...]:
  return tuple(sorted(_TASKS))


def get_task(config) -> "Task":
  """The task of a training config (``config.task``; default classification)."""
  name = config.get("task", None) or "classification"
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {task_names()}")
  return _TASKS[name].from_config(config)


class Task:
  """Loss, metrics and batch keys of one training objective."""

  name = "task"
  # The keys of a pipeline batch the step needs on device.
  batch_keys: tuple[str, ...] = ("image",)
  # Per-example shape and dtype of each key as the pipeline yields it ("image"
  # is (H, W, C) from the data config); for compiling the step without data
  # (vgg_jax/aot.py).  A task with another key adds it here.
  example_specs: Mapping[str, tuple[tuple[int, ...], Any]] = {
      "label": ((), np.int32),
      "box": ((4,), np.float32),  # Appendix A: one box per image
  }

  def batch_specs(self, batch_size: int, image_shape: tuple[int, int, int]
                  ) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (shape, dtype)} of a global batch of ``batch_keys``."""
    specs = {"image": (tuple(image_shape), np.float32),
             **self.example_specs}
    missing = [k for k in self.batch_keys if k not in specs]
    if missing:
      raise ValueError(
          f"task {self.name!r}: no shape known for batch key(s) {missing}; "
          "give them in the task's example_specs")
    return {k: ((batch_size, *specs[k][0]), specs[k][1])
            for k in self.batch_keys}

  @classmethod
  def from_config(cls, config) -> "Task":
    del config
    return cls()

  def adapt_model_kwargs(self, kwargs: dict) -> dict:
    """The net's architecture arguments for this task (e.g. a box head's
    output count in place of the class count)."""
    return kwargs

  def loss(self, model: nnx.Module, batch: Mapping[str, jax.Array], *,
           rngs: nnx.Rngs) -> tuple[jax.Array, Any]:
    """(scalar mean loss, outputs for ``update_metrics``) in training mode."""
    raise NotImplementedError

  def init_metrics(self) -> dict[str, jax.Array]:
    """Device-side sums, summed over steps until the next log line."""
    return {"loss_sum": jnp.zeros((), jnp.float32),
            "examples": jnp.zeros((), jnp.float32)}

  def update_metrics(self, metrics: dict, loss: jax.Array, outputs: Any,
                     batch: Mapping[str, jax.Array]) -> dict:
    n = jnp.float32(batch["image"].shape[0])
    return {**metrics, "loss_sum": metrics["loss_sum"] + loss * n,
            "examples": metrics["examples"] + n}

  def summarise(self, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host values of the summed metrics -> the logged training metrics."""
    return {"train_loss": float(metrics["loss_sum"] / max(
        metrics["examples"], 1))}


@register_task("classification")
class Classification(Task):
  """Soft-max cross-entropy on the class scores (paper §3.1)."""

  batch_keys = ("image", "label")

  def loss(self, model, batch, *, rngs):
    logits = model(batch["image"], train=True, rngs=rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()
    return loss, logits

  def init_metrics(self):
    return {"loss_sum": jnp.zeros((), jnp.float32),
            "top1_hits": jnp.zeros((), jnp.float32),
            "examples": jnp.zeros((), jnp.float32)}

  def update_metrics(self, metrics, loss, outputs, batch):
    logits = outputs
    n = jnp.float32(logits.shape[0])
    hits = jnp.sum(jnp.argmax(logits, -1) == batch["label"]).astype(
        jnp.float32)
    return {**metrics, "loss_sum": metrics["loss_sum"] + loss * n,
            "top1_hits": metrics["top1_hits"] + hits,
            "examples": metrics["examples"] + n}

  def summarise(self, metrics):
    n = max(metrics["examples"], 1)
    return {"train_loss": metrics["loss_sum"] / n,
            "train_top1": metrics["top1_hits"] / n}
