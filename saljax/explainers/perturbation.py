"""Black-box perturbation methods: occlusion, RISE, LIME, KernelSHAP, Shapley
value sampling; extremal perturbation (`_extremal`), Sobol and HSIC attribution
(`sensitivity`) are re-exported here.

Every method evaluates the model on masked copies of the input, and every mask
batch goes through the compiled model in chunks: masks (or coalitions) are
built inside `jit` from an index or a key, and ``batch_size`` is how many
masked copies of the whole input batch one model call sees (``batch_size *
B`` images). A mask count that is not a multiple of ``batch_size`` is handled
by one extra call on the remainder. Segmentation (LIME, KernelSHAP, Shapley
sampling over superpixels) runs with scikit-image outside the compiled part.

Scores: ``score="logit"`` explains the target logit (Captum's convention);
``score="probability"`` its softmax probability (what RISE and LIME used).
Each method states its default.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.explainers import _incremental
from saljax.explainers import _masking as MK
from saljax.explainers import _qmc as QMC
from saljax.explainers._registry import REGISTRY, prepare, require_key

Array = jax.Array
DEFAULT_BATCH = None  # automatic: chunks within parallel.max_evals_per_chunk() evaluations


def _occlusion_evaluations(o, f, x) -> int:
  """The clean forward pass and one per window (or per feature group)."""
  if o["segments"] is not None:
    return 1 + MK.feature_groups(x, o["segments"])[2]
  return 1 + len(_occlusion_starts(x.shape, o["window"], o["stride"])[0])


def _kernel_shap_evaluations(o, f, x) -> int:
  """The empty and the full coalition, then `samples` (all 2^M with `exact`)."""
  m = MK.feature_groups(x, o["segments"], o["segmentation_options"])[2]
  return 2 ** m if o["exact"] else o["samples"] + 2


def _shapley_evaluations(o, f, x) -> int:
  """Each permutation walks from the empty to the full coalition: M + 1 evaluations."""
  m = MK.feature_groups(x, o["segments"], o["segmentation_options"])[2]
  return o["samples"] * (m + 1)


def _window_sizes(shape) -> tuple[int, ...]:
  """The axes a window slides over: all but the batch and the trailing channel
  axis (H, W of NHWC images; T of ``[B, T, C]``), or the features of ``[B, D]``."""
  return tuple(shape[1:-1]) if len(shape) >= 3 else tuple(shape[1:])


def _per_axis(v: Any, name: str, n: int) -> tuple[int, ...]:
  """An int (the same on every window axis) or one int per window axis."""
  if isinstance(v, (tuple, list)):
    if len(v) != n:
      want = "a pair (h, w)" if n == 2 else f"{n} values, one per window axis"
      raise ValueError(f"{name}: expected an int or {want}, got {v!r}")
    return tuple(V.check_positive_int(a, name) for a in v)
  return (V.check_positive_int(v, name),) * n


def _to_x(m: Array, x: Array) -> Array:
  """A map over the window axes (`_window_sizes`) broadcast over the channels of `x`."""
  m = m[..., None] if x.ndim >= 3 else m
  return jnp.broadcast_to(m, x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------
# Occlusion.


@M.jit(static_argnames=("window", "score", "batch_size"))
def _occlusion(f, x, target, fill, starts, window, score, batch_size):
  sizes = _window_sizes(x.shape)
  k = len(sizes)
  base = M.target_score(f, x, target, score)
  # One index vector per window axis, shaped to broadcast over the others.
  coords = [jnp.arange(n).reshape([n if i == j else 1 for i in range(k)])
            for j, n in enumerate(sizes)]

  def one(p):
    m = jnp.ones(sizes, bool)
    for j, (c, w) in enumerate(zip(coords, window)):
      m = m & (c >= p[j]) & (c < p[j] + w)
    xo = jnp.where((m[..., None] if x.ndim >= 3 else m)[None], fill, x)
    d = base - M.target_score(f, xo, target, score)
    mf = m.astype(x.dtype)
    return d.reshape((-1,) + (1,) * k) * mf, mf[None]  # leading 1: one model batch per item

  total, count = parallel.chunked_sum(one, starts, batch_size=batch_size)
  # The last window per axis reaches the border, so with stride <= window every
  # pixel is covered; gaps left by a larger stride get 0, not 0/0.
  return _to_x(total / jnp.maximum(count[0], 1), x)


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
  """Top-left offsets of the windows along one axis, as Captum's `Occlusion`:
  ``ceil((n - w) / s) + 1`` windows at ``0, s, 2s, ...``; the last one may
  pass the border and is cropped to the image, so every pixel is covered."""
  return np.arange(-(-(size - window) // stride) + 1) * stride


def _occlusion_starts(shape, window, stride) -> tuple[np.ndarray, tuple[int, ...]]:
  """First corners ``[N, k]`` of the occluding windows over the k window axes
  (`_window_sizes`), and the window size. Default window: 1/8 of each image
  side for NHWC images, 1 (each position on its own) for other inputs."""
  sizes = _window_sizes(shape)
  k = len(sizes)
  if window is not None:
    win = _per_axis(window, "window", k)
  elif len(shape) == 4:
    win = tuple(max(1, n // 8) for n in sizes)
  else:
    win = (1,) * k
  if any(w > n for w, n in zip(win, sizes)):
    what = "image" if len(shape) == 4 else "input"
    raise ValueError(f"window: expected at most the {what} size {sizes}, got {win}")
  st = _per_axis(stride, "stride", k) if stride is not None else tuple(max(1, w // 2) for w in win)
  axes = [window_starts(n, w, s) for n, w, s in zip(sizes, win, st)]
  return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k).astype(np.int32), win


@M.jit(static_argnames=("m", "score", "batch_size"))
def _group_occlusion(f, x, target, fill, labels, m, score, batch_size):
  """``f(x)[t] - f(x with group g replaced by fill)[t]`` painted on group g."""
  base = M.target_score(f, x, target, score)

  def one(g):
    # An example with fewer than g + 1 groups is left as it is: its gain is 0.
    return base - M.target_score(f, jnp.where(labels == g, fill, x), target, score)

  gains = parallel.chunked_map(one, jnp.arange(m), batch_size=batch_size)  # [M, B]
  return MK.expand_map(gains.T, labels).astype(x.dtype)


@REGISTRY.register("occlusion", family="perturbation", returns="input",
    evaluations=_occlusion_evaluations, backward=False, smoke={"window": 4, "stride": 4})
def occlusion(f, x, target, *, key=None, window: Any = None, stride: Any = None,
              segments: Any = None, fill: Any = 0.0, blur_sigma: float = 10.0,
              score: str = "logit", batch_size: int | None = DEFAULT_BATCH,
              incremental: bool | str = False) -> Array:
  """Occlusion (Zeiler and Fergus 2014, "Visualizing and Understanding
  Convolutional Networks", arXiv:1311.2901), with Captum's `Occlusion` semantics,
  on any input ``[B, ...]``.

  A window slides with `stride` over the input's window axes: H and W of NHWC
  images, T of a series ``[B, T, C]`` (every axis but the batch and the
  trailing channels), the features of ``[B, D]``; it covers all channels.
  Each element's attribution is the mean, over the windows covering it, of
  ``f(x)[t] - f(x with the window replaced by fill)[t]``. As Captum, each axis
  has ``ceil((n - w) / s) + 1`` windows starting at ``0, s, 2s, ...``; when
  the stride does not tile the axis the last window passes the border and is
  cropped to it, so every element is covered by at least one window (a stride
  larger than the window, which Captum refuses, leaves gaps that get 0).

  With `segments`, whole feature groups are occluded one at a time instead
  (Captum's `FeatureAblation` with a ``feature_mask``): each element gets
  ``f(x)[t] - f(x with its group replaced by fill)[t]``, ``1 + M`` evaluations.

  Args:
    window: an int (every window axis) or one int per window axis (``(h, w)``
      for images); default None = 1/8 of each image side (at least 1 pixel)
      for NHWC images, 1 for other inputs (each position on its own). A window
      larger than the input is an error.
    stride: an int or one per window axis; default None = half the window (at least 1).
    segments: None (default: windows), ``"elements"`` (every scalar on its
      own), an int label array shaped like `x` or ``x[0]`` (or ``[H, W]`` /
      ``[B, H, W]`` for images), or a segmentation name for images (see
      `_masking.feature_groups`). Not together with `window` or `stride`.
    fill: a float (default 0.0, Captum's baseline, in the model's input space),
      an array shaped like `x`, ``"blur"`` (images blurred with `blur_sigma`
      pixels) or, with `segments`, ``"mean"`` (each group's mean).
    score: ``"logit"`` (default, as Captum) or ``"probability"``.
    batch_size: windows (groups) evaluated per model call (default None:
      automatic, at most `saljax.parallel.max_evals_per_chunk()` model
      evaluations per call).
    incremental: False (default), True or ``"auto"``, for windows on NHWC
      images: recompute per window only the activations it changes
      (Nakandala et al. 2019; `saljax.explainers._incremental`; same maps up
      to float rounding). True raises a ValueError for a model that mixes
      positions (a ViT), for `segments` and for non-image inputs; ``"auto"``
      then runs plain occlusion.

  Returns:
    attributions shaped like `x` (equal across channels for windows).
  """
  f, x, target = prepare(f, x, target)
  M.check_score(score)
  if segments is not None and (window is not None or stride is not None):
    raise ValueError("occlusion: give segments or window/stride, not both")
  batch_size = V.check_batch_size(batch_size)
  wanted = _incremental.check_mode(incremental)
  if incremental is True and (segments is not None or x.ndim != 4):
    raise ValueError("incremental: recomputes the cone of a window on NHWC images; got"
                     + (" segments" if segments is not None else f" an input of shape"
                        f" {tuple(x.shape)}") + " (use incremental=False or 'auto')")
  if segments is None:  # windows are checked before any fill is computed
    starts, win = _occlusion_starts(x.shape, window, stride)
  groups, fillv = MK.groups_or_default(x, segments, fill, "occlusion", blur_sigma=blur_sigma)
  if groups is not None:
    return _group_occlusion(f, x, target, fillv, groups.labels, groups.m, score, batch_size)
  if wanted and x.ndim == 4:
    return _incremental.occlusion(f, x, target, fillv, starts, win, score, batch_size,
                                  mode=incremental, plain=_occlusion)
  return _occlusion(f, x, target, fillv, jnp.asarray(starts), win, score, batch_size)


# ----------------------------------------------------------------------------
# RISE.


@functools.partial(jax.jit, static_argnames=("count", "size", "cells", "dtype", "sampler"))
def rise_masks(key: Array, count: int, size: tuple[int, int], cells: int, p: float,
               dtype=jnp.float32, sampler: str = "qmc") -> Array:
  """RISE masks ``[count, H, W]``: a ``cells x cells`` Bernoulli(p) grid,
  upsampled bilinearly to ``(cells + 1) * ceil(H / cells)`` and cropped at a
  random shift, as in the authors' `generate_masks`. With ``sampler="qmc"``
  (default, as `rise`) mask i is point i of a scrambled Sobol sequence in
  ``cells^2 + 2`` dimensions (the grid cells and the two shifts) randomized
  by `key` (`_qmc`); with ``"mc"`` it is drawn from ``fold_in(key, i)``.
  Either way these are the masks `rise` uses with the same key and sampler."""
  V.check_choice(sampler, "sampler", QMC.SAMPLERS)
  uniforms = _rise_uniforms(key, cells * cells + 2, masks=count, sampler=sampler)
  return jax.vmap(lambda i: _rise_mask(uniforms(i), size, cells, p, dtype))(jnp.arange(count))


def _rise_uniforms(key, d, masks, sampler):
  """``i -> [d]`` uniforms of mask i: scrambled Sobol points for ``"qmc"``
  (a randomly shifted lattice of `masks` points past Sobol's
  `_qmc.SOBOL_MAX_DIM` dimensions, e.g. ``segments="elements"``), else one
  draw from ``fold_in(key, i)``."""
  if sampler == "qmc":
    if d > QMC.SOBOL_MAX_DIM:
      rule = QMC.lattice(key, masks, (d,))
      return lambda i: QMC.lattice_point(rule, i, masks)
    scramble = QMC.scrambled_sobol(key, d)
    return lambda i: QMC.sobol_point(scramble, i)
  # One uniform draw per mask (grid cells, then the two shifts): a single
  # random call compiles much faster than split + uniform + randint.
  return lambda i: jax.random.uniform(jax.random.fold_in(key, i), (d,))


def _rise_mask(u, size, cells, p, dtype):
  h, w = size
  ch, cw = math.ceil(h / cells), math.ceil(w / cells)
  grid = (u[:cells * cells] < p).reshape(cells, cells).astype(dtype)
  up = jax.image.resize(grid, ((cells + 1) * ch, (cells + 1) * cw), "linear")
  dy = jnp.minimum(jnp.floor(u[-2] * ch).astype(jnp.int32), ch - 1)
  dx = jnp.minimum(jnp.floor(u[-1] * cw).astype(jnp.int32), cw - 1)
  return jax.lax.dynamic_slice(up, (dy, dx), (h, w))


@M.jit(static_argnames=("masks", "cells", "m", "score", "batch_size", "sampler"))
def _rise(f, x, target, key, fill, p, masks, cells, score, batch_size, labels=None, m=None,
          sampler="mc"):
  size = x.shape[1:3]
  uniforms = _rise_uniforms(key, cells * cells + 2 if labels is None else m, masks, sampler)

  def one(i):
    # Each mask's uniforms come from its index inside the chunk, so no [masks]
    # key array is ever built: memory follows batch_size whatever the mask count.
    u = uniforms(i)
    if labels is None:
      mask = _rise_mask(u, size, cells, p, x.dtype)
      up = mask[None, :, :, None]
    else:  # Bernoulli(p) per feature group, the same draw for every example
      mask = (u < p).astype(x.dtype)
      up = MK.paint(mask, labels, x.dtype)
    s = M.target_score(f, x * up + fill * (1 - up), target, score)
    return s.reshape((-1,) + (1,) * mask.ndim) * mask[None]

  total = parallel.chunked_sum(one, jnp.arange(masks), batch_size=batch_size) / (masks * p)
  return _to_x(total, x) if labels is None else MK.expand_map(total, labels).astype(x.dtype)


@REGISTRY.register("rise", family="perturbation", returns="input", needs=("key",),
    evaluations=lambda o, f, x: o["masks"], backward=False, smoke={"masks": 16, "cells": 4})
def rise(f, x, target, *, key=None, masks: int = 4000, cells: int = 7, p: float = 0.5,
         segments: Any = None, fill: Any = 0.0, score: str = "probability",
         batch_size: int | None = DEFAULT_BATCH, sampler: str = "qmc") -> Array:
  """RISE (Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", arXiv:1806.07421).

  ``S = sum_i score(x * M_i + fill * (1 - M_i)) M_i / (N p)`` over N random
  masks: a ``cells x cells`` grid of Bernoulli(`p`) cells, upsampled
  bilinearly to ``(cells + 1) * ceil(H / cells)`` pixels and cropped at a
  random shift (the authors' code upsamples with skimage ``order=1``; here
  `jax.image.resize` "linear", the same half-pixel bilinear interpolation up to
  border handling). The same masks serve every example of the batch; mask i
  comes from its index (`rise_masks`), so maps depend neither on the batch
  size nor on `batch_size`.

  Args:
    key: a `jax.random` key (required); the same key gives bit-identical maps.
    masks: N, default 4000 (the paper's value for ResNet-50); at most
      `saljax.parallel.max_count()` (10**6), one model evaluation each.
    cells: grid size s, default 7; p: keep probability, default 0.5 (paper).
    segments: None (default: the paper's upsampled grid, NHWC images only),
      or feature groups for any input ``[B, ...]``: ``"elements"`` or an int
      label array shaped like `x` or ``x[0]`` (`_masking.feature_groups`).
      Each mask then keeps every group with probability `p` (binary, no
      upsampling), the same draw for every example, and each element gets its
      group's saliency.
    fill: what masked pixels become, default 0.0 (the paper multiplies the
      normalized image by the mask); with `segments` also ``"mean"``.
    score: ``"probability"`` (default: the paper's softmax score) or ``"logit"``.
    batch_size: masks per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call). Any N works.
    sampler: ``"qmc"`` (default): the masks' uniforms (``cells^2 + 2``: grid
      cells, then the shift; or one per feature group) are the points of a
      scrambled Sobol sequence randomized by `key` (a randomly shifted
      lattice past Sobol's 21201 dimensions), so the estimate stays unbiased
      and the keep pattern is balanced over the masks; on a linear model and
      a tanh MLP (16x16 inputs, cells 4 and 7, 64 to 1000 masks, 12 keys) it
      cut the variance of the map over keys 3 to 14 times at equal masks,
      and 1.4 times over 40 binary feature groups (64 masks, 8 keys;
      tests/explainers/test_ig_nodes.py holds both cases). ``"mc"``:
      independent uniforms from ``fold_in(key, i)``, the draws of the
      authors' code and of saljax before the option.

  Returns:
    saliency shaped like `x` (equal across channels, or over each group).
  """
  f, x, target = prepare(f, x, target)
  key = require_key(key, "rise")
  M.check_score(score)
  masks = parallel.check_count(masks, "masks")
  cells = V.check_positive_int(cells, "cells")
  p = MK.check_probability(p, "p", open_high=False)
  groups, fillv = MK.groups_or_default(x, segments, fill, "rise",
                                       image_default=f"its default {cells} x {cells} mask grid")
  labels, m = (None, None) if groups is None else (groups.labels, groups.m)
  V.check_choice(sampler, "sampler", QMC.SAMPLERS)
  return _rise(f, x, target, key, fillv, jnp.asarray(p, x.dtype), masks, cells, score,
               V.check_batch_size(batch_size), labels=labels, m=m, sampler=sampler)


# ----------------------------------------------------------------------------
# Coalition sampling over feature groups (LIME, KernelSHAP).


def _scores_for(f, x, fill, labels, target, z, score, batch_size):
  """Scores ``[S, B]`` of the coalitions ``z[S, B, M]`` (1 = keep the group)."""

  def one(zs):
    return M.target_score(f, MK.apply_coalition(x, fill, labels, zs), target, score)

  return parallel.chunked_map(one, z, batch_size=batch_size)


def _group_uniforms(k, m):
  """``[m]`` uniforms, entry j depending on `k` and j only (JAX's partitionable
  threefry), so padding more groups for a larger batch leaves the draws as they are."""
  return jax.random.uniform(k, (m,))


def _lime_coalitions(key, samples, counts, m):
  """Uniform Bernoulli(1/2) coalitions ``[S, B, M]``, the first one all-ones (lime_image).

  Coalition s of example i is drawn from ``fold_in(fold_in(key, i), s)``: no
  dependence on the batch size, and no ``[samples]`` key array.
  """
  valid = jnp.arange(m)[None, :] < counts[:, None]
  rows = MK.row_keys(key, counts.shape[0])

  def draw(s):
    z = jax.vmap(lambda k: _group_uniforms(jax.random.fold_in(k, s), m) < 0.5)(rows)
    return (z | (s == 0)) & valid

  return jax.vmap(draw)(jnp.arange(samples)).astype(jnp.float32)


@M.jit(static_argnames=("samples", "m", "score", "batch_size"))
def _lime(f, x, target, key, fill, labels, counts, kernel_width, alpha, samples, m, score,
          batch_size):
  z = _lime_coalitions(key, samples, counts, m)
  y = _scores_for(f, x, fill, labels, target, z, score, batch_size)  # [S, B]
  valid = (jnp.arange(m)[None, :] < counts[:, None]).astype(x.dtype)  # [B, M]
  # Cosine distance to the all-ones vector: 1 - sqrt(k / M_b) (1 for k = 0, as sklearn).
  k = z.sum(-1)
  d = 1.0 - jnp.sqrt(k / counts[None, :].astype(x.dtype))
  wts = jnp.sqrt(jnp.exp(-(d ** 2) / kernel_width ** 2))  # lime's kernel, with its sqrt
  coef = jax.vmap(_weighted_ridge, in_axes=(1, 1, 1, 0, None))(z, y, wts, valid, alpha)
  return MK.expand_map(coef, labels)


def _weighted_ridge(z, y, w, valid, alpha):
  """sklearn ``Ridge(alpha).fit(z, y, sample_weight=w)`` coefficients (intercept not penalized)."""
  z = z * valid
  sw = w.sum()
  zm = (w[:, None] * z).sum(0) / sw
  ym = (w * y).sum() / sw
  zc, yc = z - zm, y - ym
  a = zc.T @ (w[:, None] * zc) + alpha * jnp.eye(z.shape[1], dtype=z.dtype)
  return jnp.linalg.solve(a, zc.T @ (w * yc)) * valid


def _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma):
  labels, counts, m = MK.feature_groups(x, segments, segmentation_options)
  fillv = MK.fill_values(x, fill, labels=labels, num_labels=m, blur_sigma=blur_sigma)
  return labels, jnp.asarray(counts, jnp.int32), m, fillv


@REGISTRY.register("lime",
    differentiable=False, note="its derivative disagrees with finite differences (the kernel-weighted solve); use kernel_shap or a gradient method under jax.grad", family="perturbation", returns="input", needs=("key", "segments"),
    evaluations=lambda o, f, x: o["samples"], backward=False, smoke={"samples": 16})
def lime(f, x, target, *, key=None, samples: int = 1000, segments: Any = "quickshift",
         segmentation_options: dict | None = None, fill: Any = "mean", blur_sigma: float = 10.0,
         kernel_width: float = 0.25, alpha: float = 1.0, score: str = "probability",
         batch_size: int | None = DEFAULT_BATCH) -> Array:
  """LIME over superpixels (Ribeiro, Singh, Guestrin 2016, "Why Should I Trust
  You?", arXiv:1602.04938), with the defaults of the authors' `lime_image`.

  `samples` coalitions of groups are drawn uniformly (each group kept with
  probability 1/2; the first sample keeps all), weighted by
  ``sqrt(exp(-d^2 / kernel_width^2))`` with d the cosine distance to the
  all-ones coalition, and a weighted ridge regression (``alpha``, unpenalized
  intercept, sklearn's `Ridge`) is solved in JAX. Each pixel gets its group's
  coefficient.

  Args:
    key: a `jax.random` key (required); example i draws from
      ``fold_in(key, i)``, so a map does not depend on the batch it is in.
    samples: coalitions, default 1000 (lime_image ``num_samples``); at most
      `saljax.parallel.max_count()` (10**6), and ``samples * M`` at most
      `_masking.max_design_entries()` (10**8, the regression's design matrix).
    segments: a segmentation name (default ``"quickshift"`` with lime_image's
      ``kernel_size=4, max_dist=200, ratio=0.2``; ``"slic"``,
      ``"felzenszwalb"``, ``"grid"``, ``"elements"``) or an int label array
      ``[H, W]``/``[B, H, W]``/like `x` (see `_masking.feature_groups`).
    segmentation_options: keyword options for the segmenter.
    fill: ``"mean"`` (default: each segment's mean colour, lime_image's
      ``hide_color=None``), a float, an array, or ``"blur"``.
    kernel_width: 0.25 (lime_image); alpha: ridge strength 1.0 (lime's `Ridge`).
    score: ``"probability"`` (default, as lime's ``classifier_fn``) or ``"logit"``.
    batch_size: coalitions per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
  """
  f, x, target = prepare(f, x, target)
  key = require_key(key, "lime")
  M.check_score(score)
  samples = parallel.check_count(samples, "samples", minimum=2)
  if not kernel_width > 0 or not alpha > 0:
    raise ValueError(f"kernel_width and alpha: expected positive floats, got {kernel_width!r}, {alpha!r}")
  labels, counts, m, fillv = _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma)
  MK.check_design(samples, m, "lime")
  return _lime(f, x, target, key, fillv, labels, counts, jnp.asarray(kernel_width, x.dtype),
               jnp.asarray(alpha, x.dtype), samples, m, score, V.check_batch_size(batch_size))


# ----------------------------------------------------------------------------
# KernelSHAP.


def shapley_kernel_weight(size, m):
  """Shapley kernel ``(M - 1) / (C(M, k) k (M - k))`` (Lundberg and Lee, Theorem 2); 0 at k = 0, M."""
  size = jnp.asarray(size, jnp.float32)
  m = jnp.asarray(m, jnp.float32)
  inner = (size > 0) & (size < m)
  k = jnp.where(inner, size, 1.0)
  log_binom = jax.lax.lgamma(m + 1) - jax.lax.lgamma(k + 1) - jax.lax.lgamma(m - k + 1)
  w = (m - 1) / (jnp.exp(log_binom) * k * (m - k))
  return jnp.where(inner, w, 0.0)


def _all_coalitions(m):
  idx = np.arange(2 ** m, dtype=np.int64)
  return ((idx[:, None] >> np.arange(m)[None, :]) & 1).astype(np.float32)


def _kernel_coalitions(key, samples, counts, m):
  """Coalitions ``[S, B, M]`` with sizes drawn from the Shapley kernel distribution
  ``p(k) ∝ (M - 1) / (k (M - k))`` over ``1..M-1`` and uniform members, so the
  regression weights are all 1 (as Captum's `KernelShap`)."""
  rows = MK.row_keys(key, counts.shape[0])
  sizes = jnp.arange(1, m, dtype=jnp.float32)  # 1..M-1 (padded past M_b)

  def one(k, count):
    # Coalition s of example i comes from fold_in(fold_in(key, i), s); the
    # size by inverse CDF, so padded sizes (probability 0) change no draw.
    k_size, k_perm = jax.random.split(k)
    mb = count.astype(jnp.float32)
    prob = jnp.where(sizes < mb, (mb - 1) / (sizes * jnp.maximum(mb - sizes, 1)), 0.0)
    cdf = jnp.cumsum(prob)
    total = cdf[-1] if m > 1 else jnp.zeros(())
    u0 = jax.random.uniform(k_size) * total
    drawn = jnp.where(total > 0, 1 + (cdf <= u0).sum(), 0)
    u = jnp.where(jnp.arange(m) < count, _group_uniforms(k_perm, m), jnp.inf)
    rank = jnp.argsort(jnp.argsort(u))
    return rank < drawn

  def draw(s):
    return jax.vmap(lambda k, c: one(jax.random.fold_in(k, s), c))(rows, counts)

  return jax.vmap(draw)(jnp.arange(samples)).astype(jnp.float32)


@M.jit(static_argnames=("samples", "m", "exact", "score", "batch_size"))
def _kernel_shap(f, x, target, key, fill, labels, counts, samples, m, exact, score, batch_size):
  valid = jnp.arange(m)[None, :] < counts[:, None]  # [B, M]
  if exact:
    z = jnp.asarray(_all_coalitions(m))[:, None, :] * valid[None].astype(jnp.float32)
    # Coalitions that set a padded group are duplicates: weight 0.
    dup = (jnp.asarray(_all_coalitions(m))[:, None, :] * (~valid)[None]).sum(-1) > 0
    wts = jnp.where(dup, 0.0, shapley_kernel_weight(z.sum(-1), counts[None, :]))
  else:
    z = _kernel_coalitions(key, samples, counts, m)
    wts = jnp.ones(z.shape[:2], jnp.float32)
  y = _scores_for(f, x, fill, labels, target, z, score, batch_size)  # [S, B]
  f_x = M.target_score(f, x, target, score)
  f_0 = M.target_score(f, fill, target, score)
  phi = jax.vmap(_constrained_wls, in_axes=(1, 1, 1, 0, 0, 0, 0))(
      z, y, wts.astype(x.dtype), valid, counts - 1, f_x, f_0)
  return MK.expand_map(phi, labels)


def _constrained_wls(z, y, w, valid, last, f_x, f_0):
  """Weighted least squares for phi with ``sum(phi) = f(x) - f(fill)`` imposed
  exactly, by eliminating the last group (as the `shap` package does):
  ``y - f0 - z_last * delta = sum_{j != last} phi_j (z_j - z_last)``."""
  m = z.shape[1]
  delta = f_x - f_0
  z_last = jnp.take(z, last, axis=1)
  free = valid & (jnp.arange(m) != last)
  a = (z - z_last[:, None]) * free
  rhs = y - f_0 - z_last * delta
  sw = jnp.sqrt(w)
  # lstsq gives the minimum-norm solution, so padded (all-zero) columns get 0.
  sol = jnp.linalg.lstsq(a * sw[:, None], rhs * sw, rcond=None)[0] * free
  return sol.at[last].set(delta - sol.sum())


@REGISTRY.register("kernel_shap", family="perturbation", returns="input", needs=("key", "segments"),
    evaluations=_kernel_shap_evaluations, backward=False, smoke={"samples": 16})
def kernel_shap(f, x, target, *, key=None, samples: int = 1000, exact: bool = False,
                segments: Any = "slic", segmentation_options: dict | None = None,
                fill: Any = 0.0, blur_sigma: float = 10.0, score: str = "logit",
                batch_size: int | None = DEFAULT_BATCH) -> Array:
  """KernelSHAP over feature groups (Lundberg and Lee 2017, "A Unified Approach
  to Interpreting Model Predictions", arXiv:1705.07874).

  A coalition ``z`` keeps the groups with ``z_j = 1`` and replaces the others by
  `fill`. The Shapley values solve the weighted least squares
  ``min sum_z pi(z) (f(h(z)) - phi_0 - z . phi)^2`` with the Shapley kernel
  ``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))``. The empty and full
  coalitions (infinite weight) are imposed exactly as constraints:
  ``phi_0 = f(fill)`` and ``sum(phi) = f(x) - f(fill)``, by eliminating one
  group as the `shap` package does; the solve runs in JAX.

  Args:
    key: a `jax.random` key (required unless ``exact``); example i draws from
      ``fold_in(key, i)``, so a map does not depend on the batch it is in.
    samples: sampled coalitions, default 1000 (the SMDL/LiMA baselines' budget;
      Captum defaults to 25); limits as `lime`. Sizes follow the Shapley kernel distribution and
      members are uniform, so the sample weights are all 1 (Captum's scheme).
    exact: enumerate all ``2^M`` coalitions with exact kernel weights (needs
      ``M <= 16`` groups); then the result is the exact Shapley value for an
      additive model (e.g. a linear model recovers its coefficients times
      ``x - fill`` summed over each group).
    segments: default ``"slic"`` (``n_segments=50``) or any value accepted by
      `lime`; fill: default 0.0 (Captum's baseline) or a float/array/"blur"/"mean".
    score: ``"logit"`` (default, as Captum) or ``"probability"``.
    batch_size: coalitions per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
  """
  f, x, target = prepare(f, x, target)
  M.check_score(score)
  exact = bool(exact)
  if not exact:
    key = require_key(key, "kernel_shap")
    samples = parallel.check_count(samples, "samples")
  labels, counts, m, fillv = _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma)
  if exact:
    m = int(counts.max())  # no padding: 2^M coalitions
    if m > 16:
      raise ValueError(f"exact=True enumerates 2^M coalitions and needs M <= 16 groups, got M = {m}")
    samples = 2 ** m
    key = jax.random.key(0)  # unused
  else:
    MK.check_design(samples, m, "kernel_shap")
  return _kernel_shap(f, x, target, key, fillv, labels, counts, samples, m, exact, score,
                      V.check_batch_size(batch_size))


# ----------------------------------------------------------------------------
# Shapley value sampling.


@M.jit(static_argnames=("samples", "m", "score", "batch_size"))
def _shapley_sampling(f, x, target, key, fill, labels, counts, samples, m, score, batch_size):
  b = x.shape[0]
  rows = MK.row_keys(key, b)

  def order(s):
    """``[B, M]``: the order groups are added in, in permutation s. Drawn from
    ``fold_in(fold_in(key, i), s)`` where it is used, so the draws depend on
    neither the batch size nor the chunking, and no [samples] array is kept."""
    def row(k, count):
      u = _group_uniforms(jax.random.fold_in(k, s), m)
      # Padded groups go last in every permutation; adding them changes nothing.
      return jnp.argsort(jnp.where(jnp.arange(m) < count, u, 2.0))
    return jax.vmap(row)(rows, counts)

  def one(st):
    s, t = st
    pos = jnp.argsort(order(s), axis=-1)  # position of each group
    z = (pos < t).astype(jnp.float32)  # the first t groups of permutation s
    return M.target_score(f, MK.apply_coalition(x, fill, labels, z), target, score)

  steps = jnp.arange(m + 1)
  grid = (jnp.repeat(jnp.arange(samples), m + 1), jnp.tile(steps, samples))
  y = parallel.chunked_map(one, grid, batch_size=batch_size).reshape(samples, m + 1, b)

  def gains(sy):
    s, ys = sy
    g = jnp.diff(ys, axis=0).T  # [B, M]: gain of the group added at step t
    return jax.vmap(lambda p, gb: jnp.zeros(m, gb.dtype).at[p].set(gb))(order(s), g)

  phi = parallel.chunked_sum(gains, (jnp.arange(samples), y))
  return MK.expand_map(phi / samples, labels)


@REGISTRY.register("shapley_sampling", family="perturbation", returns="input",
    needs=("key", "segments"), evaluations=_shapley_evaluations, backward=False,
    smoke={"samples": 2})
def shapley_sampling(f, x, target, *, key=None, samples: int = 25, segments: Any = "slic",
                     segmentation_options: dict | None = None, fill: Any = 0.0,
                     blur_sigma: float = 10.0, score: str = "logit",
                     batch_size: int | None = DEFAULT_BATCH) -> Array:
  """Shapley value sampling over feature groups (Castro, Gomez, Tejada 2009,
  "Polynomial calculation of the Shapley value based on sampling"; Strumbelj
  and Kononenko 2010), with Captum's `ShapleyValueSampling` semantics.

  For each of `samples` random permutations, groups are added one at a time to
  the `fill` input and each group gets the change of the score it caused;
  attributions are the mean over permutations. Each permutation costs ``M + 1``
  model evaluations, all chunked through one compiled map. Efficiency
  ``sum(phi) = f(x) - f(fill)`` holds exactly for every permutation (the gains
  telescope); the per-group values converge to the Shapley values at rate
  ``1 / sqrt(samples)``.

  Args:
    key: a `jax.random` key (required); example i draws from
      ``fold_in(key, i)``, so a map does not depend on the batch it is in.
    samples: permutations, default 25 (Captum's ``n_samples``); at most
      `saljax.parallel.max_count()`, and ``samples * (M + 1)`` evaluations at
      most `_masking.max_evaluations()` (10**7) per example.
    segments: default ``"slic"`` (``n_segments=50``), ``"elements"`` (every
      scalar a feature, Captum's default without a feature mask), or any value
      accepted by `lime`. fill: default 0.0 (Captum's baseline).
    score: ``"logit"`` (default, as Captum) or ``"probability"``.
    batch_size: evaluations per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
  """
  f, x, target = prepare(f, x, target)
  key = require_key(key, "shapley_sampling")
  M.check_score(score)
  samples = parallel.check_count(samples, "samples")
  labels, counts, m, fillv = _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma)
  MK.check_evaluations(samples * (m + 1), "samples", samples, "shapley_sampling")
  return _shapley_sampling(f, x, target, key, fillv, labels, counts, samples, m, score,
                           V.check_batch_size(batch_size))


# Extremal perturbation, Sobol and HSIC live in private modules (one idea each);
# importing them registers them, and they are re-exported here.
from saljax.explainers._extremal import extremal_perturbation  # noqa: E402,F401
from saljax.explainers.sensitivity import hsic, sobol  # noqa: E402,F401
