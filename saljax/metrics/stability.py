"""Stability metrics: average sensitivity, relative output / representation
stability, continuity under translation, and consistency across a batch.

The re-explaining metrics take an explainer as `saljax.metrics.robustness`
does (``explainer=``, ``explainer_options=``) and share its compiled kernel:
perturbations of the whole batch run through `saljax.parallel.chunked_map`,
``batch_size`` of them at a time, and every call compiles once per shape.
"""
from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.metrics import _common as C
from saljax.metrics import robustness as R
from saljax.metrics._registry import REGISTRY

Array = jax.Array


@REGISTRY.register("avg_sensitivity", family="robustness", returns="scores",
    needs=("key", "explainer"), evaluations=R._stability_evaluations, backward=True,
    smoke={"samples": 3}, direction="lower")
def avg_sensitivity(f, x, attribution, target, *, key=None, explainer=None, explainer_options=None,
                    radius: float = 0.02, samples: int = 10, batch_size: int | None = None):
  """Average sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar 2019, "On the
  (In)fidelity and Sensitivity of Explanations", NeurIPS, arXiv:1901.09392).

  ``mean_d ||E(x + d) - E(x)||_F / ||E(x)||_F`` over `samples` draws of ``d``
  uniform in the L-infinity ball of `radius`: `max_sensitivity`'s estimate
  with the mean instead of the max (the same draws for the same key), so the
  defaults are the same (Captum's radius 0.02 and 10 samples; a zero ``E(x)``
  divides by 1). Quantus' `AvgSensitivity` computes the same ratio (its
  defaults: 200 samples, radius 0.2, no normalisation, no abs).

  Args:
    f: model; explainer, explainer_options: the explanation method and its
      options; attribution: ``E(x)`` or None to compute it; key: required.
    radius: L-infinity radius in input units.
    samples: perturbations.
    batch_size: perturbations evaluated together.

  Returns:
    ``[B]``, lower is more stable.
  """
  return R._run("avg_sensitivity", f, x, attribution, target, key, explainer, explainer_options,
                radius, samples, batch_size)


@REGISTRY.register("relative_output_stability", family="robustness", returns="scores",
    needs=("key", "explainer"), evaluations=R._relative_stability_evaluations, backward=True,
    smoke={"samples": 3}, direction="lower")
def relative_output_stability(f, x, attribution, target, *, key=None, explainer=None,
                              explainer_options=None, radius: float = 0.2, samples: int = 200,
                              eps: float = 1e-6, batch_size: int | None = None):
  """Relative output stability (Agarwal, Johnson, Pawelczyk, Krishna, Saxena,
  Zitnik, Lakkaraju 2022, "Rethinking Stability for Attribution-based
  Explanations", arXiv:2203.06877, eq. 5).

  ``max_x' ||(E(x) - E(x')) / E(x)||_2 / max(||h(x) - h(x')||_2, eps)`` with
  ``h`` the logits, over ``x' = x + d``, ``d ~ U(-radius, radius)``, keeping
  only perturbations that keep the predicted class (the others score 0;
  Quantus returns NaN for the whole example). A zero in ``E(x)`` divides by
  `eps`. Defaults as `relative_input_stability` (Quantus' 200 samples, bound
  0.2, eps 1e-6). Quantus adds `eps` to a zero denominator instead of taking
  the max with it (the paper's ``max(., eps_min)``); the two differ only for
  logit changes below 1e-6.

  Returns:
    ``[B]``, lower is more stable.
  """
  return R._run("relative_output_stability", f, x, attribution, target, key, explainer,
                explainer_options, radius, samples, batch_size, eps)


@REGISTRY.register("relative_representation_stability", family="robustness", returns="scores",
    needs=("key", "explainer", "tapped"), evaluations=R._relative_stability_evaluations,
    backward=True, smoke={"samples": 3}, direction="lower")
