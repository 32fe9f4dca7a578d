"""The paper's optimiser and learning-rate rule (§3.1).

* ``sgd(...)``: mini-batch SGD, momentum 0.9, coupled L2 weight decay 5e-4
  (``wd * w`` is added to the gradient, Caffe style, not decoupled), as an
  optax ``GradientTransformation`` whose learning rate lives in the optimiser
  state (``optax.inject_hyperparams``), so the plateau rule can change it and
  the checkpoint keeps it.

  Two momentum forms (identical at a constant learning rate, different right
  after a drop):

  - ``"caffe"`` (default, the paper's Caffe): ``v <- mu*v + lr*(g + wd*w)``;
    ``w <- w - v``.  The velocity carries the *old* lr's steps for a while
    after a drop (the drop takes effect gradually).
  - ``"optax"``: ``v <- mu*v + (g + wd*w)``; ``w <- w - lr*v`` (optax's
    ``sgd(momentum=...)``, PyTorch's SGD).  A drop rescales the whole
    velocity at once.

  Which parameters are decayed (``decay_biases``): the VGG paper does not
  say.  Krizhevsky et al.'s update rule decays the weights only, and
  Caffe's BVLC AlexNet/CaffeNet prototxts set ``decay_mult: 0`` on biases;
  the released VGG prototxts are deploy files without any solver or
  ``decay_mult`` setting, so VGG's own setting is unknown (Caffe's default
  ``decay_mult`` is 1, which decays biases).  ``decay_biases=True`` (the
  VGG default here, a choice) decays every parameter; ``False`` only the
  kernels (the AlexNet config, following its paper).  Batch statistics are
  not parameters and are never decayed.

  Frozen layers (``frozen``: layer-name patterns, e.g. the convolutions when
  only the FC layers are fine-tuned): their updates are zero and they hold
  no optimiser state (``freeze_layers``, over ``optax.multi_transform``).

* ``PlateauController``: "divided by 10 when the validation set accuracy
  stopped improving ... decreased 3 times" (§3.1): host-side, JSON state
  stored in every checkpoint.

* ``learning_rate_schedule``: the alternative, a fixed schedule of the step
  (piecewise constant in epochs, or cosine), with an optional linear warm-up,
  for runs that must be reproducible to the step.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

MOMENTUM_FORMS = ("caffe", "optax")


class CaffeMomentumState(NamedTuple):
  velocity: Any  # v, in units of parameters (it already includes lr)


def caffe_momentum(learning_rate: float | jax.Array,
                   momentum: float = 0.9) -> optax.GradientTransformation:
  """``v <- mu*v + lr*g``; returns the update ``-v`` (Caffe's SGDSolver).

  ``g`` is whatever reaches this transformation (the gradient plus the
  decay term when chained after ``add_decayed_weights``).
  """

  def init_fn(params):
    return CaffeMomentumState(
        velocity=jax.tree_util.tree_map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    lr = jnp.asarray(learning_rate)
    velocity = jax.tree_util.tree_map(
        lambda v, g: (momentum * v + lr.astype(g.dtype) * g).astype(v.dtype),
        state.velocity, updates)
    return (jax.tree_util.tree_map(jnp.negative, velocity),
            CaffeMomentumState(velocity))

  return optax.GradientTransformation(init_fn, update_fn)


def decay_mask(params, *, decay_biases: bool):
  """True for the leaves that get weight decay (all, or only kernels)."""
  if decay_biases:
    return jax.tree_util.tree_map(lambda _: True, params)
  # Kernels are the only leaves of rank > 1 (biases and BN scales are 1-D).
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


def layer_name(path) -> str:
  """The layer a parameter belongs to: its path without the parameter's own
  name ("block1_conv1" for block1_conv1/kernel; nested layers join with /)."""
  keys = [str(getattr(k, "key", getattr(k, "idx", ""))) for k in path
          if not isinstance(k, jax.tree_util.GetAttrKey)]  # nnx's ".value"
  return "/".join(keys[:-1])


def _check_patterns(patterns) -> None:
  if isinstance(patterns, str):
    raise ValueError(f"frozen layers must be a list of name patterns, got the "
                     f"string {patterns!r}; write [{patterns!r}]")


def frozen_labels(params, patterns: Sequence[str]):
  """"frozen" or "trained" per leaf: frozen when its layer's name matches one
  of ``patterns`` (shell-style: ``block*``, ``fc[12]``).

  Raises ValueError, naming the model's layers, when a pattern matches no
  layer (a typo would otherwise silently train everything) or when every
  layer is frozen (nothing would train).
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  layers = sorted({layer_name(path) for path, _ in leaves})
  unmatched = [p for p in patterns
               if not any(fnmatch.fnmatchcase(l, p) for l in layers)]
  if unmatched:
    raise ValueError(f"frozen-layer pattern(s) {unmatched} match no layer of "
                     f"the model; its layers are: {', '.join(layers)}")
  frozen = {l for l in layers
            if any(fnmatch.fnmatchcase(l, p) for p in patterns)}
  if frozen and frozen == set(layers):
    raise ValueError(f"frozen-layer patterns {list(patterns)} freeze every "
                     "layer; nothing would train")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if layer_name(path) in frozen else "trained",
      params)


