"""Complexity metrics: how concentrated or spread out is a map?

All three read only the attribution (`f` and `target` are accepted for the
metric contract and validated, never called). NHWC attributions shaped like
`x` are reduced to one value per pixel as ``sum_c |a|``; other inputs use
``|a|`` per coordinate. Each returns ``[B]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax.metrics import _common as C
from saljax.metrics._registry import REGISTRY

Array = jax.Array


def _magnitudes(x, attribution) -> Array:
  x = V.check_input(x)
  attribution = C.check_attribution(attribution, x)
  m = C.feature_map(attribution, x, absolute=True)
  return m.reshape(m.shape[0], -1)


@jax.jit
def _gini(m):
  n = m.shape[1]
  s = jnp.sort(m, axis=1)
  total = s.sum(1)
  i = jnp.arange(1, n + 1, dtype=m.dtype)
  g = ((2 * i - n - 1) * s).sum(1) / (n * jnp.where(total > 0, total, 1.0))
  return jnp.where(total > 0, g, 0.0)


@REGISTRY.register("sparseness", family="complexity", returns="scores", evaluations=0,
    backward=False, direction="higher")
def sparseness(f, x, attribution, target=None, *, key=None):
  """Sparseness as the Gini index of ``|a|`` (Chalasani, Chen, Chowdhury, Wu,
  Jha 2020, "Concise Explanations of Neural Networks using Adversarial
  Training", ICML, arXiv:1810.06583; Quantus `Sparseness`).

  ``G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_(i))`` over the ``n`` features
  sorted ascending. Higher is sparser: ``(n - 1) / n`` (the maximum) for a
  one-hot map, 0 for a constant map; an all-zero map is defined as 0.

  Returns:
    ``[B]``.
  """
  return _gini(_magnitudes(x, attribution))


@jax.jit
def _entropy(m):
  n = m.shape[1]
  total = m.sum(1, keepdims=True)
  p = jnp.where(total > 0, m / jnp.where(total > 0, total, 1.0), 1.0 / n)
  return -(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)).sum(1)


@REGISTRY.register("complexity", family="complexity", returns="scores", evaluations=0,
    backward=False, direction="lower")
def complexity(f, x, attribution, target=None, *, key=None):
  """Complexity as the entropy of the attribution distribution (Bhatt,
  Weller, Moura 2020, "Evaluating and Aggregating Feature-based Model
  Explanations", IJCAI, arXiv:2005.00631; Quantus `Complexity`).

  ``-sum_i p_i log p_i`` with ``p_i = |a_i| / sum_j |a_j|`` (natural log).
  Lower is simpler: 0 for a one-hot map, ``log n`` for a constant map; an
  all-zero map is treated as uniform (``log n``).

  Returns:
    ``[B]``.
  """
  return _entropy(_magnitudes(x, attribution))


@jax.jit
def _effective(m, eps):
  return (m > eps).sum(1).astype(jnp.float32)


@REGISTRY.register("effective_complexity", family="complexity", returns="scores", evaluations=0,
    backward=False, direction="lower")
def effective_complexity(f, x, attribution, target=None, *, key=None, eps: float = 1e-5):
  """Effective complexity (Nguyen, Martinez 2020, "On Quantitative Aspects of
  Model Interpretability", arXiv:2007.07584; Quantus `EffectiveComplexity`):
  the number of features with ``|a_i| > eps``, default ``eps = 1e-5``
  (Quantus). Lower is simpler.

  Returns:
    ``[B]`` (counts as float32).
  """
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
    raise ValueError(f"eps: expected a float >= 0, got {eps!r}")
  return _effective(_magnitudes(x, attribution), jnp.float32(eps))

