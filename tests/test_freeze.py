"""Frozen layers (fine-tuning part of a net): unchanged, and no optimiser state.

The reference is a second implementation: the trained layers differentiated
alone (the frozen ones closed over as constants) with the plain optimiser.
"""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from vgg_jax import configs as common
from vgg_jax import optim, train
from vgg_jax.models import create_model

FC = ("fc1", "fc2", "fc3")
LRS = (0.05, 0.05, 0.005)  # a drop (set_learning_rate) on the last step


@functools.lru_cache(maxsize=1)
def _model():
  """One width-reduced net A on 32x32 inputs (built once: only split, never
  changed, by the tests)."""
  return create_model("A", num_classes=10, rngs=nnx.Rngs(0), width_mult=1 / 16,
                      fc_width=16, head_window=1, in_channels=1,
                      dropout_rate=0.0, init="he", conv_impl="xla")


def _batches():
  rng = np.random.default_rng(0)
  return [(rng.normal(size=(4, 32, 32, 1)).astype(np.float32),
           rng.integers(0, 10, size=4)) for _ in LRS]


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(
      model(x, train=True), y).mean()


def _leaves(tree):
  """{"layer/param": array} of an nnx.State of parameters."""
  return {f"{optim.layer_name(p)}/{p[-2].key}": np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _train_frozen(patterns):
  graphdef, params, rest = nnx.split(_model(), nnx.Param, ...)
  tx = optim.sgd(LRS[0], frozen=patterns)
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(lambda p: _loss(nnx.merge(graphdef, p, rest), x, y))(
        params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  initial = _leaves(params)
  for lr, (x, y) in zip(LRS, _batches()):
    state = optim.set_learning_rate(state, lr)
    params, state = step(params, state, x, y)
  return initial, _leaves(params), state


def _train_fc_only_by_hand():
  is_fc = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in FC)))
  graphdef, fc, convs, rest = nnx.split(_model(), is_fc, nnx.Param, ...)
  tx = optim.sgd(LRS[0])  # no freezing: only the FC layers are given to it
  state = tx.init(fc)

  @jax.jit
  def step(fc, state, x, y):
    grads = jax.grad(
        lambda p: _loss(nnx.merge(graphdef, p, convs, rest), x, y))(fc)
    updates, state = tx.update(grads, state, fc)
    return optax.apply_updates(fc, updates), state

  for lr, (x, y) in zip(LRS, _batches()):
    state = optim.set_learning_rate(state, lr)
    fc, state = step(fc, state, x, y)
  return _leaves(fc)


def test_frozen_convs_are_unchanged_and_hold_no_optimiser_state():
  initial, final, opt_state = _train_frozen(["block*"])
  convs = [k for k in initial if k.startswith("block")]
  assert convs and len(convs) < len(initial)
  for k in convs:  # bitwise the same bytes
    assert final[k].tobytes() == initial[k].tobytes(), k
  for k in set(initial) - set(convs):
    assert np.abs(final[k] - initial[k]).max() > 0, f"{k} did not train"
  # Optimiser state: the momentum buffers of the trained layers only.
  paths = [jax.tree_util.keystr(p)
           for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
  assert not [p for p in paths if "block" in p], paths
  velocity_layers = {name for p in paths for name in FC if f"'{name}'" in p}
  assert velocity_layers == set(FC)
  # The trained layers follow exactly the FC-only run of the plain optimiser.
  want = _train_fc_only_by_hand()
  for k, v in want.items():
    np.testing.assert_allclose(final[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_no_patterns_is_exactly_the_unfrozen_optimiser():
  _, params, _ = nnx.split(_model(), nnx.Param, ...)
  a = jax.tree_util.tree_structure(optim.sgd(0.1).init(params))
  b = jax.tree_util.tree_structure(optim.sgd(0.1, frozen=()).init(params))
  assert a == b  # checkpoints of unfrozen runs keep their layout


def test_a_pattern_that_matches_nothing_names_the_layers():
  _, params, _ = nnx.split(_model(), nnx.Param, ...)
  with pytest.raises(ValueError, match=r"\['conv\*'\] match no layer[\s\S]*"
                     r"block1_conv1, [\s\S]*fc3"):
    optim.sgd(0.1, frozen=["block*", "conv*"]).init(params)
  with pytest.raises(ValueError, match="freeze every layer"):
    optim.sgd(0.1, frozen=["*"]).init(params)
  with pytest.raises(ValueError, match="list of name patterns"):
    optim.sgd(0.1, frozen="fc1")


def test_config_field_reaches_the_optimiser():
  config = common.base_config("fashion_mnist")
  config.optimizer.frozen_layers = ("block*", "fc1")
  config.lr_schedule = "cosine"
  tx = train.make_optimizer(config, total_steps=10, steps_per_epoch=5,
                            warmup_steps=0)
  _, params, _ = nnx.split(_model(), nnx.Param, ...)
  paths = [jax.tree_util.keystr(p) for p in
           jax.tree_util.tree_flatten_with_path(tx.init(params))[0]]
  trained = {n for p in paths for n in ("fc1", "fc2", "fc3", "block")
             if f"'{n}" in p}
  assert trained == {"fc2", "fc3"}
  assert common.base_config().optimizer.frozen_layers == ()