def freeze_layers(tx: optax.GradientTransformation,
                  patterns: Sequence[str]) -> optax.GradientTransformation:
  """``tx`` for the layers not matching ``patterns``; zero updates and no
  state (``optax.set_to_zero``) for those that do.  No patterns: ``tx``."""
  _check_patterns(patterns)
  if not patterns:
    return tx
  patterns = tuple(patterns)
  return optax.multi_transform(
      {"trained": tx, "frozen": optax.set_to_zero()},
      lambda tree: frozen_labels(tree, patterns))


def _sgd(learning_rate, *, momentum: float, weight_decay: float,
         form: str, decay_biases: bool,
         frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  if form not in MOMENTUM_FORMS:
    raise ValueError(f"momentum form must be one of {MOMENTUM_FORMS}, got "
                     f"{form!r}")
  decay = optax.add_decayed_weights(
      weight_decay, mask=None if decay_biases else (
          lambda params: decay_mask(params, decay_biases=False)))
  if form == "caffe":
    tx = optax.chain(decay, caffe_momentum(learning_rate, momentum))
  else:
    tx = optax.chain(decay, optax.sgd(learning_rate, momentum=momentum))
  return freeze_layers(tx, frozen)


def sgd(learning_rate: float | optax.Schedule = 1e-2, *,
        momentum: float = 0.9, weight_decay: float = 5e-4,
        form: str = "caffe", decay_biases: bool = True,
        frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """The paper's SGD; the learning rate is state: ``hyperparams['learning_rate']``.

  ``learning_rate`` may be a number (the plateau rule then overwrites it in
  the state with ``set_learning_rate``) or an optax schedule of the update
  count (evaluated inside the step).  ``frozen``: layer-name patterns whose
  layers are not trained (``freeze_layers``); the freezing sits inside the
  learning-rate injection, so ``learning_rate_of``/``set_learning_rate`` work
  either way, and with no patterns the state is exactly the unfrozen one.
  """
  _check_patterns(frozen)
  return optax.inject_hyperparams(_sgd, static_args=(
      "momentum", "weight_decay", "form", "decay_biases", "frozen"))(
          learning_rate=learning_rate, momentum=momentum,
          weight_decay=weight_decay, form=form, decay_biases=decay_biases,
          frozen=tuple(frozen))


def learning_rate_of(opt_state) -> jax.Array:
  """The learning rate held in an ``sgd`` state (the one last applied)."""
  return opt_state.hyperparams["learning_rate"]


def set_learning_rate(opt_state, value: float):
  """A copy of ``opt_state`` whose next updates use ``value``."""
  hyper = dict(opt_state.hyperparams)
  old = hyper["learning_rate"]
  hyper["learning_rate"] = jax.device_put(
      jnp.asarray(value, dtype=jnp.asarray(old).dtype),
      getattr(old, "sharding", None))
  return opt_state._replace(hyperparams=hyper)


# ----------------------------------------------------------------------------
# The paper's rule: divide by 10 when validation accuracy stops improving.


@dataclasses.dataclass
class PlateauController:
  """Host-side: decides after each validation whether to drop the lr or stop.

  An evaluation *improves* when its accuracy is at least ``best +
  min_delta`` (absolute, accuracy as a fraction); only then does ``best``
  move (to that accuracy).  A sub-threshold gain leaves ``best`` where it
  was, so a slow steady climb adds up until it counts, instead of raising
  the bar a little every time and looking like a plateau.  ``patience``
  consecutive evaluations without an improvement are a plateau: the lr is
  multiplied by ``factor``; at the plateau after ``max_drops`` drops,
  training stops (the paper: 3 drops, then stopped).

  Defaults (patience 6 evaluations, min_delta 0.5 points of top-1): chosen
  by ``benchmarks/plateau_rule.py``, which simulates the rule on noisy
  ImageNet-like curves (docs/choices.md).  ``patience`` counts evaluations,
  so it assumes one evaluation per epoch.
  """

  initial_lr: float = 1e-2
  factor: float = 0.1
  patience: int = 6
  min_delta: float = 5e-3
  max_drops: int = 3
  # State (JSON in every checkpoint).
  best: float = -math.inf
  bad_evals: int = 0
  drops: int = 0
  history: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.patience < 1:
      raise ValueError(f"plateau patience must be >= 1 evaluation, got "
                       f"{self.patience}")
    if not self.min_delta >= 0:
      raise ValueError(f"plateau min_delta must be >= 0 (accuracy as a "
                       f"fraction, 0.005 = half a point), got {self.min_delta}")

  @property
  def learning_rate(self) -> float:
    return self.initial_lr * self.factor ** self.drops

  def update(self, step: int, accuracy: float) -> str:
    """Record a validation accuracy; returns "continue", "drop" or "stop"."""
    if not math.isfinite(accuracy):
      raise ValueError(f"validation accuracy at step {step} is {accuracy}")
    if accuracy >= self.best + self.min_delta:
      self.best, self.bad_evals = accuracy, 0
      action = "continue"
    else:
      # ``best`` stays: only a real improvement moves the bar.
      self.bad_evals += 1
      if self.bad_evals < self.patience:
        action = "continue"
      elif self.drops >= self.max_drops:
        action = "stop"
      else:
        self.drops += 1
        self.bad_evals = 0
        action = "drop"
    self.history.append({"step": int(step), "accuracy": float(accuracy),
                         "action": action, "lr": self.learning_rate})
    return action

  def state_dict(self) -> dict:
    return {"best": self.best if math.isfinite(self.best) else None,
            "bad_evals": self.bad_evals, "drops": self.drops,
            "history": list(self.history)}

  def load_state_dict(self, state: dict) -> None:
    best = state["best"]
    self.best = -math.inf if best is None else float(best)
    self.bad_evals = int(state["bad_evals"])
    self.drops = int(state["drops"])
    self.history = list(state["history"])


# ----------------------------------------------------------------------------
# The alternative: a fixed schedule of the step.


def learning_rate_schedule(kind: str, *, base_lr: float, total_steps: int,
                           warmup_steps: int = 0,
                           boundaries: Sequence[int] = (),
                           factor: float = 0.1) -> float | optax.Schedule:
  """``kind``: "plateau" (a constant; the controller changes it), "piecewise"
  (multiply by ``factor`` at each boundary step) or "cosine" (to 0 at
  ``total_steps``); every kind but "plateau" takes a linear warm-up."""
  if kind == "plateau":
    if warmup_steps:
      raise ValueError("warm-up is not supported with the plateau rule; use "
                       "lr_schedule='piecewise' or 'cosine'")
    return base_lr
  if kind == "piecewise":
    main = optax.piecewise_constant_schedule(
        base_lr, {int(b) - warmup_steps: factor for b in boundaries})
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(base_lr,
                                       max(1, total_steps - warmup_steps))
  else:
    raise ValueError(f"unknown lr schedule {kind!r}; expected 'plateau', "
                     "'piecewise' or 'cosine'")
  if not warmup_steps:
    return main
  warmup = optax.linear_schedule(base_lr / warmup_steps, base_lr,
                                 warmup_steps - 1) if warmup_steps > 1 else (
                                     lambda _: base_lr)
  return optax.join_schedules([warmup, main], [warmup_steps])
