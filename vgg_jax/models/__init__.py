"""The paper's nets (Table 1), the §4.1 shallow control and AlexNet.

    from flax import nnx
    from vgg_jax.models import create_model
    model = create_model("D", num_classes=1000, rngs=nnx.Rngs(0))
    logits = model(images)               # (N, 1000) on 224x224 inputs
    scores = model.score_map(images)     # (N, h, w, 1000) on any size >= 224
    feats, hw = model.features(canvas, valid_hw=hw)  # batched canvases
    fc2 = model.penultimate(images)      # (N, h, w, 4096): Appendix B

Heads (FC3, a box head, the FC2 descriptor) are in models/heads.py; the
geometry (output size, stride, window) in models/geometry.py.
"""

from __future__ import annotations

import math
from typing import Any

import jax

import jax.numpy as jnp
from flax import nnx

from vgg_jax.models.init import INIT_SCHEMES, init_from_a
from vgg_jax.models.lrn import local_response_norm
from vgg_jax.models.geometry import (map_size, map_stride, min_input_size,
                                     output_size)
from vgg_jax.models.heads import (ClassHead, DescriptorHead, LinearHead)
from vgg_jax.models.table import (MODEL_NAMES, PAPER_NETS, POOL_ROUNDINGS, NetSpec,
                                  canonical_name, count_macs, count_params,
                                  net_spec)
from vgg_jax.models.vgg import VGG

__all__ = [
    "VGG", "create_model", "abstract_model", "MODEL_NAMES", "PAPER_NETS",
    "INIT_SCHEMES", "NetSpec", "net_spec", "canonical_name", "count_params",
    "count_macs", "output_size", "init_from_a", "local_response_norm",
    "param_count", "map_size", "map_stride", "min_input_size", "ClassHead",
    "DescriptorHead", "LinearHead", "POOL_ROUNDINGS", "model_kwargs_from_config", "model_runtime_kwargs",
]


def create_model(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs,
                 width_mult: float = 1.0, fc_width: int = 4096,
                 head_window: int | None = None, init: str | None = None,
                 in_channels: int = 3, dtype: Any = None,
                 param_dtype: Any = jnp.float32,
                 dropout_rate: float = 0.5, conv_impl: str = "auto",
                 pool_rounding: str = "floor") -> VGG:
  """Build a net by name ('A' ... 'E', 'A-LRN', 'B-shallow', '*-BN', 'alexnet').

  Args:
    name: a name of ``MODEL_NAMES`` or an alias ('vgg16' is 'D').
    num_classes: outputs of FC3.
    rngs: ``nnx.Rngs`` for the initial weights.
    width_mult: scales every conv width (64 -> 64 * width_mult ...), for
      small experiments; 1.0 is the paper.
    fc_width: width of FC1 and FC2 (4096 in the paper).
    head_window: side of the feature map FC1 covers: 7 for 224 crops (6 for
      AlexNet); for 32x32 inputs use 1.
    init: 'paper' (N(0, 0.01)), 'glorot', 'he' or 'alexnet'; defaults to
      'alexnet' for AlexNet and 'paper' otherwise.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay param_dtype.
    conv_impl: 'xla' (lax.conv), 'im2col' (patches x matrix, faster on
      CPUs) or 'auto' (im2col on CPU, xla elsewhere).  Same weights, same
      results; only speed and memory differ (models/conv.py).
    pool_rounding: 'floor' (VALID, the training default) or 'ceil' (Caffe's
      pooling, a partial window at the edge; what the released VGG weights
      were trained and evaluated with).  Same weights; only the pooled sizes
      differ, and only where (side - window) is not a multiple of the stride.
  """
  spec = net_spec(name, width_mult=width_mult, fc_width=fc_width,
                  head_window=head_window, pool_rounding=pool_rounding)
  if init is None:
    init = "alexnet" if spec.name == "alexnet" else "paper"
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  return VGG(spec, num_classes=num_classes, in_channels=in_channels, init=init,
             dtype=dtype, param_dtype=param_dtype, dropout_rate=dropout_rate,
             conv_impl=conv_impl, rngs=rngs)


def model_kwargs_from_config(model_cfg, *, num_classes: int,
                             in_channels: int) -> dict[str, Any]:
  """The architecture arguments of ``create_model`` from ``config.model``.

  The dataset decides classes and channels.  Only the architecture is here
  (what rebuilds the same parameter tree, stored in checkpoints' metadata);
  init, dtype, dropout and conv_impl are run-time choices
  (``model_runtime_kwargs``).
  """
  kw = dict(name=model_cfg.name, num_classes=num_classes,
            width_mult=model_cfg.width_mult, fc_width=model_cfg.fc_width,
            in_channels=in_channels)
  if model_cfg.get("head_window") is not None:
    kw["head_window"] = model_cfg.head_window
  # Stored only when not the default, so older checkpoints' metadata (which
  # has no such key) still means floor.
  if model_cfg.get("pool_rounding", "floor") != "floor":
    kw["pool_rounding"] = model_cfg.pool_rounding
  return kw


def model_runtime_kwargs(model_cfg, *, dtype: Any = None) -> dict[str, Any]:
  """The run-time ``create_model`` arguments of ``config.model``."""
  return dict(init=model_cfg.init, dtype=dtype,
              dropout_rate=model_cfg.dropout_rate,
              conv_impl=model_cfg.conv_impl)


def abstract_model(name: str, **kwargs) -> VGG:
  """The model with ShapeDtypeStructs instead of arrays: nothing allocated."""
  return nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **kwargs))


def param_count(model: VGG) -> int:
  """Number of trainable parameters of a (possibly abstract) model."""
  return sum(math.prod(p.shape)
             for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