def relative_representation_stability(f, x, attribution, target, *, layer: str | None = None,
                                      key=None, explainer=None, explainer_options=None,
                                      radius: float = 0.2, samples: int = 200, eps: float = 1e-6,
                                      batch_size: int | None = None):
  """Relative representation stability (Agarwal et al. 2022, "Rethinking
  Stability for Attribution-based Explanations", arXiv:2203.06877, eq. 4).

  ``max_x' ||(E(x) - E(x')) / E(x)||_2 / max(||(L(x) - L(x')) / L(x)||_2, eps)``
  with ``L`` the activation of the tapped `layer`, over the perturbations of
  `relative_output_stability` (same defaults, same draws for the same key).
  Zeros in ``E(x)`` and ``L(x)`` divide by `eps` (ReLU layers have many: tap a
  pre-activation where the model offers one). Quantus' default with no layer
  concatenates every layer; here one layer is named.

  Args:
    f: a tapped model (`saljax.model.Tapped`; explainers receive it as is).
    layer: the layer name (required).

  Returns:
    ``[B]``, lower is more stable.
  """
  if not isinstance(f, M.Tapped):
    raise TypeError("relative_representation_stability: expected a tapped model"
                    " (saljax.model.Tapped, e.g. saljax.from_linen(...)) to read the layer,"
                    f" got {V.describe(f)}")
  if layer is None or not isinstance(layer, str):
    raise ValueError("relative_representation_stability: expected layer= one of"
                     f" {list(f.layer_names)}, got {layer!r}")
  return R._run("relative_representation_stability", f, x, attribution, target, key, explainer,
                explainer_options, radius, samples, batch_size, eps, layer=layer)


# ----------------------------------------------------------------------------
# Continuity (translations).

def _continuity_evaluations(o, f, x) -> int:
  from saljax.explainers._registry import cost_of
  return o["steps"] * cost_of(o["explainer"], o["explainer_options"], f, x)


def translations(width: int, steps: int) -> np.ndarray:
  """Quantus' schedule: shifts ``-W + k * dx`` for ``k = 1..steps`` with
  ``dx = (2W + 1) // steps`` (in pixels; positive moves the image right)."""
  dx = (2 * width + 1) // steps
  if dx == 0:
    raise ValueError(f"continuity: expected steps <= {2 * width + 1} (2 * width + 1; more steps"
                     f" make every shift the same), got steps={steps}")
  return (-width + dx * np.arange(1, steps + 1)).astype(np.int32)


def translate(x: Array, shift: Array, fill: Array) -> Array:
  """`x` (NHWC) shifted along the width by `shift` pixels, vacated columns set
  to `fill` (broadcast against x)."""
  w = x.shape[2]
  cols = jnp.arange(w) - shift
  valid = (cols >= 0) & (cols < w)
  moved = jnp.take(x, jnp.clip(cols, 0, w - 1), axis=2)
  return jnp.where(valid[None, None, :, None], moved, fill)


@M.jit(static_argnames=("explainer", "batch_size"))
def _continuity(model, x, target, e_x, key, shifts, fill, *, explainer, options, batch_size):
  b = x.shape[0]

  def one(s):
    xs = translate(x, s, fill)
    diff = R.explain(explainer, model, xs, target, key, options) - e_x
    num = jnp.abs(diff).reshape(b, -1).sum(1)
    dist = R._norm(xs - x)
    return jnp.where(dist > 0, num / jnp.where(dist > 0, dist, 1.0), 0.0)

  return parallel.chunked_map(one, shifts, batch_size=batch_size).max(0)


@REGISTRY.register("continuity", family="robustness", returns="scores",
    needs=("explainer",), evaluations=_continuity_evaluations, backward=True,
    smoke={"steps": 3}, direction="lower", model_output="forward")
def continuity(f, x, attribution, target, *, explainer=None, explainer_options=None,
               steps: int = 28, fill: Any = "min", key=None, batch_size: int | None = None):
  """Continuity (Montavon, Samek, Mueller 2018, "Methods for Interpreting and
  Understanding Deep Neural Networks", Digital Signal Processing 73, sec. 7.1).

  ``max_x' ||E(x) - E(x')||_1 / ||x - x'||_2`` over the inputs ``x'`` obtained
  by translating `x` horizontally, as Quantus' `Continuity`: `steps` shifts
  from ``-W + dx`` to ``-W + steps * dx`` pixels, ``dx = (2W + 1) // steps``,
  vacated columns filled with `fill`. A shift that leaves `x` unchanged scores 0.

  Defaults: Quantus' 28 steps (images narrower than 14 pixels need fewer) and
  its "black" fill, the example's minimum (``fill="min"``; a float fills with
  that value). Unlike Quantus' defaults (``normalise=True, abs=True``) the raw
  explanations are compared, as in the paper; Quantus' optional NaN for a
  changed prediction is not applied. The explanation of ``x'`` is taken for
  `target`, as Quantus does.

  Args:
    explainer, explainer_options: the explanation method to re-run.
    attribution: ``E(x)`` or None to compute it.
    key: passed to a stochastic explainer (the same key for every shift).

  Returns:
    ``[B]``, lower is more continuous.
  """
  model = f
  _, x, target = C.prepare_model(f, x, target)
  if x.ndim != 4:
    raise ValueError(f"continuity: expected NHWC images [B, H, W, C], got x of shape"
                     f" {tuple(x.shape)}")
  explainer, options = R.check_explainer(explainer, explainer_options)
  steps = parallel.check_count(steps, "steps")
  batch_size = V.check_batch_size(batch_size)
  key = C.check_key(key, "continuity", required=False)
  shifts = jnp.asarray(translations(x.shape[2], steps))
  if isinstance(fill, str):
    V.check_choice(fill, "fill", ("min",))
    fill_v = x.reshape(x.shape[0], -1).min(1)[:, None, None, None]
  elif isinstance(fill, (int, float)) and not isinstance(fill, bool):
    fill_v = jnp.full((1, 1, 1, 1), float(fill), x.dtype)
  else:
    raise TypeError(f"continuity: expected fill='min' or a float, got {V.describe(fill)}")
  e_x = R.check_explanation(attribution, explainer, model, x, target, key, options)
  return _continuity(model, x, target, e_x, key, shifts, fill_v.astype(x.dtype),
                     explainer=explainer, options=options, batch_size=batch_size)


