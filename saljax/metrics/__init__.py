"""Metrics, registered by name.

``names()`` lists every metric; ``get(name)`` returns it. Each follows
``metric(f, x, attribution, target, *, key=None, **options)`` and returns
per-example scores ``[B]`` (and the curve where the metric has one).
"""
from saljax.metrics._registry import REGISTRY as _REGISTRY
# Importing a family module registers its metrics.
from saljax.metrics import (  # noqa: F401
    contrastive, faithfulness, localization, randomization, removal, robustness, simplicity)


def names(family=None):
  """Registered metric names (optionally of one family, e.g. ``family="faithfulness"``)."""
  return _REGISTRY.names(family)


def get(name):
  """The metric registered as `name`."""
  return _REGISTRY.get(name)


def entry(name):
  """Registry entry of `name` (`saljax._registry.Entry`: family, needs, direction, cost, ...)."""
  return _REGISTRY.entry(name)


# Helpers that are not metrics but that users of the metrics need.
from saljax.metrics.contrastive import (  # noqa: E402,F401
    contrast_weights, contrastive_map, contrastive_model, mask_top)
from saljax.metrics.faithfulness import linear_imputation  # noqa: E402,F401
from saljax.metrics.localization import boxes_to_mask  # noqa: E402,F401
from saljax.metrics.removal import remove_by_attribution  # noqa: E402,F401

# Module names never equal metric names (complexity lives in `simplicity`, roar
# in `removal`), so this never hides a module.
globals().update({_n: _REGISTRY.get(_n) for _n in _REGISTRY.names()})
__all__ = ["names", "get", "entry", "contrast_weights", "contrastive_map", "contrastive_model",
           "mask_top", "linear_imputation", "boxes_to_mask", "remove_by_attribution",
           *_REGISTRY.names()]
