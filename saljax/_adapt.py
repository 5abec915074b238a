"""What the registry does before a method runs: targets other than class
indices, several targets at once, and inputs other than one array.

Every registered explainer and metric goes through `adapt`, so a method's own
code only ever sees the case it was written for: a model ``x[B, ...] ->
logits[B, C]``, one array `x`, one class index per example.

- A callable target (`saljax.targets`) becomes the one-output model
  ``x -> target(f(x))[:, None]`` with class 0 (a tapped model keeps its taps).
- Several targets (int indices ``[B, T]``, ``"all"``, or a callable returning
  ``[B, T]``) run under `jax.vmap` over the target: what does not depend on
  the target (the forward pass, the perturbed evaluations) is computed once.
- A pytree input (a tuple or dict of arrays, each ``[B, ...]``) is flattened
  to ``[B, D]`` features for the method and the model unflattens it; options
  and attributions shaped like `x` are flattened the same way, and a map
  shaped like the flat input comes back with `x`'s structure.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V

Array = jax.Array

# Options that hold a second model, explained with the same target.
MODEL_OPTIONS = ("random_model", "f_bottom")

# Methods whose definition reads the other classes of a classifier, so a
# callable target (one score, no classes) has no meaning for them.
CLASS_METHODS = {
    "lima": "its objective is the softmax and the entropy over classes",
    "roar": "it scores accuracy (the argmax over classes)",
    "diffroar": "it scores accuracy (the argmax over classes)",
    "aic": "it scores accuracy (the argmax over classes)",
    "relative_input_stability": "it keeps only perturbations that leave the predicted class",
    "relative_output_stability": "it measures the change of every logit and keeps only"
                                 " perturbations that leave the predicted class",
    "relative_representation_stability": "it keeps only perturbations that leave the predicted"
                                         " class",
    "consistency": "it compares the predicted classes (the argmax over classes)",
    "random_logit": "it explains a different class",
    "class_sensitivity": "it explains other classes",
    "prompt_cam": "the target picks its class's prompt token",
}
# `score=` values that read every class: the softmax, the argmax.
CLASS_SCORES = ("probability", "accuracy")


# ----------------------------------------------------------------------------
# Scored models: the target's score as the model's one output.


def _score(target, out, index):
  """The scored model's logits: ``[N, 1]`` for a target without per-example
  data (class 0), ``[N, B]`` with it (class b for example b, `Target.by_row`);
  `index` picks one of several targets."""
  from saljax import targets as T
  if isinstance(target, T.Target) and target.has_rows:
    s = target.by_row(out)  # [N, B] or [N, T, B]
    if s.ndim == 3:
      s = s[:, 0] if index is None else jax.lax.dynamic_index_in_dim(s, index, 1, False)
    return s
  s = target(out)
  if s.ndim == 1:
    return s[:, None]
  if index is None:
    return s[:, :1]
  return jax.lax.dynamic_index_in_dim(s, index, axis=1, keepdims=True)


@jax.tree_util.register_pytree_node_class
class _Scored:
  """``x -> target(model(x))`` as logits (see `_score`)."""

  def __init__(self, model, target, index=None):
    self.model, self.target, self.index = model, target, index

  def __call__(self, x):
    return _score(self.target, self.model(x), self.index)

  def tree_flatten(self):
    return (self.model, self.target, self.index), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children)


@jax.tree_util.register_pytree_node_class
class _ScoredForward:
  """A tapped forward whose logits are the target's scores (see `_score`)."""

  def __init__(self, forward, target, index=None):
    self.forward, self.target, self.index = forward, target, index

  def __call__(self, x, taps=None):
    out, acts = self.forward(x, taps)
    return _score(self.target, out, self.index), acts

  def tree_flatten(self):
    return (self.forward, self.target, self.index), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children)


def classes_of(target, batch: int) -> Array:
  """The int target the method sees for a callable `target`."""
  from saljax import targets as T
  if isinstance(target, T.Target) and target.has_rows:
    return jnp.arange(batch, dtype=jnp.int32)
  return jnp.zeros((batch,), jnp.int32)


def _as_target_data(target):
  from saljax import model as M
  from saljax import targets as T
  return target if isinstance(target, T.Target) else M.as_data(target)


def scored(f: Any, target: Any, index=None) -> Any:
  """`f` with the callable `target`'s score as its one logit (a `Tapped`
  model stays tapped)."""
  from saljax import model as M
  t = _as_target_data(target)
  if isinstance(f, M.Tapped):
    return M.Tapped(M.Model(_ScoredForward(f._forward, t, index)), f.layer_names)
  return M.Model(_Scored(M.as_model(f), t, index))


