"""train_and_evaluate: exact resume, SIGTERM, NaN stop, config errors.

Tiny nets (net A at 1/16 width, FC 32, 32x32 Fashion-MNIST), a few steps.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vgg_jax import checkpointing
from vgg_jax import train

REPO = pathlib.Path(__file__).absolute().parents[1]
sys.path.insert(0, str(REPO))
from vgg_jax import configs as common  # noqa: E402  pylint: disable=g-import-not-at-top


def tiny_config(**overrides):
  c = common.base_config("fashion_mnist")
  c.model.name = "A"
  c.model.width_mult = 1 / 16
  c.model.fc_width = 32
  c.model.head_window = 1
  c.model.init = "he"
  c.batch_size = 16
  c.eval_batch_size = 1000
  c.lr = 0.02
  # A schedule with a warm-up and a drop inside the run, so that resuming
  # must restore the update count as well as the momentum.
  c.lr_schedule = "piecewise"
  c.warmup_steps = 2
  c.lr_boundaries_epochs = (7 / 3750,)  # step 7 (3750 steps per epoch)
  c.total_epochs = None
  c.total_steps = 10
  c.eval_every_epochs = None
  c.eval_every_steps = 5
  c.log_every_steps = 1
  c.checkpoint_every_steps = None
  c.async_checkpoints = True
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return common.lock(c)


def params_of(workdir, step=None, best=False):
  model, meta = checkpointing.load_model_from_workdir(workdir, step=step,
                                                      best=best)
  return {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model))}, meta


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, result


def test_runs_and_writes_what_the_user_sees(uninterrupted):
  workdir, result = uninterrupted
  assert result["step"] == 10 and result["stopped_by"] == "total_steps"
  assert 0.0 <= result["val_top1_error"] <= 1.0
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  kinds = {l["kind"] for l in lines}
  assert {"train", "eval", "final"} <= kinds
  evals = [l for l in lines if l["kind"] == "eval"]
  assert [e["step"] for e in evals] == [5, 10]
  assert all(e["val_examples"] == 10000 for e in evals)  # every test image
  train_lines = [l for l in lines if l["kind"] == "train"]
  # The lr of each logged step's update: warm-up 0.01 -> 0.02 over two
  # steps, then x0.1 from the 8th update (step index 7) on.
  lrs = [l["lr"] for l in train_lines]
  np.testing.assert_allclose(lrs, [0.01] + [0.02] * 6 + [0.002] * 3,
                             rtol=1e-6)
  log = (workdir / "log_host0.txt").read_text()
  assert "training from scratch" in log
  assert "img/s" in log and "ETA" in log
  assert json.loads((workdir / "config.json").read_text())["batch_size"] == 16
  assert any((workdir / "tensorboard").iterdir())


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(
    uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  first = train.train_and_evaluate(tiny_config(stop_after_steps=3), tmp_path)
  assert first["step"] == 3 and first["stopped_by"] == "stop_after_steps"
  second = train.train_and_evaluate(tiny_config(), tmp_path)
  assert second["step"] == 10
  assert "resuming from the workdir's checkpoint at step 3" in (
      tmp_path / "log_host0.txt").read_text()
  want, _ = params_of(workdir, step=10)
  got, _ = params_of(tmp_path, step=10)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert second["val_top1_error"] == pytest.approx(
      uninterrupted[1]["val_top1_error"], abs=0)


def test_sigterm_saves_and_exits_then_resumes_exactly(uninterrupted, tmp_path):
  workdir, _ = uninterrupted

  def preempt_at_6(step):
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  first = train.train_and_evaluate(tiny_config(), tmp_path,
                                   hooks=[preempt_at_6])
  assert first["stopped_by"] == "preemption" and first["step"] == 6
  assert checkpointing.Checkpointer(
      tmp_path, read_only=True).latest_step() == 6
  train.train_and_evaluate(tiny_config(), tmp_path)
  want, _ = params_of(workdir, step=10)
  got, _ = params_of(tmp_path, step=10)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_load_model_from_workdir_metadata_and_best(uninterrupted):
  workdir, _ = uninterrupted
  model, meta = checkpointing.load_model_from_workdir(workdir, best=True)
  assert meta["model"]["name"] == "A" and meta["model"]["num_classes"] == 10
  assert meta["class_names"][0] == "T-shirt/top"
  assert set(meta["input_convention"]) == {"channel_order", "scale", "mean",
                                           "std"}
  evals = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  evals = [e for e in evals if e["kind"] == "eval"]
  best = max(evals, key=lambda e: e["val_top1"])
  assert meta["step"] == best["step"]
  x = np.zeros((2, 32, 32, 1), np.float32)
  assert model(x).shape == (2, 10)


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
  config = tiny_config(lr=1e12, lr_schedule="plateau", warmup_steps=0,
                       log_every_steps=1, checkpoint_every_steps=1,
                       eval_every_steps=100, total_steps=20)
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
    train.train_and_evaluate(config, tmp_path)
  ckpt = checkpointing.Checkpointer(tmp_path, read_only=True)
  last = ckpt.latest_step()
  ckpt.close()
  if last is not None:  # the last good checkpoint is finite
    params, _ = params_of(tmp_path, step=last)
    assert all(np.isfinite(v).all() for v in params.values())


def test_workdir_with_a_different_config_is_an_error(uninterrupted):
  workdir, _ = uninterrupted
  with pytest.raises(ValueError, match=r"different config[\s\S]*model.width_mult"):
    train.train_and_evaluate(tiny_config(**{"model.width_mult": 0.25}),
                             workdir)


def test_config_typo_is_an_error(tmp_path):
  c = tiny_config()
  with pytest.raises(AttributeError):
    c.lerning_rate = 0.1  # configs are locked
  # On the command line: a clear error, nothing computed, no workdir made.
  proc = subprocess.run(
      [sys.executable, "-m", "vgg_jax.main",
       f"--config={REPO / 'experiments' / 'fashion_mnist.py'}",
       f"--workdir={tmp_path / 'wd'}", "--config.bach_size=64"],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode != 0
  assert "bach_size" in proc.stderr
  assert not (tmp_path / "wd").exists()


def test_protocol_evaluator_scales_are_checked_before_training():
  """A test scale below the crop used to fail only after the last epoch,
  losing that run's final evaluation."""
  from vgg_jax import config_checks  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  crop = c.data.crop_size
  with c.unlocked():
    c.evals.ms = dict(type="protocol", protocol="dense",
                      scales=(crop - 4, crop, crop + 4))
    c.evals.bad = dict(type="protocol", protocol="dens")
  found = config_checks.problems(c, device_count=1)
  fields = {p.split(" = ")[0]: p for p in found}
  assert sorted(fields) == ["config.evals.bad.protocol",
                            "config.evals.ms.scales"], found
  assert f">= data.crop_size {crop}" in fields["config.evals.ms.scales"]
  with c.unlocked():
    c.evals.ms.scales = (crop, crop + 4)
    c.evals.bad.protocol = "dense"
  assert config_checks.problems(c, device_count=1) == []


