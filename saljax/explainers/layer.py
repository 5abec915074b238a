"""Layer and neuron attribution on any tapped layer: Captum's layer and neuron
families (LayerIntegratedGradients, LayerGradientXActivation, LayerConductance,
InternalInfluence, NeuronGradient, NeuronIntegratedGradients).

Layer methods take a tapped model ``f`` (`saljax.model.Tapped`) and a
``layer`` option (a name; None: the last layer with a spatial grid, as the
CAMs) and return attributions shaped like that layer's activation
(``[B, h, w, C]`` for a conv layer, ``[B, T, D]`` for token embeddings),
unreduced, as Captum returns them. Gradients with respect to an activation
come from a zero *tap* on it (the model's forward adds ``taps[layer]`` to the
activation), so no input gradient is ever taken: `layer_integrated_gradients`
and `layer_gradient_x_activation` accept integer token inputs ``x[B, T]``
(the embedding layer of a text model is their main use).

Neuron methods attribute one neuron's activation (an index into the layer's
activation without the batch axis, or a callable ``act -> [B]``) to the input,
and return a map shaped like ``x``.

The score differentiated by the layer methods is the target logit
(pre-softmax), with `target` handled as by every explainer (an int, ``[B]``
ints or ``"predicted"``). Path methods evaluate their steps through
`saljax.parallel` (``batch_size`` steps together for every example; None:
automatic), so memory does not grow with `steps`, and each compiles once per
shape: options that change the computation (layer, steps, rule, batch_size)
are static, the arrays (x, target, baselines, the model's parameters) traced.
"""
from __future__ import annotations

import typing
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.explainers import cam, gradients
from saljax.explainers._registry import REGISTRY

Array = jax.Array


# ----------------------------------------------------------------------------
# Checks shared by the layer and neuron methods.


def _is_tokens(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(np.dtype(x.dtype), np.signedinteger)


def _check_tokens(x: Any) -> Array:
  """Integer token ids ``[B, ...]`` as a JAX array, or raises naming `x`."""
  if x.ndim < 2:
    raise ValueError(
        f"x: expected a batched array with at least 2 dims [B, ...] (token ids [B, T]), got"
        f" shape {tuple(x.shape)}")
  if x.shape[0] == 0:
    raise ValueError(f"x: expected a non-empty batch, got shape {tuple(x.shape)}")
  V.check_layout(x)
  return x if isinstance(x, jax.Array) else jnp.asarray(x)


def _prepare(method: str, f: Any, x: Any, target: Any, *, tokens: bool = False,
             uses_target: bool = True):
  """``(x, target)`` checked before any work: a tapped model, the input, the target.

  Floating inputs go through `saljax.model.prepare`, the checks and target
  resolution every explainer shares. With `tokens`, signed-integer inputs are
  accepted as token ids (the gradient is taken at a layer, never at them).
  A method that does not read the target (`uses_target=False`) validates a
  given one and ignores it; None and "predicted" cost no forward pass.
  """
  if not isinstance(f, M.Tapped):
    raise TypeError(
        f"{method}: layer methods need a tapped model (saljax.model.Tapped, see"
        f" saljax.model.from_linen / from_nnx / from_features_head), got {V.describe(f)}")
  if not uses_target and (target is None or (isinstance(target, str) and target == M.PREDICTED)):
    target = 0
  if tokens and _is_tokens(x):
    x = _check_tokens(x)
    # The target check `prepare` makes, for inputs `prepare` refuses (ints).
    return x, M.resolve_target(f, x, target)
  _, x, target = M.prepare(f, x, target)
  return x, target


def _one_layer(method: str, f: M.Tapped, x: Array, layer: Any) -> str:
  """One validated layer name (None: the last layer with a spatial grid)."""
  if layer is None:
    return cam.resolve_layers(f, x, None)[0][0]
  names, single = cam._layer_list(layer)
  if not single:
    raise ValueError(f"layer: {method} takes one layer name, got {list(names)}")
  return _check_names(f, x, names)[0]


def _check_names(f: M.Tapped, x: Array, names) -> tuple[str, ...]:
  M.check_layers(f, names)
  shapes = cam.layer_shapes(f, x)
  missing = [k for k in names if k not in shapes]
  if missing:
    raise ValueError(f"layer: {missing} produced no activation for this input")
  return tuple(names)


def _float_dtype(dtype) -> jnp.dtype:
  """At least float32: taps and their gradients are summed over path steps."""
  return jnp.promote_types(dtype, jnp.float32)


def _target_score(f, x, taps, target):
  """Sum over the batch of the target logits of the tapped forward, and its activations."""
  logits, acts = f(x, taps)
  s = jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1)[:, 0]
  return s.sum(), acts


