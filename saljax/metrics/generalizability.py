"""MeGe and ReCo: how much the explanations of models trained on different folds
of the data agree (Fel, Vigouroux, Cadene, Serre 2022, "How Good is your
Explanation? Algorithmic Stability Measures to Assess the Quality of
Explanations for Deep Neural Networks", WACV, arXiv:2009.04521).

k models are trained on k folds (each on all folds but one). For every pair of
models and every example, the distance between their two explanations is
``d = sqrt(1 - |spearman(e_i, e_j)|)``. Pairs where both models classify the
example correctly form S=, pairs where exactly one does form S!= (pairs where
both are wrong are not used).

- MeGe (mean generalizability) ``= 1 / (1 + mean(S=))``: 1 when correct models
  explain alike, lower as their explanations drift apart.
- ReCo (relative consistency) ``= max_gamma TPR(gamma) + TNR(gamma) - 1``:
  how well a threshold on the distance separates S= (positives, ``d <= gamma``)
  from S!= (negatives, ``d > gamma``), gamma over the observed distances:
  1 when every S= distance is below every S!= distance, 0 when no threshold
  does better than chance.

These are not registry metrics: they take the explanations of k models, not
``(f, x, attribution)``. The distances are compiled (ranks once per model and
example, then every pair of models, chunked by `batch_size`); ReCo sorts them
once and evaluates every threshold at the same time.

`experiments/generalizability.py` trains the k models and writes both scores.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import parallel
from saljax.metrics import _common as C

Array = jax.Array


def _flat_maps(explanations: Array) -> Array:
  """``[k, N, D]``: per-example maps with more than two axes averaged over the
  last (channels; Xplique's `_sanitize_explanation`), NaN -> 0, flattened."""
  e = explanations
  if e.ndim > 4:
    e = e.mean(-1)
  e = jnp.nan_to_num(e, nan=0.0)
  return e.reshape(e.shape[0], e.shape[1], -1)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _distances(maps, correct, folds, batch_size):
  """Spearman distances of every pair of models (i < j) on every example, and
  which of them belong to S= and S!=: three ``[P, N]`` arrays."""
  k = maps.shape[0]
  r = jax.vmap(C.average_ranks)(maps)  # [k, N, D]: ranks once per model and example
  spread = r.var(-1) > 0               # a constant map has no Spearman correlation
  i, j = (jnp.asarray(a) for a in np.triu_indices(k, 1))

  def pair(ij):
    a, b = r[ij[0]], r[ij[1]]
    rho = C.pearson(a, b)
    return jnp.sqrt(jnp.clip(1.0 - jnp.abs(rho), 0.0, 1.0))

  d = parallel.chunked_map(pair, jnp.stack([i, j], 1), batch_size=batch_size)  # [P, N]
  # Xplique drops NaN distances (a constant map, e.g. an all-zero Grad-CAM).
  used = spread[i] & spread[j]
  if folds is not None:
    # Xplique's protocol: only examples of fold i or j, which one of the two
    # models was trained without.
    used &= (folds[None] == i[:, None]) | (folds[None] == j[:, None])
  ci, cj = correct[i], correct[j]
  return d, used & ci & cj, used & (ci ^ cj)


@functools.partial(jax.jit, static_argnames=("convention",))
def _reco(d, equal, different, convention):
  d = d.reshape(-1)
  equal, different = equal.reshape(-1), different.reshape(-1)
  n_eq, n_ne = equal.sum(), different.sum()
  eq_sorted = jnp.sort(jnp.where(equal, d, jnp.inf))
  ne_sorted = jnp.sort(jnp.where(different, d, jnp.inf))
  gammas = jnp.sort(jnp.where(equal | different, d, jnp.inf))
  below_eq_left = jnp.searchsorted(eq_sorted, gammas, side="left")    # #S= < g
  below_eq_right = jnp.searchsorted(eq_sorted, gammas, side="right")  # #S= <= g
  below_ne_left = jnp.searchsorted(ne_sorted, gammas, side="left")
  below_ne_right = jnp.searchsorted(ne_sorted, gammas, side="right")
  if convention == "paper":
    tp, fn = below_eq_right, n_eq - below_eq_right
    tn, fp = n_ne - below_ne_right, below_ne_right
    tpr = tp / jnp.maximum(tp + fn, 1)
    tnr = tn / jnp.maximum(tn + fp, 1)
    keep = jnp.isfinite(gammas)
  else:
    # Xplique (representativity.py, `MeGe.evaluate`): strict inequalities on
    # both sides (a distance equal to gamma counts nowhere), 1e-10 in the
    # denominators, and only every (n // 20 + 1)-th sorted distance as gamma.
    tp, fn = below_eq_left, n_eq - below_eq_right
    tn, fp = n_ne - below_ne_right, below_ne_left
    tpr = tp / (tp + fn + 1e-10)
    tnr = tn / (tn + fp + 1e-10)
    n = n_eq + n_ne
    keep = jnp.isfinite(gammas) & (jnp.arange(gammas.shape[0]) % (n // 20 + 1) == 0)
  return jnp.maximum(0.0, jnp.where(keep, tpr + tnr - 1.0, 0.0).max())


def _check(explanations, correct, folds):
  if not hasattr(explanations, "shape") or not hasattr(explanations, "dtype"):
    raise TypeError(f"explanations: expected a floating array [k, N, ...], got"
                    f" {V.describe(explanations)}")
  e = jnp.asarray(explanations)
  if not jnp.issubdtype(e.dtype, jnp.floating) or e.ndim < 3:
    raise ValueError(f"explanations: expected a floating array [k, N, ...] (k models' maps of"
                     f" the same N examples), got {V.describe(explanations)}")
  k, n = e.shape[:2]
  if k < 2:
    raise ValueError(f"explanations: expected at least 2 models, got k = {k}")
  c = np.asarray(correct)
  if c.shape != (k, n) or c.dtype != bool:
    raise ValueError(f"correct: expected bool [k, N] = [{k}, {n}] (which model classifies which"
                     f" example correctly), got {c.dtype} {c.shape}")
  if folds is not None:
    folds = np.asarray(folds)
    if folds.shape != (n,) or not np.issubdtype(folds.dtype, np.integer):
      raise ValueError(f"folds: expected int [N] = [{n}] (the fold each example was held out"
                       f" in), got {folds.dtype} {folds.shape}")
    if folds.min() < 0 or folds.max() >= k:
      raise ValueError(f"folds: expected fold ids in [0, {k - 1}], got {folds.min()}..{folds.max()}")
    folds = jnp.asarray(folds, jnp.int32)
  return e.astype(jnp.float32), jnp.asarray(c), folds


def mege_reco(explanations: Any, correct: Any, *, folds: Any = None,
              convention: str = "paper", batch_size: int | None = None) -> dict:
  """MeGe and ReCo of k models' explanations (Fel, Vigouroux, Cadene, Serre
  2022, "How Good is your Explanation? Algorithmic Stability Measures to Assess
  the Quality of Explanations for Deep Neural Networks", WACV,
  arXiv:2009.04521; module docstring).

  Args:
    explanations: ``[k, N, ...]``: model i's explanation of example n (its
      own prediction's or the label's map). Maps with more than two axes per
      example (``[H, W, C]``) are averaged over the last one first, as
      Xplique; NaN counts as 0.
    correct: bool ``[k, N]``: model i classifies example n correctly.
    folds: optional int ``[N]``: the fold each example was held out in (model
      i was trained without fold i). Given, the pair (i, j) compares only the
      examples of folds i and j, Xplique's protocol; None (default): every
      pair compares every example (a test set no model has seen).
    convention: ``"paper"`` (default): ReCo is the largest Youden index
      ``TPR + TNR - 1`` with S= distances ``<= gamma`` as positives and S!=
      distances ``> gamma`` as negatives, over every observed distance gamma,
      so perfectly separated sets give 1. ``"xplique"``: Xplique's loop
      (xplique/metrics/representativity.py, `MeGe.evaluate`): strict ``<`` and
      ``>`` (a distance equal to gamma counts in neither set, so distances
      tied across S= and S!= drop out and ReCo can reach 1 where no
      threshold separates the sets) over every ``(n // 20 + 1)``-th sorted
      distance. MeGe is the same in both.
    batch_size: pairs of models compared together (None: all).

  Returns:
    ``{"mege": float, "reco": float, "equal": int, "different": int}``: the
    two scores and the sizes of S= and S!=. Pairs where a map is constant
    (no Spearman correlation) are left out, as Xplique drops their NaN.

  Raises:
    ValueError: bad shapes, or S= is empty (no example that two models both
      classify correctly: MeGe is undefined).
  """
  V.check_choice(convention, "convention", ("paper", "xplique"))
  batch_size = V.check_batch_size(batch_size)
  e, c, folds = _check(explanations, correct, folds)
  d, equal, different = _distances(_flat_maps(e), c, folds, batch_size)
  n_eq, n_ne = int(equal.sum()), int(different.sum())
  if n_eq == 0:
    raise ValueError("mege_reco: no pair of models classifies an example correctly with"
                     " non-constant maps (S= is empty), so MeGe is undefined")
  mege = 1.0 / (1.0 + float(jnp.where(equal, d, 0.0).sum()) / n_eq)
  reco = float(_reco(d, equal, different, convention))
  return {"mege": mege, "reco": reco, "equal": n_eq, "different": n_ne}


def mege(explanations: Any, correct: Any, **options) -> float:
  """MeGe alone (`mege_reco`'s ``"mege"``; same arguments)."""
  return mege_reco(explanations, correct, **options)["mege"]


def reco(explanations: Any, correct: Any, **options) -> float:
  """ReCo alone (`mege_reco`'s ``"reco"``; same arguments)."""
  return mege_reco(explanations, correct, **options)["reco"]
