"""Convolution schedules for CPUs: the same convolution as matrix products.

XLA's CPU convolution (forward and both gradients) reaches well under half of
the machine's matrix-product peak on VGG's 3x3 layers, while its matrix
product runs near peak.  Each schedule here rewrites an NHWC x HWIO
convolution as matrix products of shifted views of the (padded) input, and
autodiff turns its gradients into matrix products and shifted adds:

* ``im2col``: the k*k shifted views gathered into one (N, H, W, k*k*C)
  patch tensor, one large product (contraction k*k*C).  The fastest on the
  AVX2 machine this project was first tuned on.  The cost is memory: the
  patch tensor is k*k times the input, kept for the backward pass (block1
  of a 224 VGG: 0.9 GB at batch 8).
* ``im2col_remat``: the same product, but the patch tensor is rebuilt in
  the backward pass instead of kept (``jax.checkpoint``): less memory
  traffic and footprint, one more gather.
* ``rows``: the k horizontal shifts gathered (k*C wide, k times the input),
  then k products, one per kernel row, over row-shifted views, summed.
* ``taps``: no gathered tensor at all: k*k products of shifted views with
  the kernel's (C, O) slices, summed (contraction C only).
* ``winograd``: 3x3 stride-1 layers (all of VGG's but AlexNet's) as
  Winograd's F(2x2, 3x3): 16 matrix products over 4x4 input tiles
  (contraction C) and cheap tile transforms, 16/36 of im2col's
  multiplications; other layers fall back to im2col.  Its rounding differs
  from a direct sum's by a few float32 ulps of the tile transforms.

Which is fastest depends on the layer's shape and on the CPU (cache sizes,
vector width), so ``conv_impl="autotune"`` (``models/conv_autotune.py``)
times them per shape on the machine that runs the step and caches the
choice; ``"auto"`` uses it on CPUs.  Every schedule has the signature of
``jax.lax.conv_general_dilated`` so that it plugs into ``nnx.Conv``
unchanged; the weights and the numbers are the same, only the schedule
differs (``tests/test_conv_schedules.py`` checks outputs and gradients
against lax).  Anything but a plain 2-D NHWC/HWIO convolution without
dilation or groups goes to lax unchanged.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# The schedules of one convolution, in the order autotune prefers them on a
# tie (the earlier, the better measured elsewhere).
SCHEDULES = ("im2col", "xla", "im2col_remat", "rows", "taps", "winograd")
# Accepted values of ``model.conv_impl``: "auto" (autotune on CPUs, XLA's
# convolution on GPUs/TPUs), "autotune" (anywhere), or one schedule pinned.
CONV_IMPLS = ("auto", "autotune") + SCHEDULES
# ``VGG_JAX_CONV_AUTOTUNE=0`` makes "auto" mean "im2col" on CPUs (the choice
# before autotuning existed); the test suite sets it so that no test times
# convolutions unless it asks to.
AUTOTUNE_ENV = "VGG_JAX_CONV_AUTOTUNE"


def autotune_enabled() -> bool:
  value = os.environ.get(AUTOTUNE_ENV, "1").strip().lower()
  if value in ("0", "false", "no", "off"):
    return False
  if value in ("", "1", "true", "yes", "on"):
    return True
  raise ValueError(f"{AUTOTUNE_ENV}={value!r}: expected 1 (autotune CPU "
                   "convolutions, the default) or 0 (im2col on CPUs)")


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto' -> 'autotune' on CPU backends ('im2col' with autotuning off),
  'xla' on GPU/TPU; anything else is returned after validation."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got "
                     f"{conv_impl!r}")
  if conv_impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    # Several processes must compile the same program; a per-host timing
    # could differ, so multi-process CPU runs keep the fixed choice.
    if autotune_enabled() and jax.process_count() == 1:
      return "autotune"
    return "im2col"
  return conv_impl


def explicit_padding(padding, in_sizes, kernel_sizes, strides):
  """lax's padding argument (string or pairs) as ((lo, hi), (lo, hi))."""
  if isinstance(padding, str):
    return tuple(jax.lax.padtype_to_pads(in_sizes, kernel_sizes, strides,
                                         padding))
  return tuple(tuple(int(v) for v in p) for p in padding)


