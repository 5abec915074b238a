"""saljax: saliency and attribution for JAX.

Re-exports only: every registered explainer at the top level
(``saljax.integrated_gradients``, ``saljax.gradcam``, ...), the namespaces
`explainers`, `metrics`, `model`, `parallel`, and the model adapters.
Models (`saljax.models`), data (`saljax.data`) and figures (`saljax.viz`) are
imported on first use, so ``import saljax`` stays light.
"""
import importlib as _importlib

from saljax import explainers, metrics, model, ops, parallel  # noqa: F401
from saljax.explainers import *  # noqa: F401,F403  (one function per method)
from saljax.explainers import combine_maps, completeness_gap, make_baseline, upsample  # noqa: F401
from saljax.model import (  # noqa: F401
    PREDICTED, Model, Tapped, as_model, bind, from_features_head, from_linen, from_nnx,
    resolve_target)

__version__ = "0.1.0"

_LAZY = ("models", "data", "viz", "attacks")


def __getattr__(name):
  if name in _LAZY:
    return _importlib.import_module(f"saljax.{name}")
  raise AttributeError(f"module 'saljax' has no attribute {name!r}")
