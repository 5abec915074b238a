"""Map similarities that run inside `jit` on batches: Spearman, SSIM, HOG.

JAX versions of `scipy.stats.spearmanr`, `skimage.metrics.structural_similarity`
(``gaussian_weights=True``) and `skimage.feature.hog` (L2-Hys), so that the
randomization and contrastive checks compile with the explainer they call.
Each is tested against the library version.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from saljax import ops
from saljax.metrics import _common as C

Array = jax.Array

SIMILARITIES = ("spearman", "ssim", "hog", "pearson")


def to_map(e: Array, image_rank: int, *, absolute: bool) -> Array:
  """A 2-D map per example: NHWC explanations are summed over channels
  (``sum_c |e|`` when `absolute`, Adebayo et al.'s absolute-value maps);
  ``[B, h, w]`` maps are used as they are (``|e|`` when `absolute`)."""
  e = jnp.abs(e) if absolute else e
  if e.ndim == 4 and image_rank == 4:
    e = e.sum(-1)
  return e


def minmax(m: Array) -> Array:
  """Each map scaled to [0, 1] (a constant map becomes all zeros)."""
  axes = tuple(range(1, m.ndim))
  lo = m.min(axes, keepdims=True)
  span = m.max(axes, keepdims=True) - lo
  return jnp.where(span > 0, (m - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def ssim(a: Array, b: Array, *, data_range: float = 1.0, sigma: float = 1.5,
         truncate: float = 3.5, k1: float = 0.01, k2: float = 0.03) -> Array:
  """Mean SSIM of 2-D maps `a[B, H, W]`, `b[B, H, W]` per example, as
  ``skimage.metrics.structural_similarity(a, b, data_range=..., gaussian_weights=True)``:
  Gaussian window sigma 1.5 truncated at 3.5 sigma (11x11), reflect padding,
  sample-covariance correction ``NP / (NP - 1)`` with ``NP = 11^2``, and the
  mean over the map cropped by the window radius. Needs ``H, W >= 11``."""
  win = 2 * int(truncate * sigma + 0.5) + 1
  if min(a.shape[1:]) < win:
    raise ValueError(f"ssim: expected maps of at least {win}x{win} pixels (the Gaussian window),"
                     f" got {tuple(a.shape[1:])}")
  blur = lambda v: ops.gaussian_blur(v, sigma, axes=(1, 2), truncate=truncate, mode="reflect",
                                     max_sigma=sigma)
  cov_norm = win ** 2 / (win ** 2 - 1)
  ux, uy = blur(a), blur(b)
  uxx, uyy, uxy = blur(a * a), blur(b * b), blur(a * b)
  vx = cov_norm * (uxx - ux * ux)
  vy = cov_norm * (uyy - uy * uy)
  vxy = cov_norm * (uxy - ux * uy)
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
  pad = (win - 1) // 2
  return s[:, pad:-pad, pad:-pad].mean((1, 2))


def hog(m: Array, *, orientations: int = 9, pixels_per_cell: int = 8,
        cells_per_block: int = 3) -> Array:
  """HOG feature vectors of 2-D maps `m[B, H, W]`, as `skimage.feature.hog` with
  square cells and blocks, ``block_norm="L2-Hys"`` and ``feature_vector=True``:
  central-difference gradients (0 on the border rows/columns), unsigned
  orientations in [0, 180) binned into `orientations` half-open bins, each
  cell's histogram the magnitude sum over the cell divided by its area."""
  b, h, w = m.shape
  p, k = pixels_per_cell, cells_per_block
  nr, nc = h // p, w // p
  if nr < k or nc < k:
    raise ValueError(f"hog: expected maps of at least {k * p}x{k * p} pixels ({k}x{k} cells of"
                     f" {p}), got {(h, w)}")
  g_row = jnp.zeros_like(m).at[:, 1:-1, :].set(m[:, 2:, :] - m[:, :-2, :])
  g_col = jnp.zeros_like(m).at[:, :, 1:-1].set(m[:, :, 2:] - m[:, :, :-2])
  mag = jnp.hypot(g_col, g_row)
  ori = jnp.mod(jnp.rad2deg(jnp.arctan2(g_row, g_col)), 180.0)
  per = 180.0 / orientations
  bins = jnp.clip(jnp.floor(ori / per).astype(jnp.int32), 0, orientations - 1)
  onehot = jax.nn.one_hot(bins, orientations, dtype=m.dtype) * mag[..., None]
  cells = onehot[:, :nr * p, :nc * p].reshape(b, nr, p, nc, p, orientations).sum((2, 4)) / (p * p)
  nbr, nbc = nr - k + 1, nc - k + 1
  blocks = jnp.stack([jnp.stack([cells[:, r:r + k, c:c + k] for c in range(nbc)], 1)
                      for r in range(nbr)], 1)  # [B, nbr, nbc, k, k, O]
  eps = 1e-5
  norm = lambda v: v / jnp.sqrt((v ** 2).sum((3, 4, 5), keepdims=True) + eps ** 2)
  out = norm(jnp.minimum(norm(blocks), 0.2))
  return out.reshape(b, -1)


def similarity(kind: str, a: Array, b: Array, *, hog_cell: int = 8) -> Array:
  """Similarity `[B]` of two batches of 2-D maps.

  ``"spearman"``: rank correlation of the flattened maps (average ranks);
  ``"pearson"``; ``"ssim"``: both maps min-max scaled to [0, 1] first
  (Adebayo et al.'s code), data range 1; ``"hog"``: Spearman correlation of
  the HOG vectors of the min-max scaled maps (the reference code; the paper
  text says Pearson).
  """
  if kind == "spearman":
    return C.spearman(a, b)
  if kind == "pearson":
    n = a.shape[0]
    return C.pearson(a.reshape(n, -1), b.reshape(n, -1))
  if kind == "ssim":
    return ssim(minmax(a), minmax(b))
  if kind == "hog":
    return C.spearman(hog(minmax(a), pixels_per_cell=hog_cell),
                      hog(minmax(b), pixels_per_cell=hog_cell))
  raise ValueError(f"similarity: expected one of {list(SIMILARITIES)}, got {kind!r}")
