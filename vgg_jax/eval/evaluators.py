"""Evaluators named in the config (big_vision's ``config.evals``).

    c.evals.val = dict(type="classification")      # centre crops, batched
    c.evals.dense = dict(type="protocol", protocol="dense", scales=(256,),
                         limit=1000)                 # paper §3.2, any protocol

Each entry is ``name -> {type, ...options}``; ``type`` picks a class
registered with ``@register_evaluator``.  The training loop builds them with
``evaluators_from_config(config)`` and calls ``evaluate`` at every
evaluation; ``python -m vgg_jax.evaluate --config FILE --model DIR`` builds
the same objects from the same config and runs them on a saved model (and
``--protocol`` runs ``eval/protocols.evaluate_model``, the code of the
"protocol" evaluator).  Every metric an evaluator returns is
prefixed with its name (``val_top1_error``); the entry named by
``config.get("best_metric_eval", "val")`` feeds the plateau rule and the best
checkpoint (its ``{name}_top1``).

Appendix A's evaluator is one more file, e.g.
``vgg_jax/localisation/evaluator.py``::

    @register_evaluator("localisation")
    class LocalisationEvaluator(Evaluator):
      def run(self, model, *, convention, mesh=None):
        ...  # dense engine with a box output, merging, IoU >= 0.5
        return {"error": err, "num_examples": n}

and one config entry ``c.evals.loc = dict(type="localisation", scales=...)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

_EVALUATORS: dict[str, type["Evaluator"]] = {}


def register_evaluator(type_name: str):
  """Class decorator: ``config.evals.NAME = dict(type=type_name, ...)``."""
  def deco(cls):
    if type_name in _EVALUATORS:
      raise ValueError(f"evaluator type {type_name!r} is registered twice")
    _EVALUATORS[type_name] = cls
    return cls
  return deco


def evaluator_types() -> tuple[str, ...]:
  return tuple(sorted(_EVALUATORS))


class Evaluator:
  """One named evaluation over a split.

  ``name``: the config key (metric prefix); ``options``: the entry's fields
  except ``type``; ``config``: the whole training config (its ``data``,
  ``eval_batch_size``).  ``run(model, convention=..., mesh=...)`` returns
  unprefixed metrics; ``evaluate`` prefixes them.
  """

  def __init__(self, name: str, options: Mapping[str, Any], config):
    self.name = name
    self.options = dict(options)
    self.config = config

  def run(self, model, *, convention, mesh=None) -> dict[str, float]:
    raise NotImplementedError

  def evaluate(self, model, *, convention, mesh=None) -> dict[str, float]:
    return {f"{self.name}_{k}": v for k, v in
            self.run(model, convention=convention, mesh=mesh).items()}

  def data_config(self):
    """``config.data`` with this entry's ``split`` (if any) as eval split."""
    data = self.config.data
    split = self.options.get("split")
    if split:
      data = data.copy_and_resolve_references()
      data.eval_split = split
    return data


@register_evaluator("classification")
class ClassificationEvaluator(Evaluator):
  """Top-1/top-5 error on centre crops at ``data.eval_scale`` in batches of
  ``eval_batch_size`` (the paper's validation during training, §3.1).
  Option ``flip=True``: each crop's posteriors averaged with its mirror's
  (§3.2's flip augmentation; at Q = crop size with a 1x1 head this is the
  dense protocol at one scale, computed in batches).

  Every example of the split counts once: one whose image cannot be decoded
  is a miss (top-1 and top-5), reported as ``undecodable``
  (vgg_jax/eval_accounting.py), never dropped from ``examples``.
  """

  def run(self, model, *, convention, mesh=None):
    from vgg_jax import eval_accounting  # pylint: disable=g-import-not-at-top
    from vgg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    from vgg_jax.eval.classifier import evaluate_classifier  # pylint: disable=g-import-not-at-top
    batches = iter(input_pipeline.create_eval_iterator(
        self.data_config(), global_batch_size=int(
            self.options.get("batch_size") or self.config.eval_batch_size),
        input_convention=convention))  # its `failed`: undecodable examples
    res = eval_accounting.count_failures_as_errors(
        evaluate_classifier(model, batches, mesh=mesh,
                            flips=bool(self.options.get("flip", False))),
        eval_accounting.global_count(len(batches.failed)))
    return {"top1_error": res["top1_error"],
            "top5_error": res["top5_error"],
            "top1": 1.0 - res["top1_error"],
            "examples": res["num_examples"],
            "undecodable": res["num_undecodable"]}


@register_evaluator("protocol")
class ProtocolEvaluator(Evaluator):
  """Any §3.2 protocol at scales Q through the dense engine (the command's
  code path): options ``protocol`` (default "dense"), ``scales`` (default
  the data's eval_scale), ``batch_size``, ``bucket_step``, ``limit``."""

  def run(self, model, *, convention, mesh=None):
    from vgg_jax.eval.counting import errors_of  # pylint: disable=g-import-not-at-top
    from vgg_jax.eval.posteriors import combine  # pylint: disable=g-import-not-at-top
    from vgg_jax.eval.protocols import evaluate_model  # pylint: disable=g-import-not-at-top
    data = self.data_config()
    protocol = self.options.get("protocol", "dense")
    scales = [int(q) for q in (self.options.get("scales")
                               or (data.eval_scale,))]
    r = evaluate_model(model, data, convention=convention, scales=scales,
                       protocol=protocol, split=data.eval_split,
                       batch_size=int(self.options.get("batch_size", 8)),
                       bucket_step=int(self.options.get("bucket_step", 32)),
                       limit=self.options.get("limit"), mesh=mesh,
                       show_progress=False)
    err = errors_of(combine([r], protocol, scales), r.labels)
    return {"top1_error": err["top1_error"], "top5_error": err["top5_error"],
            "top1": 1.0 - err["top1_error"],
            "examples": err["num_examples"],
            "undecodable": err["num_failed"]}


DEFAULT_EVALS = {"val": {"type": "classification"}}


def evaluators_from_config(config) -> list[Evaluator]:
  """The config's ``evals`` (default: ``val``, centre-crop classification)."""
  evals = config.get("evals", None)
  entries = DEFAULT_EVALS if not evals else (
      evals.to_dict() if hasattr(evals, "to_dict") else dict(evals))
  out = []
  for name, entry in entries.items():
    entry = dict(entry)
    kind = entry.pop("type", None)
    if kind not in _EVALUATORS:
      raise ValueError(
          f"config.evals.{name}: unknown type {kind!r}; expected one of "
          f"{evaluator_types()} (register one with @register_evaluator)")
    out.append(_EVALUATORS[kind](name, entry, config))
  return out


def summary_line(values: Mapping[str, Any]) -> str:
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, (float, np.floating))
                   else f"{k} {v}" for k, v in values.items())
