"""The metric registry."""
from saljax import _registry

REGISTRY = _registry.Registry("metric")
