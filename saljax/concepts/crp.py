"""Concept relevance propagation (CRP).

Achtibat et al. 2023, "From attribution maps to human-understandable
explanations through Concept Relevance Propagation", Nature Machine
Intelligence 5 (arXiv:2206.03208); design after zennit-crp's
``CondAttribution``.

LRP (saljax.explainers.propagation) redistributes the target logit layer by
layer. CRP stops at a tapped layer, keeps the relevance of the chosen channels
(a "concept": one channel or a set of channels) and sets the rest to zero, and
propagates that masked relevance on to the input: a conditional heatmap that
shows where, in this image, the concept carried the decision. Because every
LRP rule is linear in the relevance it receives (for a fixed forward pass),
the conditional maps of all channels sum to the unconditional LRP map, and a
channel's conditional map sums to its relevance at the layer wherever the
rules below the layer conserve (no bias, epsilon -> 0, or z+).

How it is computed, with saljax's LRP interpreter (the model is never edited):

* upper part: the tapped forward ``model(x, {layer: t})`` is interpreted
  with `x` held constant and the zero tap `t` as the input, so the rules run
  only above the layer and the cotangent reaching `t` is the layer's relevance
  ``R_layer`` (the tap's ``a + t`` passes relevance through unchanged);
* lower part: ``x -> activations[layer]`` interpreted with the rules, and
  its pullback applied to ``R_layer * mask`` for every condition at once
  (vmapped over the masks, `batch_size` masks per chunk).

The layer's channels are its last axis (NHWC feature maps, dense features).
The rule set's ``"first"`` rule applies to the model's first layer (below the
tapped layer), never to the first layer above it.

`relevance_maximization` ranks a data set's examples per channel by the
channel's relevance (CRP's reference selection, "RelMax") or by its activation
("ActMax"), so a concept can be shown by the examples where it matters most.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.explainers import propagation as P

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CRPResult:
  """Result of `crp`.

  Attributes:
    maps: ``[B, K, ...x]`` conditional relevance maps, one per condition.
    channel_relevance: ``[B, C]`` relevance of each channel of the layer
      (summed over its other axes): the concepts' ranking for this decision.
    layer_relevance: ``[B, ...layer]`` the relevance at the layer itself.
  """
  maps: Array
  channel_relevance: Array
  layer_relevance: Array


jax.tree_util.register_dataclass(CRPResult, data_fields=["maps", "channel_relevance",
                                                         "layer_relevance"], meta_fields=[])


def _interpret(closed, args, dep, rules, bounds, sink):
  ctx = P._Ctx("lrp", dict(rules), bounds, sink=sink)
  outs, _ = P._eval(ctx, closed.jaxpr, closed.consts, list(args), list(dep))
  if len(outs) != 1:
    raise ValueError(f"the model must return one logits array, got {len(outs)} outputs")
  return outs[0]


def _layer_relevance(model, x, target, layer, rules):
  """``R_layer`` (shaped like the activation) from the rules above `layer`."""
  shape = model.activation_shapes(x)[layer]
  tap0 = jnp.zeros(shape.shape, shape.dtype)
  closed = jax.make_jaxpr(lambda xx, t: model(xx, {layer: t})[0])(x, tap0)
  upper = tuple((k, r) for k, r in rules if k != "first")
  sink = jnp.zeros((x.shape[0],), jnp.float32 if x.dtype == jnp.float16 else x.dtype)
  logits, pull = jax.vjp(lambda t, s: _interpret(closed, (x, t), (False, True), upper, None, s),
                         tap0, sink)
  onehot = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
  return pull(onehot * logits)[0]


def _lower_pullback(model, x, layer, rules):
  """The LRP pullback from the activation of `layer` to the input."""
  closed = jax.make_jaxpr(lambda xx: model(xx)[1][layer])(x)
  bounds = P._bounds(x, rules)
  sink = jnp.zeros((x.shape[0],), jnp.float32 if x.dtype == jnp.float16 else x.dtype)
  _, pull = jax.vjp(lambda xx, s: _interpret(closed, (xx,), (True,), rules, bounds, s), x, sink)
  return lambda r: pull(r)[0]


@M.jit(static_argnames=("layer", "rules", "batch_size"))
def _crp(model, x, target, masks, layer, rules, batch_size):
  r_layer = _layer_relevance(model, x, target, layer, rules)
  pull = _lower_pullback(model, x, layer, rules)
  maps = parallel.chunked_map(lambda m: pull(r_layer * m.astype(r_layer.dtype)), masks,
                              batch_size=batch_size)
  maps = P._no_derivative(jnp.moveaxis(maps, 0, 1))
  channels = r_layer.reshape(r_layer.shape[0], -1, r_layer.shape[-1]).sum(1)
  return CRPResult(maps, channels, r_layer)


def _resolve(rules, epsilon):
  rule_set = P._resolve_rules(rules)
  if epsilon is not None:
    if not (isinstance(epsilon, (int, float)) and epsilon >= 0):
      raise ValueError(f"epsilon: expected a float >= 0, got {epsilon!r}")
    rule_set = tuple((k, dataclasses.replace(r, epsilon=float(epsilon)) if r.name == "epsilon"
                      else r) for k, r in rule_set)
  return rule_set


def condition_masks(conditions: Any, channels: int) -> Array:
  """Condition masks ``[K, C]`` (float 0/1) from `conditions`.

  None: every single channel (the identity, K = C); a 1-d int array: those
  single channels; a 2-d bool / 0-1 array ``[K, C]``: each row is a set of
  channels conditioned on together.
  """
  if conditions is None:
    return jnp.eye(channels)
  c = np.asarray(conditions)
  if c.ndim == 1 and np.issubdtype(c.dtype, np.integer):
    if c.size == 0 or c.min() < 0 or c.max() >= channels:
      raise ValueError(f"conditions: expected channel indices in [0, {channels}), got {c.tolist()}")
    return jax.nn.one_hot(jnp.asarray(c), channels)
  if c.ndim == 2 and c.shape[1] == channels and c.shape[0] >= 1 and (
      c.dtype == bool or np.isin(c, (0, 1)).all()):
    return jnp.asarray(c, jnp.float32)
  raise ValueError(
      f"conditions: expected None, channel indices [K] or channel masks [K, {channels}] of"
      f" 0/1, got {V.describe(conditions)}")


def crp(model: Any, x: Any, target: Any, *, layer: str, conditions: Any = None,
        rules: Any = "epsilon_plus", epsilon: float | None = None,
        batch_size: int | None = None, key: Array | None = None) -> CRPResult:
  """Concept-conditional relevance maps (Achtibat et al. 2023) at one tapped layer.

  Args:
    model: a `saljax.Tapped` model.
    x: inputs ``[B, ...]``.
    target: the class explained (an int, ints ``[B]`` or ``"predicted"``).
    layer: the tapped layer whose channels (last axis) are the concepts.
    conditions: None (default: every channel on its own, as zennit-crp's
      per-channel attribution), channel indices ``[K]``, or masks ``[K, C]``
      (several channels conditioned on together).
    rules, epsilon: the LRP rule set (`saljax.explainers.lrp`'s; default
      ``"epsilon_plus"``, zennit-crp's usual EpsilonPlusFlat without the flat
      input rule: z+ on convolutions, epsilon on dense layers).
    batch_size: conditions propagated at once (None: automatic, so that memory
      does not grow with the number of conditions).
    key: unused (deterministic); accepted for the common signature.

  Returns:
    a `CRPResult`: ``maps [B, K, ...x]``, ``channel_relevance [B, C]`` and
    ``layer_relevance``. Not differentiable (as `lrp`).
  """
  del key
  M.check_layers(model, (layer,))
  _, x, target = M.prepare(model.as_model(), x, target)
  batch_size = V.check_batch_size(batch_size)
  rule_set = _resolve(rules, epsilon)
  shape = model.activation_shapes(x)[layer].shape
  masks = condition_masks(conditions, shape[-1])
  return _crp(model, x, target, masks, layer, rule_set, batch_size)


@M.jit(static_argnames=("layer", "rules", "batch_size"))
def _channel_scores(model, x, target, layer, rules, batch_size):
  def one(args):
    xi, ti = args
    r = _layer_relevance(model, xi[None], ti[None], layer, rules)[0]
    a = model(xi[None])[1][layer][0]
    flat = lambda v: v.reshape(-1, v.shape[-1]).sum(0)  # noqa: E731
    return flat(r), flat(a)

  return parallel.chunked_map(one, (x, target), batch_size=batch_size)


def relevance_maximization(model: Any, x: Any, target: Any, *, layer: str, top: int = 8,
                           mode: str = "relevance", rules: Any = "epsilon_plus",
                           epsilon: float | None = None,
                           batch_size: int | None = None) -> tuple[Array, Array]:
  """Reference examples per channel: the `top` examples of `x` where each channel
  of `layer` is most relevant to the target (CRP's RelMax, default) or most
  activated (``mode="activation"``, ActMax).

  Returns ``(indices [C, top], values [C, top])``, best first. `batch_size`
  examples are explained at a time.
  """
  M.check_layers(model, (layer,))
  _, x, target = M.prepare(model.as_model(), x, target)
  V.check_choice(mode, "mode", ("relevance", "activation"))
  top = V.check_positive_int(top, "top")
  if top > x.shape[0]:
    raise ValueError(f"top: expected at most the number of examples {x.shape[0]}, got {top}")
  batch_size = V.check_batch_size(batch_size)
  rel, act = _channel_scores(model, x, target, layer, _resolve(rules, epsilon), batch_size)
  score = rel if mode == "relevance" else act
  values, idx = jax.lax.top_k(score.T, top)
  return idx, values
