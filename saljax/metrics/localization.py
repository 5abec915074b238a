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



@jax.jit
def _roc_auc(m, gt):
  b = m.shape[0]
  s = m.reshape(b, -1)
  g = gt.reshape(b, -1).astype(jnp.float32)
  # Mann-Whitney U: the area under the ROC curve equals the probability that a
  # ground-truth feature outranks an outside one, ties counting one half
  # (average ranks, as sklearn's roc_curve + auc through tied thresholds).
  r = C.average_ranks(s) + 1.0
  pos = g.sum(1)
  neg = g.shape[1] - pos
  u = (r * g).sum(1) - pos * (pos + 1) / 2
  return u / (pos * neg)


@REGISTRY.register("auc", family="localization", returns="scores", needs=("mask",),
    evaluations=0, backward=False, direction="higher")
def auc(f, x, attribution, target=None, *, key=None, mask=None, boxes=None):
  """Localization AUC: the area under the ROC curve of the map as a detector of
  the ground truth (Fawcett 2006, "An Introduction to ROC Analysis", Pattern
  Recognition Letters 27(8); Quantus `AUC`).

  Every feature is a sample, its label whether it lies in the ground truth and
  its score the map's value; the area is computed exactly as the
  Mann-Whitney statistic ``(sum of ground-truth ranks - P(P+1)/2) / (P N)``
  with average ranks for ties, which equals sklearn's ``auc(*roc_curve(...))``
  (what Quantus calls). 1 means every ground-truth feature outranks every
  other, 0.5 is chance (a constant map scores exactly 0.5), 0 is inverted.

  Quantus defaults kept: signed map (``abs=False``). Its ``normalise=True``
  divides by the maximum and cannot change a rank, so it is not applied.

  Args:
    attribution: shaped like `x` (signed channel sum) or ``[B, H, W]``.
    mask, boxes: the ground truth (module docstring); it must leave at least
      one feature outside (else the ROC curve is undefined).

  Returns:
    ``[B]`` in [0, 1].
  """
  _, m, gt = _prepare(x, attribution, mask, boxes)
  if V.is_concrete(gt):
    full = np.asarray(gt).reshape(gt.shape[0], -1).all(1)
    if full.any():
      raise ValueError(f"ground truth: expected at least one feature outside it (the ROC curve"
                       f" needs negatives), rows {np.flatnonzero(full)[:10].tolist()} cover"
                       " every feature")
  return _roc_auc(m, gt)


QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _check_quadrants(quadrants, b):
  if quadrants is None:
    raise ValueError("quadrants: expected [B, 4] booleans (which quadrants of each 2x2 mosaic show"
                     " the target class; `make_mosaics` returns them), got None")
  q = jnp.asarray(quadrants)
  if q.shape != (b, 4):
    raise ValueError(f"quadrants: expected shape ({b}, 4) (one row per mosaic, quadrants in the"
                     f" order {QUADRANTS}), got {tuple(q.shape)}")
  if q.dtype != bool:
    if not jnp.issubdtype(q.dtype, jnp.integer) and not jnp.issubdtype(q.dtype, jnp.floating):
      raise TypeError(f"quadrants: expected booleans, got dtype {q.dtype}")
    if V.is_concrete(q) and not np.isin(np.asarray(q), (0, 1)).all():
      raise ValueError("quadrants: expected booleans (or 0/1), got other values")
    q = q > 0
  if V.is_concrete(q):
    none = ~np.asarray(q).any(1)
    if none.any():
      raise ValueError(f"quadrants: expected at least one target quadrant per mosaic, rows"
                       f" {np.flatnonzero(none)[:10].tolist()} have none")
  return q


