"""The paper's optimiser (SPEC section 2) against the formulas written out by hand."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vgg_jax import optim

MU, WD = 0.9, 5e-4


def _grads(k):
  """A fixed, step-dependent fake gradient (independent of the weights)."""
  rng = np.random.default_rng(k)
  return {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
          "bias": rng.normal(size=(2,)).astype(np.float32)}


def _params():
  rng = np.random.default_rng(100)
  return {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
          "bias": rng.normal(size=(2,)).astype(np.float32)}


def _run(form, lrs, decay_biases=True):
  tx = optim.sgd(lrs[0], momentum=MU, weight_decay=WD, form=form,
                 decay_biases=decay_biases)
  params = jax.tree_util.tree_map(jnp.asarray, _params())
  state = tx.init(params)
  history = []
  for k, lr in enumerate(lrs):
    state = optim.set_learning_rate(state, lr)
    updates, state = tx.update(_grads(k), state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.tree_util.tree_map(np.asarray, params))
  return history


def _by_hand(form, lrs, decay_biases=True):
  """SPEC section 2, in numpy: Caffe v <- mu v + lr (g + wd w); w <- w - v.
  optax/PyTorch: v <- mu v + (g + wd w); w <- w - lr v."""
  w = {k: v.astype(np.float64) for k, v in _params().items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  history = []
  for k, lr in enumerate(lrs):
    g = _grads(k)
    for name in w:
      wd = WD if (decay_biases or w[name].ndim > 1) else 0.0
      d = g[name] + wd * w[name]
      if form == "caffe":
        v[name] = MU * v[name] + lr * d
        w[name] = w[name] - v[name]
      else:
        v[name] = MU * v[name] + d
        w[name] = w[name] - lr * v[name]
    history.append({n: x.copy() for n, x in w.items()})
  return history


LRS = [1e-2] * 4 + [1e-3] * 3  # a drop after four steps


@pytest.mark.parametrize("form", ["caffe", "optax"])
@pytest.mark.parametrize("decay_biases", [True, False])
def test_matches_formula_by_hand(form, decay_biases):
  got = _run(form, LRS, decay_biases)
  want = _by_hand(form, LRS, decay_biases)
  for g, w in zip(got, want):
    for name in w:
      np.testing.assert_allclose(g[name], w[name], rtol=1e-5, atol=1e-7)


def test_forms_agree_at_constant_lr_and_differ_after_a_drop():
  caffe, opt = _run("caffe", LRS), _run("optax", LRS)
  for k in range(4):  # constant lr: identical (SPEC section 2)
    np.testing.assert_allclose(caffe[k]["kernel"], opt[k]["kernel"],
                               rtol=1e-5, atol=1e-7)
  # Right after the drop, Caffe's velocity still carries lr=1e-2 steps;
  # optax rescales all of it by 1e-3: the step differs by
  # mu * (lr_old - lr_new) * (velocity in gradient units).
  hand_c, hand_o = _by_hand("caffe", LRS), _by_hand("optax", LRS)
  step_c = caffe[4]["kernel"] - caffe[3]["kernel"]
  step_o = opt[4]["kernel"] - opt[3]["kernel"]
  assert np.abs(step_c - step_o).max() > 1e-4
  np.testing.assert_allclose(step_c, hand_c[4]["kernel"] - hand_c[3]["kernel"],
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(step_o, hand_o[4]["kernel"] - hand_o[3]["kernel"],
                             rtol=1e-4, atol=1e-7)
  # The Caffe step is larger: the old lr's momentum decays out gradually.
  assert np.linalg.norm(step_c) > np.linalg.norm(step_o)


def test_weight_decay_is_coupled_not_decoupled():
  # Zero gradient: the first update is exactly -lr * wd * w (coupled, added
  # to the gradient), for both forms.
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  for form in optim.MOMENTUM_FORMS:
    tx = optim.sgd(0.1, weight_decay=WD, form=form)
    upd, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params),
                       tx.init(params), params)
    np.testing.assert_allclose(upd["kernel"], -0.1 * WD * np.ones((2, 2)),
                               rtol=1e-6)
    np.testing.assert_allclose(upd["bias"], -0.1 * WD * np.ones(2), rtol=1e-6)
  tx = optim.sgd(0.1, weight_decay=WD, decay_biases=False)
  upd, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params),
                     tx.init(params), params)
  np.testing.assert_array_equal(upd["bias"], 0.0)


def test_learning_rate_lives_in_the_state():
  params = {"w": jnp.ones(3)}
  tx = optim.sgd(1e-2)
  state = optim.set_learning_rate(tx.init(params), 1e-4)
  assert float(optim.learning_rate_of(state)) == pytest.approx(1e-4)
  upd, state = tx.update({"w": jnp.ones(3)}, state, params)
  np.testing.assert_allclose(upd["w"], -1e-4 * (1 + WD), rtol=1e-6)


def test_unknown_form_is_an_error():
  with pytest.raises(ValueError, match="momentum form"):
    optim.sgd(0.1, form="nesterov").init({"w": jnp.ones(1)})


def test_plateau_controller_paper_rule():
  c = optim.PlateauController(initial_lr=1e-2, patience=2, min_delta=0.01,
                              max_drops=3)
  seq = [0.50, 0.60, 0.605, 0.60,  # 2 evals below best+0.01 -> drop 1
         0.70, 0.70, 0.70,  # drop 2
         0.71, 0.715, 0.712,  # drop 3
         0.80, 0.80, 0.80]  # plateau after 3 drops -> stop
  actions = [c.update(i, a) for i, a in enumerate(seq)]
  assert actions == ["continue", "continue", "continue", "drop",
                     "continue", "continue", "drop",
                     "continue", "continue", "drop",
                     "continue", "continue", "stop"]
  assert c.learning_rate == pytest.approx(1e-5)
  # The state survives a JSON round trip (it lives in the checkpoint).
  d = optim.PlateauController(initial_lr=1e-2, patience=2, min_delta=0.01)
  d.load_state_dict(json.loads(json.dumps(c.state_dict())))
  assert (d.best, d.drops, d.bad_evals) == (c.best, c.drops, c.bad_evals)
  assert d.learning_rate == c.learning_rate


def test_piecewise_schedule_with_warmup():
  sched = optim.learning_rate_schedule(
      "piecewise", base_lr=0.1, total_steps=100, warmup_steps=10,
      boundaries=[50, 80])
  np.testing.assert_allclose(float(sched(0)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(sched(9)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(49)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(50)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(sched(80)), 0.001, rtol=1e-6)
  assert optim.learning_rate_schedule("plateau", base_lr=0.1,
                                      total_steps=10) == 0.1
