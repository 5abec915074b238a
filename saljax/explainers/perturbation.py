"""Black-box perturbation methods: occlusion, RISE, LIME, KernelSHAP, Shapley
value sampling; Owen values (`shapley`), extremal perturbation (`_extremal`), Sobol and HSIC attribution
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
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax import removal as R
from saljax.explainers import _incremental
from saljax.explainers import _masking as MK
from saljax.explainers import _qmc as QMC
from saljax.explainers import shapley as SH
from saljax.explainers._registry import REGISTRY, prepare, require_key
from saljax.explainers.shapley import owen_values, shapley_kernel_weight  # noqa: F401

Array = jax.Array
DEFAULT_BATCH = None  # automatic: chunks within parallel.max_evals_per_chunk() evaluations


def _occlusion_evaluations(o, f, x) -> int:
  """The clean forward pass and one per window (or per feature group)."""
  if o["segments"] is not None:
    return 1 + MK.feature_groups(x, o["segments"])[2]
  return 1 + len(_occlusion_starts(x.shape, o["window"], o["stride"])[0])


def _kernel_shap_evaluations(o, f, x) -> int:
  """The empty and the full coalition, then `samples` (all 2^M with `exact`, M unpadded)."""
  _, counts, m = MK.feature_groups(x, o["segments"], o["segmentation_options"])
  return 2 ** int(counts.max()) if o["exact"] else o["samples"] + 2


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
              incremental: bool | str = False, removal: Any = None) -> Array:
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
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images, `fill`
      being what partly removed patches still show.

  Returns:
    attributions shaped like `x` (equal across channels for windows).
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, blur_sigma, "occlusion")
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
  if keep_model is not None:
    if incremental is True:
      raise ValueError("incremental: recomputes the cone of a window of a plain forward; not with"
                       " removal='token_drop'/'layer_mask' (use incremental=False or 'auto')")
    wanted = False  # 'auto': the cone recompute is a plain forward's, so plain occlusion
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv,
                                       None if groups is None else groups.labels, "occlusion")
  if groups is not None:
    return done(_group_occlusion(f, x, target, fillv, labels, groups.m, score, batch_size))
  if wanted and x.ndim == 4:
    return _incremental.occlusion(f, x, target, fillv, starts, win, score, batch_size,
                                  mode=incremental, plain=_occlusion)
  return done(_occlusion(f, x, target, fillv, jnp.asarray(starts), win, score, batch_size))


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
         batch_size: int | None = DEFAULT_BATCH, sampler: str = "qmc",
         removal: Any = None) -> Array:
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
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images, `fill`
      being what partly removed patches still show. The mask-aware forwards read
      RISE's soft masks as ``> 0.5``.

  Returns:
    saliency shaped like `x` (equal across channels, or over each group).
  """
  fill, _, keep_model = R.resolve(removal, f, fill, 10.0, "rise")
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
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "rise")
  return done(_rise(f, x, target, key, fillv, jnp.asarray(p, x.dtype), masks, cells, score,
                    V.check_batch_size(batch_size), labels=labels, m=m, sampler=sampler))


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
         batch_size: int | None = DEFAULT_BATCH, removal: Any = None) -> Array:
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
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images, `fill`
      being what partly removed patches still show.
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, blur_sigma, "lime")
  f, x, target = prepare(f, x, target)
  key = require_key(key, "lime")
  M.check_score(score)
  samples = parallel.check_count(samples, "samples", minimum=2)
  if not kernel_width > 0 or not alpha > 0:
    raise ValueError(f"kernel_width and alpha: expected positive floats, got {kernel_width!r}, {alpha!r}")
  labels, counts, m, fillv = _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma)
  MK.check_design(samples, m, "lime")
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "lime")
  return done(_lime(f, x, target, key, fillv, labels, counts, jnp.asarray(kernel_width, x.dtype),
                    jnp.asarray(alpha, x.dtype), samples, m, score, V.check_batch_size(batch_size)))


# ----------------------------------------------------------------------------
# KernelSHAP.


