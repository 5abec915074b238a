"""The explainer registry and the checks every explainer runs first."""
from __future__ import annotations

from typing import Any

import jax

from saljax import _registry
from saljax import _validation as V
from saljax import model as M

REGISTRY = _registry.Registry("explainer")


def prepare(f: Any, x: Any, target: Any):
  """Validates `f`, `x` and `target` before any work; returns ``(f, x, target)``.

  `f` becomes the plain ``x -> logits`` callable (a `Tapped` is unwrapped),
  `x` a floating array, and `target` an int32 array ``[B]`` (``"predicted"``
  is resolved with one forward pass).
  """
  if not callable(f):
    raise TypeError(f"f: expected a model x[B, ...] -> logits[B, C], got {V.describe(f)}")
  x = V.check_input(x)
  f = M.as_model(f)
  target = M.resolve_target(f, x, target)
  return f, x, target


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
