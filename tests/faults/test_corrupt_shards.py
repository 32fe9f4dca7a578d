"""Corrupt TFDS ArrayRecord shards (docs/reliability.md, fault 6):

* a missing shard: an error naming the shard file when the dataset is
  opened (before any compute);
* a bit-flipped training shard: the unreadable records are skipped and
  counted, the log naming the shard; batches keep their size;
* a truncated validation shard: every unreadable record is counted as an
  evaluation failure naming the shard (label -1: a miss), none dropped.

The dataset is TFDS' real imagenet2012 builder run on tiny ILSVRC-format
tars (tests/data_fixtures.py), through ``python -m vgg_jax.data prepare``.
"""

import logging
import pathlib
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top
import data_fixtures as F  # noqa: E402  pylint: disable=g-import-not-at-top

from vgg_jax import conventions  # noqa: E402
from vgg_jax import input_pipeline as ip  # noqa: E402
from vgg_jax.data import __main__ as data_cli  # noqa: E402

NUM_VAL, PER_CLASS = 5, 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("imagenet")
  import importlib.resources  # pylint: disable=g-import-not-at-top
  # TFDS' builder code imports the `importlib_resources` backport; the
  # standard library's module has what it uses.
  sys.modules.setdefault("importlib_resources", importlib.resources)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  synsets = pathlib.Path(str(tfds.core.tfds_path(
      "datasets/imagenet2012/labels.txt"))).read_text().split()
  F.make_ilsvrc_tars(tmp / "manual", synsets[:3], PER_CLASS, NUM_VAL,
                     nasty=False)
  assert data_cli.main(["prepare", "imagenet2012", "--manual_dir",
                        str(tmp / "manual"), "--data_dir",
                        str(tmp / "tfds")]) == 0
  return tmp / "tfds"


def _copy(prepared, tmp_path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(prepared, data_dir)
  (version,) = (data_dir / "imagenet2012").iterdir()
  return data_dir, version


def _cfg(data_dir):
  cfg = ip.default_data_config("tfds")
  cfg.name, cfg.data_dir, cfg.num_threads = "imagenet2012", str(data_dir), 1
  cfg.crop_size, cfg.train_scale, cfg.eval_scale = 32, 32, 32
  return cfg


def _shard(version, split):
  (shard,) = version.glob(f"imagenet2012-{split}.array_record-*")
  return shard


def test_missing_shard_is_named(prepared, tmp_path):
  data_dir, version = _copy(prepared, tmp_path)
  shard = _shard(version, "validation")
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=shard.name):
    ip.dataset_info(_cfg(data_dir))
  H.report("corrupt_shard: missing", faults_injected=1, bad_inputs_refused=1)


def test_bit_flipped_training_shard_skips_and_counts(prepared, tmp_path,
                                                     caplog):
  data_dir, version = _copy(prepared, tmp_path)
  shard = _shard(version, "train")
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF  # inside one record's chunk
  shard.write_bytes(bytes(data))
  n = ip.dataset_info(_cfg(data_dir)).num_train_examples
  it = ip.create_train_iterator(_cfg(data_dir), global_batch_size=n, seed=0,
                                input_convention=conventions.CAFFE,
                                process_index=0, process_count=1)
  with caplog.at_level(logging.WARNING):
    batch = next(it)  # one whole epoch
  assert batch["image"].shape[0] == n and np.isfinite(batch["image"]).all()
  assert 1 <= it.skipped < n
  assert shard.name in caplog.text and "truncated or corrupt" in caplog.text
  H.report("corrupt_shard: bit-flipped train", faults_injected=1,
           runs_survived=1)


def test_truncated_validation_shard_counts_every_record(prepared, tmp_path):
  data_dir, version = _copy(prepared, tmp_path)
  shard = _shard(version, "validation")
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])
  ev = iter(ip.create_eval_iterator(_cfg(data_dir), global_batch_size=2,
                                    input_convention=conventions.PAPER,
                                    process_index=0, process_count=1))
  batches = list(ev)
  real = sum(int(b["mask"].sum()) for b in batches)
  failed = sum(int(b["decode_error"].sum()) for b in batches)
  assert real + failed == NUM_VAL  # every example accounted for
  assert failed >= 1 and len(ev.failed) == failed
  assert all(shard.name in f["reason"] for f in ev.failed)
  labels = np.concatenate([b["label"] for b in batches])
  assert (labels[np.concatenate([b["decode_error"] for b in batches]) == 1]
          == -1).all()  # scored as misses
  H.report("corrupt_shard: truncated validation", faults_injected=1,
           examples_lost=NUM_VAL - real - failed)