def _kernel_coalitions(key, samples, counts, m):
  """Coalitions ``[S, B, M]`` with sizes drawn from the Shapley kernel distribution
  ``p(k) ∝ (M - 1) / (k (M - k))`` over ``1..M-1`` and uniform members, so the
  regression weights are all 1 (as Captum's `KernelShap`).

  Example i's coalitions come from one 1-D uniform draw with key
  ``fold_in(key, i)``, read as ``[M + 1, S]`` so that entry (j, s) sits at
  ``j S + s`` whatever the padded M: the draws depend neither on the batch
  size nor on the other examples' group counts. A single 1-D random call
  compiles far faster than one per coalition (or a 2-D one), and the
  ``[S, B, M]`` coalitions are held anyway. Row 0 picks the size by inverse
  CDF (padded sizes have probability 0), rows 1.. rank the members.
  """
  rows = MK.row_keys(key, counts.shape[0])
  sizes = jnp.arange(1, m, dtype=jnp.float32)  # 1..M-1 (padded past M_b)

  def one(k, count):
    u = jax.random.uniform(k, ((m + 1) * samples,)).reshape(m + 1, samples).T  # [S, M + 1]
    mb = count.astype(jnp.float32)
    prob = jnp.where(sizes < mb, (mb - 1) / (sizes * jnp.maximum(mb - sizes, 1)), 0.0)
    cdf = jnp.cumsum(prob)
    total = cdf[-1] if m > 1 else jnp.zeros(())
    drawn = jnp.where(total > 0, 1 + (cdf[None, :] <= u[:, :1] * total).sum(1), 0)  # [S]
    members = jnp.where(jnp.arange(m) < count, u[:, 1:], jnp.inf)
    rank = jnp.argsort(jnp.argsort(members, axis=1), axis=1)
    return rank < drawn[:, None]

  return jax.vmap(one, out_axes=1)(rows, counts).astype(jnp.float32)


@M.jit(static_argnames=("m", "score", "batch_size"))
def _kernel_shap_exact(f, x, target, fill, labels, counts, m, score, batch_size):
  """Exact Shapley values from all ``2^M`` coalitions: ``phi = sum_z c(z) v(z)``
  (`shapley.exact_coefficients`), accumulated chunk by chunk, so memory follows
  `batch_size` and no ``[2^M, M]`` regression is solved."""

  def one(k):
    z = ((k >> jnp.arange(m)) & 1).astype(jnp.float32)
    zb = jnp.broadcast_to(z, (x.shape[0], m))
    v = M.target_score(f, MK.apply_coalition(x, fill, labels, zb), target, score)
    return SH.exact_coefficients(zb, counts) * v[:, None]

  phi = parallel.chunked_sum(one, jnp.arange(2 ** m, dtype=jnp.int32), batch_size=batch_size)
  return MK.expand_map(phi, labels)


@M.jit(static_argnames=("samples", "m", "sampling", "score", "batch_size", "stderr"))
def _kernel_shap(f, x, target, key, fill, labels, counts, samples, m, sampling, score,
                 batch_size, stderr):
  b = x.shape[0]
  valid = jnp.arange(m)[None, :] < counts[:, None]  # [B, M]
  if sampling == "kernel":
    z = _kernel_coalitions(key, samples, counts, m)
    wts = jnp.full(z.shape[:2], 1.0 / samples)
    unit = jnp.arange(samples)  # every coalition is a sampling unit
    stratum, fpc = jnp.zeros((samples, b), jnp.int32), jnp.ones((b, 1))
  else:
    pairs = samples // 2
    if sampling == "paired":
      z = SH.paired(_kernel_coalitions(key, pairs, counts, m), counts)
      wts = jnp.full(z.shape[:2], 1.0 / samples)
      stratum, fpc = jnp.zeros((pairs, b), jnp.int32), jnp.ones((b, 1))
    else:
      z, wts, stratum, fpc = SH.leverage_pairs(key, pairs, counts, m)
    unit = jnp.tile(jnp.arange(pairs), 2)  # a coalition and its complement: one unit
  y = _scores_for(f, x, fill, labels, target, z, score, batch_size)  # [S, B]
  f_x = M.target_score(f, x, target, score)
  f_0 = M.target_score(f, fill, target, score)
  wts = wts.astype(x.dtype)
  phi = jax.vmap(SH.kernel_solve, in_axes=(1, 1, 1, 0, 0, 0, 0))(
      z, y, wts, valid, counts - 1, f_x, f_0)
  if not stderr:
    return MK.expand_map(phi, labels)
  se = jax.vmap(SH.kernel_stderr, in_axes=(1, 1, 1, 0, 0, 0, None, 1, 0))(
      z, y, wts, valid, f_0, phi, unit, stratum, fpc)
  return MK.expand_map(phi, labels), MK.expand_map(se, labels)


