"""Robustness metrics: does the explanation stay put when the input barely moves?

Each metric re-runs an explainer on perturbed copies of the input, so it takes
the explainer as an argument (metrics never import explainers): any callable
with the explainer contract ``explainer(f, x, target, *, key=None, **options)``,
e.g. ``saljax.explainers.gradient``, with its options in `explainer_options`
(a dict of hashable values; they are static for compilation). The explainer
is traced into the metric's compiled function, so it must be traceable (every
saljax explainer is). Stochastic explainers get a fresh key per perturbation.

Perturbations run through `saljax.parallel.chunked_map` (``batch_size``
perturbations of the whole batch at a time). All return ``[B]``, the maximum
over `samples` perturbations (`avg_sensitivity`, in `stability`, the mean);
LOWER is more robust. The stability module's metrics (average sensitivity,
relative output/representation stability, continuity, consistency) share this
kernel and are re-exported at the end of this module.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.metrics import _common as C
from saljax.metrics._registry import REGISTRY

Array = jax.Array

KINDS = ("max_sensitivity", "local_lipschitz", "relative_input_stability")


def _stability_evaluations(o, f, x) -> int:
  """The prediction, then one explanation per sample (relative input stability
  also predicts each perturbed input)."""
  from saljax.explainers._registry import cost_of
  return 1 + o["samples"] * cost_of(o["explainer"], o["explainer_options"], f, x)


def _relative_stability_evaluations(o, f, x) -> int:
  return _stability_evaluations(o, f, x) + o["samples"]


def check_explainer(explainer: Any, explainer_options: Any) -> tuple[Callable, V.Options]:
  """Validates the explainer argument (a callable or a registered name, as the
  noise wrappers take); returns it and its options (arrays traced, the rest static)."""
  if isinstance(explainer, str):
    from saljax import explainers
    if explainer not in explainers.names():
      raise ValueError(f"explainer: expected a registered explainer name, one of"
                       f" {explainers.names()}, got {explainer!r}")
    explainer = explainers.get(explainer)
  if explainer is None:
    raise ValueError("explainer: expected an explainer callable (e.g. saljax.explainers.gradient),"
                     " got None")
  if not callable(explainer):
    raise TypeError(f"explainer: expected an explainer callable, got {V.describe(explainer)}")
  return explainer, V.Options.split(explainer_options)


def explain(explainer, model, x, target, key, options: V.Options) -> Array:
  """Calls the explainer with the contract's arguments, as float32."""
  return jnp.asarray(explainer(model, x, target, key=key, **options.kwargs()), jnp.float32)


def _explanation_shape(explainer, model, options, shape, dtype):
  # The model is an argument (its arrays abstract), never a cache key.
  x = jax.ShapeDtypeStruct(shape, dtype)
  t = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
  k = jax.eval_shape(lambda: jax.random.key(0))
  return tuple(jax.eval_shape(lambda m, x, t, k: explain(explainer, m, x, t, k, options),
                              M.as_data(model), x, t, k).shape)


def check_explanation(attribution, explainer, model, x, target, key, options, *, name="attribution"):
  """The explanation of `x` (computed when `attribution` is None), checked against the
  explainer's output shape."""
  want = _explanation_shape(explainer, model, options, tuple(x.shape), jnp.dtype(x.dtype))
  if attribution is None:
    return explain(explainer, model, x, target, key, options)
  if not hasattr(attribution, "shape"):
    raise TypeError(f"{name}: expected a floating array, got {V.describe(attribution)}")
  if tuple(attribution.shape) != want:
    raise ValueError(f"{name}: expected the explainer's output shape {want}, got"
                     f" {tuple(attribution.shape)}")
  if not jnp.issubdtype(attribution.dtype, jnp.floating):
    raise TypeError(f"{name}: expected a floating-point array, got {V.describe(attribution)}")
  if not V.all_finite(attribution):
    raise ValueError(f"{name}: expected finite values, got NaN or inf")
  return jnp.asarray(attribution, jnp.float32)


def _norm(v: Array) -> Array:
  return jnp.sqrt((v.reshape(v.shape[0], -1) ** 2).sum(1))