# Path weights multiply the score before it is differentiated, never the
# gradient after: where the gradient does not depend on the path point (a
# model linear after the layer, a neuron linear in x), ``w_k * g`` summed over
# a vmapped chunk is a reduction of two broadcasts, which XLA:CPU's YNN
# fusion (jaxlib 0.10) computes wrongly (it gave 28.9 for 0.034); seeded with
# w_k, the backward pass yields a gradient batched over the path points.


def _weighted_layer_grad(f, x, target, layer, w, tap=None):
  """``w * dS/da`` at `layer` for input `x` (the layer moved by `tap`, default zero)."""
  if tap is None:
    s = cam.layer_shapes(f, x)[layer]
    tap = jnp.zeros(s.shape, _float_dtype(s.dtype))
  return jax.grad(lambda t: w * _target_score(f, x, {layer: t}, target)[0])(tap)


def _check_path(steps, rule, batch_size) -> tuple[int, str, int | None]:
  V.check_choice(rule, "rule", gradients.RULES)
  return parallel.check_count(steps, "steps"), rule, V.check_batch_size(batch_size)


# ----------------------------------------------------------------------------
# Layer gradient x activation.


@M.jit(static_argnames=("names", "multiply"))
def _gradient_x_activation(f, x, target, names, multiply):
  _, acts, grads = cam.activations_and_gradients(f, x, target, names)
  return {k: acts[k] * grads[k].astype(acts[k].dtype) if multiply else grads[k] for k in names}


@REGISTRY.register("layer_gradient_x_activation", family="layer", returns="activation",
    needs=("tapped",), evaluations=1, backward=True)
def layer_gradient_x_activation(f, x, target, *, key=None, layer=None,
                                multiply_by_activation: bool = True):
  """Layer gradient x activation: ``a * dS/da`` at a layer, element by element
  (the gradient x input of Shrikumar et al. 2016, "Not Just a Black Box",
  arXiv:1605.01713, taken at a hidden layer; Captum's
  `LayerGradientXActivation` with ``multiply_by_inputs=True``).

  S is the target logit. One forward and one backward pass for every layer
  asked for. Integer token inputs are accepted (the gradient is taken at the
  layer, e.g. an embedding).

  Args:
    f: a tapped model (`saljax.model.Tapped`).
    x: input batch: floating, or integer token ids ``[B, T]``.
    target: class indices ``[B]``, an int, or ``"predicted"``.
    key: unused (deterministic).
    layer: a layer name (-> an array shaped like its activation), a sequence
      of names (-> a dict, one pass for all), or None (default: the last
      layer with a spatial grid).
    multiply_by_activation: default True; False returns the plain layer
      gradient ``dS/da`` (Captum's `LayerGradientXActivation` with
      ``multiply_by_inputs=False``).
  """
  x, target = _prepare("layer_gradient_x_activation", f, x, target, tokens=True)
  if layer is None:
    names, single = (_one_layer("layer_gradient_x_activation", f, x, None),), True
  else:
    names, single = cam._layer_list(layer)
    names = _check_names(f, x, names)
  out = _gradient_x_activation(f, x, target, names, bool(multiply_by_activation))
  return out[names[0]] if single else out


# ----------------------------------------------------------------------------
# Layer integrated gradients.


