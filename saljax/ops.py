"""Small image operations shared by explainers and metrics (ground floor)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _blur_matrix(n: int, sigma, *, truncate: float, mode: str, reach: int):
  """`[n, n]` matrix of a 1-D Gaussian filter as `scipy.ndimage.gaussian_filter1d`.

  `sigma` may be traced. The kernel radius is ``int(truncate * sigma + 0.5)``
  (scipy's rule), weights are normalized over the whole kernel, and `reach` is a
  static bound on the radius.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  d = jnp.arange(-reach, reach + 1)
  radius = jnp.floor(truncate * sigma + 0.5)
  safe = jnp.maximum(sigma, 1e-6)
  w = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / safe) ** 2), 0.0)
  w = w / w.sum()
  i = jnp.arange(n)[:, None]
  j = i + d[None, :]
  if mode == "constant":
    valid = (j >= 0) & (j < n)
    jj = jnp.clip(j, 0, n - 1)
  elif mode == "reflect":  # scipy 'reflect': d c b a | a b c d | d c b a
    jj = jnp.mod(j, 2 * n)
    jj = jnp.where(jj >= n, 2 * n - 1 - jj, jj)
    valid = jnp.ones_like(j, bool)
  else:
    raise ValueError(f"mode: expected 'constant' or 'reflect', got {mode!r}")
  weights = jnp.where(valid, jnp.broadcast_to(w, j.shape), 0.0)
  k = jnp.zeros((n, n), jnp.float32).at[jnp.broadcast_to(i, j.shape), jj].add(weights)
  return jnp.where(sigma > 0, k, jnp.eye(n, dtype=jnp.float32))


def gaussian_blur(x: jax.Array, sigma, *, axes: Sequence[int] = (1, 2), truncate: float = 4.0,
                  mode: str = "constant", max_sigma: float | None = None) -> jax.Array:
  """Gaussian blur of `x` along `axes`, matching ``scipy.ndimage.gaussian_filter``.

  Each axis is filtered by a dense `[n, n]` matrix built from `sigma`, so
  `sigma` can be a traced scalar (as Blur IG needs) and the cost is one matmul
  per axis. ``sigma == 0`` returns `x` unchanged.

  Args:
    x: array, e.g. NHWC images with ``axes=(1, 2)``.
    sigma: scalar standard deviation in pixels (traced or not).
    truncate: kernel radius in sigmas, scipy's default 4.0.
    mode: ``"constant"`` (zero padding, as PAIR's Blur IG uses) or ``"reflect"``.
    max_sigma: a static upper bound on `sigma`; the kernel's reach is
      ``truncate * max_sigma + 1``. Defaults to the largest blurred axis length.
  """
  axes = tuple(a % x.ndim for a in axes)
  if max_sigma is None:
    max_sigma = max(x.shape[a] for a in axes)
  reach = int(np.ceil(truncate * max_sigma + 1))
  out = x
  for a in axes:
    k = _blur_matrix(x.shape[a], sigma, truncate=truncate, mode=mode, reach=reach)
    out = jnp.moveaxis(jnp.tensordot(k.astype(x.dtype), jnp.moveaxis(out, a, 0), axes=1), 0, a)
  return out
