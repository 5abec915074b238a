"""Faithfulness metrics: does removing what the map calls relevant change the output?

- `deletion`, `insertion` (Petsiuk, Das, Saenko 2018, RISE), `pixel_flipping`
  (MoRF / LeRF, Bach et al. 2015; Samek et al. 2017) and `area_between_curves`:
  a curve of the target score as features are removed (or inserted) in the
  order of the map, one forward pass of the batch per step; score = trapezoid
  AUC of the curve. Steps remove pixels, square patches (`patch_size`) or
  segments (`segments`, e.g. superpixels).
- `road` (Rong et al. 2022): removal with noisy linear imputation instead of a
  constant fill.
- `faithfulness_correlation` (Bhatt et al. 2020) and `sensitivity_n` (Ancona
  et al. 2018): correlation between the attribution mass of random subsets and
  the output drop when they are removed.
- `infidelity` (Yeh et al. 2019): expected squared error between the
  attribution's linear prediction of a perturbation's effect and the effect.

Conventions (see `saljax.metrics._common`): features are pixels (all channels)
for NHWC images, coordinates otherwise; NHWC attributions shaped like `x` are
summed over channels (signed) to rank pixels; ties are broken by index, or at
random with a `key`. Curve metrics return ``{"score": [B], "curve": [B, K]}``.
Work per step or sample runs through `saljax.parallel.chunked_map`, with
``batch_size`` steps (samples) evaluated together for the whole batch.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax import removal as R
from saljax.metrics import _common as C
from saljax.metrics._registry import REGISTRY

Array = jax.Array


def _curve_evaluations(o, f, x) -> int:
  """The clean input and one evaluation per step."""
  p = _check_patch(o["patch_size"], x)
  segments, num_segments = _check_segments(o.get("segments"), x, p)
  steps = o["steps"]
  if steps is None:
    steps = num_segments if segments is not None else _check_steps(None, x, p)
  return steps + 1


def _default_n_values(x) -> np.ndarray:
  n_feat = int(np.prod(C.feature_shape(x)[1:]))
  return np.unique(np.geomspace(1, max(1, int(0.8 * n_feat)), 10).astype(int))


def _morf_lower(o) -> str:
  """Removing the most relevant first: lower is better; the least relevant: higher."""
  return "lower" if o["order"] == "morf" else "higher"


def _sensitivity_n_evaluations(o, f, x) -> int:
  """The clean input, then `samples` subsets per size."""
  n_values = o["n_values"]
  if n_values is None:
    n_values = _default_n_values(x)
  elif isinstance(n_values, (int, np.integer)):
    n_values = (n_values,)
  return 1 + len(n_values) * o["samples"]


# ----------------------------------------------------------------------------
# Ranking units (pixels or square patches).


def _unit_ranks(fmap: Array, key, patch_size: int, descending: bool) -> tuple[Array, int]:
  """Rank of the unit each feature belongs to (0 = first removed), and the unit count.

  With ``patch_size > 1`` (images only) relevance is summed over square
  patches (the last row/column of patches may be partial) and whole patches
  are removed together.
  """
  if patch_size == 1:
    return C.ranks(fmap, key, descending=descending), int(np.prod(fmap.shape[1:]))
  b, h, w = fmap.shape
  p = patch_size
  hp, wp = -(-h // p), -(-w // p)
  padded = jnp.pad(fmap, ((0, 0), (0, hp * p - h), (0, wp * p - w)))
  pooled = padded.reshape(b, hp, p, wp, p).sum((2, 4))
  r = C.ranks(pooled, key, descending=descending)
  r = jnp.repeat(jnp.repeat(r, p, axis=1), p, axis=2)[:, :h, :w]
  return r, hp * wp


def _check_patch(patch_size: Any, x: Array) -> int:
  p = V.check_positive_int(patch_size, "patch_size")
  if p > 1 and x.ndim != 4:
    raise ValueError(f"patch_size > 1 needs NHWC images [B, H, W, C], got x of shape"
                     f" {tuple(x.shape)}; for other inputs group features with segments= (an int"
                     " label array shaped like x or x[0])")
  if x.ndim == 4 and p > min(x.shape[1:3]):
    raise ValueError(f"patch_size: expected at most min(H, W) = {min(x.shape[1:3])}, got {p}")
  return p


def _units(x: Array, p: int) -> int:
  if x.ndim == 4:
    return (-(-x.shape[1] // p)) * (-(-x.shape[2] // p))
  return int(np.prod(x.shape[1:]))


def _check_steps(steps: Any, x: Array, p: int) -> int:
  units = _units(x, p)
  if steps is None:
    # RISE: 224 px per step at 224x224, i.e. one image row per step.
    return -(-x.shape[1] // p) if x.ndim == 4 else min(units, 100)
  steps = parallel.check_count(steps, "steps")
  if steps > units:
    raise ValueError(f"steps: expected at most the number of features ({units}), got {steps}")
  return steps


# ----------------------------------------------------------------------------
# Deletion, insertion, pixel flipping.


def _segment_ranks(fmap: Array, segments: Array, num_segments: int, key, descending: bool):
  """Rank of each pixel's segment (by mean relevance) and segments per example.

  `segments` are per-example labels ``0..S_b-1`` (relabelled by `_check_segments`);
  label ids an example does not use rank last and are never reached."""
  b = fmap.shape[0]
  flat, lab = fmap.reshape(b, -1), segments.reshape(b, -1)
  sums = jax.vmap(lambda v, l: jax.ops.segment_sum(v, l, num_segments))(flat, lab)
  counts = jax.vmap(lambda l: jax.ops.segment_sum(jnp.ones_like(l), l, num_segments))(lab)
  mean = sums / jnp.maximum(counts, 1)
  sign = 1.0 if descending else -1.0
  mean = jnp.where(counts > 0, sign * mean, -jnp.inf)
  r = C.ranks(mean, key, descending=True)
  return jnp.take_along_axis(r, lab, axis=1).reshape(segments.shape), (counts > 0).sum(1)


@M.jit(static_argnames=("steps", "patch_size", "descending", "insert",
                                             "score", "batch_size", "num_segments"))
def _perturbation_curve(f, x, fmap, fill, target, key, segments, steps, patch_size, descending,
                        insert, score, batch_size, num_segments):
  if segments is None:
    rank, units = _unit_ranks(fmap, key, patch_size, descending)
    units = jnp.full((x.shape[0],), units, jnp.int32)
  else:
    rank, units = _segment_ranks(fmap, segments, num_segments, key, descending)
  start, finish = (fill, x) if insert else (x, fill)
  # Step i has changed the first floor(i * units / steps) units: RISE's grid
  # when steps divides the unit count, and a full sweep at i = steps.
  thresholds = (jnp.arange(steps + 1, dtype=jnp.int32)[:, None] * units[None, :]) // steps

  def one(t):
    changed = C.expand(rank < t.reshape((-1,) + (1,) * (rank.ndim - 1)), x)
    return C.target_score(f, jnp.where(changed, finish, start), target, score)

  curve = parallel.chunked_map(one, thresholds, batch_size=batch_size).T
  return {"score": C.trapezoid_auc(curve), "curve": curve}


def _check_segments(segments, x, patch_size):
  """Relabels `segments` to ``0..S_b-1`` per example; returns (labels, max S).

  `segments` label the features (`_common.feature_shape`): ``[B, H, W]`` pixels
  of NHWC images, or shaped like `x` for any other input (``[B, D]``,
  ``[B, T, C]``, ...); without the batch axis, one map serves every example.
  """
  if segments is None:
    return None, 0
  if patch_size != 1:
    raise ValueError("give segments or patch_size, not both")
  seg = np.asarray(segments)
  want = C.feature_shape(x)
  if seg.shape not in (want, want[1:]) or not np.issubdtype(seg.dtype, np.integer):
    raise ValueError(f"segments: expected integer labels of shape {want} or {want[1:]}"
                     f" (one per {'pixel' if x.ndim == 4 else 'element of x'}), got"
                     f" {seg.dtype} {seg.shape}")
  seg = np.broadcast_to(seg, want)
  # One np.unique over (example, label) pairs relabels every example at once.
  seg = seg.astype(np.int64) - seg.min()
  span = int(seg.max()) + 1
  per_example = (-1,) + (1,) * (seg.ndim - 1)
  offset = (np.arange(seg.shape[0]) * span).reshape(per_example)
  uniq, inv = np.unique(seg + offset, return_inverse=True)
  first = np.searchsorted(uniq, np.arange(seg.shape[0]) * span)
  out = inv.reshape(seg.shape) - first.reshape(per_example)
  most = int(np.diff(np.append(first, len(uniq))).max())
  return jnp.asarray(out, jnp.int32), most


def _curve_metric(method, f, x, attribution, target, key, *, steps, fill, patch_size, score,
                  batch_size, order, insert, blur_sigma=5.0, segments=None, removal=None):
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, blur_sigma, method)
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  V.check_choice(order, "order", ("morf", "lerf"))
  C.check_score(score)
  p = _check_patch(patch_size, x)
  segments, num_segments = _check_segments(segments, x, p)
  if segments is not None and steps is None:
    steps = num_segments
  steps = _check_steps(steps, x, p) if segments is None else parallel.check_count(steps, "steps")
  if segments is not None and steps > num_segments:
    raise ValueError(f"steps: expected at most the number of segments ({num_segments}), got {steps}")
  batch_size = V.check_batch_size(batch_size)
  key = C.check_key(key, method, required=False)
  fill = C.make_fill(x, fill, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x)
  if keep_model is not None:
    # The keep channel (1 kept, 0 removed) is swept with the pixels (saljax.removal).
    f = keep_model
    x, fill, _ = R.augment(x, fill, None, method)
  return _perturbation_curve(f, x, fmap, fill, target, key, segments, steps, p, order == "morf",
                             insert, score, batch_size, num_segments)


@REGISTRY.register("deletion", family="faithfulness", returns="curve",
    evaluations=_curve_evaluations, backward=False, smoke={"steps": 8}, direction="lower")
def deletion(f, x, attribution, target, *, key=None, steps: int | None = None, fill: Any = "zeros",
             patch_size: int = 1, segments=None, score: str = "probability",
             batch_size: int | None = None, removal: Any = None):
  """Deletion (Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", arXiv:1806.07421).

  Pixels are removed most relevant first (all channels at once, replaced by
  `fill`) and the target score is recorded after every step; a faithful map
  makes the score fall fast, so LOWER is better.

  Args:
    f: model ``x[B, ...] -> logits[B, C]``.
    x: inputs; NHWC images (pixels are the features) or any ``[B, ...]``.
    attribution: shaped like `x`, or ``[B, H, W]`` for images. Ranked by the
      signed channel sum (as RISE and ROAD).
    target: class indices ``[B]``, an int, or ``"predicted"`` (RISE explains
      the class predicted on the clean image).
    key: optional; breaks ties in the ranking at random (a constant map gives
      a random order). Without it ties go in row-major order.
    steps: number of steps; step ``i`` has removed ``floor(i * N / steps)`` of
      the ``N`` units. Default: one image row per step (RISE's 224 px per step
      at 224x224), ``min(N, 100)`` for non-image inputs.
    fill: ``"zeros"`` (default, RISE: zeros in the normalized input space),
      ``"mean"``, ``"blur"``, a float or a baseline array (`_common.make_fill`).
    patch_size: remove square patches of this side instead of pixels (images).
    segments: remove regions instead: integer labels ``[B, H, W]`` for
      images (e.g. SLIC superpixels), shaped like `x` for other inputs (e.g.
      one label per time step of ``[B, T, C]``), or either without the batch
      axis; ranked by their mean relevance; `steps` then counts
      segments (default: one segment per step) and examples with fewer
      segments sweep theirs in the same number of steps.
    score: ``"probability"`` (default, softmax as RISE) or ``"logit"``.
    batch_size: steps evaluated together (None: all steps at once).
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward on the removed pixels (`saljax.removal`), NHWC
      images only, `fill` being what partly removed patches still show.

  Returns:
    ``{"score": AUC [B], "curve": [B, steps + 1]}``, the AUC by the trapezoid
    rule on the uniform grid ``i / steps`` over [0, 1] (RISE's ``auc``).
  """
  return _curve_metric("deletion", f, x, attribution, target, key, steps=steps, fill=fill,
                       patch_size=patch_size, score=score, batch_size=batch_size, order="morf",
                       insert=False, segments=segments, removal=removal)


@REGISTRY.register("insertion", family="faithfulness", returns="curve",
    evaluations=_curve_evaluations, backward=False, smoke={"steps": 8}, direction="higher")
def insertion(f, x, attribution, target, *, key=None, steps: int | None = None, fill: Any = "blur",
              blur_sigma: float = 5.0, patch_size: int = 1, segments=None,
              score: str = "probability", batch_size: int | None = None, removal: Any = None):
  """Insertion (Petsiuk, Das, Saenko 2018, RISE, arXiv:1806.07421).

  Starts from `fill` (default: the image blurred with sigma `blur_sigma` = 5
  pixels on an 11x11 kernel, RISE's setting) and puts the original pixels
  back most relevant first; HIGHER is better. Arguments (``removal=`` too:
  the start is then the model with every pixel removed) and return value as
  in `deletion`.
  """
  return _curve_metric("insertion", f, x, attribution, target, key, steps=steps, fill=fill,
                       patch_size=patch_size, score=score, batch_size=batch_size, order="morf",
                       insert=True, blur_sigma=blur_sigma, segments=segments, removal=removal)


@REGISTRY.register("pixel_flipping", family="faithfulness", returns="curve",
    evaluations=_curve_evaluations, backward=False, smoke={"steps": 8}, direction=_morf_lower)
def pixel_flipping(f, x, attribution, target, *, key=None, order: str = "morf",
                   steps: int | None = None, fill: Any = "zeros", patch_size: int = 1,
                   segments=None, score: str = "probability", batch_size: int | None = None,
                   removal: Any = None):
  """Pixel flipping / region perturbation (Bach et al. 2015, "On Pixel-Wise
  Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
  Propagation", PLoS ONE; Samek et al. 2017, "Evaluating the Visualization of
  What a Deep Neural Network Has Learned", arXiv:1509.06321).

  ``order="morf"`` removes the most relevant features first (lower AUC is
  better; identical to `deletion`), ``"lerf"`` the least relevant first
  (higher is better). `patch_size` > 1 gives Samek et al.'s region
  perturbation. Other arguments (``removal=`` too) and the return value as in
  `deletion`.
  """
  return _curve_metric("pixel_flipping", f, x, attribution, target, key, steps=steps, fill=fill,
                       patch_size=patch_size, score=score, batch_size=batch_size, order=order,
                       insert=False, segments=segments, removal=removal)


@REGISTRY.register("area_between_curves", family="faithfulness", returns="curve",
    evaluations=lambda o, f, x: 2 * _curve_evaluations(o, f, x), backward=False, smoke={"steps": 8},
    direction="higher")
def area_between_curves(f, x, attribution, target, *, key=None, steps: int | None = None,
                        fill: Any = "zeros", patch_size: int = 1, segments=None,
                        score: str = "probability", batch_size: int | None = None,
                        removal: Any = None):
  """Area between the LeRF and MoRF perturbation curves (ABPC; Samek et al.
  2017, arXiv:1509.06321): ``AUC(LeRF) - AUC(MoRF)``, higher is better.

  Returns ``{"score": [B], "curve": [B, steps + 1]}`` with the curve
  ``LeRF - MoRF`` per step. Arguments (``removal=`` too) as in `deletion`.
  """
  kw = dict(steps=steps, fill=fill, patch_size=patch_size, score=score, batch_size=batch_size,
            insert=False, segments=segments, removal=removal)
  morf = _curve_metric("area_between_curves", f, x, attribution, target, key, order="morf", **kw)
  lerf = _curve_metric("area_between_curves", f, x, attribution, target, key, order="lerf", **kw)
  return {"score": lerf["score"] - morf["score"], "curve": lerf["curve"] - morf["curve"]}


# ----------------------------------------------------------------------------
# ROAD: noisy linear imputation.

# 8-neighbour stencil of Rong et al.'s NoisyLinearImputer: edges 1/6, corners 1/12.
_STENCIL = (((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
            ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12))


def _neighbour_sum(v: Array) -> Array:
  """Stencil-weighted sum of the in-image neighbours of every pixel of `v[H, W, ...]`."""
  h, w = v.shape[:2]
  pad = ((1, 1), (1, 1)) + ((0, 0),) * (v.ndim - 2)
  p = jnp.pad(v, pad)
  return sum(wt * p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for (dy, dx), wt in _STENCIL)


def linear_imputation(x: Array, removed: Array, *, tol: float = 1e-6,
                      maxiter: int | None = None) -> Array:
  """Noise-free linear imputation of ROAD for one image `x[H, W, C]`.

  Every removed pixel (``removed[H, W]`` True) is set to the stencil-weighted
  mean of its in-image neighbours (edges 1/6, corners 1/12; neighbours
  outside the image dropped), removed neighbours being unknowns too: the
  coupled sparse system of Rong et al. (one matrix, one right-hand side per
  channel). Solved matrix-free by conjugate gradients with a Jacobi
  preconditioner (the system is symmetric positive definite when every
  removed region touches a known pixel). A removed region with no known
  neighbour at all (e.g. everything removed) is singular in the reference; here
  it stays at 0.
  """
  h, w = removed.shape
  m = removed.astype(x.dtype)[..., None]
  diag = _neighbour_sum(jnp.ones((h, w, 1), x.dtype))

  def matvec(u):
    return jnp.where(m > 0, diag * u - _neighbour_sum(u * m), u)

  b = jnp.where(m > 0, _neighbour_sum(x * (1 - m)), 0.0)
  inv_diag = jnp.where(m > 0, 1.0 / diag, 1.0)
  maxiter = maxiter if maxiter is not None else max(100, 8 * max(h, w))
  u, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, maxiter=maxiter,
                                    M=lambda r: inv_diag * r)
  u = jnp.where(jnp.isfinite(u), u, 0.0)
  return jnp.where(m > 0, u, x)


@M.jit(static_argnames=("counts", "descending", "score", "batch_size",
                                             "maxiter", "keep_channel"))
def _road(f, x, fmap, target, key, noise, counts, descending, score, batch_size, maxiter,
          fill=None, keep_channel=False):
  b = x.shape[0]
  tie_key, noise_key = jax.random.split(key)
  rank = C.ranks(fmap, tie_key, descending=descending)
  noise_keys = jax.random.split(noise_key, len(counts))
  impute = jax.vmap(functools.partial(linear_imputation, maxiter=maxiter))

  def one(args):
    count, k = args
    removed = rank < count
    if fill is None:  # ROAD's own removal: noisy linear imputation
      xi = impute(x, removed)
      eps = noise * jax.random.normal(k, x.shape, x.dtype)
      xi = xi + jnp.where(C.expand(removed, x), eps, 0.0)
    else:  # a pixel strategy of `removal=`
      xi = jnp.where(C.expand(removed, x), fill, x)
    if keep_channel:  # a model strategy: the mask-aware forward reads the keep-mask
      xi = jnp.concatenate([xi, (~removed)[..., None].astype(x.dtype)], -1)
    if score == "accuracy":
      return (jnp.argmax(f(xi), -1) == target).astype(jnp.float32)
    return C.target_score(f, xi, target, score)

  curve = parallel.chunked_map(one, (jnp.asarray(counts, jnp.int32), noise_keys),
                               batch_size=batch_size).T
  del b
  return {"score": curve.mean(1), "curve": curve}


ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)


@REGISTRY.register("road", family="faithfulness", returns="curve", needs=("key",),
    evaluations=lambda o, f, x: len(o["percentages"]), backward=False,
    smoke={"percentages": (0.2, 0.5)}, direction=_morf_lower)
def road(f, x, attribution, target, *, key=None, percentages=ROAD_PERCENTAGES, order: str = "morf",
         noise: float = 0.01, score: str = "accuracy", batch_size: int | None = None,
         maxiter: int | None = None, removal: Any = None):
  """ROAD: Remove And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci 2022,
  "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
  ICML, arXiv:2202.00449), without retraining.

  For each fraction ``p`` the ``floor(p * H * W)`` pixels ranked first are
  removed and filled by noisy linear imputation (`linear_imputation`, then
  ``noise * N(0, 1)`` on the imputed pixels only), and the model is scored on
  the result. Ranking: signed channel sum; ties at random by `key` (the
  reference adds a fixed 1e-4 Gaussian tie-break map).

  Args:
    x: NHWC images. The reference imputes raw [0, 1] pixels before
      normalization; linear imputation commutes with a per-channel affine
      normalization, so only `noise` depends on the space: give it in the
      space of `x` (0.01 in [0, 1] pixels is 0.01 / std after standardizing).
    key: required (noise and ties).
    percentages: fractions removed, default (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
      (the reference's no-retraining MoRF setting).
    order: ``"morf"`` removes the most relevant pixels first (lower is better),
      ``"lerf"`` the least relevant first (higher is better). Here ``p`` is
      always the fraction REMOVED (in the reference's LeRF code it is the
      fraction kept).
    noise: imputation noise standard deviation, default 0.01 (reference and
      Quantus default).
    score: ``"accuracy"`` (default, the reference: 1 when the argmax is
      `target`), ``"probability"`` or ``"logit"``.
    batch_size: fractions evaluated together.
    maxiter: conjugate-gradient iterations cap (default ``max(100, 8 max(H, W))``).
    removal: None (default: ROAD's noisy linear imputation), a
      `saljax.removal.Removal` or a kind's name: ``"constant"``/``"blur"``/
      ``"mean"`` fill the removed pixels instead of imputing them (no noise);
      ``"token_drop"``/``"layer_mask"`` run the model's mask-aware forward on
      the imputed image with the removed pixels marked (`saljax.removal`).

  Returns:
    ``{"score": mean of the curve [B], "curve": [B, len(percentages)]}``.
  """
  rem = R.as_removal(removal)
  fill, blur_sigma, keep_model = (None, 5.0, None) if rem is None else R.resolve(
      rem, f, None, 5.0, "road")
  f, x, target = C.prepare_model(f, x, target)
  if x.ndim != 4:
    raise ValueError(f"road: expected NHWC images [B, H, W, C], got x of shape {tuple(x.shape)}")
  attribution = C.check_attribution(attribution, x)
  key = C.check_key(key, "road")
  percentages = C.check_fractions(percentages, "percentages")
  V.check_choice(order, "order", ("morf", "lerf"))
  V.check_choice(score, "score", ("accuracy",) + C.SCORES)
  batch_size = V.check_batch_size(batch_size)
  if maxiter is not None:
    maxiter = parallel.check_count(maxiter, "maxiter")
  n = x.shape[1] * x.shape[2]
  counts = tuple(int(np.floor(p * n)) for p in percentages)
  fmap = C.feature_map(attribution, x)
  fillv = None if fill is None else C.make_fill(x, fill, blur_sigma=blur_sigma)
  return _road(keep_model if keep_model is not None else f, x, fmap, target, key,
               jnp.asarray(noise, x.dtype), counts, order == "morf", score, batch_size, maxiter,
               fillv, keep_model is not None)


# ----------------------------------------------------------------------------
# Random-subset correlations.


@M.jit(static_argnames=("n_values", "samples", "score", "batch_size"))
def _subset_correlation(f, x, fmap, base, target, key, n_values, samples, score, batch_size):
  b = x.shape[0]
  flat = fmap.reshape(b, -1)
  n_feat = flat.shape[1]
  s0 = C.target_score(f, x, target, score)
  ns = jnp.repeat(jnp.asarray(n_values, jnp.int32), samples)
  keys = jax.random.split(key, len(n_values) * samples)

  def one(args):
    k, n = args
    # A uniformly random subset of n features per example.
    chosen = C.ranks(jax.random.uniform(k, (b, n_feat))) < n
    xs = jnp.where(C.expand(chosen.reshape(fmap.shape), x), base, x)
    drop = s0 - C.target_score(f, xs, target, score)
    return (flat * chosen).sum(1), drop

  sums, drops = parallel.chunked_map(one, (keys, ns), batch_size=batch_size)
  sums = sums.reshape(len(n_values), samples, b)
  drops = drops.reshape(len(n_values), samples, b)
  return C.pearson(sums, drops, axis=1).T


@REGISTRY.register("faithfulness_correlation", family="faithfulness", returns="scores",
    needs=("key",), evaluations=lambda o, f, x: o["samples"] + 1, backward=False,
    smoke={"samples": 8, "subset_size": 16}, direction="higher")
def faithfulness_correlation(f, x, attribution, target, *, key=None, subset_size: int | None = None,
                             samples: int = 100, baseline: Any = "zeros", score: str = "logit",
                             batch_size: int | None = None, removal: Any = None):
  """Faithfulness correlation / mu-fidelity (Bhatt, Weller, Moura 2020,
  "Evaluating and Aggregating Feature-based Model Explanations", IJCAI,
  arXiv:2005.00631).

  Pearson correlation, over `samples` random subsets S of `subset_size`
  features, between ``sum_{i in S} a_i`` and ``f(x) - f(x with S set to the
  baseline)``. Higher is better; 0 when either side is constant.

  Args:
    key: required (subsets).
    subset_size: features per subset; default ``min(224, N // 4)`` (Quantus'
      default 224, capped at a quarter of the features so that small inputs
      still get distinct subsets).
    samples: subsets per example, default 100 (Quantus' ``nr_runs``).
    baseline: fill of removed features (see `_common.make_fill`), default
      zeros (Quantus' "black" in input space).
    score: ``"logit"`` (default) or ``"probability"``.
    batch_size: subsets evaluated together.
    removal: None (default: `baseline` decides), a `saljax.removal.Removal`
      or a kind's name: ``"constant"``/``"blur"``/``"mean"`` replace
      `baseline`; ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images with the
      removed pixels marked, `baseline` being what partly removed patches
      still show.

  Returns:
    ``[B]``.
  """
  baseline, blur_sigma, keep_model = R.resolve(removal, f, baseline, 5.0,
                                               "faithfulness_correlation")
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  key = C.check_key(key, "faithfulness_correlation")
  C.check_score(score)
  n_feat = int(np.prod(C.feature_shape(x)[1:]))
  subset_size = min(224, max(1, n_feat // 4)) if subset_size is None else V.check_positive_int(
      subset_size, "subset_size")
  if subset_size > n_feat:
    raise ValueError(f"subset_size: expected at most the number of features ({n_feat}), got"
                     f" {subset_size}")
  samples = parallel.check_count(samples, "samples", minimum=2)
  batch_size = V.check_batch_size(batch_size)
  base = C.make_fill(x, baseline, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x)
  f, x, base, _, _ = R.switch(keep_model, f, x, base, None, "faithfulness_correlation")
  return _subset_correlation(f, x, fmap, base, target, key, (subset_size,), samples, score,
                             batch_size)[:, 0]


@REGISTRY.register("sensitivity_n", family="faithfulness", returns="curve", needs=("key",),
    evaluations=_sensitivity_n_evaluations, backward=False, smoke={"samples": 8},
    direction="higher")
def sensitivity_n(f, x, attribution, target, *, key=None, n_values=None, samples: int = 100,
                  baseline: Any = "zeros", score: str = "logit", batch_size: int | None = None,
                  removal: Any = None):
  """Sensitivity-n (Ancona, Ceolini, Oztireli, Gross 2018, "Towards Better
  Understanding of Gradient-based Attribution Methods for Deep Neural
  Networks", ICLR, arXiv:1711.06104).

  For each subset size n, the Pearson correlation over `samples` random
  subsets between their summed attribution and the output drop when they are
  set to the baseline. A method satisfies sensitivity-n when it is 1.

  Args:
    key: required.
    n_values: subset sizes (static); default 10 sizes log-spaced from 1 to
      80% of the features (the paper sweeps n on a log scale up to most of the
      input).
    samples: subsets per size, default 100 (the paper's setting).
    baseline, score, batch_size, removal: as in `faithfulness_correlation`.

  Returns:
    ``{"score": mean over n [B], "curve": [B, len(n_values)]}``.
  """
  baseline, blur_sigma, keep_model = R.resolve(removal, f, baseline, 5.0, "sensitivity_n")
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  key = C.check_key(key, "sensitivity_n")
  C.check_score(score)
  n_feat = int(np.prod(C.feature_shape(x)[1:]))
  if n_values is None:
    n_values = _default_n_values(x)
  if isinstance(n_values, (int, np.integer)):
    n_values = (n_values,)
  n_values = tuple(V.check_positive_int(int(n), "n_values") if isinstance(n, (np.integer,))
                   else V.check_positive_int(n, "n_values") for n in n_values)
  if not n_values:
    raise ValueError("n_values: expected at least one subset size, got none")
  if max(n_values) > n_feat:
    raise ValueError(f"n_values: expected sizes at most the number of features ({n_feat}), got"
                     f" {max(n_values)}")
  samples = parallel.check_count(samples, "samples", minimum=2)
  batch_size = V.check_batch_size(batch_size)
  base = C.make_fill(x, baseline, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x)
  f, x, base, _, _ = R.switch(keep_model, f, x, base, None, "sensitivity_n")
  curve = _subset_correlation(f, x, fmap, base, target, key, n_values, samples, score, batch_size)
  return {"score": curve.mean(1), "curve": curve}


# ----------------------------------------------------------------------------
# Infidelity.


@M.jit(static_argnames=("samples", "normalize", "batch_size"))
def _infidelity(f, x, attr, target, key, noise_scale, samples, normalize, batch_size):
  b = x.shape[0]
  s0 = C.target_score(f, x, target, "logit")

  def one(k):
    i = noise_scale * jax.random.normal(k, x.shape, x.dtype)
    proj = (i * attr).reshape(b, -1).sum(1)
    delta = s0 - C.target_score(f, x - i, target, "logit")
    return jnp.stack([proj * proj, proj * delta, delta * delta, (proj - delta) ** 2])

  m = parallel.chunked_sum(one, jax.random.split(key, samples), batch_size=batch_size) / samples
  if not normalize:
    return m[3]
  # Optimal scale beta = E[p d] / E[p^2] (Yeh et al.'s normalized infidelity).
  ok = m[0] > 0
  beta = jnp.where(ok, m[1] / jnp.where(ok, m[0], 1.0), 0.0)
  return jnp.maximum(beta * beta * m[0] - 2 * beta * m[1] + m[2], 0.0)


@REGISTRY.register("infidelity", family="faithfulness", returns="scores", needs=("key",),
    evaluations=lambda o, f, x: o["samples"] + 1, backward=False, smoke={"samples": 4},
    direction="lower")
def infidelity(f, x, attribution, target, *, key=None, noise_scale: float = 0.1, samples: int = 10,
               normalize: bool = False, batch_size: int | None = None):
  """Infidelity (Yeh, Hsieh, Suggala, Inouye, Ravikumar 2019, "On the (In)fidelity
  and Sensitivity of Explanations", NeurIPS, arXiv:1901.09392).

  ``E_I[(I . a - (f(x) - f(x - I)))^2]`` on the target logit, with Gaussian
  perturbations ``I ~ N(0, noise_scale^2)`` (the paper's "noisy baseline"
  family). LOWER is better; exactly 0 for the gradient of a linear model.

  Args:
    attribution: shaped like `x` (a ``[B, H, W]`` image map is broadcast over
      channels).
    key: required.
    noise_scale: standard deviation of the perturbation, absolute, default 0.1.
    samples: perturbations per example, default 10 (Captum's
      ``n_perturb_samples``).
    normalize: rescale the attribution by the optimal ``beta`` first (the
      paper's scale-invariant variant; Captum ``normalize``), default False
      as Captum.
    batch_size: perturbations evaluated together.

  Returns:
    ``[B]``.
  """
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  key = C.check_key(key, "infidelity")
  samples = parallel.check_count(samples, "samples")
  batch_size = V.check_batch_size(batch_size)
  attr = C.expand(attribution, x) if attribution.shape != x.shape else attribution
  return _infidelity(f, x, attr, target, key, jnp.asarray(noise_scale, x.dtype), samples,
                     bool(normalize), batch_size)


# The perturbation metrics of the same family live in `perturbation` (they
# reuse the helpers above); the family's module names them too.
from saljax.metrics.perturbation import (  # noqa: E402,F401
    faithfulness_estimate, irof, monotonicity, monotonicity_correlation, region_perturbation,
    selectivity, sufficiency)