def score_shape(f: Any, x: Any, target: Any) -> tuple[int, ...]:
  """The shape of ``target(f(x))`` from an abstract evaluation: ``(B,)`` or
  ``(B, T)``, or a clear error."""
  from saljax import model as M
  model = M.as_model(f)
  xs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
  try:
    out = jax.eval_shape(lambda m, x: m(x), model, xs)
  except Exception as e:
    raise ValueError(f"the model could not be evaluated on x: {type(e).__name__}: {e}") from e
  try:
    s = jax.eval_shape(lambda t, o: t(o), _as_target_data(target), out)
  except Exception as e:
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), out)
    raise ValueError(
        f"target: the callable target could not score the model's outputs {shapes}:"
        f" {type(e).__name__}: {e}") from e
  batch = jax.tree_util.tree_leaves(x)[0].shape[0]
  shape = getattr(s, "shape", None)
  if shape is None or len(shape) not in (1, 2) or shape[0] != batch:
    raise ValueError(
        f"target: a callable target must return scores [B] (or [B, T] for several targets)"
        f" with B = {batch}, got {shape if shape is not None else type(s).__name__}")
  if not jnp.issubdtype(s.dtype, jnp.floating):
    raise TypeError(f"target: a callable target must return floating scores, got {s.dtype}")
  return tuple(shape)


# ----------------------------------------------------------------------------
# Pytree inputs.


def is_pytree_input(x: Any) -> bool:
  """A tuple/list/dict of arrays (not one array, not a nested list of numbers)."""
  if hasattr(x, "shape") or not isinstance(x, (tuple, list, dict)):
    return False
  leaves = jax.tree_util.tree_leaves(x)
  return bool(leaves) and all(hasattr(l, "shape") and getattr(l, "ndim", 0) >= 1
                              for l in leaves)


class Flat:
  """How a pytree input maps to ``[B, D]`` features and back."""

  def __init__(self, x: Any):
    leaves, self.treedef = jax.tree_util.tree_flatten(x)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(x)[0]]
    batch = {int(l.shape[0]) for l in leaves}
    if len(batch) != 1:
      raise ValueError(f"x: every array of a pytree input needs the same batch (leading) axis,"
                       f" got {dict(zip(paths, (tuple(l.shape) for l in leaves)))}")
    for p, l in zip(paths, leaves):
      if not jnp.issubdtype(l.dtype, jnp.floating):
        raise TypeError(
            f"x{p}: expected floating arrays in a pytree input, got {l.dtype}: integer tokens"
            " cannot be perturbed or differentiated as inputs; explain them at the embedding"
            " layer (layer_integrated_gradients(..., layer='embeddings'))")
    self.batch = batch.pop()
    self.shapes = tuple(tuple(l.shape[1:]) for l in leaves)
    self.dtypes = tuple(jnp.dtype(l.dtype) for l in leaves)
    self.sizes = tuple(int(np.prod(s)) for s in self.shapes)
    self.dtype = jnp.result_type(*self.dtypes)
    self.size = sum(self.sizes)

  def key(self):
    return (self.treedef, self.shapes, self.dtypes)

  # Static structure of the compiled model: equal when the structure is.
  def __eq__(self, other):
    return isinstance(other, Flat) and self.key() == other.key()

  def __hash__(self):
    return hash((self.treedef, self.shapes, tuple(str(d) for d in self.dtypes)))

  def matches(self, v: Any) -> bool:
    """Whether `v` has `x`'s structure and per-example shapes (batched or not)."""
    if not isinstance(v, (tuple, list, dict)):
      return False
    leaves, treedef = jax.tree_util.tree_flatten(v)
    if treedef != self.treedef or not all(hasattr(l, "shape") for l in leaves):
      return False
    return all(tuple(l.shape[-len(s):] if s else ()) == s and l.ndim in (len(s), len(s) + 1)
               for l, s in zip(leaves, self.shapes))

  def flatten(self, v: Any) -> Array:
    leaves = jax.tree_util.tree_leaves(v)
    batched = [l.ndim == len(s) + 1 for l, s in zip(leaves, self.shapes)]
    if any(batched) and not all(batched):
      raise ValueError("a pytree option must be batched in every leaf or in none")
    lead = (leaves[0].shape[0],) if batched[0] else ()
    parts = [jnp.asarray(l).reshape(lead + (-1,)) for l in leaves]
    if jnp.issubdtype(parts[0].dtype, jnp.integer):  # label arrays (segments=) stay ints
      return jnp.concatenate(parts, axis=-1) if lead else jnp.concatenate(parts)
    return jnp.concatenate([p.astype(self.dtype) for p in parts], axis=-1)

  def unflatten(self, flat: Array, dtypes: bool = True) -> Any:
    lead = flat.shape[:-1]
    pieces = jnp.split(flat, np.cumsum(self.sizes)[:-1].tolist(), axis=-1)
    leaves = [p.reshape(lead + s) for p, s in zip(pieces, self.shapes)]
    if dtypes:
      leaves = [l.astype(d) for l, d in zip(leaves, self.dtypes)]
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


