"""Metrics, registered by name.

``names()`` lists every metric; ``get(name)`` returns it. Each follows
``metric(f, x, attribution, target, *, key=None, **options)`` and returns
per-example scores ``[B]`` (and the curve where the metric has one).
"""
from saljax.metrics._registry import REGISTRY as _REGISTRY
# Importing a family module registers its metrics.
from saljax.metrics import (  # noqa: F401
    complexity, contrastive, faithfulness, localization, randomization, robustness, roar)


def names(kind=None):
  """Registered metric names (optionally of one family, e.g. ``kind="faithfulness"``)."""
  return _REGISTRY.names(kind)


def get(name):
  """The metric registered as `name`."""
  return _REGISTRY.get(name)


def entry(name):
  """Registry entry of `name`."""
  return _REGISTRY.entry(name)


globals().update({_n: _REGISTRY.get(_n) for _n in _REGISTRY.names()})
__all__ = ["names", "get", "entry", *_REGISTRY.names()]
