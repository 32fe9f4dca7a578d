"""The one error type of vgg_jax.weights, and how its messages list names."""

from __future__ import annotations

import re


class WeightsError(ValueError):
  """A weight file or pretrained directory is not what was expected."""


def natural_key(key: str):
  """Sort key putting features.2 before features.10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def short_list(items: list[str], n: int = 12) -> str:
  """The first ``n`` items, comma-separated, and how many there are in all."""
  s = ", ".join(items[:n])
  return s + (f" ... ({len(items)} in all)" if len(items) > n else "")