# Kinds whose score is the mean over perturbations (the others take the max).
_MEAN = ("avg_sensitivity",)
# Kinds that drop perturbations changing the predicted class (Agarwal et al.).
_RELATIVE = ("relative_input_stability", "relative_output_stability",
             "relative_representation_stability")


def noise(key: Array, shape, dtype, radius, kind: str) -> Array:
  """The perturbation ``d`` drawn from `key` for `kind`: ``N(0, radius^2)`` for
  the local Lipschitz estimate, ``U(-radius, radius)`` otherwise. Public to the
  package so that parity tests (experiments/_quantus/robustness.py) can feed
  Quantus the same draws."""
  if kind == "local_lipschitz":
    return radius * jax.random.normal(key, shape, dtype)
  return jax.random.uniform(key, shape, dtype, -radius, radius)


def sample_keys(key: Array, samples: int) -> tuple[Array, Array, Array]:
  """``(k0, noise_keys[samples], explainer_keys[samples])`` as `_run` derives them
  from the metric's `key` (k0 explains the unperturbed input)."""
  k0, k1 = jax.random.split(key)
  ks = jax.vmap(jax.random.split)(jax.random.split(k1, samples))
  return k0, ks[:, 0], ks[:, 1]


def _outputs(model, x, layer):
  """(logits, representation): the tapped layer's activation for relative
  representation stability, the logits otherwise."""
  if layer is None:
    logits = M.as_model(model)(x)
    return logits, logits
  logits, acts = model(x)
  return logits, acts[layer]


def _relative(v: Array, ref: Array, eps) -> Array:
  """``||v / ref||_2`` per example, a zero in `ref` replaced by `eps` (Agarwal et al.)."""
  return _norm(v / (ref + (ref == 0) * eps))


@M.jit(static_argnames=("explainer", "kind", "samples", "batch_size", "layer"))
def _stability(model, x, target, e_x, key, radius, eps, *, explainer, options,
               kind, samples, batch_size, layer=None):
  logits, rep = _outputs(model, x, layer)
  pred = jnp.argmax(logits, -1)
  e_norm = _norm(e_x)
  _, kn_all, ke_all = sample_keys(key, samples)

  def one(ks):
    kn, ke = ks
    d = noise(kn, x.shape, x.dtype, radius, kind)
    xp = x + d
    diff = explain(explainer, model, xp, target, ke, options) - e_x
    if kind in ("max_sensitivity", "avg_sensitivity"):
      return _norm(diff) / jnp.where(e_norm > 0, e_norm, 1.0)
    if kind == "local_lipschitz":
      dn = _norm(d)
      return _norm(diff) / jnp.where(dn > 0, dn, 1.0)
    num = _relative(diff, e_x, eps)
    logits_p, rep_p = _outputs(model, xp, layer)
    if kind == "relative_input_stability":
      den = _relative(d, x, eps)
    elif kind == "relative_output_stability":
      den = _norm(logits_p - logits)
    else:
      den = _relative(rep_p - rep, rep, eps)
    same = jnp.argmax(logits_p, -1) == pred
    return jnp.where(same, num / jnp.maximum(den, eps), 0.0)

  vals = parallel.chunked_map(one, (kn_all, ke_all), batch_size=batch_size)
  return vals.mean(0) if kind in _MEAN else vals.max(0)


def _run(kind, f, x, attribution, target, key, explainer, explainer_options, radius, samples,
         batch_size, eps=1e-6, layer=None):
  model = f
  _, x, target = C.prepare_model(f, x, target)
  key = C.check_key(key, kind)
  explainer, options = check_explainer(explainer, explainer_options)
  samples = parallel.check_count(samples, "samples")
  batch_size = V.check_batch_size(batch_size)
  if isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius <= 0:
    raise ValueError(f"{kind}: expected a perturbation size > 0, got {radius!r}")
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
    raise ValueError(f"{kind}: expected eps > 0, got {eps!r}")
  if layer is not None:
    layer, = M.check_layers(model, layer)
  k0 = sample_keys(key, 1)[0]
  e_x = check_explanation(attribution, explainer, model, x, target, k0, options)
  return _stability(model, x, target, e_x, key, jnp.float32(radius), jnp.float32(eps),
                    explainer=explainer, options=options, kind=kind, samples=samples,
                    batch_size=batch_size, layer=layer)


