"""Descriptor files: one per split, written atomically and resumably.

A finished split is two files in the output folder:

* ``<split>.npy``: float32 (N, D), one row per decoded image, in index order;
* ``<split>.json``: the index: {"format", "split", "task", "classes",
  "settings", "dim", "images": [...], "failed": [...]}.  ``images[i]``
  describes row i: {"name", "label"} ("multiclass": label is a class
  position) or {"name", "positive", "difficult"} ("multilabel": lists of
  class positions; a class is "difficult" for an image when all its
  instances there are difficult, VOC's convention).  ``failed`` names every
  image that could not be decoded, with its labels and the reason: no image
  is ever dropped silently, and the classifiers count failed test images as
  misses (ranked last, never correct).

While a split is extracted, finished chunks go to ``<split>.parts/``
(``chunk_00000.npy`` + ``chunk_00000.json`` each, then ``manifest.json``
listing them); every file is written to a temporary name, fsync'd and
renamed, and the manifest is rewritten only after a chunk's files are in
place, so an interrupted run leaves only whole chunks behind.  One writer
per split at a time (an OS file lock; on several hosts, the process that
holds the gathered descriptors writes).  A rerun with
the same settings continues after the last finished chunk (``SplitWriter.
done`` / ``remaining``); different settings are refused.  ``finish()``
checks that every image was counted exactly once, writes the two files and
removes the parts.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import pathlib
import shutil
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vgg_jax import files

FORMAT = "vgg_jax.transfer.features/1"
TASKS = ("multiclass", "multilabel")


def _fsync_dir(path: pathlib.Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
  """Writes ``data`` atomically (vgg_jax.files), then fsyncs the folder."""
  path = files.atomic_write(path, lambda f: f.write(data))
  _fsync_dir(path.parent)


def atomic_write_json(path, obj: Any) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True)
                            + "\n").encode())


def atomic_write_text(path, text: str) -> None:
  atomic_write_bytes(path, text.encode())


def atomic_save_npy(path, array: np.ndarray) -> None:
  buf = io.BytesIO()
  np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
  atomic_write_bytes(path, buf.getvalue())


def _canonical(obj: Any) -> str:
  return json.dumps(obj, sort_keys=True)


def _check_record(rec: Mapping[str, Any], task: str, num_classes: int) -> dict:
  if "name" not in rec or not isinstance(rec["name"], str):
    raise ValueError(f"a record needs a string 'name', got {rec!r}")
  out = {"name": rec["name"]}
  if task == "multiclass":
    label = rec.get("label")
    if label is None or not 0 <= int(label) < num_classes:
      raise ValueError(f"{rec['name']}: multiclass records need 'label' in "
                       f"[0, {num_classes}), got {label!r}")
    out["label"] = int(label)
  else:
    for key in ("positive", "difficult"):
      vals = [int(v) for v in rec.get(key, ())]
      if any(not 0 <= v < num_classes for v in vals):
        raise ValueError(f"{rec['name']}: '{key}' class positions must be in "
                         f"[0, {num_classes}), got {vals}")
      out[key] = sorted(set(vals))
    both = set(out["positive"]) & set(out["difficult"])
    if both:
      raise ValueError(f"{rec['name']}: classes {sorted(both)} are both "
                       "positive and difficult; a class is difficult only "
                       "when all its instances are")
  if rec.get("error"):
    out["error"] = str(rec["error"])
  return out


class SettingsMismatch(ValueError):
  """A resumed extraction was started with other settings."""


class SplitWriter:
  """Collects one split's descriptors chunk by chunk; resumable.

  writer = SplitWriter(out_dir, "test", settings={...}, task="multilabel",
                       classes=[...], names=all_names_in_order)
  for chunk in batches(writer.remaining()):
    writer.add_chunk(records, features)  # features: rows of decoded records
  writer.finish()

  ``records``: one dict per image of the chunk, {"name", labels..., and
  "error": reason} for an image that could not be decoded (no feature row).
  ``settings``: JSON-able description of how descriptors are made (nets,
  weights, scales, aggregation, ...); a rerun must pass equal settings.
  ``names``: optional, every image of the split in extraction order;
  ``finish`` then requires exactly these, each once.
  """

  def __init__(self, out_dir, split: str, *, settings: Mapping[str, Any],
               task: str, classes: Sequence[str],
               names: Sequence[str] | None = None):
    if task not in TASKS:
      raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not split or "/" in split or split.startswith("."):
      raise ValueError(f"bad split name {split!r}")
    self.out_dir = pathlib.Path(out_dir)
    self.split = split
    self.task = task
    self.classes = [str(c) for c in classes]
    self.settings = json.loads(json.dumps(settings))  # JSON-able, a copy
    self.names = None if names is None else [str(n) for n in names]
    if self.names is not None and len(set(self.names)) != len(self.names):
      raise ValueError(f"split {split}: image names repeat")
    self.parts = self.out_dir / f"{split}.parts"
    header = {"format": FORMAT, "split": split, "task": task,
              "classes": self.classes, "settings": self.settings,
              "names_digest": None if self.names is None
              else _digest(self.names)}
    self._header = header
    manifest_path = self.parts / "manifest.json"
    if manifest_path.exists():
      manifest = json.loads(manifest_path.read_text())
      old = {k: manifest.get(k) for k in header}
      if _canonical(old) != _canonical(header):
        diff = sorted(k for k in header
                      if _canonical(old[k]) != _canonical(header[k]))
        raise SettingsMismatch(
            f"{manifest_path} was started with other {', '.join(diff)}: "
            f"was {[old[k] for k in diff]}, now {[header[k] for k in diff]}. "
            f"Rerun with the first run's settings, or delete {self.parts} to "
            "start over.")
      self._chunks = manifest["chunks"]
    else:
      self._chunks = []
    self._lock = self._take_lock()
    self._done: list[str] = []
    self.dim = None
    for c in self._chunks:
      self._done.extend(c["names"])
      if c.get("dim") is not None:
        self.dim = c["dim"]

  def _take_lock(self):
    """One writer per split: an exclusive lock on parts/.lock, which the OS
    releases when the process ends (a crash leaves no stale lock)."""
    self.parts.mkdir(parents=True, exist_ok=True)
    f = open(self.parts / ".lock", "a+b")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.close()
      raise RuntimeError(
          f"{self.parts} is being written by another process (or another "
          "writer in this one); on several hosts only one process writes "
          "(after gathering the descriptors)") from None
    return f

  def close(self) -> None:
    """Releases the split's lock (also on garbage collection / exit)."""
    if self._lock is not None:
      self._lock.close()
      self._lock = None

  @property
  def done(self) -> list[str]:
    """Names already in finished chunks, in order."""
    return list(self._done)

  def remaining(self) -> list[str]:
    """The names still to extract (needs ``names``), in order."""
    if self.names is None:
      raise ValueError("remaining() needs the split's names at construction")
    done = set(self._done)
    return [n for n in self.names if n not in done]

  def add_chunk(self, records: Sequence[Mapping[str, Any]],
                features) -> None:
    """Stores one finished chunk (atomically) and records it."""
    recs = [_check_record(r, self.task, len(self.classes)) for r in records]
    ok = [r for r in recs if "error" not in r]
    feats = np.asarray(features, np.float32)
    if feats.ndim != 2 or feats.shape[0] != len(ok):
      raise ValueError(f"features must be ({len(ok)}, D) for the chunk's "
                       f"{len(ok)} decoded images, got {feats.shape}")
    if not np.isfinite(feats).all():
      raise ValueError("features contain NaN or inf")
    if self.dim is not None and len(ok) and feats.shape[1] != self.dim:
      raise ValueError(f"feature length {feats.shape[1]} differs from the "
                       f"earlier chunks' {self.dim}")
    seen = set(self._done)
    names = [r["name"] for r in recs]
    again = sorted({n for n in names if n in seen} |
                   {n for n in names if names.count(n) > 1})
    if again:
      raise ValueError(f"images already counted: {again[:5]} "
                       f"({len(again)} in all)")
    if self.names is not None:
      unknown = sorted(set(names) - set(self.names))
      if unknown:
        raise ValueError(f"images not in the split's list: {unknown[:5]}")
    i = len(self._chunks)
    stem = f"chunk_{i:05d}"
    atomic_save_npy(self.parts / f"{stem}.npy", feats)
    atomic_write_json(self.parts / f"{stem}.json", recs)
    dim = int(feats.shape[1]) if len(ok) else self.dim
    self._chunks.append({"file": stem, "names": names, "count": len(recs),
                         "dim": dim})
    atomic_write_json(self.parts / "manifest.json",
                      {**self._header, "chunks": self._chunks})
    self._done.extend(names)
    if dim is not None:
      self.dim = dim

  def finish(self) -> pathlib.Path:
    """Writes <split>.npy and <split>.json; removes the parts folder."""
    if self.names is not None:
      missing = self.remaining()
      if missing:
        raise ValueError(f"split {self.split}: {len(missing)} images not yet "
                         f"extracted, e.g. {missing[:3]}")
    rows, images, failed = [], [], []
    for c in self._chunks:
      recs = json.loads((self.parts / f"{c['file']}.json").read_text())
      feats = np.load(self.parts / f"{c['file']}.npy")
      ok = [r for r in recs if "error" not in r]
      if [r["name"] for r in recs] != c["names"] or len(feats) != len(ok):
        raise ValueError(f"{self.parts / c['file']}: chunk files do not "
                         "match the manifest; delete the parts to start over")
      rows.append(feats)
      images.extend(ok)
      failed.extend(r for r in recs if "error" in r)
    dim = self.dim or 0
    x = (np.concatenate(rows) if rows else
         np.zeros((0, dim), np.float32)).astype(np.float32)
    index = {**{k: v for k, v in self._header.items() if k != "names_digest"},
             "dim": int(x.shape[1]),
             "images": images, "failed": failed}
    npy = self.out_dir / f"{self.split}.npy"
    atomic_save_npy(npy, x)
    # The index last: a split counts as finished once its index exists.
    atomic_write_json(self.out_dir / f"{self.split}.json", index)
    self.close()
    shutil.rmtree(self.parts)
    return npy