def is_plain(lhs, rhs, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count: int = 1,
             **kwargs) -> bool:
  """A 2-D NHWC x HWIO convolution without dilation or groups (what the
  schedules rewrite; anything else goes to lax)."""
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(
      d != 1 for d in (rhs_dilation or (1, 1))):
    return False
  if kwargs.get("out_sharding") is not None:
    return False
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return dn == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                              ("NHWC", "HWIO", "NHWC"))


def _lax(lhs, rhs, window_strides, padding, lhs_dilation=None,
         rhs_dilation=None, dimension_numbers=None,
         feature_group_count: int = 1, precision=None,
         preferred_element_type=None, **kwargs):
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, precision=precision,
      preferred_element_type=preferred_element_type, **kwargs)


def _padded(lhs, rhs, window_strides, padding):
  """The zero-padded input and the output's spatial size."""
  kh, kw = rhs.shape[:2]
  sh, sw = window_strides
  pads = explicit_padding(padding, lhs.shape[1:3], (kh, kw), (sh, sw))
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  return x, out_h, out_w


def _view(x, i, j, sh, sw, out_h, out_w):
  """The input seen by kernel tap (i, j): rows i, i+sh, ..., cols j, ..."""
  return x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]


def _im2col(x, rhs, window_strides, out_h, out_w, precision, pet):
  kh, kw, c_in, c_out = rhs.shape
  sh, sw = window_strides
  if kh == kw == 1 and sh == sw == 1:
    patches = x
  else:
    # (i, j, c) order, the row-major order of the HWIO kernel's first 3 axes.
    patches = jnp.concatenate(
        [_view(x, i, j, sh, sw, out_h, out_w)
         for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(patches, rhs.reshape(kh * kw * c_in, c_out),
                 precision=precision, preferred_element_type=pet)


def _rows(x, rhs, window_strides, out_h, out_w, precision, pet):
  kh, kw, c_in, c_out = rhs.shape
  sh, sw = window_strides
  # Every input row, the kw horizontal shifts side by side: (N, Hp, OW, kw*C).
  wide = jnp.concatenate(
      [x[:, :, j:j + sw * (out_w - 1) + 1:sw, :] for j in range(kw)], axis=-1)
  out = None
  for i in range(kh):
    part = jnp.dot(wide[:, i:i + sh * (out_h - 1) + 1:sh],
                   rhs[i].reshape(kw * c_in, c_out), precision=precision,
                   preferred_element_type=pet)
    out = part if out is None else out + part
  return out


def _taps(x, rhs, window_strides, out_h, out_w, precision, pet):
  kh, kw = rhs.shape[:2]
  sh, sw = window_strides
  out = None
  for i in range(kh):
    for j in range(kw):
      part = jnp.dot(_view(x, i, j, sh, sw, out_h, out_w), rhs[i, j],
                     precision=precision, preferred_element_type=pet)
      out = part if out is None else out + part
  return out


# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms
# for Convolutional Neural Networks", 2016): each 2x2 output tile from a 4x4
# input tile, Y = A^T [(G g G^T) * (B^T d B)] A, with 16 multiplications per
# (input, output) channel pair instead of 36.  The 16 products per tile
# become 16 matrix products over all tiles (contraction C), in the forward
# pass and, through autodiff, in both gradients.  The transforms are sums of
# strided views, which XLA fuses.  (F(4x4, 3x3), 36/144 with larger
# constants, measured 1.1-2.6x slower than im2col on VGG's layers here
# (2-core Zen 4): its 36 strided views and their transforms cost more than
# the products saved.)
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2),
               (0, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(matrix, items):
  """matrix @ items for a list of arrays (rows of small constants)."""
  out = []
  for row in matrix:
    acc = None
    for coef, item in zip(row, items):
      if coef:
        term = item if coef == 1 else -item if coef == -1 else coef * item
        acc = term if acc is None else acc + term
    out.append(acc)
  return out


def _winograd(x, rhs, window_strides, out_h, out_w, precision, pet):
  kh, kw, c_in, c_out = rhs.shape
  if (kh, kw) != (3, 3) or tuple(window_strides) != (1, 1):
    return _im2col(x, rhs, window_strides, out_h, out_w, precision, pet)
  n = x.shape[0]
  th, tw = -(-out_h // 2), -(-out_w // 2)  # 2x2 output tiles
  # Odd sides: a zero row/column more, cropped off at the end.
  x = jnp.pad(x, ((0, 0), (0, 2 * th + 2 - x.shape[1]),
                  (0, 2 * tw + 2 - x.shape[2]), (0, 0)))
  # d[i][j]: element (i, j) of every 4x4 input tile, (N, th, tw, C).
  d = [[x[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)]
       for i in range(4)]
  # B^T d B: along the tile's rows, then its columns.
  cols = [_combine(_WINOGRAD_BT, [d[i][j] for i in range(4)])
          for j in range(4)]  # cols[j][a]
  v = [_combine(_WINOGRAD_BT, [cols[j][a] for j in range(4)])
       for a in range(4)]  # v[a][b]
  v = jnp.stack([v[a][b] for a in range(4) for b in range(4)])
  v = v.reshape(16, n * th * tw, c_in)
  g = jnp.asarray(_WINOGRAD_G, rhs.dtype)
  u = jnp.einsum("ai,ijco,bj->abco", g, rhs, g,
                 precision=jax.lax.Precision.HIGHEST)
  prod = jax.lax.dot_general(
      v, u.reshape(16, c_in, c_out), (((2,), (1,)), ((0,), (0,))),
      precision=precision, preferred_element_type=pet)
  prod = prod.reshape(4, 4, n, th, tw, c_out)
  # A^T M A: along rows, then columns; y[p][q] is (N, th, tw, O).
  cols = [_combine(_WINOGRAD_AT, [prod[a, b] for a in range(4)])
          for b in range(4)]  # cols[b][p]
  y = [_combine(_WINOGRAD_AT, [cols[b][p] for b in range(4)])
       for p in range(2)]
  y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)
  # (N, th, 2, tw, 2, O) -> (N, 2 th, 2 tw, O)
  return y.reshape(n, 2 * th, 2 * tw, c_out)[:, :out_h, :out_w]


def _as_schedule(body) -> Callable:
  def conv(lhs, rhs, window_strides: Sequence[int], padding,
           lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
           feature_group_count: int = 1, precision=None,
           preferred_element_type=None, **kwargs):
    if not is_plain(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, **kwargs):
      return _lax(lhs, rhs, window_strides, padding, lhs_dilation,
                  rhs_dilation, dimension_numbers, feature_group_count,
                  precision, preferred_element_type, **kwargs)
    strides = tuple(window_strides)
    x, out_h, out_w = _padded(lhs, rhs, strides, padding)
    return body(x, rhs, strides, out_h, out_w, precision,
                preferred_element_type)
  conv.__doc__ = (f"NHWC x HWIO convolution, {body.__name__[1:]} schedule "
                  "(models/conv.py); lax.conv_general_dilated's signature.")
  return conv


def _im2col_remat_body(x, rhs, window_strides, out_h, out_w, precision, pet):
  # Nothing inside is saved for the backward pass but the inputs: the patch
  # tensor is gathered again there (the forward product is not redone: its
  # output is not needed by either gradient).
  fn = jax.checkpoint(
      lambda x, rhs: _im2col(x, rhs, window_strides, out_h, out_w, precision,
                             pet),
      policy=jax.checkpoint_policies.nothing_saveable)
  return fn(x, rhs)


_im2col_remat_body.__name__ = "_im2col_remat"

conv_general_dilated = _as_schedule(_im2col)  # the "im2col" schedule
_SCHEDULE_FNS = {
    "xla": jax.lax.conv_general_dilated,
    "im2col": conv_general_dilated,
    "im2col_remat": _as_schedule(_im2col_remat_body),
    "rows": _as_schedule(_rows),
    "taps": _as_schedule(_taps),
    "winograd": _as_schedule(_winograd),
}


def schedule(name: str) -> Callable:
  """The convolution function of schedule ``name`` (one of SCHEDULES)."""
  if name not in _SCHEDULE_FNS:
    raise ValueError(f"unknown convolution schedule {name!r}; expected one "
                     f"of {SCHEDULES}")
  return _SCHEDULE_FNS[name]
