"""Evaluation (paper §3.2): counting, protocols, dense batching, the command."""

import numpy as np
import pytest
from flax import nnx

from vgg_jax import evaluate
from vgg_jax.models import create_model

TINY = dict(width_mult=0.125, fc_width=64, num_classes=10)


@pytest.fixture(scope="module")
def tiny_model():
  return create_model("A", rngs=nnx.Rngs(0), **TINY)


def _numpy_errors(logits, labels):
  """Top-1/top-5 error written with argsort (independent of lax.top_k)."""
  order = np.argsort(-logits, axis=1, kind="stable")
  top1 = order[:, 0] == labels
  top5 = (order[:, :5] == labels[:, None]).any(axis=1)
  return 1 - top1.mean(), 1 - top5.mean()


def test_evaluate_classifier_counts_every_real_example_once(tiny_model):
  rng = np.random.default_rng(0)
  images = rng.normal(0, 50, (11, 224, 224, 3)).astype(np.float32)
  logits = np.asarray(tiny_model(images))
  # Labels chosen so that top-1 and top-5 errors are neither 0 nor 1.
  order = np.argsort(-logits, axis=1)
  labels = np.array([order[i, [0, 3, 7][i % 3]] for i in range(11)])
  want_top1, want_top5 = _numpy_errors(logits, labels)
  assert 0 < want_top1 < 1 and 0 < want_top5 < 1
  # Batches of 4 with a padded last batch (mask 0 rows get label 0 and
  # garbage images: they must not count).
  batches = []
  for start in range(0, 11, 4):
    n = min(4, 11 - start)
    img = np.full((4, 224, 224, 3), 99.0, np.float32)
    img[:n] = images[start:start + n]
    lab = np.zeros((4,), np.int32)
    lab[:n] = labels[start:start + n]
    mask = (np.arange(4) < n).astype(np.int32)
    batches.append({"image": img, "label": lab, "mask": mask})
  got = evaluate.evaluate_classifier(tiny_model, batches)
  assert got["num_examples"] == 11
  assert got["top1_error"] == pytest.approx(want_top1)
  assert got["top5_error"] == pytest.approx(want_top5)
  # A mesh over the available devices gives the same answer.
  got_mesh = evaluate.evaluate_classifier(tiny_model, batches,
                                          mesh=evaluate.default_mesh())
  assert got_mesh == got


def test_evaluate_classifier_rejects_empty_input(tiny_model):
  with pytest.raises(ValueError, match="no batches"):
    evaluate.evaluate_classifier(tiny_model, [])
  empty = {"image": np.zeros((2, 224, 224, 3), np.float32),
           "label": np.zeros((2,), np.int32), "mask": np.zeros((2,), np.int32)}
  with pytest.raises(ValueError, match="no examples"):
    evaluate.evaluate_classifier(tiny_model, [empty])
