"""The paper's optimiser (§3.1) against the formulas written out by hand."""

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
  """In numpy: Caffe v <- mu v + lr (g + wd w); w <- w - v.
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
  for k in range(4):  # constant lr: identical
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


# ----------------------------------------------------------------------------
# Bias weight decay (the AlexNet paper decays weights only).


@pytest.mark.parametrize("form", ["caffe", "optax"])
def test_without_bias_decay_a_bias_with_zero_gradient_is_unchanged(form):
  lr = 0.1
  params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), -1.5)}
  tx = optim.sgd(lr, weight_decay=WD, form=form, decay_biases=False)
  state = tx.init(params)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  kernel = 2.0
  velocity = 0.0  # in gradient units (the two forms agree at constant lr)
  for _ in range(3):
    upd, state = tx.update(zero, state, params)
    params = optax.apply_updates(params, upd)
    # By hand: the kernel's only gradient is the decay term wd * w.
    velocity = MU * velocity + WD * kernel
    kernel = kernel - lr * velocity
  np.testing.assert_array_equal(np.asarray(params["bias"]), -1.5)
  np.testing.assert_allclose(np.asarray(params["kernel"]), kernel, rtol=1e-6)
  assert kernel < 2.0  # decayed: the test can tell decayed from not


def test_alexnet_config_does_not_decay_biases_vgg_configs_do():
  from experiments import alexnet, configA, configD  # pylint: disable=g-import-not-at-top
  assert alexnet.get_config().optimizer.decay_biases is False
  assert configA.get_config().optimizer.decay_biases is True
  assert configD.get_config().optimizer.decay_biases is True


# ----------------------------------------------------------------------------
# The plateau rule.


def _actions(controller, accuracies):
  return [controller.update(i, a) for i, a in enumerate(accuracies)]


@pytest.mark.parametrize("patience,min_delta", [(6, 5e-3), (3, 2e-3), (1, 1e-3)])
def test_a_steady_climb_faster_than_min_delta_per_patience_never_drops(
    patience, min_delta):
  # A climb of r per evaluation gains patience * r over the patience window:
  # at least min_delta means there is an improvement inside every window, so
  # no plateau, however small each single gain is (here < min_delta for
  # patience > 1).  The old rule raised `best` on every sub-threshold gain
  # and dropped after `patience` evaluations of such a climb.
  rate = 1.2 * min_delta / patience
  c = optim.PlateauController(patience=patience, min_delta=min_delta)
  acts = _actions(c, [0.3 + rate * t for t in range(200)])
  assert set(acts) == {"continue"} and c.drops == 0


@pytest.mark.parametrize("patience,min_delta", [(6, 5e-3), (3, 2e-3), (1, 1e-3)])
def test_a_climb_slower_than_min_delta_per_patience_drops_after_patience(
    patience, min_delta):
  rate = 0.8 * min_delta / patience
  c = optim.PlateauController(patience=patience, min_delta=min_delta)
  acts = _actions(c, [0.3 + rate * t for t in range(patience + 1)])
  # Evaluation 0 sets best; 1..patience each gain less than min_delta over it.
  assert acts == ["continue"] * patience + ["drop"]


def test_one_noisy_dip_or_spike_does_not_drop_with_the_default_patience():
  c = optim.PlateauController()  # the defaults
  assert c.patience > 1
  climb = [0.40 + 2 * c.min_delta * t for t in range(40)]
  dipped = list(climb)
  dipped[10] -= 0.02  # one evaluation 2 points low
  dipped[25] += 0.02  # one 2 points high (best jumps up with it)
  assert set(_actions(c, dipped)) == {"continue"}
  # With patience 1 the same dip is a drop: the test can fail.
  one = optim.PlateauController(patience=1, min_delta=c.min_delta)
  assert "drop" in _actions(one, dipped)


def test_a_true_plateau_drops_three_times_then_stops():
  c = optim.PlateauController(initial_lr=1e-2)  # patience 6, 0.5 points
  p = c.patience
  rng = np.random.default_rng(0)
  wiggle = lambda n: list(0.002 * rng.uniform(-1, 1, n))  # < min_delta / 2
  seq = []
  expected = []
  for level in (0.55, 0.65, 0.68, 0.69):
    # A jump to a new level, then flat (+-0.2 points): one improvement,
    # then `patience` evaluations without one.
    seq += [level + w for w in [0.0] + wiggle(p)]
    expected += ["continue"] * p + ["drop"]
  expected[-1] = "stop"
  assert _actions(c, seq) == expected
  assert c.drops == 3 and c.learning_rate == pytest.approx(1e-5)


def test_controller_state_resumes_exactly_and_keeps_its_format():
  rng = np.random.default_rng(1)
  t = np.arange(120)
  accs = list(0.7 - 0.4 * np.exp(-t / 12) + 0.003 * rng.standard_normal(120))
  whole = optim.PlateauController()
  want = _actions(whole, accs)
  assert "drop" in want  # the sequence exercises drops
  first = optim.PlateauController()
  got = _actions(first, accs[:50])
  state = json.loads(json.dumps(first.state_dict()))
  # The checkpoint's JSON keys are the ones earlier versions wrote.
  assert set(state) == {"best", "bad_evals", "drops", "history"}
  second = optim.PlateauController()
  second.load_state_dict(state)
  got += [second.update(i, a) for i, a in enumerate(accs[50:], start=50)]
  assert got == want
  assert second.state_dict() == whole.state_dict()


def test_controller_defaults_are_the_configs():
  from vgg_jax import configs as common  # pylint: disable=g-import-not-at-top
  c, d = optim.PlateauController(), common.base_config().plateau
  assert (c.patience, c.min_delta, c.max_drops) == (
      d.patience, d.min_delta, d.max_drops)


def test_controller_rejects_meaningless_settings():
  with pytest.raises(ValueError, match="patience"):
    optim.PlateauController(patience=0)
  with pytest.raises(ValueError, match="min_delta"):
    optim.PlateauController(min_delta=-0.01)


def test_a_restart_with_a_lower_lr_keeps_the_plateau_drops():
  # docs/reliability.md, fault 5: after a NaN stop the user restarts with a
  # lower --config.lr; train.py builds the controller from the new config and
  # loads the checkpoint's state, so the drops already made still apply.
  first = optim.PlateauController(initial_lr=1e-2, patience=1, min_delta=0.01)
  for step, acc in enumerate([0.5, 0.5, 0.5]):  # two plateaus: two drops
    first.update(step, acc)
  assert first.drops == 2
  resumed = optim.PlateauController(initial_lr=1e-3, patience=1,
                                    min_delta=0.01)
  resumed.load_state_dict(first.state_dict())
  assert resumed.drops == 2 and resumed.best == 0.5
  np.testing.assert_allclose(resumed.learning_rate, 1e-3 / 100, rtol=1e-12)
