"""Convolution as patches x matrix ("im2col"), for CPUs.

XLA's CPU convolution (forward and both gradients) reaches well under half of
the machine's matrix-product peak on VGG's 3x3 layers, while its matrix
product runs near peak.  Gathering the k*k shifted views of the input into one
(N, H, W, k*k*C) tensor turns each conv into one large matrix product, and
autodiff turns its gradients into matrix products and shifted adds.  The cost
is memory: the patch tensor is k*k times the input, kept for the backward
pass (block1 of a 224 VGG: 0.9 GB at batch 8), which is why accelerators keep
XLA's own convolution (cuDNN and the TPU's convolution units need no patches).

``conv_general_dilated`` below has the signature of
``jax.lax.conv_general_dilated`` so that it plugs into ``nnx.Conv`` unchanged;
the weights and the numbers are the same, only the schedule differs
(``tests/test_models.py`` checks outputs and gradients against lax).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "im2col")


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto' -> 'im2col' on CPU backends, 'xla' on GPU/TPU."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got "
                     f"{conv_impl!r}")
  if conv_impl == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  return conv_impl


def _explicit_padding(padding, in_sizes, kernel_sizes, strides):
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(in_sizes, kernel_sizes, strides, padding)
  return [tuple(p) for p in padding]


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, preferred_element_type=None,
                         **kwargs):
  """NHWC x HWIO convolution as one matrix product (2-D, no dilation)."""
  plain = (lhs.ndim == 4 and feature_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and kwargs.get("out_sharding") is None)
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if not plain or dn != jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  kh, kw, c_in, c_out = rhs.shape
  sh, sw = window_strides
  pads = _explicit_padding(padding, lhs.shape[1:3], (kh, kw), (sh, sw))
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  if kh == kw == 1 and sh == sw == 1:
    patches = x
  else:
    # (i, j, c) order, the row-major order of the HWIO kernel's first 3 axes.
    patches = jnp.concatenate([
        x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
        for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(patches, rhs.reshape(kh * kw * c_in, c_out),
                 precision=precision,
                 preferred_element_type=preferred_element_type)
