"""Every config value checked before any compute, each error naming the field.

``validate(config)`` is called by ``vgg_jax.main`` (before the workdir is
locked or created) and at the start of ``train.train_and_evaluate``.  It
only reads the config (no data, no devices except their count), so a wrong
value costs seconds, not a failed job hours later.  Each message says which
field, what it holds, and what is expected; all problems are reported at
once.  Checks that need the data (split sizes) or the workdir (a resumed run
with a changed model) stay where that information is read.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

LR_SCHEDULES = ("plateau", "piecewise", "cosine")
OPTIMIZER_FORMS = ("caffe", "optax")
DTYPES = ("float32", "bfloat16")
DURATION_PREFIXES = ("warmup", "total", "eval_every", "checkpoint_every",
                     "log_every")


class ConfigError(ValueError):
  """One or more config fields hold values a run cannot use."""


def _is_number(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def problems(config, *, device_count: int | None = None) -> list[str]:
  """Every problem found, one line each (empty: the config is usable)."""
  out: list[str] = []

  def need(ok: bool, field: str, expected: str) -> bool:
    if not ok:
      try:
        value = config
        for part in field.split("."):
          value = value[part]
        got = repr(value)
      except (KeyError, AttributeError, TypeError):
        got = "<absent>"
      out.append(f"config.{field} = {got}: expected {expected}")
    return ok

  def number(field, value, *, lo=None, lo_open=False, hi=None, hi_open=False,
             integer=False, expected=None):
    kind = "an integer" if integer else "a number"
    bounds = []
    if lo is not None:
      bounds.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
      bounds.append(f"{'<' if hi_open else '<='} {hi}")
    text = expected or f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}"
    if not (_is_int(value) if integer else _is_number(value)):
      return need(False, field, text)
    ok = math.isfinite(float(value))
    if lo is not None:
      ok = ok and (value > lo if lo_open else value >= lo)
    if hi is not None:
      ok = ok and (value < hi if hi_open else value <= hi)
    return need(ok, field, text)

  m = config.model
  from vgg_jax.models import table  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import conv  # pylint: disable=g-import-not-at-top
  from vgg_jax.models import init  # pylint: disable=g-import-not-at-top
  try:
    table.canonical_name(m.name)
  except (ValueError, TypeError, AttributeError):
    need(False, "model.name",
         f"one of {sorted(table.MODEL_NAMES)} (or an alias such as "
         "'vgg16')")
  number("model.width_mult", m.width_mult, lo=0, lo_open=True)
  number("model.fc_width", m.fc_width, lo=1, integer=True)
  if m.head_window is not None:
    number("model.head_window", m.head_window, lo=1, integer=True)
  need(m.init in init.INIT_SCHEMES, "model.init",
       f"one of {list(init.INIT_SCHEMES)}")
  number("model.dropout_rate", m.dropout_rate, lo=0, hi=1, hi_open=True)
  need(m.dtype in DTYPES, "model.dtype", f"one of {list(DTYPES)}")
  need(m.conv_impl in conv.CONV_IMPLS, "model.conv_impl",
       f"one of {list(conv.CONV_IMPLS)}")

  number("seed", config.seed, lo=0, integer=True)
  shards = None
  if number("mesh_model_axis", config.mesh_model_axis, lo=1, integer=True) \
      and device_count:
    if need(device_count % config.mesh_model_axis == 0, "mesh_model_axis",
            f"a divisor of the {device_count} devices"):
      shards = device_count // config.mesh_model_axis
  for field in ("batch_size", "eval_batch_size"):
    if number(field, config[field], lo=1, integer=True) and shards:
      need(config[field] % shards == 0, field,
           f"a multiple of the {shards} data-parallel devices (each takes "
           f"an equal share of the global batch), e.g. "
           f"{max(shards, config[field] // shards * shards)}")
  number("lr", config.lr, lo=0, expected="a learning rate >= 0 (the paper "
         "starts at 1e-2)")
  need(config.lr_schedule in LR_SCHEDULES, "lr_schedule",
       f"one of {list(LR_SCHEDULES)}")
  number("lr_factor", config.lr_factor, lo=0, lo_open=True, hi=1)
  bounds = tuple(config.lr_boundaries_epochs or ())
  need(all(_is_number(b) and b >= 0 for b in bounds)
       and list(bounds) == sorted(bounds), "lr_boundaries_epochs",
       "increasing epochs >= 0")
  o = config.optimizer
  number("optimizer.momentum", o.momentum, lo=0, hi=1, hi_open=True)
  number("optimizer.weight_decay", o.weight_decay, lo=0)
  need(o.form in OPTIMIZER_FORMS, "optimizer.form",
       f"one of {list(OPTIMIZER_FORMS)}")
  p = config.plateau
  number("plateau.patience", p.patience, lo=1, integer=True)
  number("plateau.min_delta", p.min_delta, lo=0)
  number("plateau.max_drops", p.max_drops, lo=0, integer=True)
  for prefix in DURATION_PREFIXES:
    for unit in ("steps", "epochs", "examples"):
      value = config.get(f"{prefix}_{unit}")
      if value is not None:
        number(f"{prefix}_{unit}", value, lo=0, integer=unit != "epochs")
  number("keep_checkpoints", config.keep_checkpoints, lo=1, integer=True)
  if config.stop_after_steps is not None:
    number("stop_after_steps", config.stop_after_steps, lo=1, integer=True)
  if config.get("debug_nonfinite_at_step") is not None:
    number("debug_nonfinite_at_step", config.debug_nonfinite_at_step, lo=1,
           integer=True)

  d = config.data
  # The registered sources (vgg_jax/input_pipeline.py's register_source).
  from vgg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  sources = input_pipeline.source_names()
  need(d.source in sources, "data.source", f"one of {list(sources)}")
  crop_ok = number("data.crop_size", d.crop_size, lo=1, integer=True)
  s = d.train_scale
  scales = [s] if _is_number(s) else list(s) if isinstance(
      s, (list, tuple)) else None
  if scales is None or len(scales) not in (1, 2) or not all(
      _is_int(v) and v > 0 for v in scales) or scales != sorted(scales):
    need(False, "data.train_scale",
         "an int S or a pair [S_min, S_max] with S_min <= S_max (paper "
         "§3.1: 256, 384 or [256, 512])")
  elif crop_ok:
    pad = d.train_pad if _is_int(d.train_pad) else 0
    need(min(scales) + 2 * pad >= d.crop_size, "data.train_scale",
         f"a training scale S (+ 2*data.train_pad = {2 * pad}) >= "
         f"data.crop_size {d.crop_size}: the crop is taken from the image "
         "rescaled to S (paper §3.1)")
  if number("data.eval_scale", d.eval_scale, lo=1, integer=True) and crop_ok:
    need(d.eval_scale >= d.crop_size, "data.eval_scale",
         f"a test scale Q >= data.crop_size {d.crop_size} (paper §3.2)")
  number("data.train_pad", d.train_pad, lo=0, integer=True)
  number("data.image_channels", d.image_channels,
         expected="1 (grey) or 3 (RGB)")
  if _is_int(d.image_channels):
    need(d.image_channels in (1, 3), "data.image_channels",
         "1 (grey) or 3 (RGB)")
  channels = d.image_channels if d.image_channels in (1, 3) else None
  for field in ("mean_rgb", "std_rgb"):
    values = tuple(d[field]) if isinstance(d[field], (list, tuple)) else None
    need(values is not None and all(_is_number(v) for v in values)
         and (channels is None or len(values) in (1, channels))
         and (field == "mean_rgb" or all(v > 0 for v in values)),
         f"data.{field}",
         f"{channels or 'one per channel'} number(s)"
         + (", each > 0" if field == "std_rgb" else ""))
  mean_image = d.get("mean_image", "")
  if need(isinstance(mean_image, str), "data.mean_image",
          "a path to a .npy mean image (python -m vgg_jax.data stats "
          "--mean_image FILE) or '' for none"):
    if mean_image:
      need(d.image_channels == 3 and d.train_pad == 0, "data.mean_image",
           "'' with grey images or a zero border (data.image_channels=3 "
           "and data.train_pad=0 are needed for a per-pixel mean image)")
  number("data.pca_std", d.pca_std, lo=0)
  number("data.multicrop_grid", d.multicrop_grid, lo=1, integer=True)
  number("data.num_workers", d.num_workers, lo=0, integer=True)
  number("data.num_threads", d.num_threads, lo=1, integer=True)
  number("data.prefetch_buffer_size", d.prefetch_buffer_size, lo=1,
         integer=True)
  # A §3.2 protocol evaluator runs only after training: a test scale it
  # cannot use must fail here, not after the last epoch.
  from vgg_jax.eval.posteriors import PROTOCOLS  # pylint: disable=g-import-not-at-top
  for name, entry in (config.get("evals") or {}).items():
    if not hasattr(entry, "get") or entry.get("type") != "protocol":
      continue
    need(entry.get("protocol", "dense") in PROTOCOLS,
         f"evals.{name}.protocol", f"one of {list(PROTOCOLS)}")
    q = entry.get("scales") or (d.eval_scale,)
    if crop_ok and isinstance(q, (list, tuple)):
      need(all(_is_int(v) and v >= d.crop_size for v in q),
           f"evals.{name}.scales",
           f"test scales Q >= data.crop_size {d.crop_size} (paper §3.2: "
           "the image is rescaled so that its shorter side is Q)")
  if config.init_from and config.init_from_a:
    out.append(f"config.init_from = {config.init_from!r} and "
               f"config.init_from_a = {config.init_from_a!r}: expected at "
               "most one of them")
  return out


def validate(config, *, device_count: int | None = None) -> None:
  """Raises ``ConfigError`` listing every problem (nothing is computed)."""
  found = problems(config, device_count=device_count)
  if found:
    raise ConfigError(
        "the config cannot be run (nothing was computed):\n  "
        + "\n  ".join(found)
        + "\nFix the config file or the --config.FIELD=VALUE flags.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a clear message for a bad ``--config.X``.

  For ``app.run(main, flags_parser=parse_flags)``.  ml_collections raises a
  bare ``AttributeError: "'lerning_rate'"`` (with a traceback) for a field
  the locked config does not have; this says which flag, that the field does
  not exist, and what the nearest existing fields are.
  """
  import difflib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    import re  # pylint: disable=g-import-not-at-top
    found = re.findall(r"[A-Za-z_]\w*", str(e))
    name = found[0] if found else str(e)
    bad = [a for a in argv[1:] if a.startswith("--config.")
           and a[len("--config."):].split("=")[0].split(".")[-1] == name]
    known = _known_fields(argv)
    near = difflib.get_close_matches(
        ".".join(p for p in (bad[0][len("--config."):].split("=")[0]
                             if bad else name,) if p), known, n=3)
    sys.stderr.write(
        f"FATAL: config field {name!r} does not exist"
        + (f" (flag {bad[0]})" if bad else "")
        + ": expected an existing field of the config file (configs are "
        "locked, so a misspelt field is an error, not a silently ignored "
        "setting)"
        + (f"; did you mean {', '.join(near)}?" if near else "") + "\n")
    sys.exit(1)
  except (TypeError, ValueError) as e:
    sys.stderr.write(f"FATAL: a --config flag has a value of the wrong type "
                     f"or form: {e}\n")
    sys.exit(1)


def _known_fields(argv: list[str]) -> list[str]:
  """The dotted field names of the config file named by --config (or [])."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  if not path:
    return []
  try:
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_vgg_jax_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
  except Exception:  # pylint: disable=broad-except
    return []

  def walk(d, prefix=""):
    for k, v in d.items():
      if hasattr(v, "items"):
        yield from walk(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}"
  return sorted(walk(config))
