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

REGISTRY = _registry.Registry("explainer", model_output=MODEL_OUTPUT)


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