@REGISTRY.register("max_sensitivity", family="robustness", returns="scores",
    needs=("key", "explainer"), evaluations=_stability_evaluations, backward=True,
    smoke={"samples": 3}, direction="lower")
def max_sensitivity(f, x, attribution, target, *, key=None, explainer=None, explainer_options=None,
                    radius: float = 0.02, samples: int = 10, batch_size: int | None = None):
  """Max-sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar 2019, "On the
  (In)fidelity and Sensitivity of Explanations", NeurIPS, arXiv:1901.09392).

  ``max_d ||E(x + d) - E(x)||_F / ||E(x)||_F`` over `samples` draws of ``d``
  uniform in the L-infinity ball of `radius`. Defaults as Captum's
  `sensitivity_max` (radius 0.02, 10 samples, Frobenius norm, relative to the
  norm of ``E(x)``; a zero ``E(x)`` divides by 1). 0 for a gradient of a
  linear model.

  Args:
    f: model (a `saljax.model.Tapped` is passed as is to layer explainers).
    attribution: ``E(x)``, or None to compute it with the explainer.
    key: required.
    explainer, explainer_options: the explanation method and its options.
    radius: L-infinity radius in input units.
    samples: perturbations, default 10.
    batch_size: perturbations evaluated together.

  Returns:
    ``[B]``.
  """
  return _run("max_sensitivity", f, x, attribution, target, key, explainer, explainer_options,
              radius, samples, batch_size)


@REGISTRY.register("local_lipschitz", family="robustness", returns="scores",
    needs=("key", "explainer"), evaluations=_stability_evaluations, backward=True,
    smoke={"samples": 3}, direction="lower")
def local_lipschitz(f, x, attribution, target, *, key=None, explainer=None, explainer_options=None,
                    std: float = 0.1, samples: int = 200, batch_size: int | None = None):
  """Local Lipschitz estimate (Alvarez-Melis, Jaakkola 2018, "On the Robustness
  of Interpretability Methods", arXiv:1806.08049).

  ``max_d ||E(x + d) - E(x)||_2 / ||d||_2`` with ``d ~ N(0, std^2)``, sampled
  instead of the paper's optimization; defaults as Quantus'
  `LocalLipschitzEstimate` (std 0.1, 200 samples). Arguments as in
  `max_sensitivity`.

  Returns:
    ``[B]``.
  """
  return _run("local_lipschitz", f, x, attribution, target, key, explainer, explainer_options,
              std, samples, batch_size)


@REGISTRY.register("relative_input_stability", family="robustness", returns="scores",
    needs=("key", "explainer"), evaluations=_relative_stability_evaluations, backward=True,
    smoke={"samples": 3}, direction="lower")
def relative_input_stability(f, x, attribution, target, *, key=None, explainer=None,
                             explainer_options=None, radius: float = 0.2, samples: int = 200,
                             eps: float = 1e-6, batch_size: int | None = None):
  """Relative input stability (Agarwal, Johnson, Pawelczyk, Krishna, Saxena,
  Zitnik, Lakkaraju 2022, "Rethinking Stability for Attribution-based
  Explanations", arXiv:2203.06877).

  ``max_x' ||(E(x) - E(x')) / E(x)||_2 / max(||(x - x') / x||_2, eps)`` over
  perturbations ``x' = x + d``, ``d ~ U(-radius, radius)``, that keep the
  predicted class (others are dropped, i.e. score 0; Quantus returns NaN for
  them). Elementwise divisions by 0 use `eps` instead, as Quantus. Defaults:
  Quantus' 200 samples, noise bound 0.2 (Quantus draws ``U(0, 0.2)``; the
  symmetric ball is used here) and ``eps = 1e-6``.

  Returns:
    ``[B]``.
  """
  return _run("relative_input_stability", f, x, attribution, target, key, explainer,
              explainer_options, radius, samples, batch_size, eps)


# The rest of the robustness family lives in `stability` (which builds on this
# module's kernel); re-exported so that every robustness metric is reachable
# here, as each family's metrics are from its module.
from saljax.metrics.stability import (  # noqa: E402,F401
    avg_sensitivity, consistency, continuity, relative_output_stability,
    relative_representation_stability)
