"""Explainers, registered by name.

``names()`` lists every explainer; ``get(name)`` returns it. Each follows
``explainer(f, x, target, *, key=None, **options) -> Array``. Every registered
explainer is also an attribute of this module (and of `saljax`), so
``saljax.explainers.integrated_gradients is get("integrated_gradients")``.
"""
from saljax.explainers._registry import REGISTRY as _REGISTRY
# Importing a family module registers its explainers.
from saljax.explainers import (attention, cam, gradients, layer, perturbation,  # noqa: F401
    prompts, propagation, regions)
from saljax.explainers.cam import combine_maps, upsample  # noqa: F401
from saljax.explainers.gradients import completeness_gap, make_baseline, path_nodes  # noqa: F401


def names(family=None):
  """Registered explainer names (optionally of one family, e.g. ``family="cam"``)."""
  return _REGISTRY.names(family)


def get(name):
  """The explainer registered as `name`."""
  return _REGISTRY.get(name)


def entry(name):
  """Registry entry of `name` (`saljax._registry.Entry`: family, needs, returns, cost, ...)."""
  return _REGISTRY.entry(name)


# Every registered explainer, imported by name (tests/test_public_api.py checks
# this list against the registry).
from saljax.explainers._extremal import extremal_perturbation
from saljax.explainers.attention import (attention_rollout, class_token_attention, vit_gradcam)
from saljax.explainers.cam import (eigencam, gradcam, gradcam_plus_plus, hirescam, layercam,
    normgrad, normgrad_combined, scorecam, xgradcam)
from saljax.explainers.gradients import (absolute_gradient, blur_ig, expected_gradients, gradient,
    gradient_shap, gradient_x_input, guided_ig, integrated_gradients, smoothgrad, squaregrad,
    vargrad)
from saljax.explainers.layer import (internal_influence, layer_conductance,
    layer_gradient_x_activation, layer_integrated_gradients, neuron_gradient,
    neuron_integrated_gradients)
from saljax.explainers.perturbation import (kernel_shap, lime, occlusion, owen_values, rise,
    shapley_sampling)
from saljax.explainers.prompts import prompt_cam
from saljax.explainers.propagation import (deconvnet, deeplift, guided_backprop, lrp)
from saljax.explainers.regions import (lima, xrai)
from saljax.explainers.sensitivity import (hsic, sobol)

__all__ = [
    "names", "get", "entry", "completeness_gap", "make_baseline", "path_nodes", "upsample",
    "combine_maps", "absolute_gradient", "attention_rollout", "blur_ig",
    "class_token_attention", "deconvnet", "deeplift", "eigencam", "expected_gradients",
    "extremal_perturbation", "gradcam", "gradcam_plus_plus", "gradient", "gradient_shap",
    "gradient_x_input", "guided_backprop", "guided_ig", "hirescam", "hsic",
    "integrated_gradients", "internal_influence", "kernel_shap", "layer_conductance",
    "layer_gradient_x_activation", "layer_integrated_gradients", "layercam", "lima", "lime",
    "lrp", "neuron_gradient", "neuron_integrated_gradients", "normgrad",
    "normgrad_combined", "occlusion", "owen_values", "prompt_cam", "rise", "scorecam", "shapley_sampling",
    "smoothgrad", "sobol", "squaregrad", "vargrad", "vit_gradcam", "xgradcam", "xrai",
]
