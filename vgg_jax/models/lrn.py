"""Local response normalisation, Krizhevsky et al. (2012) §3.3 (net A-LRN).

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2)^beta

with k=2, n=5, alpha=1e-4, beta=0.75, the sum running over n adjacent
channels at the same pixel.

Convention (paper §2.1 cites Krizhevsky et al. 2012; a choice we document): alpha multiplies the plain
sum, as in Krizhevsky's formula.  Caffe's LRN layer and PyTorch's
``LocalResponseNorm`` divide alpha by n; to load weights trained with those,
pass ``alpha=1e-4 / 5``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75


def local_response_norm(x: jax.Array, *, k: float = K, n: int = N,
                        alpha: float = ALPHA, beta: float = BETA) -> jax.Array:
  """LRN across the last (channel) axis of an NHWC tensor."""
  # Computed in float32 even under bf16 compute: the squared sum overflows
  # bf16's mantissa long before its range.
  x32 = x.astype(jnp.float32)
  half = n // 2
  pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
  window = (1,) * (x.ndim - 1) + (n,)
  sq_sum = jax.lax.reduce_window(x32 * x32, 0.0, jax.lax.add, window,
                                 (1,) * x.ndim, pad)
  return (x32 / (k + alpha * sq_sum) ** beta).astype(x.dtype)
