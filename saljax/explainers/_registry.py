"""The explainer registry and the checks every explainer runs first."""
from __future__ import annotations

from typing import Any

import jax

from saljax import _registry
from saljax import _validation as V
from saljax import model as M

# How each explainer meets a model with NaN/inf logits (`_registry.MODEL_OUTPUT`;
# "result" when not listed). tests/test_model_output.py holds every claim: a
# method that turns non-finite logits into a finite map fails it until listed.
MODEL_OUTPUT = {
    # Never read the logits: attention probabilities, a layer's principal component.
    "attention_rollout": "unused", "class_token_attention": "unused", "eigencam": "unused",
    # Can return finite maps from non-finite logits: regression or ranking of
    # perturbed scores, normalized or thresholded weights, inputs other than x.
    "lima": "forward", "lime": "forward", "normgrad_combined": "forward", "rise": "forward",
    "scorecam": "forward", "sobol": "forward",
}

# The year of each method's paper (the one its docstring cites first), for
# figure labels; tests/test_viz.py checks each against the docstring.
YEAR = {
    "absolute_gradient": 2014, "attention_rollout": 2020, "blur_ig": 2020,
    "class_token_attention": 2025, "deconvnet": 2014, "deeplift": 2017, "eigencam": 2020,
    "expected_gradients": 2021, "extremal_perturbation": 2019, "gradcam": 2017,
    "gradcam_plus_plus": 2018, "gradient": 2014, "gradient_shap": 2017, "gradient_x_input": 2016,
    "guided_backprop": 2015, "guided_ig": 2021, "hirescam": 2020, "hsic": 2022,
    "integrated_gradients": 2017, "internal_influence": 2018, "kernel_shap": 2017,
    "layer_conductance": 2018, "layer_gradient_x_activation": 2016,
    "layer_integrated_gradients": 2017, "layercam": 2021, "lima": 2025,
    "lime": 2016, "lrp": 2015, "neuron_gradient": 2014, "neuron_integrated_gradients": 2017,
    "normgrad": 2020, "normgrad_combined": 2020, "occlusion": 2014, "owen_values": 1977,
    "rise": 2018, "scorecam": 2020, "shapley_sampling": 2009, "smoothgrad": 2017, "sobol": 2021,
    "squaregrad": 2019, "vargrad": 2018, "vit_gradcam": 2017, "xgradcam": 2020, "xrai": 2019,
}

# Default displays (`_registry.Display`; `saljax.viz` takes overrides).
# Pixel maps of gradient and propagation methods: PAIR saliency's grayscale
# convention, the channel sum of |values| clipped at the 99th percentile, as a
# magnitude. Their signed channel sum mostly cancels (neighbouring pixels and
# channels alternate in sign), which drew a grey photo with a few dots; the
# signed view stays one override away: sign="all", aggregation="sum".
_MAGNITUDE = _registry.Display(aggregation="abs_sum", sign="absolute_value", percentile=99.0)
# Layer maps (CAMs, attention) and perturbation maps of evidence for the
# class: their positive part (Grad-CAM's ReLU), one value per pixel.
_POSITIVE = _registry.Display(aggregation="sum", sign="positive", percentile=99.0)
# Maps on an offset (RISE's mean masked score, sensitivity indices, masks,
# region ranks): their own values from the minimum.
_RANGE = _registry.Display(aggregation="sum", sign="range", percentile=99.0)
DISPLAY = {
    "rise": _RANGE, "hsic": _RANGE, "sobol": _RANGE, "extremal_perturbation": _RANGE,
    "xrai": _RANGE, "lima": _RANGE,
    # Input gradients of a neuron: the pixel gradient maps' convention.
    "neuron_gradient": _MAGNITUDE, "neuron_integrated_gradients": _MAGNITUDE,
}


def _display(name: str, family: str, returns: str) -> _registry.Display:
  if name in DISPLAY:
    return DISPLAY[name]
  if family in ("gradients", "propagation"):
    return _MAGNITUDE
  return _POSITIVE


REGISTRY = _registry.Registry("explainer", model_output=MODEL_OUTPUT, display=_display, year=YEAR)


prepare = M.prepare  # the checks every explainer runs first (shared with metrics)


def require_key(key: Any, method: str) -> jax.Array:
  """Checks that a sampling method got a `jax.random` key."""
  if key is None:
    raise ValueError(f"{method}: expected a jax.random key (key=jax.random.key(0)), got None")
  if not hasattr(key, "dtype"):
    raise TypeError(f"{method}: expected a jax.random key, got {V.describe(key)}")
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if key.shape != (2,) or key.dtype.name != "uint32":
    raise TypeError(
        f"{method}: expected a jax.random key (jax.random.key or PRNGKey), got {V.describe(key)}")
  return key


def cost_of(explainer: Any, options: Any, f: Any, x: Any) -> int:
  """Model evaluations per example of `explainer` (a registered name or
  function) with `options`; 1 for an unregistered callable (one gradient, the
  common case, stated rather than guessed at)."""
  opts = dict(options or {})
  if isinstance(explainer, str):
    return REGISTRY.entry(explainer).cost(f, x, **opts)
  for name in REGISTRY.names():
    if REGISTRY.get(name) is explainer:
      return REGISTRY.entry(name).cost(f, x, **opts)
  return 1