def _token_baseline(x: Array, baseline: Any) -> Array:
  """A reference token array shaped like `x`: None (token 0), an int, or ids
  shaped like `x` or ``x[0]``."""
  if baseline is None:
    return jnp.zeros_like(x)
  if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
    return jnp.full_like(x, int(baseline))
  if not hasattr(baseline, "dtype"):
    baseline = np.asarray(baseline)
  if not jnp.issubdtype(np.dtype(baseline.dtype), np.integer):
    raise TypeError(
        f"baseline: x holds integer token ids, so the baseline must be token ids too (an int"
        f" reference token, or ids shaped like x or x[0]), got {V.describe(baseline)}")
  shape = tuple(baseline.shape)
  if shape == ():
    return jnp.full_like(x, baseline)
  if shape == tuple(x.shape[1:]):
    return jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  if shape != tuple(x.shape):
    raise ValueError(f"baseline: expected token ids of shape {tuple(x.shape)} or"
                     f" {tuple(x.shape[1:])} (or an int), got {shape}")
  return jnp.asarray(baseline, x.dtype)


def _layer_baseline(layer_baseline: Any, like: jax.ShapeDtypeStruct) -> Array:
  """An activation-space baseline: a float, or an array shaped like the
  activation (with or without its batch axis)."""
  if isinstance(layer_baseline, (int, float, np.integer, np.floating)) and not isinstance(
      layer_baseline, bool):
    return jnp.full(like.shape, float(layer_baseline), like.dtype)
  return V.check_same_shape(layer_baseline, like, name="layer_baseline")


@M.jit(static_argnames=("layer", "from_input", "steps", "rule", "batch_size"))
def _layer_integrated_gradients(f, x, target, baseline, layer, from_input, steps, rule,
                                batch_size):
  alphas, weights = gradients.path_nodes(steps, rule)
  logits_x, acts = f(x)
  a_x = acts[layer]
  dtype = _float_dtype(a_x.dtype)
  if from_input:  # the activation of the baseline input
    logits_b, acts_b = f(baseline)
    a_0 = acts_b[layer].astype(dtype)
  else:  # an activation-space baseline: F at it is the forward with the layer set to it
    a_0 = baseline.astype(dtype)
    logits_b, _ = f(x, {layer: a_0 - a_x.astype(dtype)})
  diff = a_x.astype(dtype) - a_0

  def one(aw):
    # The tap moves the layer's activation from a_x to a_0 + alpha (a_x - a_0).
    a, w = aw
    return _weighted_layer_grad(f, x, target, layer, w, (a - 1.0) * diff)

  avg = parallel.chunked_sum(
      one, (jnp.asarray(alphas, dtype), jnp.asarray(weights, dtype)), batch_size=batch_size)
  attr = diff * avg
  t = target[:, None].astype(jnp.int32)
  gap = attr.reshape(attr.shape[0], -1).sum(1) - (
      jnp.take_along_axis(logits_x, t, 1)[:, 0] - jnp.take_along_axis(logits_b, t, 1)[:, 0])
  return attr, gap


@typing.overload
def layer_integrated_gradients(f, x, target, *, key=..., layer=..., baseline: Any = ...,
                               layer_baseline: Any = ..., steps: int = ..., rule: str = ...,
                               batch_size: int | None = ...,
                               return_delta: Literal[False] = ...) -> Array: ...
@typing.overload
def layer_integrated_gradients(f, x, target, *, key=..., layer=..., baseline: Any = ...,
                               layer_baseline: Any = ..., steps: int = ..., rule: str = ...,
                               batch_size: int | None = ...,
                               return_delta: Literal[True]) -> tuple[Array, Array]: ...

@REGISTRY.register("layer_integrated_gradients", family="layer", returns="activation",
    needs=("tapped",), evaluations=lambda o, f, x: o["steps"] + 2, backward=True,
    smoke={"steps": 4})
