"""Checkpoints: half-written ones are never restored; latest + best kept."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from vgg_jax import checkpointing
from vgg_jax import optim
from vgg_jax import train
from vgg_jax.models import create_model

KWARGS = dict(name="A", num_classes=10, width_mult=1 / 16, fc_width=32,
              head_window=1, in_channels=1)
METADATA = {"model": KWARGS,
            "input_convention": {"channel_order": "RGB", "scale": 1.0,
                                 "mean": [72.94], "std": [90.02]},
            "class_names": [str(i) for i in range(10)]}


def _state(seed):
  model = create_model(**KWARGS, init="he", rngs=nnx.Rngs(seed))
  _, state = train.create_train_state(model, optim.sgd(0.01))
  return state


def _kernel(state):
  return np.asarray(state["params"]["fc3"]["kernel"].get_value())


def _save(workdir, steps_metrics, keep=2):
  ckpt = checkpointing.Checkpointer(workdir, keep=keep)
  states = {}
  for step, metric in steps_metrics:
    states[step] = _state(step)
    ckpt.save(step, state=states[step], train_iter=None,
              controller={"best": None, "bad_evals": 0, "drops": 0,
                          "history": []},
              metadata=METADATA,
              metrics=None if metric is None else {"val_top1": metric})
  ckpt.wait()
  ckpt.close()
  return states


def test_half_written_checkpoints_are_ignored(tmp_path):
  states = _save(tmp_path, [(1, 0.5), (2, None)])
  cdir = tmp_path / "checkpoints"
  # What a kill leaves: a step directory without orbax's commit file, and
  # orbax's temporary directory of an unfinished save.
  shutil.copytree(cdir / "2", cdir / "3")
  (cdir / "3" / checkpointing.COMMIT_FILE).unlink()
  tmp = cdir / "4.orbax-checkpoint-tmp-1234567"
  tmp.mkdir()
  (tmp / "state").mkdir()
  ckpt = checkpointing.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 2
  ckpt.close()
  assert not (cdir / "3").exists() and not tmp.exists()
  assert len(list((cdir / checkpointing.INCOMPLETE_DIR).iterdir())) == 2
  model, meta = checkpointing.load_model_from_workdir(tmp_path)
  assert meta["step"] == 2 and meta["model"] == KWARGS
  np.testing.assert_array_equal(np.asarray(model.fc3.kernel[...]),
                                _kernel(states[2]))


def test_keeps_latest_and_best(tmp_path):
  states = _save(tmp_path, [(1, 0.3), (2, 0.9), (3, 0.4), (4, None),
                            (5, 0.2)], keep=2)
  ckpt = checkpointing.Checkpointer(tmp_path, read_only=True)
  assert ckpt.complete_steps() == [2, 4, 5]  # best (2) + latest two
  assert ckpt.best_step() == 2
  ckpt.close()
  model, meta = checkpointing.load_model_from_workdir(tmp_path, best=True)
  assert meta["step"] == 2
  np.testing.assert_array_equal(np.asarray(model.fc3.kernel[...]),
                                _kernel(states[2]))
  model, meta = checkpointing.load_model_from_workdir(tmp_path, step=4)
  np.testing.assert_array_equal(np.asarray(model.fc3.kernel[...]),
                                _kernel(states[4]))


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    checkpointing.load_model_from_workdir(tmp_path)
  _save(tmp_path, [(1, None)])
  with pytest.raises(FileNotFoundError, match=r"available: \[1\]"):
    checkpointing.load_model_from_workdir(tmp_path, step=7)
  with pytest.raises(FileNotFoundError, match="validation metric"):
    checkpointing.load_model_from_workdir(tmp_path, best=True)