def quadrant_mask(quadrants: Any, shape: tuple[int, int]) -> Array:
  """The ``[B, H, W]`` ground truth of 2x2 mosaics: the union of the quadrants
  flagged in `quadrants` ``[B, 4]`` (order `QUADRANTS`: top-left, top-right,
  bottom-left, bottom-right). H and W must be even."""
  h, w = shape
  if h % 2 or w % 2:
    raise ValueError(f"mosaic: expected an even height and width (2x2 equal tiles), got {h}x{w}")
  q = jnp.asarray(quadrants, bool).reshape(-1, 2, 2)
  return jnp.repeat(jnp.repeat(q, h // 2, axis=1), w // 2, axis=2)


def make_mosaics(images: Any, labels: Any, key, *, count: int | None = None,
                 target_images: int = 2) -> tuple[Array, Array, Array]:
  """2x2 mosaics for `focus` (Arias-Duart et al. 2022, Sec. 3): each mosaic
  holds `target_images` images of one class (default 2, as the paper) and
  ``4 - target_images`` images of other classes, at random positions.

  Args:
    images: ``[N, H, W, C]`` candidate images.
    labels: ``[N]`` integer classes (at least two classes, and at least
      `target_images` images of every class used as a target).
    key: a `jax.random` key (targets, images and positions are drawn from it;
      host-side, the draws are not traced).
    count: mosaics to build (default N // 4).
    target_images: images of the target class per mosaic (1 to 3).

  Returns:
    ``(mosaics [M, 2H, 2W, C], quadrants [M, 4] bool, targets [M] int32)``:
    quadrant ``i`` (order `QUADRANTS`) is True where it shows the target class.
  """
  x = np.asarray(images)
  y = np.asarray(labels)
  if x.ndim != 4:
    raise ValueError(f"images: expected [N, H, W, C], got shape {x.shape}")
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels: expected {x.shape[0]} integer classes, got {V.describe(labels)}")
  target_images = V.check_positive_int(target_images, "target_images")
  if target_images > 3:
    raise ValueError(f"target_images: expected 1 to 3 (a mosaic has 4 tiles and needs another"
                     f" class), got {target_images}")
  count = x.shape[0] // 4 if count is None else V.check_positive_int(count, "count")
  classes, counts = np.unique(y, return_counts=True)
  eligible = classes[counts >= target_images]
  if len(classes) < 2 or len(eligible) == 0:
    raise ValueError(f"labels: expected at least two classes and {target_images} images of a"
                     f" class, got classes {classes.tolist()} with counts {counts.tolist()}")
  key = C.check_key(key, "make_mosaics")
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  h, w = x.shape[1:3]
  out = np.empty((count, 2 * h, 2 * w, x.shape[3]), x.dtype)
  quads = np.zeros((count, 4), bool)
  targets = rng.choice(eligible, size=count)
  for i, t in enumerate(targets):  # host-side data preparation, not a metric loop
    same = rng.choice(np.flatnonzero(y == t), target_images, replace=False)
    other = rng.choice(np.flatnonzero(y != t), 4 - target_images, replace=False)
    order = rng.permutation(4)
    tiles = np.concatenate([same, other])[order]
    quads[i] = order < target_images
    for q, j in enumerate(tiles):
      r, c = divmod(q, 2)
      out[i, r * h:(r + 1) * h, c * w:(c + 1) * w] = x[j]
  return jnp.asarray(out), jnp.asarray(quads), jnp.asarray(targets, jnp.int32)


@REGISTRY.register("focus", family="localization", returns="scores", needs=("mosaic",),
    evaluations=0, backward=False, direction="higher")
def focus(f, x, attribution, target=None, *, key=None, quadrants=None):
  """Focus (Arias-Duart, Pares, Garcia-Gasulla, Gimenez-Abalos 2022, "Focus!
  Rating XAI Methods and Finding Biases", FUZZ-IEEE, arXiv:2109.15035;
  Quantus `Focus`): on a 2x2 mosaic of images (`make_mosaics`), the share of
  the map's positive relevance that falls on the quadrants showing the
  target class, ``sum_{target quadrants} R+ / sum R+``.

  With two of four tiles of the target class, a uniform map scores 0.5 and
  a map entirely on the target tiles scores 1. Quantus defaults kept: the
  map is clipped at 0 (as Quantus and the paper, which sum positive
  relevance) and not made absolute (``abs=False``); Quantus' default
  ``normalise=True`` divides by the maximum, a scale the ratio ignores. A map
  with no positive value scores the target tiles' share (what a uniform map
  scores; Quantus gives 0 there).

  Args:
    x: NHWC mosaics (even height and width).
    attribution: shaped like `x` (signed channel sum) or ``[B, H, W]``.
    quadrants: ``[B, 4]`` booleans, True where the quadrant (top-left,
      top-right, bottom-left, bottom-right) shows the target class.

  Returns:
    ``[B]`` in [0, 1].
  """
  x = V.check_input(x)
  if x.ndim != 4:
    raise ValueError(f"focus: expected NHWC mosaics [B, H, W, C], got x of shape {tuple(x.shape)}")
  q = _check_quadrants(quadrants, x.shape[0])
  gt = quadrant_mask(q, x.shape[1:3])
  attribution = C.check_attribution(attribution, x)
  return _mass(C.feature_map(attribution, x), gt)