def layer_integrated_gradients(f, x, target, *, key=None, layer=None, baseline: Any = None,
                               layer_baseline: Any = None, steps: int = 50,
                               rule: str = "gauss_legendre", batch_size: int | None = None,
                               return_delta: bool = False):
  """Layer integrated gradients: integrated gradients (Sundararajan, Taly, Yan
  2017, "Axiomatic Attribution for Deep Networks", arXiv:1703.01365) with a
  hidden layer's activation as the input, as Captum's `LayerIntegratedGradients`
  (attributions to the layer's output).

  With ``a`` the layer's activation for x and ``a0`` that of the baseline,
  the activation is moved on the straight line ``a0 + alpha (a - a0)`` (the
  forward runs on x with the layer's value replaced, through its tap) and
  ``attr = (a - a0) * sum_k w_k dS/da(a0 + alpha_k (a - a0))``, S the target
  logit. Completeness: ``sum(attr) = F(x) - F(baseline)`` up to the
  quadrature error, when every path from the input to the output passes
  through the layer. Cost: one forward for x, one for the baseline, and
  `steps` forward and backward passes of the model from the layer on.

  Integer token inputs ``x[B, T]`` are accepted (the gradient is taken at the
  layer): with ``layer`` the embedding this is Captum's
  ``LayerIntegratedGradients(model, model.embeddings)`` with a reference token.

  Args:
    layer: one layer name, or None (default: the last layer with a spatial grid).
    baseline: the baseline *input*, whose activation is ``a0``. Floating x:
      None/"zeros" (default, Captum's), a float, "blur" or an array (see
      `saljax.explainers.make_baseline`). Integer x: None (token 0, Captum's
      zero baseline), an int reference token (e.g. the pad token), or token
      ids shaped like x or ``x[0]``.
    layer_baseline: instead of `baseline`, ``a0`` itself: a float or an array
      shaped like the activation (with or without the batch axis);
      ``F(baseline)`` is then the model with the layer set to ``a0``.
    steps: path points, default 50 (Captum's ``n_steps``).
    rule: "gauss_legendre" (default, as Captum), "left", "right", "middle" or
      "trapezoid" (`saljax.explainers.path_nodes`).
    batch_size: path points evaluated together per example (None: automatic).
    return_delta: also return the completeness gap
      ``sum(attr) - (F(x)[t] - F(baseline)[t])`` per example, ``[B]``
      (Captum's ``return_convergence_delta``).

  Returns:
    attributions shaped like the layer's activation, or ``(attributions, gap)``.
  """
  steps, rule, batch_size = _check_path(steps, rule, batch_size)
  x, target = _prepare("layer_integrated_gradients", f, x, target, tokens=True)
  layer = _one_layer("layer_integrated_gradients", f, x, layer)
  if layer_baseline is not None:
    if baseline is not None:
      raise ValueError("baseline, layer_baseline: pass one of them (an input baseline or an"
                       " activation-space one), got both")
    shape = cam.layer_shapes(f, x)[layer]
    b, from_input = _layer_baseline(layer_baseline, shape), False
  elif _is_tokens(x):
    b, from_input = _token_baseline(x, baseline), True
  else:
    b, from_input = gradients.make_baseline(x, baseline), True
  attr, gap = _layer_integrated_gradients(f, x, target, b, layer, from_input, steps, rule,
                                          batch_size)
  return (attr, gap) if return_delta else attr


# ----------------------------------------------------------------------------
# Internal influence and conductance: the input moves, the layer is read.


def _input_path(x: Array, baseline: Any) -> Array:
  return gradients.make_baseline(x, baseline)


def _layer_at(f, x, target, layer):
  """(dS/da, a) at `layer` for input `x`: one forward and one backward pass."""
  _, acts, grads = cam.activations_and_gradients(f, x, target, (layer,))
  return grads[layer], acts[layer]


@M.jit(static_argnames=("layer", "steps", "rule", "batch_size"))
def _internal_influence(f, x, target, baseline, layer, steps, rule, batch_size):
  alphas, weights = gradients.path_nodes(steps, rule)
  delta = x - baseline

  def one(aw):
    a, w = aw
    return _weighted_layer_grad(f, baseline + a * delta, target, layer, w)

  return parallel.chunked_sum(
      one, (jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype)), batch_size=batch_size)


