"""Axiomatic metrics: does the explanation satisfy a property it should by
construction? Completeness (attributions sum to the change in the output),
non-sensitivity (features the model ignores get no attribution, and only
those), input invariance (a constant input shift absorbed by the model leaves
the explanation unchanged).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax import removal as RV
from saljax.metrics import _common as C
from saljax.metrics import robustness as R
from saljax.metrics._registry import REGISTRY

Array = jax.Array


def _baseline(x: Array, fill: Any, name: str) -> Array:
  """The replacement values, broadcastable to `x`: ``"min"`` is Quantus'
  "black" (each example's minimum over all its values), a float a constant,
  an array shaped like `x` itself."""
  if isinstance(fill, str):
    V.check_choice(fill, name, ("min",))
    return x.reshape(x.shape[0], -1).min(1).reshape((-1,) + (1,) * (x.ndim - 1))
  if isinstance(fill, (int, float, np.floating, np.integer)) and not isinstance(fill, bool):
    return jnp.full((1,) * x.ndim, float(fill), x.dtype)
  if hasattr(fill, "shape"):
    return jnp.asarray(V.check_same_shape(fill, x, name=name), x.dtype)
  raise TypeError(f"{name}: expected 'min', a float or an array shaped like x, got"
                  f" {V.describe(fill)}")


@M.jit
def _completeness(model, x, a, target, base):
  f = M.as_model(model)
  xb = jnp.broadcast_to(base, x.shape).astype(x.dtype)
  delta = C.target_score(f, x, target, "logit") - C.target_score(f, xb, target, "logit")
  return jnp.abs(a.reshape(a.shape[0], -1).sum(1) - delta)


@REGISTRY.register("completeness", family="axiomatic", returns="scores", evaluations=2,
    backward=False, smoke={}, direction="lower")
def completeness(f, x, attribution, target, *, baseline: Any = 0.0):
  """Completeness gap (Sundararajan, Taly, Yan 2017, "Axiomatic Attribution for
  Deep Networks", ICML, arXiv:1703.01365, sec. 3).

  ``|sum(a) - (f_t(x) - f_t(baseline))|`` per example, on the target's logit:
  0 when the attribution is complete (integrated gradients with enough steps,
  gradient x input of a bias-free linear model). `baseline` must be the one the
  explainer used: default 0.0 (IG's black image); ``"min"`` is Quantus' "black"
  (each example's minimum); an array shaped like `x` is taken as is.

  Quantus' `Completeness` returns ``sum(a) == f(x) - f(baseline)`` compared
  exactly in floating point (quantus/metrics/axiomatic/completeness.py, the
  last line of `evaluate_batch`), which is False for any attribution
  computed in float32; the gap is the number that test thresholds.

  Returns:
    ``[B]``, lower is more complete.
  """
  _, x, target = C.prepare_model(f, x, target)
  a = C.check_attribution(attribution, x)
  base = _baseline(x, baseline, "baseline")
  return _completeness(f, x, a, target, base)


# ----------------------------------------------------------------------------
# Non-sensitivity.

FEATURES = ("element", "pixel")


def _non_sensitivity_evaluations(o, f, x) -> int:
  n = int(np.prod(x.shape[1:3] if o["features"] == "pixel" else x.shape[1:]))
  return 1 + n


@M.jit(static_argnames=("batch_size", "pixel"))
def _non_sensitivity(model, x, a, target, base, eps, *, batch_size, pixel):
  f = M.as_model(model)
  b = x.shape[0]
  y = C.target_score(f, x, target, "logit")
  grid = x.shape[:3] if pixel else x.shape
  n = int(np.prod(grid[1:]))
  xb = jnp.broadcast_to(base, x.shape).astype(x.dtype)

  def one(i):
    hit = (jnp.arange(n) == i).reshape((1,) + grid[1:])
    if pixel:
      hit = hit[..., None]
    xp = jnp.where(hit, xb, x)
    return jnp.abs(C.target_score(f, xp, target, "logit") - y) < eps

  insensitive = parallel.chunked_map(one, jnp.arange(n), batch_size=batch_size).T  # [B, n]
  unattributed = jnp.abs(a.reshape(b, -1)) < eps
  return (insensitive ^ unattributed).sum(1).astype(jnp.float32)


@REGISTRY.register("non_sensitivity", family="axiomatic", returns="scores",
    evaluations=_non_sensitivity_evaluations, backward=False, smoke={"features": "pixel"},
    direction="lower", model_output="forward")
def non_sensitivity(f, x, attribution, target, *, eps: float = 1e-5, fill: Any = "min",
                    features: str = "element", batch_size: int | None = None,
                    removal: Any = None):
  """Non-sensitivity (Nguyen, Martinez 2020, "On Quantitative Aspects of Model
  Interpretability", arXiv:2007.07584, sec. 3.2), as Quantus' `NonSensitivity`.

  Each feature in turn is replaced by `fill`; the feature is *insensitive*
  when the target's logit moves by less than `eps`, *unattributed* when
  ``|a| < eps``. The score counts the features where exactly one holds: an
  ignored feature given relevance, or a used feature given none. 0 is ideal.

  Features: ``"element"`` (default, Quantus: every value of `x`, one channel at
  a time; a ``[B, H, W]`` map is broadcast over channels) or ``"pixel"`` (all
  channels of a pixel together; an attribution shaped like `x` is summed over
  channels in absolute value). Defaults as Quantus: eps 1e-5 for both tests,
  fill "black" (``"min"``: each example's minimum) and ``abs=True``; its
  ``normalise=True`` (dividing the map by its max before the eps test) is not
  applied, so `eps` reads in the attribution's own units. One model evaluation
  per feature, `batch_size` features at a time.

  eps 1e-5 on a logit of magnitude ~10 is at float32's rounding: on the
  pretrained Lite0 at 32 px a few of 3072 features change side between float32
  and float64 evaluation of the same model (docs/benchmarks.md). Use x64 or a
  larger eps where the exact count matters.

  ``removal``: None (default: `fill` decides), a `saljax.removal.Removal` or
  a kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (blur
  sigma 5 unless the Removal gives one; mean: each image's mean colour);
  ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
  mask-aware forward with the removed pixel marked (`saljax.removal`;
  ``features="pixel"`` only, as they remove whole pixels).

  Returns:
    ``[B]`` counts (float32), lower is better.
  """
  rem = RV.as_removal(removal)
  fill, blur_sigma, keep_model = RV.resolve(rem, f, fill, 5.0, "non_sensitivity")
  if keep_model is not None and features != "pixel":
    raise ValueError(f"non_sensitivity: removal={rem.kind!r} removes whole pixels; use"
                     f" features='pixel', got features={features!r}")
  _, x, target = C.prepare_model(f, x, target)
  a = C.check_attribution(attribution, x)
  V.check_choice(features, "features", FEATURES)
  pixel = features == "pixel"
  if pixel and x.ndim != 4:
    raise ValueError(f"non_sensitivity: features='pixel' needs NHWC images, got x of shape"
                     f" {tuple(x.shape)}")
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
    raise ValueError(f"non_sensitivity: expected eps > 0, got {eps!r}")
  batch_size = V.check_batch_size(batch_size)
  if pixel:
    a = C.feature_map(a, x, absolute=True)
  elif a.ndim == 3 and x.ndim == 4:
    a = C.expand(a, x)
  if rem is not None and not rem.needs_model and isinstance(fill, str):  # "blur" or "mean"
    base = C.make_fill(x, fill, blur_sigma=blur_sigma)
  else:
    base = _baseline(x, fill, "fill")
  if keep_model is not None:
    f, x, base, _, _ = RV.switch(keep_model, f, x, jnp.broadcast_to(base, x.shape), None,
                                "non_sensitivity")
  return _non_sensitivity(f, x, a, target, base, jnp.float32(eps), batch_size=batch_size,
                          pixel=pixel)


# ----------------------------------------------------------------------------
# Input invariance.

def _shifted_forward(model, shift, x, taps=None):
  return model(x - shift, taps)


def _shifted_logits(model, shift, x):
  return model(x - shift)


def shifted_model(f: Any, shift: Array) -> Any:
  """The model that reads ``x + shift`` as `f` reads `x`: ``f(x - shift)``, the
  paper's first-layer bias absorbing the shift, for any model (a `Tapped`
  stays tapped)."""
  if isinstance(f, M.Tapped):
    return M.Tapped(jax.tree_util.Partial(_shifted_forward, f, shift), f.layer_names)
  return M.Model(jax.tree_util.Partial(_shifted_logits, M.as_model(f), shift))


def _invariance_evaluations(o, f, x) -> int:
  from saljax.explainers._registry import cost_of
  return cost_of(o["explainer"], o["explainer_options"], f, x)


@M.jit(static_argnames=("explainer",))
def _input_invariance(model, x, target, e_x, key, shift, atol, *, explainer, options):
  e_s = R.explain(explainer, shifted_model(model, shift), x + shift, target, key, options)
  close = jnp.abs(e_x - e_s) <= atol + 1e-5 * jnp.abs(e_s)  # np.isclose, rtol 1e-5
  return close.reshape(x.shape[0], -1).all(1).astype(jnp.float32)


@REGISTRY.register("input_invariance", family="axiomatic", returns="scores",
    needs=("explainer",), evaluations=_invariance_evaluations, backward=True, smoke={},
    direction="higher", model_output="forward")
def input_invariance(f, x, attribution, target, *, explainer=None, explainer_options=None,
                     shift: float = -1.0, atol: float = 1e-4, key=None):
  """Input invariance (Kindermans, Hooker, Adebayo, Alber, Schuett, Daehne,
  Erhan, Kim 2017/2019, "The (Un)reliability of Saliency Methods", arXiv:1711.00867).

  The model ``f'(x') = f(x' - shift)`` computes on ``x' = x + shift`` exactly
  what `f` computes on `x` (the paper shifts the input and absorbs the shift
  in the first layer's bias). 1.0 where the explanation of ``(f', x')`` equals
  that of ``(f, x)`` everywhere (``np.isclose`` with `atol` and rtol 1e-5),
  else 0.0. Gradients are invariant; gradient x input is not.

  Defaults as Quantus' `InputInvariance` (shift -1, atol 1e-4, no
  normalisation or abs). Quantus builds ``f'`` by moving the first layer's
  bias by the *minimum* of that layer's response to the constant shift
  (quantus/helpers/model/pytorch_model.py, `add_mean_shift_to_first_layer`,
  ``torch.unique(fw[i])[0]``), which equals the response only without zero
  padding; with a padded convolution its ``f'`` differs from `f` near the
  border and even the gradient fails. The composition ``f(x' - shift)`` is the
  paper's model for any architecture.

  Args:
    explainer, explainer_options: the explanation method.
    attribution: ``E(f, x)`` or None to compute it.
    key: passed to a stochastic explainer (the same key on both sides).

  Returns:
    ``[B]`` of 1.0 / 0.0, higher is better.
  """
  model = f
  _, x, target = C.prepare_model(f, x, target)
  explainer, options = R.check_explainer(explainer, explainer_options)
  key = C.check_key(key, "input_invariance", required=False)
  for name, v in (("shift", shift), ("atol", atol)):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise TypeError(f"input_invariance: expected {name} a float, got {v!r}")
  if atol < 0:
    raise ValueError(f"input_invariance: expected atol >= 0, got {atol}")
  e_x = R.check_explanation(attribution, explainer, model, x, target, key, options)
  return _input_invariance(model, x, target, e_x, key, jnp.asarray(shift, x.dtype),
                           jnp.float32(atol), explainer=explainer, options=options)
