"""Reading a TFDS ArrayRecord record with an error that names its shard.

A truncated or bit-flipped shard makes the ArrayRecord reader fail for the
records of the damaged chunks, with a message that does not say which file
is damaged.  ``read_record`` re-raises such a failure as
``preprocess.DecodeError`` naming the shard file, the record and the fix,
so the input pipeline treats it as it treats an undecodable image: training
skips and counts it, evaluation counts it as an error (never drops it).
"""

from __future__ import annotations

import bisect

from vgg_jax import preprocess


def shard_of(source, index: int) -> str:
  """The shard file that holds record ``index`` of a TFDS data source."""
  try:
    from tensorflow_datasets.core.data_sources import base  # pylint: disable=g-import-not-at-top
    instructions = base.file_instructions(source.dataset_info, source.split)
  except Exception:  # pylint: disable=broad-except
    return "<unknown shard>"
  ends, total = [], 0
  for fi in instructions:
    total += int(fi.take if fi.take is not None and fi.take >= 0
                 else fi.examples_in_shard - fi.skip)
    ends.append(total)
  k = bisect.bisect_right(ends, int(index))
  return str(instructions[k].filename) if k < len(instructions) else (
      "<unknown shard>")


def read_record(source, index: int, what: str):
  """``source[index]``, or ``DecodeError`` naming the shard (``what``: the
  dataset and split, for the message)."""
  try:
    return source[int(index)]
  except Exception as e:  # pylint: disable=broad-except
    raise preprocess.DecodeError(
        f"record {index} of {what} cannot be read from shard "
        f"{shard_of(source, index)} ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}): the shard is truncated "
        "or corrupt; prepare the dataset again (python -m vgg_jax.data "
        "prepare)") from e


def check_shards_exist(source, what: str) -> None:
  """FileNotFoundError naming every shard file of the split that is missing
  (the reader opens shards lazily: without this, a missing shard would only
  show as every one of its records failing, one by one)."""
  import os  # pylint: disable=g-import-not-at-top
  try:
    from tensorflow_datasets.core.data_sources import base  # pylint: disable=g-import-not-at-top
    files = [str(fi.filename) for fi in base.file_instructions(
        source.dataset_info, source.split)]
  except Exception:  # pylint: disable=broad-except
    return
  missing = [f for f in files if not os.path.exists(f)]
  if missing:
    raise FileNotFoundError(
        f"{what}: {len(missing)} of {len(files)} shard files are missing: "
        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
        "prepare the dataset again (python -m vgg_jax.data prepare)")