@REGISTRY.register("internal_influence", family="layer", returns="activation",
    needs=("tapped",), evaluations=lambda o, f, x: o["steps"], backward=True,
    smoke={"steps": 4})
def internal_influence(f, x, target, *, key=None, layer=None, baseline: Any = None,
                       steps: int = 50, rule: str = "gauss_legendre",
                       batch_size: int | None = None) -> Array:
  """Internal influence (Leino, Sen, Datta, Fredrikson, Li 2018,
  "Influence-Directed Explanations for Deep Convolutional Networks",
  arXiv:1802.03788), as Captum's `InternalInfluence`.

  The gradient of the target logit with respect to the layer's activation,
  averaged over the straight input path from the baseline to x:
  ``sum_k w_k dS/da(baseline + alpha_k (x - baseline))`` (the distributional
  influence of the paper with the uniform distribution on that path).
  Not multiplied by any activation difference.

  Args:
    layer: one layer name, or None (default: the last layer with a spatial grid).
    baseline: the baseline input, as in `integrated_gradients` (default zeros).
    steps: path points, default 50 (Captum's ``n_steps``).
    rule: "gauss_legendre" (default, as Captum) or another of `path_nodes`.
    batch_size: path points evaluated together per example (None: automatic).
  """
  steps, rule, batch_size = _check_path(steps, rule, batch_size)
  x, target = _prepare("internal_influence", f, x, target)
  layer = _one_layer("internal_influence", f, x, layer)
  return _internal_influence(f, x, target, _input_path(x, baseline), layer, steps, rule,
                             batch_size)


def _stieltjes_sum(fn: Callable, alphas: Array, batch_size: int | None) -> Array:
  """``sum_k g_k * (a_{k+1} - a_k)`` with ``(g_k, a_k) = fn(alpha_k)``, in chunks.

  Chunks of `batch_size` nodes are evaluated together (vmapped) and scanned in
  order; the carry holds the last ``(g, a)`` of the previous chunk, so every
  node is evaluated once and memory holds one chunk. The first carry is zero:
  ``0 * (a_0 - 0)`` adds nothing.
  """
  n = alphas.shape[0]
  bs = min(parallel.auto_batch_size(lambda al: fn(al)[0], alphas, batch_size), n)
  g0, a0 = jax.eval_shape(fn, alphas[0])
  zeros = lambda s: jnp.zeros(s.shape, s.dtype)

  def block(carry, als):
    g_prev, a_prev, acc = carry
    g, a = jax.vmap(fn)(als)
    gp = jnp.concatenate([g_prev[None], g[:-1]])
    ap = jnp.concatenate([a_prev[None], a[:-1]])
    return (g[-1], a[-1], acc + (gp * (a - ap)).sum(0)), None

  carry = (zeros(g0), zeros(a0), zeros(g0))
  full, rem = divmod(n, bs)
  carry, _ = jax.lax.scan(block, carry, alphas[:full * bs].reshape(full, bs))
  if rem:
    carry, _ = block(carry, alphas[full * bs:])
  return carry[2]


@M.jit(static_argnames=("layer", "steps", "rule", "batch_size"))
def _conductance(f, x, target, baseline, layer, steps, rule, batch_size):
  alphas, _ = gradients.path_nodes(steps + 1, rule)
  delta = x - baseline

  def at(a):
    g, act = _layer_at(f, baseline + a * delta, target, layer)
    dtype = _float_dtype(act.dtype)
    return g.astype(dtype), act.astype(dtype)

  return _stieltjes_sum(at, jnp.asarray(alphas, x.dtype), batch_size)


@REGISTRY.register("layer_conductance", family="layer", returns="activation",
    needs=("tapped",), evaluations=lambda o, f, x: o["steps"] + 1, backward=True,
    smoke={"steps": 4})
