"""What the training command's start-up relies on: TensorBoard events
without TensorFlow (the Fashion-MNIST default's start-up time,
docs/training.md)."""

import pathlib
import subprocess
import sys

import numpy as np

from vgg_jax import summary_writer

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_event_file_reads_back_in_tensorboard(tmp_path):
  """TensorBoard's own reader sees the scalars and the hparams written."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  w = summary_writer.SummaryWriter(tmp_path / "tb")
  w.write_hparams({"lr": 0.05, "model.name": "A", "batch_size": 64,
                   "data.flip": True})
  w.write_scalars(100, {"train_loss": 0.5, "lr": np.float32(0.025)})
  w.write_scalars(200, {"train_loss": 0.25, "val_top1": 0.92})
  w.close()
  (path,) = (tmp_path / "tb").iterdir()
  assert path.name.startswith("events.out.tfevents.")
  events = list(event_file_loader.EventFileLoader(str(path)).Load())
  assert events[0].file_version == "brain.Event:2"
  # As TensorBoard loads them (scalars migrated to scalar tensors).
  scalars = [(e.step, v.tag, float(tensor_util.make_ndarray(v.tensor)))
             for e in events for v in e.summary.value
             if v.metadata.plugin_data.plugin_name == "scalars"]
  f32 = lambda v: float(np.float32(v))  # TensorBoard stores float32
  assert scalars == [(100, "train_loss", 0.5), (100, "lr", f32(0.025)),
                     (200, "train_loss", 0.25), (200, "val_top1", f32(0.92))]
  hp = [v for e in events for v in e.summary.value
        if v.tag == "_hparams_/session_start_info"]
  assert len(hp) == 1 and b"model.name" in hp[0].metadata.plugin_data.content


def test_disabled_writer_writes_nothing(tmp_path):
  w = summary_writer.SummaryWriter(tmp_path / "tb", enabled=False)
  w.write_scalars(1, {"a": 1.0})
  w.write_hparams({"a": 1})
  w.close()
  assert not (tmp_path / "tb").exists()


def test_training_path_does_not_import_tensorflow(tmp_path):
  """TensorFlow's import is ~5 CPU-seconds; nothing on the Fashion-MNIST
  training path needs it (TFDS sources import it when used)."""
  code = (
      "import sys, vgg_jax.main, vgg_jax.train, vgg_jax.summary_writer as s\n"
      "from vgg_jax import input_pipeline\n"
      "from vgg_jax.configs import base_config\n"
      "c = base_config('fashion_mnist')\n"
      "input_pipeline.dataset_info(c.data)\n"
      f"w = s.SummaryWriter({str(tmp_path)!r}); w.write_hparams({{'a': 1}})\n"
      "w.write_scalars(1, {'b': 2.0}); w.close()\n"
      "print(sorted(m for m in sys.modules if m.split('.')[0] in "
      "('tensorflow', 'tensorflow_datasets', 'clu')))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, cwd=REPO, check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