# One return type per flag value: an array, or (array, stderr) with return_stderr=True.
@typing.overload
def kernel_shap(f, x, target, *, key=..., samples: int = ..., exact: bool = ..., sampling: str = ...,
                segments: Any = ..., segmentation_options: dict | None = ..., fill: Any = ...,
                blur_sigma: float = ..., score: str = ..., batch_size: int | None = ...,
                return_stderr: Literal[False] = ...) -> Array: ...
@typing.overload
def kernel_shap(f, x, target, *, key=..., samples: int = ..., exact: bool = ..., sampling: str = ...,
                segments: Any = ..., segmentation_options: dict | None = ..., fill: Any = ...,
                blur_sigma: float = ..., score: str = ..., batch_size: int | None = ...,
                return_stderr: Literal[True]) -> tuple[Array, Array]: ...

@REGISTRY.register("kernel_shap", family="perturbation", returns="input", needs=("key", "segments"),
    evaluations=_kernel_shap_evaluations, backward=False, smoke={"samples": 16})
def kernel_shap(f, x, target, *, key=None, samples: int = 1000, exact: bool = False,
                sampling: str = "kernel", segments: Any = "slic",
                segmentation_options: dict | None = None, fill: Any = 0.0,
                blur_sigma: float = 10.0, score: str = "logit",
                batch_size: int | None = DEFAULT_BATCH, return_stderr: bool = False,
                removal: Any = None):
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
      Captum defaults to 25); limits as `lime`; even for the paired schemes.
      Each costs one model evaluation, plus 2 for the empty and full coalitions.
    exact: evaluate all ``2^M`` coalitions (needs ``M <= 16`` groups; `samples`
      and `sampling` are ignored) and return the exact Shapley values of any
      model, as ``sum_z c(z) f(h(z))`` (`shapley.exact_coefficients`),
      accumulated in chunks of `batch_size` coalitions.
    sampling: how coalitions are drawn (default ``"kernel"``, Captum's scheme):
      ``"kernel"``: i.i.d., sizes from the Shapley kernel distribution and
      uniform members, so the regression weights are all 1.
      ``"paired"``: the same draws for ``samples / 2`` coalitions, each with its
      complement (Covert and Lee 2021, "Improving KernelSHAP: Practical Shapley
      Value Estimation via Linear Regression"): the pair's errors cancel to
      first order, so the variance per evaluation is much lower (exact for
      models with interactions of order 2 at most).
      ``"leverage"``: Leverage SHAP (Musco and Witter 2025, "Provably Accurate
      Shapley Value Estimation via Leverage Score Sampling"): pairs drawn
      without replacement with equal total probability per coalition size
      (the leverage scores of the constrained regression), small sizes
      enumerated whole, rows reweighted by kernel / inclusion probability
      (`shapley.leverage_pairs`).
    segments: default ``"slic"`` (``n_segments=50``) or any value accepted by
      `lime`; fill: default 0.0 (Captum's baseline) or a float/array/"blur"/"mean".
    score: ``"logit"`` (default, as Captum) or ``"probability"``.
    batch_size: coalitions per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
    return_stderr: also return a standard error per element, shaped like the
      map: the delta-method (sandwich) error of the constrained regression
      over the sampling units (coalitions, or pairs), stratified by size for
      ``"leverage"`` with its finite-population correction
      (`shapley.kernel_stderr`); zeros with ``exact``. A CLT estimate: it
      needs a few dozen units to be calibrated.
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images, `fill`
      being what partly removed patches still show. The empty coalition is then
      the model with every patch removed.

  Returns:
    attributions shaped like `x`, or ``(attributions, stderr)``.
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, blur_sigma, "kernel_shap")
  f, x, target = prepare(f, x, target)
  M.check_score(score)
  exact = bool(exact)
  V.check_choice(sampling, "sampling", SH.SAMPLINGS)
  if not exact:
    key = require_key(key, "kernel_shap")
    samples = parallel.check_count(samples, "samples", minimum=1 if sampling == "kernel" else 2)
    if sampling != "kernel" and samples % 2:
      raise ValueError(f"samples: sampling={sampling!r} draws coalitions in complementary pairs,"
                       f" so samples must be even, got {samples}")
  labels, counts, m, fillv = _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma)
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "kernel_shap")
  if exact:
    m = int(counts.max())  # no padding: 2^M coalitions
    if m > 16:
      raise ValueError(f"exact=True enumerates 2^M coalitions and needs M <= 16 groups, got M = {m}")
    out = done(_kernel_shap_exact(f, x, target, fillv, labels, counts, m, score,
                                  V.check_batch_size(batch_size)))
    return (out, jnp.zeros_like(out)) if return_stderr else out
  MK.check_design(samples, m, "kernel_shap")
  if sampling == "leverage" and m < 2:
    sampling = "paired"  # one group: the constraint alone decides it
  return done(_kernel_shap(f, x, target, key, fillv, labels, counts, samples, m, sampling, score,
                           V.check_batch_size(batch_size), bool(return_stderr)))


# ----------------------------------------------------------------------------
# Shapley value sampling.


def _permutation_positions(key, samples, counts, m, antithetic):
  """``[S, B, M]`` int32: the position of each group in permutation s of example i.

  Example i's permutations come from one 1-D uniform draw with key
  ``fold_in(key, i)``, read as ``[M, S']`` so that entry (j, s) sits at
  ``j S' + s`` whatever the padded M (no dependence on the batch size or the
  other examples' group counts); a single 1-D random call compiles far faster
  than one per permutation. Padded groups go last in every permutation (adding
  them changes nothing). Antithetic: permutation ``2p + 1`` is permutation
  ``2p`` reversed (its uniforms mirrored), and ``S' = S / 2``.
  """
  draws = samples // 2 if antithetic else samples

  def one(k, count):
    u = jax.random.uniform(k, (m * draws,)).reshape(m, draws).T  # [S', M]
    if antithetic:
      u = jnp.stack([u, 1.0 - u], 1).reshape(samples, m)
    u = jnp.where(jnp.arange(m) < count, u, 2.0 + jnp.arange(m))
    return jnp.argsort(jnp.argsort(u, axis=1), axis=1)

  return jax.vmap(one, out_axes=1)(MK.row_keys(key, counts.shape[0]), counts).astype(jnp.int32)


@M.jit(static_argnames=("samples", "m", "score", "batch_size", "antithetic", "stderr"))
def _shapley_sampling(f, x, target, key, fill, labels, counts, samples, m, score, batch_size,
                      antithetic, stderr):
  b = x.shape[0]
  # The positions, like the scores below, are [S, B, M]-sized: the scores of
  # every step are held for the gains anyway.
  pos = _permutation_positions(key, samples, counts, m, antithetic)

  def one(st):
    s, t = st
    z = (pos[s] < t).astype(jnp.float32)  # the first t groups of permutation s
    return M.target_score(f, MK.apply_coalition(x, fill, labels, z), target, score)

  steps = jnp.arange(m + 1)
  grid = (jnp.repeat(jnp.arange(samples), m + 1), jnp.tile(steps, samples))
  y = parallel.chunked_map(one, grid, batch_size=batch_size).reshape(samples, m + 1, b)
  y = y.transpose(0, 2, 1)  # [S, B, M + 1]
  # Group i's gain in permutation s: the score after it joined minus before.
  gains = jnp.take_along_axis(y, pos + 1, axis=2) - jnp.take_along_axis(y, pos, axis=2)
  phi = gains.mean(0)
  if not stderr:
    return MK.expand_map(phi, labels)
  # Standard error by the CLT over independent units: a permutation, or an
  # antithetic pair (whose two halves are dependent).
  per = 2 if antithetic else 1
  units = gains.reshape(samples // per, per, b, m).mean(1)
  se = jnp.sqrt(((units - phi) ** 2).sum(0) / (units.shape[0] - 1) / units.shape[0])
  return MK.expand_map(phi, labels), MK.expand_map(se, labels)


# One return type per flag value: an array, or (array, stderr) with return_stderr=True.
@typing.overload
def shapley_sampling(f, x, target, *, key=..., samples: int = ..., antithetic: bool = ...,
                     segments: Any = ..., segmentation_options: dict | None = ..., fill: Any = ...,
                     blur_sigma: float = ..., score: str = ..., batch_size: int | None = ...,
                     return_stderr: Literal[False] = ..., removal: Any = ...) -> Array: ...
@typing.overload
def shapley_sampling(f, x, target, *, key=..., samples: int = ..., antithetic: bool = ...,
                     segments: Any = ..., segmentation_options: dict | None = ..., fill: Any = ...,
                     blur_sigma: float = ..., score: str = ..., batch_size: int | None = ...,
                     return_stderr: Literal[True], removal: Any = ...) -> tuple[Array, Array]: ...

@REGISTRY.register("shapley_sampling", family="perturbation", returns="input",
    needs=("key", "segments"), evaluations=_shapley_evaluations, backward=False,
    smoke={"samples": 2})
def shapley_sampling(f, x, target, *, key=None, samples: int = 25, antithetic: bool = False,
                     segments: Any = "slic", segmentation_options: dict | None = None,
                     fill: Any = 0.0, blur_sigma: float = 10.0, score: str = "logit",
                     batch_size: int | None = DEFAULT_BATCH, return_stderr: bool = False,
                     removal: Any = None):
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
    antithetic: pair each permutation with its reverse (default False; then
      `samples` must be even). A group early in one is late in the other, so
      the pair's errors cancel: exact for models with interactions of order 2
      at most, and lower variance per evaluation in general (Mitchell et al.
      2022, "Sampling Permutations for Shapley Value Estimation").
    segments: default ``"slic"`` (``n_segments=50``), ``"elements"`` (every
      scalar a feature, Captum's default without a feature mask), or any value
      accepted by `lime`. fill: default 0.0 (Captum's baseline).
    score: ``"logit"`` (default, as Captum) or ``"probability"``.
    batch_size: evaluations per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
    return_stderr: also return a standard error per element, shaped like the
      map: the standard deviation of the per-permutation (antithetic: per
      pair) attributions over the square root of their count (CLT; needs at
      least 2 units).
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images, `fill`
      being what partly removed patches still show.

  Returns:
    attributions shaped like `x`, or ``(attributions, stderr)``.
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, blur_sigma, "shapley_sampling")
  f, x, target = prepare(f, x, target)
  key = require_key(key, "shapley_sampling")
  M.check_score(score)
  samples = parallel.check_count(samples, "samples")
  antithetic = bool(antithetic)
  if antithetic and samples % 2:
    raise ValueError(f"samples: antithetic=True pairs each permutation with its reverse, so"
                     f" samples must be even, got {samples}")
  if return_stderr and samples < (4 if antithetic else 2):
    raise ValueError(f"return_stderr: the standard error needs at least 2 independent"
                     f" {'pairs' if antithetic else 'permutations'}, got samples={samples}")
  labels, counts, m, fillv = _groups_and_fill(x, segments, segmentation_options, fill, blur_sigma)
  MK.check_evaluations(samples * (m + 1), "samples", samples, "shapley_sampling")
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "shapley_sampling")
  return done(_shapley_sampling(f, x, target, key, fillv, labels, counts, samples, m, score,
                                V.check_batch_size(batch_size), antithetic, bool(return_stderr)))


# Extremal perturbation, Sobol and HSIC live in private modules (one idea each);
# importing them registers them, and they are re-exported here.
from saljax.explainers._extremal import extremal_perturbation  # noqa: E402,F401
from saljax.explainers.sensitivity import hsic, sobol  # noqa: E402,F401
