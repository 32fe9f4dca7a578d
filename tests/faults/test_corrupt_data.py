"""Corrupt data (docs/reliability.md, fault 6), through the real command.

* Undecodable training images (truncated, empty): skipped and counted (the
  log names each file and the running count); every batch keeps its size.
* Undecodable evaluation images: never dropped: each is named in the log,
  counted in ``val_undecodable``, and scored as a miss, so ``val_examples``
  is the size of the split and the errors are over the whole split.
* A class folder that appears between runs: an error naming the folder
  before any compute (labels are fixed by the class index written by the
  first run; a new folder would silently shift or add labels).
"""

import pathlib
import re
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
import _fault_helpers as H  # noqa: E402  pylint: disable=g-import-not-at-top
import data_fixtures as F  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


def _folder(root):
  """train: 2 classes x 2 photos + 1 undecodable each (6, one epoch of
  3 batches of 2); test: 2 classes x 2 photos + 1 truncated (5)."""
  k = 0
  for split, bad in (("train", {"a": "truncated", "b": "empty"}),
                     ("test", {"b": "truncated"})):
    for cls in ("a", "b"):
      d = root / split / cls
      d.mkdir(parents=True)
      for j in range(2):
        (d / f"{cls}{j}.JPEG").write_bytes(F.jpeg_bytes(F.varied_photo(k)))
        k += 1
      if cls in bad:
        data = (F.truncated_jpeg_bytes(F.varied_photo(k))
                if bad[cls] == "truncated" else b"")
        (d / f"{cls}_bad.JPEG").write_bytes(data)
  return root


def _flags(data_dir):
  values = {"data.source": "folder", "data.data_dir": str(data_dir),
            "data.image_channels": 3, "data.eval_split": "test",
            "batch_size": 2, "eval_batch_size": 2, "total_steps": 3,
            "eval_every_steps": 3, "log_every_steps": 1,
            "checkpoint_every_steps": 3, "data.num_threads": 1}
  return list(H.TINY_NET) + [f"--config.{k}={v}" for k, v in values.items()]


def test_undecodable_images_are_counted_and_a_new_class_folder_refused(
    tmp_path):
  data_dir = _folder(tmp_path / "images")
  workdir = tmp_path / "wd"
  proc = H.run(workdir, _flags(data_dir))
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  # Training: both undecodable files skipped, named, counted.
  assert "train/a/a_bad.JPEG" in out and "train/b/b_bad.JPEG" in out, out[-4000:]
  counts = [int(c) for c in re.findall(r"\((\d+) so far\)", out)]
  assert counts and max(counts) == 2, counts
  # Evaluation: the truncated test image is named, counted, and scored as a
  # miss over all 5 examples (errors are multiples of 1/5).
  assert "test/b/b_bad.JPEG" in out
  evals = [l for l in H.metrics_lines(workdir) if l["kind"] == "eval"]
  assert evals and evals[-1]["val_examples"] == 5
  assert evals[-1]["val_undecodable"] == 1
  assert evals[-1]["val_top1_error"] * 5 == pytest.approx(
      round(evals[-1]["val_top1_error"] * 5), abs=1e-9)
  assert evals[-1]["val_top1_error"] >= 1 / 5 - 1e-9  # the miss counts

  # A class folder appears between runs: refused, naming it, nothing run.
  (data_dir / "train" / "c").mkdir()
  (data_dir / "train" / "c" / "c0.JPEG").write_bytes(
      F.jpeg_bytes(F.varied_photo(50)))
  before = H.committed_steps(workdir)
  proc = H.run(workdir, _flags(data_dir) + ["--config.total_steps=6"])
  assert proc.returncode != 0
  assert re.search(r"class folder \S*train/c is not in the class index",
                   proc.stderr), proc.stderr[-3000:]
  assert H.committed_steps(workdir) == before
  H.report("corrupt_folder", faults_injected=4, runs_survived=1,
           examples_lost=int(5 - evals[-1]["val_examples"]), bad_inputs_refused=1,
           training_images_skipped=max(counts))