def test_duration_units():
  c = tiny_config(total_steps=None, total_epochs=2.0)
  assert train.duration_steps(c, "total", steps_per_epoch=100,
                              batch_size=16) == 200
  c = tiny_config(total_steps=None, total_epochs=None, total_examples=1600)
  assert train.duration_steps(c, "total", steps_per_epoch=100,
                              batch_size=16) == 100
  # The finest unit wins, so a command-line `total_steps` overrides epochs.
  c = tiny_config(total_steps=7, total_epochs=2.0)
  assert train.duration_steps(c, "total", steps_per_epoch=100,
                              batch_size=16) == 7


@pytest.mark.parametrize("name", ["configA", "configA_LRN", "configB",
                                  "configC", "configD", "configE",
                                  "configB_shallow", "alexnet",
                                  "fashion_mnist", "fashion_mnist_net_a"])
def test_every_config_loads_locked_and_documents_its_command(name):
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"experiments.{name}")
  assert f"--config experiments/{name}.py" in module.__doc__
  c = module.get_config()
  with pytest.raises(AttributeError):
    c.no_such_field = 1
  from vgg_jax.models import net_spec  # pylint: disable=g-import-not-at-top
  net_spec(c.model.name)  # a real net


def test_stages_follow_the_paper():
  from experiments import configD  # pylint: disable=g-import-not-at-top
  s256, s384, jit = (configD.get_config(s) for s in ("s256", "384", "jitter"))
  assert (s256.data.train_scale, s256.lr, s256.init_from_a) == (
      256, 1e-2, "workdirs/A_s256")
  assert (s384.data.train_scale, s384.data.eval_scale, s384.lr) == (
      384, 384, 1e-3)
  assert s384.init_from == "workdirs/D_s256"
  assert tuple(jit.data.train_scale) == (256, 512)
  assert jit.data.eval_scale == 384 and jit.init_from == "workdirs/D_s384"
  from experiments import configA  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="stages"):
    configA.get_config("s384")