@jax.tree_util.register_pytree_node_class
class _Unflattened:
  """``flat[N, D] -> model(pytree)``: the model on the features of a flat input."""

  def __init__(self, model, flat: Flat):
    self.model, self.flat = model, flat

  def __call__(self, xf):
    return self.model(self.flat.unflatten(xf))

  def tree_flatten(self):
    return (self.model,), self.flat

  @classmethod
  def tree_unflatten(cls, flat, children):
    return cls(children[0], flat)


# ----------------------------------------------------------------------------
# The registry wrapper.


def _positions(fn) -> dict[str, int]:
  params = list(inspect.signature(fn).parameters.values())
  return {p.name: i for i, p in enumerate(params)
          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _get(args, kwargs, pos, name, default=None):
  i = pos.get(name)
  if i is not None and i < len(args):
    return args[i]
  return kwargs.get(name, default)


def _set(args, kwargs, pos, name, value):
  i = pos.get(name)
  if i is not None and i < len(args):
    args[i] = value
  else:
    kwargs[name] = value


def _is_multi(target) -> bool:
  if isinstance(target, str):
    return target == "all"
  return hasattr(target, "ndim") and target.ndim == 2


def adapt(fn, name: str, what: str, needs: frozenset, returns: str):
  """`fn` accepting callable and multiple targets and pytree inputs."""
  pos = _positions(fn)
  if "x" not in pos or not ({"f", "model_fn"} & set(pos)):
    return fn
  if "f" not in pos:  # the model as model_fn(params, x): one name for it below
    pos["f"] = pos["model_fn"]
  defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
              if p.default is not inspect.Parameter.empty}

  @functools.wraps(fn)
  def call(*args, **kwargs):
    target = _get(args, kwargs, pos, "target")
    x = _get(args, kwargs, pos, "x")
    from saljax import targets as T
    callable_target = T.is_callable_target(target)
    pytree = is_pytree_input(x)
    if not (callable_target or pytree or _is_multi(target)):
      return fn(*args, **kwargs)
    if "target" not in pos:
      return fn(*args, **kwargs)
    args = list(args)
    try:
      if pytree:
        return _call_flat(fn, name, what, needs, returns, pos, args, kwargs, x, defaults)
      return _call_targets(fn, name, what, needs, pos, args, kwargs, defaults)
    except (TypeError, ValueError) as e:
      msg = str(e)
      if msg.startswith(name + ":"):
        raise
      raise type(e)(f"{name}: {msg}") from e

  return call


def _call_flat(fn, name, what, needs, returns, pos, args, kwargs, x, defaults):
  from saljax import model as M
  f = _get(args, kwargs, pos, "f")
  if isinstance(f, M.Tapped) or needs & {"tapped", "vit", "layers"}:
    raise ValueError("layer methods read activations of one input array; a pytree input"
                     " (tuple/dict) is supported by the input-level methods")
  if "params" in needs:
    raise ValueError("a pytree input is not supported with a model given as (model_fn, params)")
  flat = Flat(x)
  xf = flat.flatten(x)
  _set(args, kwargs, pos, "x", xf)
  _set(args, kwargs, pos, "f", M.Model(_Unflattened(M.as_model(f), flat)))
  for k in MODEL_OPTIONS:
    m = kwargs.get(k)
    if m is not None and callable(m):
      kwargs[k] = M.Model(_Unflattened(M.as_model(m), flat))
  # Options and the attribution shaped like x are flattened like x.
  for k, v in list(kwargs.items()):
    if k not in ("x", "f") and flat.matches(v):
      kwargs[k] = flat.flatten(v)
  att = _get(args, kwargs, pos, "attribution")
  if att is not None and flat.matches(att):
    _set(args, kwargs, pos, "attribution", flat.flatten(att))
  out = _call_targets(fn, name, what, needs, pos, args, kwargs, defaults)
  if returns != "input":
    return out

  def back(a):
    if hasattr(a, "shape") and a.ndim >= 2 and a.shape[0] == flat.batch and \
        a.shape[-1] == flat.size:
      return flat.unflatten(a, dtypes=False)
    return a

  if isinstance(out, tuple):  # (map, extra) with return_delta / return_stderr
    return (back(out[0]),) + tuple(out[1:])
  return back(out)


