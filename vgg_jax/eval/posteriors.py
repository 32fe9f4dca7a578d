"""Per-example posteriors of a split, saved, loaded and combined (paper §3.2:
scales, protocols and models averaged; Table 6's ensembles)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from vgg_jax import files
# "tencrop": Krizhevsky et al.'s 10-patch test (the AlexNet baseline).
PROTOCOLS = ("centre", "dense", "multicrop", "dense+multicrop", "tencrop")
# The views a protocol needs at every scale.
PROTOCOL_PARTS = {"centre": ("centre",), "dense": ("dense",),
                  "multicrop": ("multicrop",),
                  "dense+multicrop": ("dense", "multicrop"),
                  "tencrop": ("tencrop",)}


def protocol_parts(protocol: str) -> tuple[str, ...]:
  protocol = "centre" if protocol == "center" else protocol
  if protocol not in PROTOCOL_PARTS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of "
                     f"{', '.join(PROTOCOLS)}")
  return PROTOCOL_PARTS[protocol]


@dataclasses.dataclass
class SplitPosteriors:
  """Soft-max posteriors of one model for every example of a split.

  ``posteriors[f"{part}@{Q}"]`` is (N, classes) float32 for part in
  {"centre", "dense", "multicrop"}; rows of examples that could not be
  decoded are NaN (they count as errors).  ``names[i]``/``labels[i]``
  identify example i (its position in the split).
  """
  names: np.ndarray
  labels: np.ndarray
  posteriors: dict[str, np.ndarray]
  failed: dict[str, str]  # name -> reason, images that could not be decoded
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes an .npz (atomically): names, labels, posteriors, failures."""
    path = pathlib.Path(path)
    arrays = {"names": self.names.astype(str), "labels": self.labels,
              "failed_names": np.asarray(list(self.failed), str),
              "failed_reasons": np.asarray(list(self.failed.values()), str),
              "meta": np.asarray(json.dumps(self.meta))}
    for key, value in self.posteriors.items():
      arrays["posteriors/" + key] = value
    files.atomic_write(path, lambda f: np.savez(f, **arrays))
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SplitPosteriors":
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"posteriors file {path} does not exist (write "
                              "one with `python -m vgg_jax.evaluate ... "
                              "--save-posteriors`)")
    with np.load(path, allow_pickle=False) as z:
      missing = {"names", "labels", "meta"} - set(z.files)
      if missing:
        raise ValueError(f"{path} is not a vgg_jax posteriors file (missing "
                         f"{sorted(missing)})")
      posteriors = {k[len("posteriors/"):]: z[k] for k in z.files
                    if k.startswith("posteriors/")}
      failed = dict(zip(z["failed_names"].tolist(),
                        z["failed_reasons"].tolist()))
      return cls(z["names"], z["labels"], posteriors, failed,
                 json.loads(str(z["meta"])))


def combine(results: list[SplitPosteriors], protocol: str,
            scales: list[list[int]] | list[int] | None = None) -> np.ndarray:
  """The posterior of a protocol: mean over parts, scales and models.

  ``scales``: one list for every model, or a list per model; None uses each
  model's stored scales.  Rows that are NaN in any model (decode failures)
  stay NaN.
  """
  parts = protocol_parts(protocol)
  if not results:
    raise ValueError("no models to combine")
  first = results[0]
  per_model = []
  for i, r in enumerate(results):
    if not np.array_equal(r.names, first.names) or not np.array_equal(
        r.labels, first.labels):
      raise ValueError(
          f"model {i} was evaluated on different examples than model 0 (names"
          " or labels differ); an ensemble needs the same split")
    qs = scales
    if qs is None:
      qs = r.meta.get("scales")
    elif qs and isinstance(qs[0], (list, tuple)):
      qs = qs[i]
    part_means = []
    for p in parts:
      keys = [f"{p}@{int(q)}" for q in qs]
      missing = [k for k in keys if k not in r.posteriors]
      if missing:
        raise ValueError(
            f"model {i} has no posteriors for {missing} (has "
            f"{sorted(r.posteriors)}); evaluate it with that protocol and "
            "those scales")
      part_means.append(np.mean([r.posteriors[k] for k in keys], axis=0))
    per_model.append(np.mean(part_means, axis=0))
  return np.mean(per_model, axis=0)