def test_init_from_a_and_init_from_copy_trained_layers(uninterrupted,
                                                        tmp_path):
  a_dir, _ = uninterrupted
  # init_from/init_from_a take a workdir's best checkpoint (by validation
  # accuracy; here step 5 or 10, whichever evaluated better).
  a_params, _ = params_of(a_dir, best=True)
  # lr 0: the one step leaves the initial weights as they were.
  frozen = dict(lr=0.0, lr_schedule="plateau", warmup_steps=0,
                total_steps=1, eval_every_steps=1)
  train.train_and_evaluate(
      tiny_config(**{"model.name": "B", "init_from_a": str(a_dir)}, **frozen),
      tmp_path / "b")
  b_params, _ = params_of(tmp_path / "b")
  assert "initialised from trained net A" in (
      tmp_path / "b" / "log_host0.txt").read_text()
  for layer in ("block1_conv1", "block2_conv1", "block3_conv1",
                "block3_conv2", "fc1", "fc2", "fc3"):
    np.testing.assert_array_equal(b_params[f"{layer}/kernel"],
                                  a_params[f"{layer}/kernel"])
  # B's own layers (block1_conv2 ...) stay random: not A's, not zero.
  assert np.abs(b_params["block1_conv2/kernel"]).max() > 0
  # init_from (e.g. S=384 from S=256): every layer of the same net.
  train.train_and_evaluate(
      tiny_config(init_from=str(a_dir), **frozen), tmp_path / "a2")
  a2_params, _ = params_of(tmp_path / "a2")
  for k in a_params:
    np.testing.assert_array_equal(a2_params[k], a_params[k], err_msg=k)


def test_input_wait_share_sees_a_slow_input_pipeline(tmp_path, monkeypatch):
  # Getting each batch to the device made to take 0.3 s more, against a
  # step of a few ms: the logged share of wall time spent on input must say
  # the run is input-bound; the fast default pipeline must not.
  import time
  from vgg_jax import sharding
  real = sharding.shard_batch

  def slow_shard_batch(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)

  def shares(workdir):
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
    return [l["input_wait_share"] for l in lines if l["kind"] == "train"]

  config = tiny_config(total_steps=6, eval_every_steps=6)
  monkeypatch.setattr(sharding, "shard_batch", slow_shard_batch)
  train.train_and_evaluate(config, tmp_path / "slow")
  # Step 1 includes compilation, and in a full-suite run the fast run's step
  # 2 was once input-bound too (0.84: one-off warm-up work), so the share is
  # read from step 3 on.
  slow = shares(tmp_path / "slow")[2:]
  assert min(slow) > 0.6, slow
  monkeypatch.setattr(sharding, "shard_batch", real)
  train.train_and_evaluate(config, tmp_path / "fast")
  fast = shares(tmp_path / "fast")[2:]
  assert max(fast) < min(slow), (fast, slow)


def test_a_workdir_written_before_a_field_existed_still_resumes(tmp_path):
  """config.json of an older run lacks fields added since (each with the
  default meaning what that run did): resuming is allowed; a non-default
  value of such a field is a changed config and refused."""
  import json
  from vgg_jax import configs
  config = configs.base_config("fashion_mnist")
  train.check_workdir_config(config, tmp_path, write=True)
  path = tmp_path / "config.json"
  stored = json.loads(path.read_text())
  # Fields added since the first runs (2026-11 and after), listed here
  # independently of train.ADDED_FIELDS.
  for dotted in ("evals.val.type", "optimizer.frozen_layers",
                 "model.pool_rounding", "data.central_square"):
    node = stored
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    del node[leaf]
  path.write_text(json.dumps(stored))
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # "holds checkpoints"
  train.check_workdir_config(config, tmp_path, write=False)
  config.model.pool_rounding = "ceil"
  with pytest.raises(ValueError, match="pool_rounding"):
    train.check_workdir_config(config, tmp_path, write=False)