def _call_targets(fn, name, what, needs, pos, args, kwargs, defaults):
  from saljax import model as M
  from saljax import targets as T
  target = _get(args, kwargs, pos, "target")
  f = _get(args, kwargs, pos, "f")
  x = _get(args, kwargs, pos, "x")
  if not (T.is_callable_target(target) or _is_multi(target)):
    return fn(*args, **kwargs)
  if "params" in needs:
    raise ValueError("a callable or multiple target is not supported with a model given as"
                     " (model_fn, params): bind the parameters (saljax.model.bind)")
  if T.is_callable_target(target):
    if "classes" in needs or name in CLASS_METHODS:
      why = CLASS_METHODS.get(name, "it compares the target with other classes")
      raise ValueError(f"a callable target scores one output and has no classes, but {why}:"
                       " pass class indices")
    score = kwargs.get("score", defaults.get("score"))
    if isinstance(score, str) and score in CLASS_SCORES:
      raise ValueError(
          f"score={score!r} reads every class of a classifier; a callable target has one"
          " score: use score='logit' (with target=saljax.targets.class_probability(c) for a"
          " class probability)")
  # Integer token inputs are valid for layer methods: only the batch is read here,
  # the method checks its input itself.
  xa = x if hasattr(x, "shape") and hasattr(x, "dtype") and getattr(x, "ndim", 0) >= 1 \
      else V.check_input(x)
  xa = jnp.asarray(xa) if not isinstance(xa, jax.Array) else xa
  batch = int(xa.shape[0])
  if T.is_callable_target(target):
    shape = score_shape(f, xa, target)
    if len(shape) == 1:
      return _run(fn, pos, args, kwargs, target, None, batch)
    count = shape[1]

    def one(t):
      return _run(fn, pos, list(args), dict(kwargs), target, t, batch)

    index = jnp.arange(count, dtype=jnp.int32)
  else:
    if isinstance(target, str):
      _, count = M.output_shape(f, xa)
      columns = jnp.broadcast_to(jnp.arange(count, dtype=jnp.int32), (batch, count))
    else:
      if target.shape[0] != batch:
        raise ValueError(f"target: expected class indices [B, T] with B = {batch}, got"
                         f" {tuple(target.shape)}")
      _, classes = M.output_shape(f, xa)
      columns = V.check_target(jnp.asarray(target).reshape(-1), batch * target.shape[1],
                               classes).reshape(target.shape)

    def one(col):
      a, k = list(args), dict(kwargs)
      _set(a, k, pos, "target", col)
      return fn(*a, **k)

    index = columns.T
  if what != "explainer":
    raise ValueError("several targets at once are supported by explainers; run a metric once"
                     " per target")
  out = jax.vmap(one)(index)
  # [T, B, ...] -> [B, T, ...] for every per-example leaf.
  out = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1) if a.ndim >= 2 else a, out)
  leaves = [l for l in jax.tree_util.tree_leaves(out)
            if hasattr(l, "dtype") and jnp.issubdtype(l.dtype, jnp.inexact)]
  if leaves and all(V.is_concrete(l) for l in leaves):
    if not all(V.all_finite(l) for l in leaves):
      raise ValueError("produced non-finite values (NaN or inf) for some targets: check the"
                       " model's outputs and the target's scores")
  return out


def _run(fn, pos, args, kwargs, target, index, batch):
  """`fn` on the model scored by the callable `target` (column `index`), class 0."""
  _set(args, kwargs, pos, "f", scored(_get(args, kwargs, pos, "f"), target, index))
  for k in MODEL_OPTIONS:
    if callable(kwargs.get(k)):
      kwargs[k] = scored(kwargs[k], target, index)
  _set(args, kwargs, pos, "target", classes_of(target, batch))
  return fn(*args, **kwargs)
