"""saljax: saliency and attribution for JAX.

Re-exports only: every registered explainer at the top level
(``saljax.integrated_gradients``, ``saljax.gradcam``, ...), the namespaces
`explainers`, `metrics`, `model`, `parallel`, and the model adapters.
Models (`saljax.models`), data (`saljax.data`) and figures (`saljax.viz`,
`saljax.plots`) are imported on first use, so ``import saljax`` stays light.
"""
import importlib as _importlib

# First: XLA reads its flags when the first backend starts (see _xla_guard).
from saljax import _xla_guard  # noqa: F401  isort: skip
from saljax import explainers, metrics, model, ops, parallel, targets  # noqa: F401
# One function per registered explainer (tests/test_public_api.py checks the
# list against the registry).
from saljax.explainers import (absolute_gradient, attention_rollout, blur_ig, class_token_attention,
    deconvnet, deeplift, eigencam, expected_gradients, extremal_perturbation, gradcam,
    gradcam_plus_plus, gradient, gradient_shap, gradient_x_input, guided_backprop, guided_ig,
    hirescam, hsic, integrated_gradients, internal_influence, kernel_shap, layer_conductance,
    layer_gradient_x_activation, layer_integrated_gradients, layercam, lima, lime, lrp,
    neuron_gradient, neuron_integrated_gradients, normgrad, normgrad_combined, occlusion,
    owen_values, prompt_cam, rise, scorecam, shapley_sampling, smoothgrad, sobol, squaregrad, vargrad,
    vit_gradcam, xgradcam, xrai)
from saljax.explainers import combine_maps, completeness_gap, make_baseline, upsample
from saljax.model import (  # noqa: F401
    PREDICTED, Model, Tapped, as_model, bind, from_features_head, from_linen, from_nnx,
    resolve_target)

__version__ = "0.1.0"

# The lazily imported modules (`_LAZY`) are left out, so a star import stays light.
__all__ = [
    "explainers", "metrics", "model", "ops", "parallel", "combine_maps", "completeness_gap",
    "make_baseline", "upsample", "PREDICTED", "Model", "Tapped", "as_model", "bind",
    "from_features_head", "from_linen", "from_nnx", "resolve_target", "absolute_gradient",
    "attention_rollout", "blur_ig", "class_token_attention", "deconvnet", "deeplift",
    "eigencam", "expected_gradients", "extremal_perturbation", "gradcam", "gradcam_plus_plus",
    "gradient", "gradient_shap", "gradient_x_input", "guided_backprop", "guided_ig", "hirescam",
    "hsic", "integrated_gradients", "internal_influence", "kernel_shap", "layer_conductance",
    "layer_gradient_x_activation", "layer_integrated_gradients", "layercam", "lima", "lime",
    "lrp", "neuron_gradient", "neuron_integrated_gradients", "normgrad", "normgrad_combined",
    "occlusion", "owen_values", "prompt_cam", "rise", "scorecam", "shapley_sampling", "smoothgrad", "sobol",
    "squaregrad", "vargrad", "vit_gradcam", "xgradcam", "xrai",
]

_LAZY = ("models", "data", "viz", "plots", "attacks", "meta", "blindspots", "safety", "concepts",
         "visualize", "removal")


def __getattr__(name):
  if name in _LAZY:
    return _importlib.import_module(f"saljax.{name}")
  raise AttributeError(f"module 'saljax' has no attribute {name!r}")