def layer_conductance(f, x, target, *, key=None, layer=None, baseline: Any = None,
                      steps: int = 50, rule: str = "gauss_legendre",
                      batch_size: int | None = None) -> Array:
  """Layer conductance (Dhamdhere, Sundararajan, Yan 2018, "How Important Is a
  Neuron?", arXiv:1805.12233), as Captum's `LayerConductance`.

  The flow of integrated gradients through each neuron of the layer: along
  the straight input path ``x(alpha) = baseline + alpha (x - baseline)``,
  ``cond = int dS/da(x(alpha)) * da(x(alpha))/dalpha dalpha``, computed as
  Captum does with ``steps + 1`` nodes of `rule`:
  ``sum_k dS/da(x(alpha_k)) * (a(x(alpha_{k+1})) - a(x(alpha_k)))``.
  Summed over the layer's neurons it approximates ``F(x) - F(baseline)``
  (and so the sum of the input integrated gradients) when every path from
  the input to the output passes through the layer.

  Args:
    layer: one layer name, or None (default: the last layer with a spatial grid).
    baseline: the baseline input, as in `integrated_gradients` (default zeros).
    steps: default 50 (Captum's ``n_steps``); ``steps + 1`` path points are
      evaluated.
    rule: "gauss_legendre" (default, as Captum) or another of `path_nodes`.
    batch_size: path points evaluated together per example (None: automatic).
  """
  steps, rule, batch_size = _check_path(steps, rule, batch_size)
  x, target = _prepare("layer_conductance", f, x, target)
  layer = _one_layer("layer_conductance", f, x, layer)
  return _conductance(f, x, target, _input_path(x, baseline), layer, steps, rule, batch_size)


# ----------------------------------------------------------------------------
# Neuron attribution: one neuron's activation, attributed to the input.


def _neuron_spec(neuron: Any, shape: tuple[int, ...]) -> Any:
  """A hashable neuron selector checked against the activation `shape` (batch
  axis included): a tuple of ints (negative ones normalized) and
  ``("slice", start, stop, step)`` entries, or the callable itself."""
  if callable(neuron):
    return neuron
  if neuron is None:
    raise TypeError(
        f"neuron: expected an index into the layer's activation without the batch axis (a"
        f" tuple of {len(shape) - 1} ints or slices, activation shape {shape}) or a callable"
        " act -> [B], got None")
  if isinstance(neuron, (int, np.integer)) and not isinstance(neuron, bool):
    neuron = (neuron,)
  if not isinstance(neuron, (tuple, list)) or len(neuron) != len(shape) - 1:
    raise ValueError(
        f"neuron: expected {len(shape) - 1} indices (the activation is {shape}, batch axis"
        f" first), or a callable act -> [B], got {neuron!r}")
  out = []
  for i, (n, size) in enumerate(zip(neuron, shape[1:])):
    if isinstance(n, slice):
      out.append(("slice", n.start, n.stop, n.step))
    elif isinstance(n, (int, np.integer)) and not isinstance(n, bool):
      if not -size <= int(n) < size:
        raise ValueError(f"neuron: index {int(n)} out of range for axis {i + 1} of size {size}"
                         f" (activation shape {shape})")
      out.append(int(n) % size)
    else:
      raise TypeError(f"neuron: expected ints or slices, got {n!r} in {neuron!r}")
  return tuple(out)


def _select(a: Array, spec: Any) -> Array:
  """The selected neuron per example, ``[B]`` (a slice sums its neurons, as Captum)."""
  if callable(spec):
    v = spec(a)
    if getattr(v, "shape", None) != (a.shape[0],):
      raise ValueError(f"neuron: the callable must return one value per example, shape"
                       f" ({a.shape[0]},), got {V.describe(v)}")
    return v
  index = tuple(slice(*n[1:]) if isinstance(n, tuple) else n for n in spec)
  return a[(slice(None),) + index].reshape(a.shape[0], -1).sum(1)


def _neuron_grad(f, x, layer, spec, w=1.0):
  """``w * d n(x) / dx``, n the selected neuron (summed over the batch: rows are independent)."""
  return jax.grad(lambda z: w * _select(f(z)[1][layer], spec).sum())(x)


@M.jit(static_argnames=("layer", "spec"))
def _neuron_gradient(f, x, layer, spec):
  return _neuron_grad(f, x, layer, spec)