# ----------------------------------------------------------------------------
# Consistency (Dasgupta et al.).

def top_k_signs(a: Array, k: int) -> tuple[Array, Array]:
  """The discrete explanation: indices of the `k` largest ``|a|`` per example
  (sorted ascending, so it is a set) and the signs there. ``[B, k]`` each."""
  flat = a.reshape(a.shape[0], -1)
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  idx = jnp.sort(idx, axis=1)
  return idx, jnp.sign(jnp.take_along_axis(flat, idx, 1))


def top_k_signs_hash(a: np.ndarray, k: int = 5) -> int:
  """Numpy `top_k_signs` of one flat explanation, hashed (a Quantus
  `discretise_func` computing the same labels; ties go to the lower index)."""
  a = np.asarray(a, np.float32).ravel()
  idx = np.sort(np.argsort(-np.abs(a), kind="stable")[:k])
  return int(hashlib.sha1(idx.astype(np.int64).tobytes()
                          + np.sign(a[idx]).astype(np.int8).tobytes()).hexdigest()[:15], 16)


@M.jit(static_argnames=("k",))
def _consistency(model, x, a, *, k):
  pred = jnp.argmax(M.as_model(model)(x), -1)
  idx, sgn = top_k_signs(a, k)
  same_e = (idx[:, None] == idx[None]).all(-1) & (sgn[:, None] == sgn[None]).all(-1)
  same_e &= ~jnp.eye(x.shape[0], dtype=bool)
  same_p = pred[:, None] == pred[None]
  n = same_e.sum(1)
  return jnp.where(n > 0, (same_e & same_p).sum(1) / jnp.maximum(n, 1), 0.0).astype(jnp.float32)


@REGISTRY.register("consistency", family="robustness", returns="scores", evaluations=1,
    backward=False, smoke={}, direction="higher", model_output="forward")
def consistency(f, x, attribution, target=None, *, top_k: int = 5):
  """Consistency (Dasgupta, Frost, Moshkovitz 2022, "Framework for Evaluating
  Faithfulness of Local Explanations", ICML, arXiv:2202.00734).

  The explanation is discretised to the set of its `top_k` largest ``|a|``
  features with their signs; example ``i`` scores the fraction of the other
  examples of the batch with the same discrete explanation that also get the
  same predicted class (0 where no other example shares it, as Quantus). The
  batch is the sample of the data distribution, so its size matters.

  Quantus' default discretisation `top_n_sign` (quantus/functions/
  discretise_func.py, line 75: ``np.sign(a)[:n]``) takes the signs of the
  FIRST n entries of the flattened map, not of its top n features; the paper's
  discrete explanations are top features, so `top_k` selects by magnitude.
  `target` is unused (the predicted classes are compared).

  Returns:
    ``[B]`` in [0, 1], higher is more consistent.
  """
  if not callable(f):
    raise TypeError(f"consistency: expected a model x[B, ...] -> logits[B, C], got"
                    f" {V.describe(f)}")
  x = V.check_input(x)
  a = C.check_attribution(attribution, x)
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise ValueError(f"consistency: expected top_k an int >= 1, got {top_k!r}")
  n = int(np.prod(a.shape[1:]))
  if top_k > n:
    raise ValueError(f"consistency: expected top_k <= the {n} features of the attribution,"
                     f" got {top_k}")
  return _consistency(f, x, a, k=int(top_k))
