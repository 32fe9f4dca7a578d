"""The tensors a net holds: its expected names and shapes, and building it.

Shared by the on-disk format (checks what it saves and loads) and the
converters (check what they import): the net of some ``create_model``
keyword arguments ("model kwargs") is built abstractly with
``nnx.eval_shape``, so nothing is allocated until the weights are known.
Tensors are compared as flat ``{"layer/var": array}`` dicts.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vgg_jax.weights.errors import WeightsError, natural_key, short_list

# The keyword arguments of create_model that fix the shapes of the weights.
MODEL_KWARGS = ("name", "num_classes", "width_mult", "fc_width", "head_window",
                "in_channels", "pool_rounding")


def check_model_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """``model_kwargs`` as a dict, or a WeightsError naming what is wrong."""
  if not isinstance(model_kwargs, Mapping) or "name" not in model_kwargs:
    raise WeightsError(
        f"model kwargs must be a dict with at least 'name' (the kwargs of "
        f"create_model: {', '.join(MODEL_KWARGS)}), got {model_kwargs!r}")
  unknown = set(model_kwargs) - set(MODEL_KWARGS)
  if unknown:
    raise WeightsError(
        f"model kwargs have unexpected keys {sorted(unknown)}; expected only "
        f"{list(MODEL_KWARGS)}")
  return dict(model_kwargs)


def abstract_model(model_kwargs: Mapping[str, Any], dtype: Any = None):
  """The net of ``model_kwargs`` with ShapeDtypeStructs: nothing allocated."""
  from flax import nnx
  from vgg_jax.models import create_model
  kwargs = dict(model_kwargs)
  if dtype is not None:
    kwargs["dtype"] = dtype
  return nnx.eval_shape(lambda: create_model(**kwargs, rngs=nnx.Rngs(0)))


def weight_state(model):
  """The variables a pretrained directory holds: Params and BatchStats."""
  from flax import nnx
  return nnx.state(model, (nnx.Param, nnx.BatchStat))


def pure_dict(state) -> dict[str, Any]:
  """An nnx.State as nested plain dicts of arrays."""
  from flax import nnx
  return nnx.to_pure_dict(state)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{a: {b: x}} -> {"a/b": x}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, key))
    else:
      out[key] = v
  return out


def expected_tensors(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """{"layer/var": ShapeDtypeStruct} of the net of ``model_kwargs``."""
  return flatten(pure_dict(weight_state(abstract_model(model_kwargs))))


def compare_shapes(expected: Mapping[str, Any], found: Mapping[str, Any],
                   what: str) -> None:
  """Raise one error listing every missing, unexpected and mis-shaped tensor.

  ``expected`` and ``found`` are flat {path: array-like with .shape}.
  """
  missing = sorted(set(expected) - set(found), key=natural_key)
  extra = sorted(set(found) - set(expected), key=natural_key)
  bad = [(k, tuple(expected[k].shape), tuple(found[k].shape))
         for k in sorted(set(expected) & set(found), key=natural_key)
         if tuple(expected[k].shape) != tuple(found[k].shape)]
  if not (missing or extra or bad):
    return
  lines = [f"{what} do not match the model:"]
  if missing:
    lines.append(f"  missing tensors: {short_list(missing)}")
  if extra:
    lines.append(f"  unexpected tensors: {short_list(extra)}")
  for k, e, f in bad[:20]:
    lines.append(f"  {k}: expected shape {e}, found {f}")
  if len(bad) > 20:
    lines.append(f"  ... and {len(bad) - 20} more mis-shaped tensors")
  raise WeightsError("\n".join(lines))


def check_float_dtypes(flat: Mapping[str, Any], what: str) -> None:
  """Weights must be floating point: an integer or boolean tensor is not a
  weight (a casting importer would silently turn it into one)."""
  bad = [(k, np.dtype(v.dtype)) for k, v in flat.items()
         if np.dtype(v.dtype).kind != "f"
         and np.dtype(v.dtype).name != "bfloat16"]
  if bad:
    bad.sort(key=lambda kv: natural_key(kv[0]))
    listed = short_list([f"{k} ({d})" for k, d in bad])
    raise WeightsError(
        f"{what}: expected floating-point weights (float16/bfloat16/32/64), found "
        f"{listed}. Export the state dict of the float model "
        "(model.float().state_dict()), not a quantised or corrupted one")


def model_from_flat(model_kwargs: Mapping[str, Any],
                    flat: Mapping[str, np.ndarray]):
  """Build the net of ``model_kwargs`` holding the weights ``flat``.

  Built abstractly, so the weights are allocated once (not initialised
  randomly first); every tensor's shape and dtype kind is checked.
  """
  import jax.numpy as jnp
  from flax import nnx
  model = abstract_model(model_kwargs)
  state = weight_state(model)
  expected = flatten(pure_dict(state))
  compare_shapes(expected, flat, "the imported tensors")
  check_float_dtypes(flat, "the imported tensors")
  nested: dict[str, Any] = {}
  for key, value in flat.items():
    layer, var = key.split("/")
    dtype = expected[key].dtype
    nested.setdefault(layer, {})[var] = jnp.asarray(value, dtype=dtype)
  nnx.replace_by_pure_dict(state, nested)
  nnx.update(model, state)
  return model
