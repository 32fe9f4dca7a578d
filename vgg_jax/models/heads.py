"""Heads: what the net computes on top of FC2 (paper §2.1, Appendices A, B).

The trunk of every net is the conv body plus FC1 and FC2 (``VGG.penultimate``,
a 4096-channel map on any input size).  A head maps that map, position by
position, to the outputs of one task:

* ``ClassHead``: FC3, the class scores (paper §2.1); it is the model's
  ``fc3`` attribute, so checkpoints and imported weights keep their names.
* ``LinearHead(num_outputs)``: any last layer stored as a 1x1 conv; Appendix
  A's box head is ``LinearHead(fc_width, 4)`` (single-class regression) or
  ``LinearHead(fc_width, 4 * C)`` (per-class regression).  Put it in place of
  FC3 with ``model.fc3 = head``: ``train.copy_matching_layers`` then copies
  every layer of a classification net except the last, as Appendix A does.
* ``DescriptorHead``: no parameters, the FC2 map itself: Appendix B's
  4096-D image descriptor (before pooling and normalisation).

A head is any ``nnx.Module`` with ``num_outputs`` and ``__call__(x)`` on an
NHWC map; the dense engine (``vgg_jax/eval/dense.py``) applies it at every
valid position of batched canvases.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from vgg_jax.models import init as init_lib


class LinearHead(nnx.Conv):
  """A last layer stored as a 1x1 convolution (FC on every position).

  Subclasses ``nnx.Conv`` so that its parameters are ``kernel``/``bias``
  directly under the attribute that holds it (``fc3/kernel``): the same
  names as before heads were modules, in checkpoints and weight files.
  """

  def __init__(self, in_features: int, num_outputs: int, *, init: str = "paper",
               name: str = "fc3", dtype: Any = None, param_dtype: Any = None,
               conv_general_dilated=None, rngs: nnx.Rngs):
    kwargs = {}
    if conv_general_dilated is not None:
      kwargs["conv_general_dilated"] = conv_general_dilated
    if param_dtype is not None:
      kwargs["param_dtype"] = param_dtype
    super().__init__(in_features, num_outputs, (1, 1), padding="VALID",
                     dtype=dtype,
                     kernel_init=init_lib.kernel_init(init, head=True),
                     bias_init=init_lib.bias_init(init, name), rngs=rngs,
                     **kwargs)
    self.num_outputs = num_outputs


class ClassHead(LinearHead):
  """FC3: class scores (N, h, w, num_classes) from the FC2 map."""


class DescriptorHead(nnx.Module):
  """Appendix B's descriptor: the FC2 map (after ReLU) as it is."""

  def __init__(self, fc_width: int):
    self.num_outputs = fc_width

  def __call__(self, x: jax.Array) -> jax.Array:
    return x
