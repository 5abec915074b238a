"""Localization metrics: does the map fall on the ground-truth object?

Ground truth is given either as a boolean `mask` on the feature grid
(``[B, H, W]`` for NHWC images, shaped like `x` otherwise) or, for images, as
`boxes` ``[B, K, 4]`` (or ``[B, 4]``) of ``(ymin, xmin, ymax, xmax)`` pixel
coordinates with the max side EXCLUSIVE (a box covers rows ``ymin..ymax-1``).
Box rows with ``ymax <= ymin`` or ``xmax <= xmin`` are padding and ignored, so a
batch can carry a different number of boxes per image. Boxes reaching outside
the image and examples with an empty ground truth raise `ValueError`.

The map is the signed channel sum of the attribution (a ``[B, H, W]`` map is
used as is). Metrics only read the attribution: `f` and `target` are part of
the contract and never called. Each returns ``[B]``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax.metrics import _common as C
from saljax.metrics._registry import REGISTRY

Array = jax.Array


def boxes_to_mask(boxes: Any, shape: tuple[int, int]) -> Array:
  """Union of `boxes` ``[B, K, 4]`` (``ymin, xmin, ymax, xmax``, max exclusive)
  as a boolean mask ``[B, H, W]``; validates the boxes first."""
  h, w = shape
  b = np.asarray(boxes)
  if not np.issubdtype(b.dtype, np.number):
    raise TypeError(f"boxes: expected numbers (ymin, xmin, ymax, xmax), got dtype {b.dtype}")
  if b.ndim == 2:
    b = b[:, None, :]
  if b.ndim != 3 or b.shape[-1] != 4:
    raise ValueError(f"boxes: expected shape [B, K, 4] or [B, 4] of (ymin, xmin, ymax, xmax), got"
                     f" {tuple(np.shape(boxes))}")
  if not np.isfinite(b).all():
    raise ValueError("boxes: expected finite coordinates, got NaN or inf")
  valid = (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])
  outside = valid & ((b[..., 0] < 0) | (b[..., 1] < 0) | (b[..., 2] > h) | (b[..., 3] > w))
  if outside.any():
    i, k = np.argwhere(outside)[0]
    raise ValueError(f"boxes: expected boxes inside the {h}x{w} image (0 <= ymin < ymax <= {h},"
                     f" 0 <= xmin < xmax <= {w}), got {b[i, k].tolist()} for example {i}")
  yy = np.arange(h)[None, None, :, None]
  xx = np.arange(w)[None, None, None, :]
  inside = ((yy >= b[..., 0, None, None]) & (yy < b[..., 2, None, None])
            & (xx >= b[..., 1, None, None]) & (xx < b[..., 3, None, None]) & valid[..., None, None])
  return jnp.asarray(inside.any(1))


def _prepare(x, attribution, mask, boxes):
  x = V.check_input(x)
  attribution = C.check_attribution(attribution, x)
  grid = C.feature_shape(x)
  if (mask is None) == (boxes is None):
    raise ValueError("expected exactly one ground truth: mask=[B, H, W] booleans or"
                     " boxes=[B, K, 4]")
  if boxes is not None:
    if x.ndim != 4:
      raise ValueError(f"boxes need NHWC images [B, H, W, C], got x of shape {tuple(x.shape)}")
    gt = boxes_to_mask(boxes, grid[1:])
    if gt.shape[0] != grid[0]:
      raise ValueError(f"boxes: expected {grid[0]} rows (one per example), got {gt.shape[0]}")
  else:
    if not hasattr(mask, "shape"):
      mask = np.asarray(mask)
    if tuple(mask.shape) != grid:
      raise ValueError(f"mask: expected shape {grid} (the feature grid of x), got {tuple(mask.shape)}")
    gt = jnp.asarray(mask) > 0 if mask.dtype != bool else jnp.asarray(mask)
  if V.is_concrete(gt):
    empty = ~np.asarray(gt).reshape(grid[0], -1).any(1)
    if empty.any():
      raise ValueError(f"ground truth: expected at least one pixel per example, rows"
                       f" {np.flatnonzero(empty)[:10].tolist()} are empty")
  return x, C.feature_map(attribution, x), gt


@jax.jit
def _pointing(m, gt, key, tolerance):
  b, h, w = m.shape
  first = C.ranks(m, key) == 0
  idx = jnp.argmax(first.reshape(b, -1), axis=1)
  py, px = idx // w, idx % w
  yy = jnp.arange(h)[None, :, None]
  xx = jnp.arange(w)[None, None, :]
  d2 = (yy - py[:, None, None]) ** 2 + (xx - px[:, None, None]) ** 2
  # Strictly closer than `tolerance` (TorchRay); the pointed pixel itself always counts.
  near = (d2 < tolerance ** 2) | (d2 == 0)
  return (gt & near).any((1, 2)).astype(jnp.float32)


@REGISTRY.register("pointing_game", family="localization", returns="scores", needs=("mask",),
    evaluations=0, backward=False, direction="higher")
def pointing_game(f, x, attribution, target=None, *, key=None, mask=None, boxes=None,
                  tolerance: float = 15.0):
  """Pointing game (Zhang, Bargal, Lin, Brandt, Shen, Sclaroff 2016/2018,
  "Top-down Neural Attention by Excitation Backprop", ECCV / IJCV,
  arXiv:1608.00507), as TorchRay's benchmark.

  A hit (1.0) when the map's maximum lies strictly closer than `tolerance`
  pixels (Euclidean) to some ground-truth pixel, else 0.0. The mean over the
  batch is the pointing accuracy (TorchRay averages per class; group the
  scores by class for that).

  Args:
    x: NHWC images (the map is compared on their H x W grid; resize maps and
      ground truth to one grid first).
    attribution: shaped like `x` (signed channel sum) or ``[B, H, W]``.
    key: optional; breaks ties for the maximum at random (a constant map then
      points at a random pixel). Without it the first maximum in row-major
      order is used (TorchRay).
    mask, boxes: the ground truth (module docstring).
    tolerance: pixels, default 15 (TorchRay; strict ``<``); 0 means the
      pointed pixel itself must be in the ground truth.

  Returns:
    ``[B]`` of 0.0 / 1.0.
  """
  x, m, gt = _prepare(x, attribution, mask, boxes)
  if x.ndim != 4:
    raise ValueError(f"pointing_game: expected NHWC images, got x of shape {tuple(x.shape)}")
  if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
    raise ValueError(f"tolerance: expected a number of pixels >= 0, got {tolerance!r}")
  key = C.check_key(key, "pointing_game", required=False)
  return _pointing(m, gt, key, jnp.float32(tolerance))


@jax.jit
def _mass(m, gt):
  b = m.shape[0]
  pos = jnp.maximum(m, 0.0).reshape(b, -1)
  g = gt.reshape(b, -1)
  total = pos.sum(1)
  area = g.mean(1)
  # A map with no positive relevance carries no preference: score it as a uniform map.
  return jnp.where(total > 0, (pos * g).sum(1) / jnp.where(total > 0, total, 1.0), area)


@REGISTRY.register("energy_pointing_game", family="localization", returns="scores", needs=("mask",),
    evaluations=0, backward=False, direction="higher")
def energy_pointing_game(f, x, attribution, target=None, *, key=None, mask=None, boxes=None):
  """Energy-based pointing game (Wang et al. 2020, "Score-CAM: Score-Weighted
  Visual Explanations for Convolutional Neural Networks", CVPR-W,
  arXiv:1910.01279, Sec. 4.3): the share of the map's energy inside the
  ground truth, ``sum(L * B) / sum(L)``.

  Signed maps are clipped at 0 first (Score-CAM only scores non-negative
  CAMs; the paper does not say). A map with no positive value scores the
  ground truth's area fraction (what a uniform map scores). Higher is better.

  Returns:
    ``[B]`` in [0, 1].
  """
  _, m, gt = _prepare(x, attribution, mask, boxes)
  return _mass(m, gt)


@REGISTRY.register("relevance_mass", family="localization", returns="scores", needs=("mask",),
    evaluations=0, backward=False, direction="higher")
def relevance_mass(f, x, attribution, target=None, *, key=None, mask=None, boxes=None):
  """Relevance mass accuracy (Arras, Osman, Samek 2022, "CLEVR-XAI: A Benchmark
  Dataset for the Ground Truth Evaluation of Neural Network Explanations",
  Information Fusion, arXiv:2003.07258): positive relevance inside the ground
  truth over the total positive relevance. The same number as
  `energy_pointing_game` (both literatures define it). Higher is better.

  Returns:
    ``[B]`` in [0, 1].
  """
  _, m, gt = _prepare(x, attribution, mask, boxes)
  return _mass(m, gt)


@jax.jit
def _top_in_mask(m, gt, k, key):
  b = m.shape[0]
  top = C.ranks(m, key).reshape(b, -1) < k[:, None]
  g = gt.reshape(b, -1)
  return (top & g).sum(1) / jnp.maximum(k, 1)


@REGISTRY.register("relevance_rank", family="localization", returns="scores", needs=("mask",),
    evaluations=0, backward=False, direction="higher")
def relevance_rank(f, x, attribution, target=None, *, key=None, mask=None, boxes=None):
  """Relevance rank accuracy (Arras, Osman, Samek 2022, arXiv:2003.07258): with
  ``K`` the ground-truth size, the fraction of the ``K`` highest-ranked
  features that lie inside the ground truth. Higher is better; a random map
  scores the area fraction in expectation. Ties: as `pointing_game` (`key`).

  Returns:
    ``[B]`` in [0, 1].
  """
  _, m, gt = _prepare(x, attribution, mask, boxes)
  key = C.check_key(key, "relevance_rank", required=False)
  k = gt.reshape(gt.shape[0], -1).sum(1).astype(jnp.int32)
  return _top_in_mask(m, gt, k, key)


@REGISTRY.register("top_k_intersection", family="localization", returns="scores", needs=("mask",),
    evaluations=0, backward=False, direction="higher")
def top_k_intersection(f, x, attribution, target=None, *, key=None, mask=None, boxes=None,
                       k: int | None = None):
  """Top-k intersection (Theiner, Mueller-Budack, Ewerth 2022, "Interpretable
  Semantic Photo Geolocation", WACV, arXiv:2104.14995; Quantus
  `TopKIntersection`): the fraction of the `k` highest-ranked features that
  lie inside the ground truth. Default ``k = min(1000, N)`` (Quantus' 1000).
  Higher is better. Ties: as `pointing_game` (`key`).

  Returns:
    ``[B]`` in [0, 1].
  """
  x, m, gt = _prepare(x, attribution, mask, boxes)
  key = C.check_key(key, "top_k_intersection", required=False)
  n = int(np.prod(m.shape[1:]))
  k = min(1000, n) if k is None else V.check_positive_int(k, "k")
  if k > n:
    raise ValueError(f"k: expected at most the number of features ({n}), got {k}")
  return _top_in_mask(m, gt, jnp.full((m.shape[0],), k, jnp.int32), key)


@jax.jit
def _localisation(m, gt, weighted):
  mu = _mass(m, gt)
  area = gt.reshape(gt.shape[0], -1).mean(1)
  return jnp.where(weighted, mu / area, mu)


@REGISTRY.register("attribution_localisation", family="localization", returns="scores",
    needs=("mask",), evaluations=0, backward=False, direction="higher")
def attribution_localisation(f, x, attribution, target=None, *, key=None, mask=None, boxes=None,
                             weighted: bool = False):
  """Attribution localisation (Kohlbrenner, Bauer, Nakajima, Binder, Samek,
  Lapuschkin 2020, "Towards Best Practice in Explaining Neural Network
  Decisions with LRP", IJCNN, arXiv:1910.09840): the inside-total relevance
  ratio ``mu = R_in / R_tot`` of positive relevance and, with
  ``weighted=True``, ``mu_w = mu * S_tot / S_in`` (divided by the object's
  area fraction, so 1 is chance level). Default unweighted, as Quantus.

  Returns:
    ``[B]``.
  """
  _, m, gt = _prepare(x, attribution, mask, boxes)
  return _localisation(m, gt, bool(weighted))