@M.jit(static_argnames=("layer", "spec", "steps", "rule", "batch_size"))
def _neuron_integrated_gradients(f, x, baseline, layer, spec, steps, rule, batch_size):
  alphas, weights = gradients.path_nodes(steps, rule)
  delta = x - baseline

  def one(aw):
    a, w = aw
    return _neuron_grad(f, baseline + a * delta, layer, spec, w)

  return delta * parallel.chunked_sum(
      one, (jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype)), batch_size=batch_size)


def _neuron_call(method, f, x, target, layer, neuron):
  """``(x, layer, spec)`` checked before any work."""
  x, _ = _prepare(method, f, x, target, uses_target=False)
  layer = _one_layer(method, f, x, layer)
  return x, layer, _neuron_spec(neuron, tuple(cam.layer_shapes(f, x)[layer].shape))


_NEURON_ARGS = """
  Args:
    f: a tapped model (`saljax.model.Tapped`).
    x: input batch, floating point.
    target: not used (the neuron is attributed, not a class); a given one
      is validated.
    key: unused (deterministic).
    layer: one layer name, or None (default: the last layer with a spatial grid).
    neuron: which neuron: a tuple of ints (or slices, whose neurons are
      summed) indexing the layer's activation without its batch axis, e.g.
      ``(h, w, c)`` for ``[B, h, w, C]``; an int for a ``[B, D]`` layer; or a
      callable ``act -> [B]`` (Captum's ``neuron_selector``). Required.
"""


@REGISTRY.register("neuron_gradient", family="layer", returns="input", needs=("tapped",),
    evaluations=1, backward=True, model_output="unused", smoke={"neuron": (1, 2, 3)})
def neuron_gradient(f, x, target=None, *, key=None, layer=None, neuron: Any = None) -> Array:
  x, layer, spec = _neuron_call("neuron_gradient", f, x, target, layer, neuron)
  return _neuron_gradient(f, x, layer, spec)


neuron_gradient.__doc__ = """Neuron gradient: the input gradient of one neuron's
  activation (Simonyan, Vedaldi, Zisserman 2014, "Deep Inside Convolutional
  Networks", arXiv:1312.6034, with a hidden neuron in place of the class
  score; Erhan et al. 2009 visualize units this way), as Captum's
  `NeuronGradient`. Returns a map shaped like x.
""" + _NEURON_ARGS


@REGISTRY.register("neuron_integrated_gradients", family="layer", returns="input",
    needs=("tapped",), evaluations=lambda o, f, x: o["steps"], backward=True,
    model_output="unused", smoke={"neuron": (1, 2, 3), "steps": 4})
def neuron_integrated_gradients(f, x, target=None, *, key=None, layer=None, neuron: Any = None,
                                baseline: Any = None, steps: int = 50,
                                rule: str = "gauss_legendre",
                                batch_size: int | None = None) -> Array:
  steps, rule, batch_size = _check_path(steps, rule, batch_size)
  x, layer, spec = _neuron_call("neuron_integrated_gradients", f, x, target, layer, neuron)
  return _neuron_integrated_gradients(f, x, gradients.make_baseline(x, baseline), layer, spec,
                                      steps, rule, batch_size)


neuron_integrated_gradients.__doc__ = """Neuron integrated gradients:
  integrated gradients (Sundararajan, Taly, Yan 2017, "Axiomatic Attribution
  for Deep Networks", arXiv:1703.01365) of one neuron's activation with
  respect to the input, as Captum's `NeuronIntegratedGradients`:
  ``(x - baseline) * sum_k w_k grad n(baseline + alpha_k (x - baseline))``.
  Returns a map shaped like x; its sum approximates ``n(x) - n(baseline)``.
""" + _NEURON_ARGS + """    baseline: the baseline input, as `integrated_gradients` (default zeros).
    steps: path points, default 50 (Captum's ``n_steps``).
    rule: "gauss_legendre" (default, as Captum) or another of `path_nodes`.
    batch_size: path points evaluated together per example (None: automatic).
"""
