"""Perturbation faithfulness metrics beyond deletion curves (Quantus' faithfulness family).

- `faithfulness_estimate` (Alvarez-Melis and Jaakkola 2018): correlation between
  each feature's relevance and the drop of the score when that feature alone is
  removed.
- `monotonicity` (Arya et al. 2019): adding features to a baseline in
  increasing order of relevance never lowers the score.
- `monotonicity_correlation` (Nguyen and Martinez 2020): rank correlation
  between |relevance| and the output's variance when the feature is resampled.
- `region_perturbation` (Samek et al. 2017): MoRF / LeRF removal of square
  patches, one region per step; the score is the AOPC.
- `selectivity` (Montavon et al. 2018): the score curve as patches are removed
  most relevant first; the score is its AUC.
- `irof` (Rieger and Hansen 2020): area over the normalised score curve as
  segments (superpixels) are removed most relevant first.
- `sufficiency` (Dasgupta et al. 2022): among examples of the batch whose
  explanations are close, the fraction predicted as the same class.

Conventions as the rest of the family (`saljax.metrics._common`): features are
pixels (all channels together) for NHWC images and coordinates otherwise; an
NHWC attribution shaped like `x` is summed over channels (signed) to rank
pixels; ties are broken by index, or at random with a `key`. Every step or
sample is one forward pass of the whole batch, run through
`saljax.parallel.chunked_map` with ``batch_size`` steps at once, and each metric
compiles once per shape.

Quantus 0.6 ranks and removes array *elements* (a pixel's channels are separate
features); these metrics remove whole pixels, which is Quantus with
``features_in_step`` a multiple of the channel count when the channels of a
pixel share their relevance (experiments/_quantus/faithfulness.py builds such
twins).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax import removal as R
from saljax.metrics import _common as C
from saljax.metrics import faithfulness as F
from saljax.metrics._registry import REGISTRY

Array = jax.Array


def _n_features(x) -> int:
  return int(np.prod(C.feature_shape(x)[1:]))


def _n_groups(o, x) -> int:
  return -(-_n_features(x) // o["features_in_step"])


def _check_step(features_in_step: Any, x: Array) -> int:
  s = V.check_positive_int(features_in_step, "features_in_step")
  n = _n_features(x)
  if s > n:
    raise ValueError(f"features_in_step: expected at most the number of features ({n}), got {s}")
  return s


def _groups(fmap: Array, key, step: int, descending: bool) -> tuple[Array, int]:
  """Group of every feature (rank // step, 0 = first in the order) and the group count."""
  n = int(np.prod(fmap.shape[1:]))
  return C.ranks(fmap, key, descending=descending) // step, -(-n // step)


def _group_sums(fmap: Array, group: Array, n: int) -> Array:
  """``[B, n]``: relevance summed over each group."""
  b = fmap.shape[0]
  return jax.vmap(lambda v, g: jax.ops.segment_sum(v, g, n))(fmap.reshape(b, -1),
                                                              group.reshape(b, -1))


def _where(mask: Array, a: Array, b: Array) -> Array:
  """`a` where the feature mask is True, `b` elsewhere (masks on the feature grid)."""
  return jnp.where(C.expand(mask, b), a, b)


# ----------------------------------------------------------------------------
# Faithfulness estimate.


@M.jit(static_argnames=("step", "score", "batch_size"))
def _estimate(f, x, fmap, base, target, key, step, score, batch_size):
  group, n = _groups(fmap, key, step, True)
  s0 = C.target_score(f, x, target, score)

  def one(g):
    return s0 - C.target_score(f, _where(group == g, base, x), target, score)

  drops = parallel.chunked_map(one, jnp.arange(n), batch_size=batch_size).T
  return C.pearson(_group_sums(fmap, group, n), drops)


@REGISTRY.register("faithfulness_estimate", family="faithfulness", returns="scores",
    evaluations=lambda o, f, x: 1 + _n_groups(o, x), backward=False,
    smoke={"features_in_step": 32}, direction="higher", year=2018)
def faithfulness_estimate(f, x, attribution, target, *, key=None, features_in_step: int = 1,
                          baseline: Any = "zeros", score: str = "logit",
                          batch_size: int | None = None, removal: Any = None):
  """Faithfulness estimate (Alvarez-Melis and Jaakkola 2018, "Towards Robust
  Interpretability with Self-Explaining Neural Networks", NeurIPS,
  arXiv:1806.07538).

  Pearson correlation, over the features, between each feature's relevance
  and the drop ``f(x) - f(x with that feature set to the baseline)`` (each
  removed on its own, not cumulatively). HIGHER is better; 0 where either side
  is constant (Quantus returns NaN there).

  Args:
    attribution: shaped like `x` or ``[B, H, W]``; signed channel sum per pixel
      (Quantus' ``abs=False``; Quantus' ``normalise=True`` divides by a constant,
      which a correlation ignores).
    key: optional; breaks ties in the ranking at random (only matters when
      ``features_in_step > 1`` groups features).
    features_in_step: features removed together, grouped in order of relevance
      (default 1: every feature alone, the paper).
    baseline: fill of the removed features (`_common.make_fill`), default
      zeros. Quantus' default ``"black"`` is each image's minimum instead.
    score: ``"logit"`` (default; Quantus calls with ``softmax=False``) or
      ``"probability"``.
    batch_size: steps evaluated together.
    removal: None (default: `baseline` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `baseline`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images with the removed
      pixels marked, `baseline` being what partly removed patches still show.

  Returns:
    ``[B]``.
  """
  baseline, blur_sigma, keep_model = R.resolve(removal, f, baseline, 5.0, "faithfulness_estimate")
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  step = _check_step(features_in_step, x)
  C.check_score(score)
  batch_size = V.check_batch_size(batch_size)
  key = C.check_key(key, "faithfulness_estimate", required=False)
  base = C.make_fill(x, baseline, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x)
  f, x, base, _, _ = R.switch(keep_model, f, x, base, None, "faithfulness_estimate")
  return _estimate(f, x, fmap, base, target, key, step, score, batch_size)


# ----------------------------------------------------------------------------
# Monotonicity (Arya et al.).


@M.jit(static_argnames=("step", "score", "batch_size"))
def _monotonicity(f, x, fmap, base, target, key, step, score, batch_size):
  group, n = _groups(fmap, key, step, False)

  def one(k):  # k groups put back, least relevant first
    return C.target_score(f, _where(group < k, x, base), target, score)

  curve = parallel.chunked_map(one, jnp.arange(1, n + 1), batch_size=batch_size).T
  return (jnp.diff(curve, axis=1) >= 0).all(1).astype(jnp.float32)


@REGISTRY.register("monotonicity", family="faithfulness", returns="scores",
    evaluations=lambda o, f, x: _n_groups(o, x), backward=False,
    smoke={"features_in_step": 32}, direction="higher", year=2019)
def monotonicity(f, x, attribution, target, *, key=None, features_in_step: int = 1,
                 baseline: Any = "zeros", absolute: bool = True, score: str = "probability",
                 batch_size: int | None = None, removal: Any = None):
  """Monotonicity (Arya et al. 2019, "One Explanation Does Not Fit All: A Toolkit
  and Taxonomy of AI Explainability Techniques", arXiv:1909.03012; AIX360's
  ``monotonicity_metric``).

  Starting from the baseline, features are put back (set to their value in
  `x`) in INCREASING order of relevance, `features_in_step` at a time; the
  score is 1 when the target score never decreases along the way, else 0.
  HIGHER is better (the batch mean is the fraction of monotone explanations).

  Args:
    attribution: shaped like `x` or ``[B, H, W]``.
    key: optional; breaks ties in the ranking at random.
    features_in_step: features put back per step (default 1, the paper).
    baseline: the starting input (`_common.make_fill`), default zeros (AIX360's
      ``base``). Quantus' default ``"black"`` (the image minimum) never gets
      replaced by the image: see experiments/_quantus/faithfulness.py.
    absolute: rank by ``|relevance|`` (default True, Quantus' ``abs=True``; a
      signed map puts negative evidence first and is rarely monotone).
    score: ``"probability"`` (default, AIX360 uses ``predict_proba``; Quantus
      ``softmax=True``) or ``"logit"``.
    batch_size: steps evaluated together.
    removal: None (default: `baseline` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `baseline`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images with the removed
      pixels marked, `baseline` being what partly removed patches still show.

  Returns:
    ``[B]`` floats in {0, 1}.
  """
  baseline, blur_sigma, keep_model = R.resolve(removal, f, baseline, 5.0, "monotonicity")
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  step = _check_step(features_in_step, x)
  C.check_score(score)
  batch_size = V.check_batch_size(batch_size)
  key = C.check_key(key, "monotonicity", required=False)
  base = C.make_fill(x, baseline, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x, absolute=bool(absolute))
  f, x, base, _, _ = R.switch(keep_model, f, x, base, None, "monotonicity")
  return _monotonicity(f, x, fmap, base, target, key, step, score, batch_size)


# ----------------------------------------------------------------------------
# Monotonicity correlation (Nguyen and Martinez).


def monotonicity_draws(key, index, batch: int, low: float = 0.0, high: float = 1.0) -> Array:
  """The resampled values of `monotonicity_correlation`'s draw `index`:
  ``[batch]`` uniform in ``[low, high)``, one per example (every channel of the
  resampled feature gets the same value, as Quantus' batched ``"uniform"``).

  Draw ``index = group * samples + s`` is the s-th resampling of the group-th
  feature group in increasing order of relevance; exposed so a reference
  implementation can be fed the same numbers."""
  key = C.check_key(key, "monotonicity_draws")
  return jax.random.uniform(jax.random.fold_in(key, index), (batch,), minval=low, maxval=high)


@M.jit(static_argnames=("step", "samples", "score", "batch_size"))
def _monotonicity_correlation(f, x, fmap, target, key, step, samples, low, high, score,
                              batch_size):
  b = x.shape[0]
  tie_key, draw_key = jax.random.split(key)
  group, n = _groups(fmap, tie_key, step, False)
  s0 = C.target_score(f, x, target, score)
  lift = (-1,) + (1,) * (x.ndim - 1)

  def one(j):
    u = monotonicity_draws(draw_key, j, b, low, high).astype(x.dtype)
    xs = _where(group == j // samples, jnp.broadcast_to(u.reshape(lift), x.shape), x)
    return (C.target_score(f, xs, target, score) - s0) ** 2

  sq = parallel.chunked_map(one, jnp.arange(n * samples), batch_size=batch_size)
  var = sq.reshape(n, samples, b).mean(1).T
  return C.spearman(_group_sums(fmap, group, n), var)


@REGISTRY.register("monotonicity_correlation", family="faithfulness", returns="scores",
    needs=("key",), evaluations=lambda o, f, x: 1 + _n_groups(o, x) * o["samples"],
    backward=False, smoke={"features_in_step": 64, "samples": 2}, direction="higher", year=2020)
def monotonicity_correlation(f, x, attribution, target, *, key=None, samples: int = 100,
                             features_in_step: int = 1, low: float = 0.0, high: float = 1.0,
                             absolute: bool = True, score: str = "probability",
                             batch_size: int | None = None):
  """Monotonicity correlation (Nguyen and Martinez 2020, "On Quantitative Aspects
  of Model Interpretability", arXiv:2007.07584).

  For each feature (group of `features_in_step` features, in increasing order
  of relevance) the expected squared change of the target score when it is
  resampled, ``E_u[(f(x with feature := u) - f(x))^2]`` over `samples` draws
  ``u ~ U(low, high)``; the score is the Spearman correlation between the
  features' relevance and these variances. HIGHER is better (1: relevance
  ranks features exactly as their effect on the output).

  Args:
    attribution: shaped like `x` or ``[B, H, W]``.
    key: required (draws; ties, which only matter when groups form).
    samples: draws per feature, default 100 (Quantus' ``nr_samples``).
    features_in_step: features resampled together, default 1 (the paper).
    low, high: range of the uniform draws, default [0, 1) (Quantus'
      ``"uniform"`` baseline, ``uniform_low``/``uniform_high``); one value per
      example and draw, shared by the channels of a pixel (`monotonicity_draws`).
    absolute: correlate ``|relevance|`` (default True, the paper and Quantus'
      ``abs=True``).
    score: ``"probability"`` (default, Quantus ``softmax=True``) or ``"logit"``.
      Quantus divides the variances by ``f(x)^2``, a per-example constant that
      a rank correlation ignores.
    batch_size: draws evaluated together.

  The ranks are of per-feature prediction changes that on a real network are
  mostly at float32's rounding level: on the pretrained Lite0 at 32 px with 3
  samples, float32 and float64 evaluations of the same model differ by ~6e-3
  (docs/benchmarks.md). Use x64 or more samples where the third digit matters.

  Returns:
    ``[B]``.
  """
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  key = C.check_key(key, "monotonicity_correlation")
  samples = parallel.check_count(samples, "samples")
  step = _check_step(features_in_step, x)
  C.check_score(score)
  low, high = float(low), float(high)
  if not low < high:
    raise ValueError(f"low, high: expected low < high, got low={low}, high={high}")
  batch_size = V.check_batch_size(batch_size)
  fmap = C.feature_map(attribution, x, absolute=bool(absolute))
  return _monotonicity_correlation(f, x, fmap, target, key, step, samples, low, high, score,
                                   batch_size)


# ----------------------------------------------------------------------------
# Patch curves: region perturbation and selectivity.


@M.jit(static_argnames=("patch_size", "descending", "steps", "score", "batch_size"))
def _patch_curve(f, x, fmap, fill, target, key, patch_size, descending, steps, score, batch_size):
  """``[B, steps + 1]``: the score after removing the first k patches, k = 0..steps."""
  rank, _ = F._unit_ranks(fmap, key, patch_size, descending)

  def one(k):
    return C.target_score(f, _where(rank < k, fill, x), target, score)

  return parallel.chunked_map(one, jnp.arange(steps + 1), batch_size=batch_size).T


def _patches(o, x) -> int:
  return F._units(x, o["patch_size"])


def _region_fill(x, fill, key, method, blur_sigma=5.0):
  if isinstance(fill, str) and fill == "uniform":
    key = C.check_key(key, method, required=False)
    if key is None:
      raise ValueError(f"{method}: fill='uniform' draws random values: pass key=jax.random.key(0)")
    return jax.random.uniform(jax.random.fold_in(key, 1), x.shape, x.dtype), key
  return C.make_fill(x, fill, blur_sigma=blur_sigma), key


@REGISTRY.register("region_perturbation", family="faithfulness", returns="curve",
    evaluations=lambda o, f, x: 1 + min(o["regions"], _patches(o, x)), backward=False,
    smoke={"patch_size": 4, "regions": 8}, direction=lambda o: "higher" if o["order"] == "morf"
    else "lower", year=2017)
def region_perturbation(f, x, attribution, target, *, key=None, patch_size: int = 8,
                        order: str = "morf", regions: int = 100, fill: Any = "zeros",
                        score: str = "probability", batch_size: int | None = None,
                        removal: Any = None):
  """Region perturbation (Samek, Binder, Montavon, Lapuschkin, Mueller 2017,
  "Evaluating the Visualization of What a Deep Neural Network Has Learned",
  IEEE TNNLS, arXiv:1509.06321).

  The image is cut into non-overlapping ``patch_size`` squares (the last
  row/column may be partial), ranked by their summed relevance; one region is
  removed per step (cumulatively, replaced by `fill`) for `regions` steps.
  The curve is ``f(x) - f(x^(k))``, k = 0..L, and the score the AOPC, its
  mean over the L + 1 points. MoRF: HIGHER is better (the score falls fast);
  LeRF: LOWER is better.

  Unlike `pixel_flipping` with ``patch_size`` (which spreads all patches over
  a fixed number of steps and reports the score's AUC), each step here is
  exactly one region and only the first `regions` are removed, as the paper
  and Quantus' ``RegionPerturbation``.

  Args:
    attribution: shaped like `x` or ``[B, H, W]`` (NHWC images only).
    key: optional; ties in the ranking at random; required for
      ``fill="uniform"``.
    patch_size: side of the square regions, default 8 (Quantus; the paper
      uses 9x9 regions on 224x224 images).
    order: ``"morf"`` (most relevant first, default) or ``"lerf"``.
    regions: regions removed, default 100 (Quantus' ``regions_evaluation``;
      capped at the number of patches).
    fill: ``"zeros"`` (default; Quantus' default ``"black"`` is each image's
      minimum), ``"uniform"`` (i.i.d. U(0, 1) per element drawn with `key`, the
      paper's uniform noise; Quantus' ``"uniform"`` draws one value per patch),
      or any `_common.make_fill` value.
    score: ``"probability"`` (default, Quantus ``softmax=True``) or ``"logit"``.
    batch_size: steps evaluated together.
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images with the removed
      pixels marked, `fill` being what partly removed patches still show.

  Returns:
    ``{"score": AOPC [B], "curve": [B, L + 1]}`` (``curve[:, 0] = 0``; Quantus
    returns ``curve[:, 1:]``).
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 5.0, "region_perturbation")
  f, x, target = C.prepare_model(f, x, target)
  if x.ndim != 4:
    raise ValueError(f"region_perturbation: expected NHWC images [B, H, W, C], got x of shape"
                     f" {tuple(x.shape)}")
  attribution = C.check_attribution(attribution, x)
  p = F._check_patch(patch_size, x)
  V.check_choice(order, "order", ("morf", "lerf"))
  steps = min(V.check_positive_int(regions, "regions"), F._units(x, p))
  C.check_score(score)
  batch_size = V.check_batch_size(batch_size)
  fill, key = _region_fill(x, fill, key, "region_perturbation", blur_sigma)
  key = C.check_key(key, "region_perturbation", required=False)
  fmap = C.feature_map(attribution, x)
  f, x, fill, _, _ = R.switch(keep_model, f, x, fill, None, "region_perturbation")
  curve = _patch_curve(f, x, fmap, fill, target, key, p, order == "morf", steps, score,
                       batch_size)
  drop = curve[:, :1] - curve
  return {"score": drop.mean(1), "curve": drop}


@REGISTRY.register("selectivity", family="faithfulness", returns="curve",
    evaluations=lambda o, f, x: 1 + _patches(o, x), backward=False, smoke={"patch_size": 4},
    direction="lower", year=2018)
def selectivity(f, x, attribution, target, *, key=None, patch_size: int = 8, fill: Any = "zeros",
                score: str = "probability", batch_size: int | None = None, removal: Any = None):
  """Selectivity (Montavon, Samek, Mueller 2018, "Methods for Interpreting and
  Understanding Deep Neural Networks", Digital Signal Processing 73,
  arXiv:1706.07979).

  Non-overlapping ``patch_size`` squares are removed one per step, most
  relevant first, until none is left; the curve is the target score after
  each step and the score its trapezoid AUC on [0, 1]. A selective map makes
  the score drop fast: LOWER is better.

  Args:
    attribution: shaped like `x` or ``[B, H, W]`` (NHWC images only).
    key: optional; ties in the ranking at random.
    patch_size: default 8 (Quantus).
    fill: default ``"zeros"`` (`_common.make_fill`; Quantus' default
      ``"black"`` is each image's minimum).
    score: ``"probability"`` (default, Quantus ``softmax=True``) or ``"logit"``.
    batch_size: steps evaluated together.
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images with the removed
      pixels marked, `fill` being what partly removed patches still show.

  Returns:
    ``{"score": AUC [B], "curve": [B, P + 1]}`` with P patches; ``curve[:, 0]``
    is the clean score (Quantus returns ``curve[:, 1:]`` and integrates it with
    ``dx=1``).
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 5.0, "selectivity")
  f, x, target = C.prepare_model(f, x, target)
  if x.ndim != 4:
    raise ValueError(f"selectivity: expected NHWC images [B, H, W, C], got x of shape"
                     f" {tuple(x.shape)}")
  attribution = C.check_attribution(attribution, x)
  p = F._check_patch(patch_size, x)
  C.check_score(score)
  batch_size = V.check_batch_size(batch_size)
  key = C.check_key(key, "selectivity", required=False)
  fill = C.make_fill(x, fill, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x)
  f, x, fill, _, _ = R.switch(keep_model, f, x, fill, None, "selectivity")
  curve = _patch_curve(f, x, fmap, fill, target, key, p, True, F._units(x, p), score,
                       batch_size)
  return {"score": C.trapezoid_auc(curve), "curve": curve}


# ----------------------------------------------------------------------------
# IROF.


SEGMENTATIONS = ("slic", "felzenszwalb")


def _resolve_segments(segments: Any, x: Array):
  """Integer labels as given, or computed on the host by name with scikit-image
  (Quantus' ``get_superpixel_segments``: ``slic(img, start_label=0)`` or
  ``felzenszwalb(img)`` on each HWC image as float64)."""
  if not isinstance(segments, str):
    return segments
  V.check_choice(segments, "segments", SEGMENTATIONS)
  if not V.is_concrete(x):
    raise ValueError(f"segments={segments!r} segments the images on the host and needs concrete"
                     " x; under jax.jit or vmap pass integer labels [B, H, W] computed outside")
  from skimage import segmentation as S
  imgs = np.asarray(x, np.float64)
  if segments == "slic":
    return np.stack([S.slic(img, start_label=0) for img in imgs]).astype(np.int32)
  return np.stack([S.felzenszwalb(img) for img in imgs]).astype(np.int32)


def _irof_evaluations(o, f, x) -> int:
  return 1 + F._check_segments(_resolve_segments(o["segments"], x), x, 1)[1]


@M.jit(static_argnames=("num_segments", "score", "batch_size"))
def _irof(f, x, fmap, fill, target, key, segments, num_segments, score, batch_size):
  rank, counts = F._segment_ranks(fmap, segments, num_segments, key, True)

  def one(k):
    return C.target_score(f, _where(rank < k, fill, x), target, score)

  curve = parallel.chunked_map(one, jnp.arange(num_segments + 1), batch_size=batch_size).T
  ratio = curve / curve[:, :1]
  # Trapezoid AUC over each example's own S_b + 1 points on [0, 1].
  k = jnp.arange(num_segments + 1)[None]
  last = jnp.take_along_axis(ratio, counts[:, None], 1)[:, 0]
  auc = (jnp.where(k <= counts[:, None], ratio, 0.0).sum(1) - 0.5 * (ratio[:, 0] + last))
  auc = auc / jnp.maximum(counts, 1)
  return {"score": 1.0 - auc, "curve": ratio}


@REGISTRY.register("irof", family="faithfulness", returns="curve", needs=("segments",),
    evaluations=_irof_evaluations, backward=False, direction="higher", year=2020)
def irof(f, x, attribution, target, *, segments=None, key=None, fill: Any = "mean",
         score: str = "probability", batch_size: int | None = None, removal: Any = None):
  """IROF: Iterative Removal Of Features (Rieger and Hansen 2020, "IROF: a low
  resource evaluation metric for explanation methods", ICLR workshop,
  arXiv:2003.08747).

  Segments (superpixels) are ranked by their mean relevance and removed one
  per step, most relevant first (replaced by `fill`), until none is left; the
  curve is the target score normalised by the clean score, and the score the
  area OVER that curve with the removed fraction of segments on [0, 1]:
  ``1 - AUC``. HIGHER is better.

  Args:
    attribution: shaped like `x` or ``[B, H, W]``; signed channel sum (Quantus
      ``abs=False``).
    segments: required; integer labels ``[B, H, W]`` (or ``[H, W]`` for all
      examples), or ``"slic"`` / ``"felzenszwalb"`` to segment each image on
      the host with scikit-image's defaults as Quantus does (``"slic"`` is
      Quantus' default; needs concrete `x`, not under jit). Examples with
      fewer segments finish early and keep their last value.
    key: optional; ties between segments at random.
    fill: ``"mean"`` (default: each image's per-channel mean, the paper's
      mean value) or any `_common.make_fill` value. Quantus' ``"mean"`` is the
      mean of the whole batch as perturbed so far (a value that changes every
      step and mixes examples).
    score: ``"probability"`` (default, Quantus ``softmax=True``) or ``"logit"``
      (a ratio of logits means little).
    batch_size: steps evaluated together.
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images with the removed
      pixels marked, `fill` being what partly removed patches still show.
      ``"mean"`` is each image's mean colour (the default `fill`).

  Returns:
    ``{"score": [B], "curve": [B, S + 1]}``, ``curve[:, 0] = 1``. Quantus
    reports ``S - trapz(curve[:, 1:], dx=1)`` instead (not normalised by the
    number of segments).
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 5.0, "irof")
  f, x, target = C.prepare_model(f, x, target)
  if x.ndim != 4:
    raise ValueError(f"irof: expected NHWC images [B, H, W, C], got x of shape {tuple(x.shape)}")
  attribution = C.check_attribution(attribution, x)
  if segments is None:
    raise ValueError("irof: expected segments= integer labels [B, H, W] (e.g. SLIC superpixels)"
                     f" or one of {SEGMENTATIONS}, got None")
  segments, num_segments = F._check_segments(_resolve_segments(segments, x), x, 1)
  C.check_score(score)
  batch_size = V.check_batch_size(batch_size)
  key = C.check_key(key, "irof", required=False)
  fill = C.make_fill(x, fill, blur_sigma=blur_sigma)
  fmap = C.feature_map(attribution, x)
  f, x, fill, _, _ = R.switch(keep_model, f, x, fill, None, "irof")
  return _irof(f, x, fmap, fill, target, key, segments, num_segments, score, batch_size)


# ----------------------------------------------------------------------------
# Sufficiency (Dasgupta et al.).


@M.jit(static_argnames=("absolute",))
def _sufficiency(f, x, a, threshold, absolute):
  b = a.shape[0]
  v = a.reshape(b, -1).astype(jnp.float32)
  if absolute:
    v = jnp.abs(v)
  # Standardised Euclidean distance: each coordinate divided by its spread over
  # the batch; constant coordinates (0 / 0) are left out.
  var = v.var(0)
  ok = var > 0
  w = jnp.where(ok, (v - v.mean(0)) / jnp.sqrt(jnp.where(ok, var, 1.0)), 0.0)
  sq = (w * w).sum(1)
  d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * w @ w.T, 0.0))
  d = d * (1 - jnp.eye(b, dtype=d.dtype))
  dmax = d.max()
  d = jnp.where(dmax > 0, d / jnp.where(dmax > 0, dmax, 1.0), d)
  near = (d <= threshold) & ~jnp.eye(b, dtype=bool)
  pred = jnp.argmax(f(x), -1)
  same = pred[None, :] == pred[:, None]
  n = near.sum(1)
  return jnp.where(n > 0, (near & same).sum(1) / jnp.maximum(n, 1), 0.0).astype(jnp.float32)


@REGISTRY.register("sufficiency", family="faithfulness", returns="scores", evaluations=1,
    backward=False, direction="higher", year=2022)
def sufficiency(f, x, attribution, target=None, *, threshold: float = 0.6, absolute: bool = True):
  """Sufficiency (Dasgupta, Frost, Moshkovitz 2022, "Framework for Evaluating
  Faithfulness of Local Explanations", ICML, arXiv:2202.00734).

  An explanation is sufficient when the examples with (nearly) the same
  explanation get the same prediction. Within the batch, example j is a
  neighbour of i when the standardised Euclidean distance between their
  attributions, divided by the largest distance in the batch, is at most
  `threshold`; the score is the fraction of i's neighbours (i excluded)
  predicted as the same class as i, and 0 without neighbours. HIGHER is better.
  A property of the batch: scores change with the examples evaluated together
  (Quantus' ``Sufficiency`` and ``BatchSufficiency`` compute the same thing).

  Args:
    attribution: any shape with a leading batch axis, compared flattened.
    target: optional, validated but not used: the paper compares predicted classes.
    threshold: neighbour radius on the max-normalised distances, default 0.6
      (Quantus).
    absolute: compare ``|attribution|`` (default True, Quantus ``abs=True``).
      Quantus' ``normalise=True`` scales every map by the batch maximum, which
      a standardised distance ignores.

  Returns:
    ``[B]`` in [0, 1].
  """
  # The target is checked when given, but only predicted classes are compared.
  f, x, _ = C.prepare_model(f, x, 0 if target is None else target)
  attribution = C.check_attribution(attribution, x)
  threshold = C.check_fraction(threshold, "threshold")
  return _sufficiency(f, x, attribution, jnp.float32(threshold), bool(absolute))