def _digest(names: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(names).encode()).hexdigest()


def write_split(out_dir, split: str, features, records: Sequence[Mapping],
                *, settings: Mapping[str, Any], task: str,
                classes: Sequence[str]) -> pathlib.Path:
  """One-shot write of a whole split (precomputed descriptors)."""
  w = SplitWriter(out_dir, split, settings=settings, task=task,
                  classes=classes, names=[r["name"] for r in records])
  if w.done:
    raise ValueError(f"{w.parts} holds an interrupted extraction; finish it "
                     "or delete it")
  w.add_chunk(records, features)
  return w.finish()


@dataclasses.dataclass
class SplitFeatures:
  """A stored split.  failed: images with no row (undecodable)."""
  features: np.ndarray            # (N, D) float32
  names: list[str]
  task: str
  classes: list[str]
  settings: dict
  labels: np.ndarray | None       # multiclass: (N,) int
  positive: np.ndarray | None     # multilabel: (N, K) bool
  difficult: np.ndarray | None    # multilabel: (N, K) bool
  failed: list[dict]

  def failed_labels(self):
    """Labels of the failed images in the layout of ``labels`` /
    (``positive``, ``difficult``)."""
    if self.task == "multiclass":
      return np.array([r["label"] for r in self.failed], np.int64)
    return _multilabel_matrix(self.failed, len(self.classes))


