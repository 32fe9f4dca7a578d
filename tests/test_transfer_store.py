"""Descriptor files: atomic, resumable, every image once, failures named."""

import json

import numpy as np
import pytest

from vgg_jax.transfer import store

SETTINGS = {"nets": ["D"], "scales": [256, 384], "aggregation": "average"}


def _records(names, start=0):
  return [{"name": n, "label": (start + i) % 3} for i, n in enumerate(names)]


def test_resume_after_interruption_continues_from_last_chunk(tmp_path):
  names = [f"img_{i}.jpg" for i in range(10)]
  rows = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
  w = store.SplitWriter(tmp_path, "test", settings=SETTINGS,
                        task="multiclass", classes=["a", "b", "c"],
                        names=names)
  w.add_chunk(_records(names[:4]), rows[:4])
  # An interrupted third chunk: its files half-written under temporary names
  # (what atomic_write leaves at worst) and not in the manifest.
  (tmp_path / "test.parts" / ".chunk_00001.npy.tmp").write_bytes(b"\x93NU")
  w.close()  # the process ends: the OS drops its lock
  w2 = store.SplitWriter(tmp_path, "test", settings=SETTINGS,
                         task="multiclass", classes=["a", "b", "c"],
                         names=names)
  assert w2.done == names[:4]
  assert w2.remaining() == names[4:]
  # The rerun feeds only what remains; one image fails to decode.
  recs = _records(names[4:], start=4)
  recs[2]["error"] = "truncated JPEG"
  ok_rows = np.delete(rows[4:], 2, axis=0)
  with pytest.raises(ValueError, match="not yet extracted"):
    w2.finish()
  w2.add_chunk(recs[:3], ok_rows[:2])
  w2.add_chunk(recs[3:], ok_rows[2:])
  w2.finish()
  assert not (tmp_path / "test.parts").exists()
  got = store.load_split(tmp_path, "test")
  expect_names = [n for n in names if n != "img_6.jpg"]
  assert got.names == expect_names
  np.testing.assert_array_equal(got.features, np.delete(rows, 6, axis=0))
  np.testing.assert_array_equal(got.labels,
                                [i % 3 for i in range(10) if i != 6])
  assert got.failed == [{"name": "img_6.jpg", "label": 0,
                         "error": "truncated JPEG"}]
  assert got.settings == SETTINGS
  assert list(got.failed_labels()) == [0]
  assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_resume_refuses_other_settings_and_double_counts(tmp_path):
  names = ["a", "b", "c"]
  w = store.SplitWriter(tmp_path, "s", settings=SETTINGS, task="multiclass",
                        classes=["x", "y"], names=names)
  w.add_chunk([{"name": "a", "label": 0}], np.ones((1, 2)))
  with pytest.raises(ValueError, match="already counted"):
    w.add_chunk([{"name": "a", "label": 0}], np.ones((1, 2)))
  with pytest.raises(ValueError, match="already counted"):
    w.add_chunk([{"name": "b", "label": 0}, {"name": "b", "label": 0}],
                np.ones((2, 2)))
  with pytest.raises(ValueError, match="not in the split"):
    w.add_chunk([{"name": "zz", "label": 0}], np.ones((1, 2)))
  with pytest.raises(ValueError, match=r"\(1, D\)"):
    w.add_chunk([{"name": "b", "label": 0}], np.ones((2, 2)))
  with pytest.raises(ValueError, match="feature length"):
    w.add_chunk([{"name": "b", "label": 0}], np.ones((1, 3)))
  with pytest.raises(ValueError, match="label"):
    w.add_chunk([{"name": "b", "label": 5}], np.ones((1, 2)))
  with pytest.raises(RuntimeError, match="another process"):
    store.SplitWriter(tmp_path, "s", settings=SETTINGS, task="multiclass",
                      classes=["x", "y"], names=names)
  w.close()
  other = dict(SETTINGS, scales=[256, 384, 512])
  with pytest.raises(store.SettingsMismatch, match="settings"):
    store.SplitWriter(tmp_path, "s", settings=other, task="multiclass",
                      classes=["x", "y"], names=names)
  with pytest.raises(store.SettingsMismatch, match="names_digest"):
    store.SplitWriter(tmp_path, "s", settings=SETTINGS, task="multiclass",
                      classes=["x", "y"], names=names + ["d"])
  # The refused reruns changed nothing.
  w3 = store.SplitWriter(tmp_path, "s", settings=SETTINGS,
                         task="multiclass", classes=["x", "y"], names=names)
  assert w3.done == ["a"]


def test_multilabel_round_trip_and_partial_split_error(tmp_path):
  recs = [{"name": "1", "positive": [0, 2], "difficult": [1]},
          {"name": "2", "positive": [], "difficult": []},
          {"name": "3", "positive": [1], "difficult": [], "error": "empty"}]
  store.write_split(tmp_path, "trainval", np.eye(2, 5), recs,
                    settings=SETTINGS, task="multilabel",
                    classes=["p", "q", "r"])
  got = store.load_split(tmp_path, "trainval")
  np.testing.assert_array_equal(got.positive, [[1, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(got.difficult, [[0, 1, 0], [0, 0, 0]])
  fpos, fdif = got.failed_labels()
  np.testing.assert_array_equal(fpos, [[0, 1, 0]])
  index = json.loads((tmp_path / "trainval.json").read_text())
  assert index["dim"] == 5 and index["failed"][0]["name"] == "3"
  with pytest.raises(ValueError, match="both positive and difficult"):
    store.write_split(tmp_path, "bad", np.eye(1, 5),
                      [{"name": "x", "positive": [0], "difficult": [0]}],
                      settings=SETTINGS, task="multilabel",
                      classes=["p", "q", "r"])
  w = store.SplitWriter(tmp_path, "test", settings=SETTINGS,
                        task="multilabel", classes=["p", "q", "r"])
  w.add_chunk([recs[1]], np.ones((1, 5)))
  w.close()
  with pytest.raises(FileNotFoundError, match="unfinished extraction"):
    store.load_split(tmp_path, "test")
