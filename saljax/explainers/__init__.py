"""Explainers, registered by name.

``names()`` lists every explainer; ``get(name)`` returns it. Each follows
``explainer(f, x, target, *, key=None, **options) -> Array``. Every registered
explainer is also an attribute of this module (and of `saljax`), so
``saljax.explainers.integrated_gradients is get("integrated_gradients")``.
"""
from saljax.explainers._registry import REGISTRY as _REGISTRY
# Importing a family module registers its explainers.
from saljax.explainers import attention, cam, gradients, perturbation, propagation, regions  # noqa: F401
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


globals().update({_n: _REGISTRY.get(_n) for _n in _REGISTRY.names()})
__all__ = ["names", "get", "entry", "completeness_gap", "make_baseline", "path_nodes",
           "upsample", "combine_maps",
           *_REGISTRY.names()]