def _multilabel_matrix(recs: Iterable[Mapping], k: int):
  recs = list(recs)
  pos = np.zeros((len(recs), k), bool)
  dif = np.zeros((len(recs), k), bool)
  for i, r in enumerate(recs):
    pos[i, r["positive"]] = True
    dif[i, r["difficult"]] = True
  return pos, dif


def load_split(out_dir, split: str) -> SplitFeatures:
  """Reads a finished split; a clear error if it is missing or partial."""
  out_dir = pathlib.Path(out_dir)
  index_path = out_dir / f"{split}.json"
  npy_path = out_dir / f"{split}.npy"
  if not index_path.exists():
    parts = out_dir / f"{split}.parts"
    hint = (f" ({parts} holds an unfinished extraction: rerun it to finish)"
            if parts.exists() else "")
    raise FileNotFoundError(f"no finished split {split!r} in {out_dir}: "
                            f"{index_path} is missing{hint}")
  index = json.loads(index_path.read_text())
  if index.get("format") != FORMAT:
    raise ValueError(f"{index_path}: format {index.get('format')!r}, "
                     f"expected {FORMAT!r}")
  x = np.load(npy_path, allow_pickle=False)
  images = index["images"]
  if x.ndim != 2 or len(x) != len(images):
    raise ValueError(f"{npy_path}: shape {x.shape} does not match the "
                     f"index's {len(images)} images")
  k = len(index["classes"])
  labels = positive = difficult = None
  if index["task"] == "multiclass":
    labels = np.array([r["label"] for r in images], np.int64)
  else:
    positive, difficult = _multilabel_matrix(images, k)
  return SplitFeatures(features=x, names=[r["name"] for r in images],
                       task=index["task"], classes=index["classes"],
                       settings=index["settings"], labels=labels,
                       positive=positive, difficult=difficult,
                       failed=index["failed"])
