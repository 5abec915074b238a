"""Contrastive and group faithfulness (the RFxG taxonomy).

Reference: Elisha, Cohen, Barkan, Koenigstein 2025, "Rethinking Saliency Maps:
A Cognitive Human Aligned Taxonomy and Evaluation Framework for Explanations"
(RFxG, arXiv:2511.13081, AAAI 2026) and its public code. Maps are
placed on two axes: the reference frame (pointwise "why a?" vs contrastive
"why a and not b?") and the granularity (a class vs a group of classes).

- `contrast_weights` / `contrastive_model` / `contrastive_map`: explain a
  linear combination of logits with any explainer: ``y_a - y_b`` (class vs
  class), ``y_a - sum_{k in B} y_k`` (class vs a set, as the reference
  code), ``sum_{k in G} y_k`` (a group), or ``sum_G y - sum_H y`` (group vs
  group; not in the reference code).
- Four scores, each the area under a curve over removal fractions ``alpha``
  (default 0.1, 0.2, ..., 0.9; trapezoid on the alphas, NOT rescaled, so the
  default x-span is 0.8 as in the reference), with p the SOFTMAX of the
  logits (applied explicitly; the reference code is inconsistent there):

  | metric | cell | f(alpha) |
  |---|---|---|
  | `contrastive_class_score` (CCS) | contrastive x class | ``p_a(x_alpha) - p_b(x_alpha)`` |
  | `class_group_contrastivity` (CGC) | contrastive x class-vs-group | ``(dp_a + mean_{k in G_A} dp_k) / 2`` |
  | `pointwise_group_score` (PGS) | pointwise x group | ``-mean_{k in G_A} dp_k`` |
  | `contrastive_group_score` (CGS) | contrastive x group | ``(mean_{G_A} dp_k + mean_{G_B} dp_j) / 2`` |

  with ``dp_k = p_k(x_alpha) - p_k(x)``. These follow the public code; its
  CGC and CGS add both terms with the same sign and PGS uses the opposite
  sign to CGC/CGS (see the report; the paper's equations were not available).
  Which direction is better is not stated by the reference either.

Masking (`mask_top`): the ``floor(alpha * H * W)`` pixels ranked highest by the
map (signed channel sum) are replaced by the fill: ``"zeros"`` (the
reference's "black", in the model's input space), ``"blur"`` (Gaussian sigma
5) or ``"uniform"`` (U(0, 1) noise, needs a key); or ``removal=``: None
(default: `fill` decides), a `saljax.removal.Removal` or a kind's name,
``"constant"``/``"blur"``/``"mean"`` replacing `fill` (as `deletion`'s
fills: blur with sigma 5 unless the Removal gives one, each image's mean
colour), ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) running the
model's mask-aware forward with the removed pixels marked (`saljax.removal`),
`fill` being what partly removed patches still show. All alphas of the batch run
through `saljax.parallel.chunked_map`. Each metric returns
``{"score": AUC [B], "curve": [B, len(alphas)]}``.

Groups are class-membership arrays: booleans ``[C]`` or ``[B, C]``, or class
indices ``[G]`` / ``[B, G]`` padded with -1.
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
from saljax.metrics._registry import REGISTRY
from saljax.metrics.robustness import check_explainer, explain

Array = jax.Array

ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 10))
FILLS = ("zeros", "blur", "uniform")


def membership(group: Any, batch: int, num_classes: int, *, name: str = "group") -> Array:
  """A float membership matrix ``[B, C]`` (1 for classes in the group)."""
  g = np.asarray(group)
  if g.dtype == bool:
    m = g.astype(np.float32)
    if m.shape not in ((num_classes,), (batch, num_classes)):
      raise ValueError(f"{name}: expected booleans of shape ({num_classes},) or ({batch},"
                       f" {num_classes}), got {g.shape}")
  elif np.issubdtype(g.dtype, np.integer):
    if g.ndim not in (1, 2) or (g.ndim == 2 and g.shape[0] != batch):
      raise ValueError(f"{name}: expected class indices [G] or [{batch}, G], got shape {g.shape}")
    if ((g < -1) | (g >= num_classes)).any():
      raise ValueError(f"{name}: expected class indices in [0, {num_classes}) (or -1 padding), got"
                       f" {np.unique(g[(g < -1) | (g >= num_classes)]).tolist()}")
    gg = np.broadcast_to(g if g.ndim == 2 else g[None], (batch, g.shape[-1]))
    m = np.zeros((batch, num_classes), np.float32)
    for_rows = np.repeat(np.arange(batch), gg.shape[1])
    valid = gg.reshape(-1) >= 0
    m[for_rows[valid], gg.reshape(-1)[valid]] = 1.0
  else:
    raise TypeError(f"{name}: expected booleans [C] / [B, C] or int class indices, got dtype {g.dtype}")
  m = np.broadcast_to(m, (batch, num_classes))
  if (m.sum(1) == 0).any():
    raise ValueError(f"{name}: expected at least one class per example, rows"
                     f" {np.flatnonzero(m.sum(1) == 0)[:10].tolist()} are empty")
  return jnp.asarray(m)


def contrast_weights(num_classes: int, target: Any = None, *, contrast: Any = None,
                     group: Any = None, contrast_group: Any = None, batch: int | None = None) -> Array:
  """Logit weights ``[B, C]`` for the RFxG cells.

  - `target` only: ``y_a`` (pointwise class);
  - `target`, `contrast` (class indices): ``y_a - y_b``;
  - `target`, `contrast_group`: ``y_a - sum_{k in set} y_k`` (the reference
    code's contrast against a set);
  - `group`: ``sum_{k in G} y_k`` (pointwise group);
  - `group`, `contrast_group`: ``sum_G y - sum_H y``.
  """
  if (target is None) == (group is None):
    raise ValueError("contrast_weights: expected exactly one of target (a class) or group")
  if batch is None:
    for v in (target, contrast):
      if v is not None and np.ndim(v) == 1:
        batch = len(v)
    batch = batch or 1
  if target is not None:
    t = np.broadcast_to(np.asarray(target), (batch,))
    w = np.eye(num_classes, dtype=np.float32)[t]
  else:
    w = np.asarray(membership(group, batch, num_classes))
  if contrast is not None and contrast_group is not None:
    raise ValueError("contrast_weights: give contrast (a class) or contrast_group, not both")
  if contrast is not None:
    c = np.broadcast_to(np.asarray(contrast), (batch,))
    if ((c < 0) | (c >= num_classes)).any():
      raise ValueError(f"contrast: expected class indices in [0, {num_classes}), got {c.tolist()}")
    w = w - np.eye(num_classes, dtype=np.float32)[c]
  if contrast_group is not None:
    w = w - np.asarray(membership(contrast_group, batch, num_classes, name="contrast_group"))
  return jnp.asarray(w)


def contrastive_model(f, weights: Array):
  """``x -> (f(x) * weights).sum(-1)[:, None]``: a one-logit model whose class 0
  is the weighted logit combination (explain it with ``target=0``). The
  explainer must call the model with batches of the original `B` rows in
  order (every gradient explainer does)."""
  return M.bind(_weighted_logits, (M.as_model(f), jnp.asarray(weights)))


def _weighted_logits(fw, x):
  f, weights = fw
  return (f(x) * weights).sum(-1, keepdims=True)


def contrastive_map(explainer, f, x, target=None, *, contrast=None, group=None, contrast_group=None,
                    key=None, explainer_options=None) -> Array:
  """The explainer's map of a contrastive / group logit combination
  (`contrast_weights`): e.g. ``contrastive_map(saljax.explainers.gradient, f,
  x, a, contrast=b)`` is the gradient of ``y_a - y_b``, equal to the gradient
  of ``y_a`` minus that of ``y_b``."""
  explainer, options = check_explainer(explainer, explainer_options)
  x = V.check_input(x)
  batch, n = M.output_shape(M.as_model(f), x)
  if target is not None:
    target = M.resolve_target(f, x, target)
  w = contrast_weights(n, None if target is None else np.asarray(target), contrast=contrast,
                       group=group, contrast_group=contrast_group, batch=batch)
  return explain(explainer, contrastive_model(f, w), x, jnp.zeros((batch,), jnp.int32), key,
                 options)


def mask_top(x: Array, attribution: Array, alpha, *, fill: Any = "zeros", key=None) -> Array:
  """`x` with the ``floor(alpha * H * W)`` highest-ranked pixels replaced by `fill`."""
  fmap = C.feature_map(attribution, x)
  rank = C.ranks(fmap, key)
  n = int(np.prod(fmap.shape[1:]))
  count = jnp.floor(alpha * n + 1e-6).astype(jnp.int32)
  return jnp.where(C.expand(rank < count, x), _fill(x, fill, key), x)


def _fill(x, fill, key):
  if isinstance(fill, str) and fill == "uniform":
    return jax.random.uniform(jax.random.fold_in(key, 1), x.shape, x.dtype)
  if isinstance(fill, str) and fill == "blur":
    return C.blur(x, 5.0)
  if isinstance(fill, str):
    return jnp.zeros_like(x)
  return fill


@M.jit(static_argnames=("alphas", "fill", "batch_size"))
def _curve(f, x, fmap, u, v, key, fill_array, alphas, fill, batch_size):
  rank = C.ranks(fmap, key)
  n = int(np.prod(fmap.shape[1:]))
  counts = jnp.asarray([int(np.floor(a * n + 1e-6)) for a in alphas], jnp.int32)
  filled = _fill(x, fill, key) if fill_array is None else fill_array
  p0 = jax.nn.softmax(f(x), -1)
  const = (v * p0).sum(-1)

  def one(count):
    xa = jnp.where(C.expand(rank < count, x), filled, x)
    return (u * jax.nn.softmax(f(xa), -1)).sum(-1) + const

  curve = parallel.chunked_map(one, counts, batch_size=batch_size).T
  a = np.asarray(alphas)
  auc = jnp.asarray(0.0, x.dtype)
  if len(a) > 1:
    dx = jnp.asarray(np.diff(a), x.dtype)
    auc = ((curve[:, 1:] + curve[:, :-1]) * 0.5 * dx).sum(1)
  return {"score": auc, "curve": curve}


def _run(method, f, x, attribution, target, key, alphas, fill, batch_size, make_uv,
         removal=None):
  rem = R.as_removal(removal)
  _, blur_sigma, keep_model = R.resolve(rem, f, fill, 5.0, method)
  f, x, target = C.prepare_model(f, x, target)
  if x.ndim != 4:
    raise ValueError(f"{method}: expected NHWC images [B, H, W, C], got x of shape {tuple(x.shape)}")
  attribution = C.check_attribution(attribution, x)
  alphas = C.check_fractions(alphas, "alphas")
  if list(alphas) != sorted(alphas):
    raise ValueError(f"alphas: expected increasing fractions, got {alphas}")
  batch_size = V.check_batch_size(batch_size)
  fill_array = None
  if rem is not None and not rem.needs_model:
    fill_array, fill = C.make_fill(x, rem.fill(), blur_sigma=blur_sigma), "array"
  elif isinstance(fill, str):
    V.check_choice(fill, "fill", FILLS)
  else:
    fill_array, fill = V.check_same_shape(fill, x, name="fill"), "array"
  key = C.check_key(key, method, required=(fill == "uniform"))
  batch, n = M.output_shape(f, x)
  u, v = make_uv(batch, n, target)
  fmap = C.feature_map(attribution, x)
  if keep_model is not None:
    # The fill is made here so that the keep channel `switch` appends to it is 0.
    fill_array = _fill(x, fill, key) if fill_array is None else fill_array
    f, x, fill_array, _, _ = R.switch(keep_model, f, x, fill_array, None, method)
    fill = "array"
  return _curve(f, x, fmap, jnp.asarray(u), jnp.asarray(v), key, fill_array, alphas, fill,
                batch_size)


def _mean_group(group, batch, n, name):
  m = membership(group, batch, n, name=name)
  return m / m.sum(1, keepdims=True)


@REGISTRY.register("contrastive_class_score", family="contrastive", returns="curve",
    needs=("classes",), evaluations=lambda o, f, x: len(o["alphas"]) + 1, backward=False,
    smoke={"alphas": (0.2, 0.5)}, direction="higher")
def contrastive_class_score(f, x, attribution, target, *, contrast=None, key=None,
                            alphas=ALPHAS, fill: Any = "zeros", batch_size: int | None = None,
                            removal: Any = None):
  """CCS, contrastive x class (RFxG, Elisha et al. 2025, arXiv:2511.13081): AUC over alpha of ``p_a(x_alpha) - p_b(x_alpha)``
  with ``a = target`` and ``b = contrast`` (class indices), for a map of
  "why a and not b" (e.g. `contrastive_map`). See the module docstring for
  masking, fills (``removal=``) and the AUC rule.

  Returns:
    ``{"score": [B], "curve": [B, len(alphas)]}``.
  """
  if contrast is None:
    raise ValueError("contrastive_class_score: expected contrast=class indices [B] (class b)")

  def uv(batch, n, target):
    c = V.check_target(contrast, batch, n)
    u = jax.nn.one_hot(target, n) - jax.nn.one_hot(c, n)
    return u, jnp.zeros_like(u)

  return _run("contrastive_class_score", f, x, attribution, target, key, alphas, fill, batch_size,
              uv, removal)


@REGISTRY.register("class_group_contrastivity", family="contrastive", returns="curve",
    needs=("classes",), evaluations=lambda o, f, x: len(o["alphas"]) + 1, backward=False,
    smoke={"alphas": (0.2, 0.5)}, direction="higher")
def class_group_contrastivity(f, x, attribution, target, *, group=None, key=None, alphas=ALPHAS,
                              fill: Any = "zeros", batch_size: int | None = None,
                              removal: Any = None):
  """CGC, contrastive x class-vs-group (RFxG, Elisha et al. 2025, arXiv:2511.13081): AUC of
  ``((p_a(x_alpha) - p_a(x)) + mean_{k in G_A}(p_k(x_alpha) - p_k(x))) / 2`` with
  ``a = target`` and `group` = G_A (the group of a). As the reference code.

  Returns:
    ``{"score": [B], "curve": [B, len(alphas)]}``.
  """
  if group is None:
    raise ValueError("class_group_contrastivity: expected group= the classes of the target's group")

  def uv(batch, n, target):
    u = 0.5 * (jax.nn.one_hot(target, n) + _mean_group(group, batch, n, "group"))
    return u, -u

  return _run("class_group_contrastivity", f, x, attribution, target, key, alphas, fill,
              batch_size, uv, removal)


@REGISTRY.register("pointwise_group_score", family="contrastive", returns="curve",
    needs=("classes",), evaluations=lambda o, f, x: len(o["alphas"]) + 1, backward=False,
    smoke={"alphas": (0.2, 0.5)}, direction="higher")
def pointwise_group_score(f, x, attribution, target="predicted", *, group=None, key=None,
                          alphas=ALPHAS, fill: Any = "zeros", batch_size: int | None = None,
                          removal: Any = None):
  """PGS, pointwise x group (RFxG, Elisha et al. 2025, arXiv:2511.13081): AUC of ``mean_{k in G_A}(p_k(x) - p_k(x_alpha))``,
  the mean probability drop of the group's classes (`target` is not used).

  Returns:
    ``{"score": [B], "curve": [B, len(alphas)]}``.
  """
  if group is None:
    raise ValueError("pointwise_group_score: expected group= the classes of the group")

  def uv(batch, n, target):
    g = _mean_group(group, batch, n, "group")
    return -g, g

  return _run("pointwise_group_score", f, x, attribution, target, key, alphas, fill, batch_size,
              uv, removal)


@REGISTRY.register("contrastive_group_score", family="contrastive", returns="curve",
    needs=("classes",), evaluations=lambda o, f, x: len(o["alphas"]) + 1, backward=False,
    smoke={"alphas": (0.2, 0.5)}, direction="higher")
def contrastive_group_score(f, x, attribution, target="predicted", *, group=None,
                            contrast_group=None, key=None, alphas=ALPHAS, fill: Any = "zeros",
                            batch_size: int | None = None, removal: Any = None):
  """CGS, contrastive x group (RFxG, Elisha et al. 2025, arXiv:2511.13081): AUC of
  ``(mean_{k in G_A}(p_k(x_alpha) - p_k(x)) + mean_{j in G_B}(p_j(x_alpha) - p_j(x))) / 2``
  with `group` = G_A and `contrast_group` = G_B, as the reference code (both
  terms with the same sign; `target` is not used).

  Returns:
    ``{"score": [B], "curve": [B, len(alphas)]}``.
  """
  if group is None or contrast_group is None:
    raise ValueError("contrastive_group_score: expected group= and contrast_group=")

  def uv(batch, n, target):
    u = 0.5 * (_mean_group(group, batch, n, "group")
               + _mean_group(contrast_group, batch, n, "contrast_group"))
    return u, -u

  return _run("contrastive_group_score", f, x, attribution, target, key, alphas, fill, batch_size,
              uv, removal)
