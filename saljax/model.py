"""The model contract and adapters.

An explainer receives a model ``f: x[B, ...] -> logits[B, C]`` whose *arrays
are data*: they travel into compiled code as traced pytree leaves, and only
the model's structure (an apply function, a Flax NNX graph, an Equinox
module's static fields) is static. So one compiled explainer serves every
checkpoint of an architecture, runs inside a user's `jax.jit`, `jax.vmap`s
over stacked parameters and is differentiable with respect to them, the way
Flax's ``TrainState`` (``apply_fn`` static, ``params`` a node) travels through
`jax.jit`.

Accepted models (`as_data` turns each into a `Model`):

- ``jax.tree_util.Partial(apply_fn, params)``, or `bind(apply_fn, params)`
  (also when ``apply_fn`` is itself a pytree);
- a Flax NNX module, passed directly (its current state is read on each call,
  so an in-place optimizer update is seen by the next explanation);
- an Equinox module (arrays are leaves, everything else static);
- a Flax linen module with its variables: ``from_linen(module, variables)``;
- `saljax.models.Classifier` (the pretrained models) and `Tapped`, which are
  pytrees themselves;
- any other pytree whose non-array leaves are hashable structure.

A plain Python callable that closes over its parameters (PAIR's
``call_model_function``, Captum's ``forward_func``) still works, with the
semantics of `jax.jit` on that function: its closed-over arrays are compile-time
constants, so **each new callable compiles anew** (seconds for a real network)
and a callable reused after its captured arrays were reassigned keeps the old
values. Compiled programs for such a callable are held only while the caller
holds the callable (a weak reference), so dropping it frees them.

Layer methods also need activations at named layers and gradients with
respect to them. They take a *tapped* forward::

    forward(x, taps=None) -> (logits, activations: dict[str, Array])

where ``taps[name]`` is added to activation ``name`` (zeros by default), so the
gradient with respect to a zero tap is the gradient with respect to that
activation. One forward and one backward pass serve every requested layer.
`Tapped` is a pytree too: adapters build it from a linen module
(``nn.intercept_methods``: every submodule's ``__call__`` output can be
tapped, no edit of the model), from an NNX module (the same, through a class
swap on a merged copy), and from a ``features``/``head`` pair.
"""
from __future__ import annotations

import collections
import functools
import inspect
import weakref
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation

Array = jax.Array
Taps = Mapping[str, Array]

PREDICTED = "predicted"


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic)) or isinstance(x, jax.core.Tracer)


class _Static:
  """A non-array leaf as static data: compared by value when hashable, else by identity."""

  __slots__ = ("value", "_key", "_hash")

  def __init__(self, value):
    self.value = value
    try:
      self._hash = hash((type(value), value))
      self._key = (True, value)
    except TypeError:
      self._hash = id(value)
      self._key = (False, id(value))

  def __eq__(self, other):
    if not isinstance(other, _Static) or type(self.value) is not type(other.value):
      return False
    if self._key[0] != other._key[0]:
      return False
    if not self._key[0]:
      return self.value is other.value
    try:
      return bool(self.value == other.value)
    except Exception:  # an __eq__ that returns arrays or raises: identity
      return self.value is other.value

  def __hash__(self):
    return self._hash

  def __repr__(self):
    return f"_Static({self.value!r})"


class _Weak:
  """A weak reference to an opaque callable, equal only to the same live object.

  A bound method is referenced through its owner (``weakref.WeakMethod``), as
  ``obj.method`` makes a new, short-lived method object on every access.
  """

  __slots__ = ("ref", "owner", "func", "_hash")

  def __init__(self, value):
    if inspect.ismethod(value):
      self.ref = weakref.WeakMethod(value)
      self.owner, self.func = weakref.ref(value.__self__), value.__func__
    else:
      self.ref = weakref.ref(value)
      self.owner, self.func = self.ref, None
    self._hash = hash((id(self.owner()), self.func))

  def __eq__(self, other):
    return (isinstance(other, _Weak) and self.func is other.func
            and self.owner() is not None and self.owner() is other.owner())

  def __hash__(self):
    return self._hash


@jax.tree_util.register_pytree_node_class
class Model:
  """A callable model whose arrays are pytree leaves and whose structure is static.

  ``Model(fn)`` partitions `fn` (any pytree callable: ``Partial``, an NNX or
  Equinox module, `Tapped`, ...) into its array leaves (traced) and the rest
  (static, compared by value). Calling it rebuilds `fn` and calls it, so
  ``Model(fn)(x) == fn(x)``. A callable that is not a pytree (a closure) is
  kept *opaque*: no arrays, held by a weak reference, compiled per object
  (see the module docstring).
  """

  __slots__ = ("_treedef", "_statics", "_arrays", "_fn", "_source")

  def __init__(self, fn: Callable):
    if isinstance(fn, Model):
      self._treedef, self._statics, self._arrays, self._fn, self._source = (
          fn._treedef, fn._statics, fn._arrays, fn._fn, fn._source)
      return
    # Opaque callables nested in `fn` are referenced weakly by the static
    # structure; the source keeps them alive as long as this model lives.
    self._source = fn
    if not callable(fn):
      raise TypeError(f"model: expected a callable x[B, ...] -> logits[B, C], got"
                      f" {_validation.describe(fn)}")
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # not a pytree: an opaque callable
      self._treedef, self._arrays, self._fn = None, (), fn
      try:
        self._statics = (_Weak(fn),)
      except TypeError:  # not weakly referable: held like any static value
        self._statics = (_Static(fn),)
      return
    self._treedef = treedef
    self._statics = tuple(None if _is_array(l) else _Static(l) for l in leaves)
    self._arrays = tuple(l if _is_array(l) else None for l in leaves)
    self._fn = None

  @property
  def opaque(self) -> Callable | None:
    """The callable itself when it is not a pytree (compiled per object), else None."""
    return self._fn if self._treedef is None else None

  def unwrap(self) -> Callable:
    """The callable this model was built from (rebuilt from its leaves)."""
    if self._treedef is None:
      return self._fn
    leaves = [a if s is None else s.value for a, s in zip(self._arrays, self._statics)]
    return jax.tree_util.tree_unflatten(self._treedef, leaves)

  def __call__(self, *args, **kwargs):
    return self.unwrap()(*args, **kwargs)

  def tree_flatten(self):
    arrays = tuple(a for a in self._arrays if a is not None)
    # The aux data never holds an opaque callable strongly (jit caches keep it).
    # "kind" first: tuple equality stops there before comparing a PyTreeDef with None.
    return arrays, (self._treedef is None, self._treedef, self._statics)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    _, obj._treedef, obj._statics = aux
    obj._source = None
    if obj._treedef is None:
      obj._fn = _deref(obj._statics[0])
      obj._arrays = ()
      return obj
    it = iter(children)
    obj._arrays = tuple(None if s is not None else next(it) for s in obj._statics)
    obj._fn = None
    obj._source = None
    return obj

  def __repr__(self):
    if self._treedef is None:
      return f"Model(opaque {self._fn!r})"
    return f"Model({self._treedef}, {sum(a is not None for a in self._arrays)} arrays)"


def _deref(s):
  if isinstance(s, _Weak):
    v = s.ref()
    if v is None:
      raise RuntimeError("saljax: the model callable was garbage-collected during the call")
    return v
  return s.value


@jax.tree_util.register_pytree_node_class
class _Bound:
  """``x -> fn(params, x)`` with both `fn` and `params` pytree children."""

  def __init__(self, fn, params):
    self.fn, self.params = fn, params

  def __call__(self, *args, **kwargs):
    return self.fn(self.params, *args, **kwargs)

  def tree_flatten(self):
    return (self.fn, self.params), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children)


def bind(apply_fn: Callable, params: Any) -> Model:
  """``x -> apply_fn(params, x)`` as a `Model`: `params` are traced leaves.

  Like ``jax.tree_util.Partial(apply_fn, params)``, but `apply_fn` may itself
  be a pytree (a bound `Model`, an Equinox module); a plain function is
  static and compared by identity (define it once, not per call).
  """
  return Model(_Bound(apply_fn, params))


def as_data(f: Any) -> Any:
  """`f` as a pytree whose leaves are all arrays: `Model`, `Tapped` and
  `Classifier`-like pytrees that declare ``__saljax_data__`` pass through,
  anything else callable is wrapped in `Model`."""
  if isinstance(f, Model) or getattr(type(f), "__saljax_data__", False):
    return f
  if inspect.ismethod(f) and _is_pytree(f.__self__):
    # ``tapped.logits``, ``classifier.__call__``: the owner's arrays are data.
    return Model(jax.tree_util.Partial(f.__func__, f.__self__))
  return Model(f)


def _is_pytree(obj) -> bool:
  leaves = jax.tree_util.tree_leaves(obj)
  return not (len(leaves) == 1 and leaves[0] is obj)


def jit(fun: Callable | None = None, *, static_argnames: Sequence[str] = ()):
  """`jax.jit` for kernels whose first argument is a model.

  The model travels as a pytree argument (its arrays traced), so new
  parameters of one architecture reuse the compiled program. An opaque
  callable (not a pytree) gets a compiled program of its own, kept in a
  weak-keyed table: it lives while the caller keeps the callable, and is
  freed with it, so fresh closures neither accumulate nor leak their weights.
  """
  if fun is None:
    return functools.partial(jit, static_argnames=tuple(static_argnames))
  static_argnames = tuple(static_argnames)
  shared = jax.jit(fun, static_argnames=static_argnames)
  # id(owner) -> {func: compiled}; an entry is dropped when its owner dies.
  per_callable: dict[int, dict] = {}
  sig = inspect.signature(fun)
  rest = sig.replace(parameters=list(sig.parameters.values())[1:])

  def compiled_for(weak: _Weak):
    owner = weak.owner()
    table = per_callable.get(id(owner))
    if table is None or table["ref"]() is not owner:
      key = id(owner)
      table = {"ref": weakref.ref(owner, lambda _, key=key: per_callable.pop(key, None))}
      per_callable[key] = table
    j = table.get(weak.func)
    if j is None:
      ref = weak.ref

      def bound(*args, **kwargs):
        return fun(Model(ref()), *args, **kwargs)

      bound.__signature__ = rest
      bound.__name__ = getattr(fun, "__name__", "kernel")
      j = table[weak.func] = jax.jit(bound, static_argnames=static_argnames)
    return j

  def route(f):
    f = as_data(f)
    if isinstance(f, Model) and f.opaque is not None and isinstance(f._statics[0], _Weak):
      return compiled_for(f._statics[0]), ()
    return shared, (f,)

  @functools.wraps(fun)
  def call(f, *args, **kwargs):
    j, head = route(f)
    return j(*head, *args, **kwargs)

  def eval_shape(f, *args, **kwargs):
    j, head = route(f)
    return j.eval_shape(*head, *args, **kwargs)

  def cache_size() -> int:
    """Compiled programs held: the shared one's and those of live opaque callables."""
    return shared._cache_size() + sum(
        j._cache_size() for t in per_callable.values() for k, j in t.items() if k != "ref")

  def lower(f, *args, **kwargs):
    j, head = route(f)
    return j.lower(*head, *args, **kwargs)

  call.eval_shape = eval_shape
  call.lower = lower
  call.shared = shared
  call._cache_size = cache_size
  return call


# ----------------------------------------------------------------------------
# Tapped models.


@jax.tree_util.register_pytree_node_class
class Tapped:
  """A tapped forward: ``tapped(x, taps=None) -> (logits, activations)``.

  A pytree: the forward (any pytree callable ``(x, taps) -> (logits, acts)``,
  kept as a `Model`) carries the arrays; `layer_names` is static.

  Attributes:
    layer_names: the names that can be tapped, in call order.
  """

  __saljax_data__ = True

  def __init__(self, forward: Callable[[Array, Taps | None], tuple[Array, dict[str, Array]]],
               layer_names: Sequence[str]):
    self._forward = as_data(forward) if not isinstance(forward, Model) else forward
    self.layer_names = tuple(layer_names)

  def tree_flatten(self):
    return (self._forward,), self.layer_names

  @classmethod
  def tree_unflatten(cls, layer_names, children):
    obj = object.__new__(cls)
    obj._forward, obj.layer_names = children[0], layer_names
    return obj

  def __call__(self, x: Array, taps: Taps | None = None) -> tuple[Array, dict[str, Array]]:
    if taps:
      unknown = [k for k in taps if k not in self.layer_names]
      if unknown:
        raise ValueError(
            f"taps: unknown layer(s) {unknown}; the model has {list(self.layer_names)}")
    return self._forward(x, taps)

  def logits(self, x: Array) -> Array:
    """The plain model: ``x -> logits``."""
    return self._forward(x, None)[0]

  def as_model(self) -> Model:
    """The plain ``x -> logits`` model, as data."""
    return Model(jax.tree_util.Partial(_tapped_logits, self))

  def activation_shapes(self, x: Array) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of every activation for the batch at hand, without running the model.

    The dict lists layers in the order the forward produces them. Cached by
    the model's structure and array shapes (never by the object or its
    values), so a new checkpoint of one architecture traces nothing.
    """
    return _activation_shapes(self._forward, jax.ShapeDtypeStruct(tuple(x.shape),
                                                                  jnp.dtype(x.dtype)))

  def zero_taps(self, x: Array, layers: Sequence[str]) -> dict[str, Array]:
    """Zero taps shaped like the activations of `layers` for batch `x`."""
    check_layers(self, layers)
    shapes = self.activation_shapes(x)
    return {k: jnp.zeros(shapes[k].shape, shapes[k].dtype) for k in layers}

  def __repr__(self):
    return f"Tapped({len(self.layer_names)} layers)"


def _tapped_logits(tapped: Tapped, x: Array) -> Array:
  return tapped._forward(x, None)[0]


def check_layers(tapped: Tapped, layers: Sequence[str]) -> tuple[str, ...]:
  """Raises a ValueError listing the model's layers when a name is unknown."""
  if isinstance(layers, str):
    layers = (layers,)
  if not isinstance(tapped, Tapped):
    raise TypeError(
        "layer methods need a tapped model (saljax.model.Tapped, see"
        f" saljax.model.from_linen / from_nnx / from_features_head), got {type(tapped).__name__}")
  unknown = [k for k in layers if k not in tapped.layer_names]
  if unknown:
    raise ValueError(
        f"layer: unknown layer name(s) {unknown}; the model has {list(tapped.layer_names)}")
  return tuple(layers)


class _Recorder:
  """Records each submodule output under its path (``"#k"`` for repeated
  calls) and adds the tap of that name; shared by the linen and NNX adapters."""

  def __init__(self, taps: Taps | None):
    self.taps = dict(taps or {})
    self.acts: dict[str, Array] = {}
    self.counts: collections.Counter = collections.Counter()

  def __call__(self, path: Sequence[Any], out: Any) -> Any:
    if not _is_array(out):
      return out
    path = "/".join(str(p) for p in path)
    k = self.counts[path]
    self.counts[path] += 1
    name = path if k == 0 else f"{path}#{k}"
    if name in self.taps:
      out = out + self.taps[name].astype(out.dtype)
    self.acts[name] = out
    return out


def _shapes_in_call_order(forward, example) -> dict[str, jax.ShapeDtypeStruct]:
  """Activation shapes in the order the forward produces them (one abstract
  trace; `eval_shape` alone would return them sorted by name)."""
  order: list[str] = []

  def acts(forward, x):
    a = forward(x, None)[1]
    order.extend(a)
    return a

  shapes = jax.eval_shape(acts, forward, example)
  return {name: shapes[name] for name in order}


_SHAPES: "collections.OrderedDict[Any, dict]" = collections.OrderedDict()
_SHAPES_MAX = 256


def _activation_shapes(forward, example: jax.ShapeDtypeStruct) -> dict[str, jax.ShapeDtypeStruct]:
  leaves, treedef = jax.tree_util.tree_flatten(forward)
  # The key is structure and shapes only: it holds no array and, for an
  # opaque callable, only a weak reference.
  key = (treedef, tuple((tuple(l.shape), jnp.dtype(l.dtype)) for l in leaves),
         tuple(example.shape), example.dtype)
  hit = _SHAPES.get(key)
  if hit is None:
    hit = _shapes_in_call_order(forward, example)
    _SHAPES[key] = hit
    while len(_SHAPES) > _SHAPES_MAX:
      _SHAPES.popitem(last=False)
  return dict(hit)


class _LinenForward:
  """Static part of a linen tapped forward: the module, method and apply kwargs.

  Equal for equal modules (linen modules compare by their fields), so
  variables of one architecture share compiled programs.
  """

  def __init__(self, module, method, apply_kwargs):
    self.module, self.method = module, method
    self.apply_kwargs = tuple(sorted(dict(apply_kwargs or {}).items()))

  def _key(self):
    return (self.module, self.method, self.apply_kwargs)

  def __eq__(self, other):
    return isinstance(other, _LinenForward) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __call__(self, variables, x, taps=None):
    import flax.linen as nn
    rec = _Recorder(taps)

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name != "__call__" or not context.module.path:
        return out
      return rec(context.module.path, out)

    with nn.intercept_methods(interceptor):
      logits = self.module.apply(variables, x, method=self.method, **dict(self.apply_kwargs))
    return logits, rec.acts


def _layer_names(forward, example, names, who):
  if names is not None:
    return tuple(names)
  if example is None:
    raise ValueError(f"{who}: pass `example` (an input batch) or `names` to list the layers")
  if not isinstance(example, jax.ShapeDtypeStruct):
    example = jax.ShapeDtypeStruct(np.shape(example), jnp.result_type(example))
  return tuple(_shapes_in_call_order(as_data(forward), example))


def from_linen(module, variables, *, method: str | Callable | None = None,
               apply_kwargs: Mapping[str, Any] | None = None,
               example: Array | None = None, names: Sequence[str] | None = None) -> Tapped:
  """Tapped forward of a Flax linen module, without editing it; a pytree whose
  leaves are `variables`.

  Every submodule ``__call__`` whose output is a single array becomes a layer,
  named by its module path joined with ``/`` (``"Conv_0"``,
  ``"blocks_3/conv"``); a module called several times gets ``"#k"`` suffixes
  for calls after the first. Layer names are found by tracing once with
  ``jax.eval_shape`` on `example` (shape only, nothing runs); pass `names`
  instead to skip that. ``tapped.as_model()`` (or passing the `Tapped` to a
  pixel method) gives the plain ``x -> logits`` model.

  Args:
    module: the linen module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``).
    method: an optional method to apply instead of ``__call__``.
    apply_kwargs: extra keyword arguments for ``module.apply`` (e.g. ``train=False``).
    example: an input batch (or ShapeDtypeStruct) used to list layer names.
    names: the layer names, when known.
  """
  forward = _Bound(_LinenForward(module, method, apply_kwargs), variables)
  return Tapped(forward, _layer_names(forward, example, names, "from_linen"))


_NNX_WRAPPED: dict[type, type] = {}


def _nnx_hooked_class(cls):
  if cls not in _NNX_WRAPPED:
    orig_call = cls.__call__

    def __call__(self, *args, **kwargs):
      out = orig_call(self, *args, **kwargs)
      hook = getattr(self, "_saljax_hook", None)
      return hook(out) if hook is not None else out

    _NNX_WRAPPED[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
  return _NNX_WRAPPED[cls]


def _nnx_forward(module, x, taps=None):
  from flax import nnx
  rec = _Recorder(taps)
  copy = nnx.merge(*nnx.split(module))  # never touch the caller's module
  for path, sub in nnx.iter_modules(copy):
    if not path:
      continue
    object.__setattr__(sub, "_saljax_hook", lambda out, path=path: rec(path, out))
    sub.__class__ = _nnx_hooked_class(type(sub))
  return copy(x), rec.acts


def from_nnx(module, *, example: Array | None = None, names: Sequence[str] | None = None) -> Tapped:
  """Tapped forward of a Flax NNX module, without editing it; a pytree whose
  leaves are the module's current state.

  Every submodule whose ``__call__`` returns a single array becomes a layer,
  named by its attribute path joined with ``/`` (``"conv1"``, ``"blocks/0/mlp"``).
  Each call merges a copy and swaps the class of every submodule for a
  subclass whose ``__call__`` records the output and adds the tap, so the
  user's module object is never changed. The `Tapped` holds the module's
  state as of this call: build it again (cheap with `names`) after updating
  the module in place, or pass the module itself to pixel methods, which
  read its state on every call.
  """
  forward = jax.tree_util.Partial(_nnx_forward, module)
  return Tapped(forward, _layer_names(forward, example, names, "from_nnx"))


@jax.tree_util.register_pytree_node_class
class _FeaturesHead:

  def __init__(self, features, head, name):
    self.features, self.head, self.name = features, head, name

  def __call__(self, x, taps=None):
    a = self.features(x)
    if taps and self.name in taps:
      a = a + taps[self.name].astype(a.dtype)
    return self.head(a), {self.name: a}

  def tree_flatten(self):
    return (as_data(self.features), as_data(self.head)), self.name

  @classmethod
  def tree_unflatten(cls, name, children):
    return cls(children[0], children[1], name)


def from_features_head(features: Callable, head: Callable[[Array], Array],
                       name: str = "features") -> Tapped:
  """Tapped forward of ``head(features(x))`` with one layer, `name`.

  `features` and `head` follow the model contract: pytree callables carry
  their arrays as data; plain closures are compiled per object."""
  return Tapped(_FeaturesHead(features, head, name), [name])


def as_model(model: Any) -> Any:
  """The plain ``x -> logits`` model of a model or a tapped model, as data."""
  if isinstance(model, Tapped):
    return model.as_model()
  as_logits = getattr(model, "as_model", None)
  if as_logits is not None and getattr(type(model), "__saljax_data__", False):
    return as_logits()
  return as_data(model)


def _logits(f, x):
  return f(x)


_logits_jit = jit(_logits)


def output_shape(f: Any, x: Array) -> tuple[int, int]:
  """`(B, C)` of the model's logits for `x`, from an abstract evaluation, or raises.

  Uses the tracing cache of `jax.jit`, keyed by the model's structure and the
  shapes of its arrays (never by the arrays or the model object), so a second
  call with the same shapes traces nothing.
  """
  f = as_model(f)
  xs = jax.ShapeDtypeStruct(tuple(x.shape), jnp.dtype(x.dtype))
  try:
    out = _logits_jit.eval_shape(f, xs)
  except Exception as e:  # the model cannot take this input at all
    raise ValueError(
        f"the model could not be evaluated on an input of shape {tuple(x.shape)}"
        f" and dtype {x.dtype}: {type(e).__name__}: {e}") from e
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != x.shape[0]:
    raise ValueError(
        f"the model must return logits [B, C] = [{x.shape[0]}, C] for class-index targets;"
        f" for an input of shape {tuple(x.shape)} it returned"
        f" {shape if shape is not None else type(out).__name__}. For other outputs"
        " (segmentation, regression, embeddings, detection) pass a callable target that"
        " scores them, e.g. target=saljax.targets.segmentation(k) or"
        " target=lambda out: out[:, 0]")
  return int(shape[0]), int(shape[1])


def resolve_target(f: Any, x: Array, target: Any) -> Array:
  """Class indices `[B]` (int32) from ``"predicted"``, an int, or an int array."""
  batch, num_classes = output_shape(f, x)
  if isinstance(target, str):
    if target != PREDICTED:
      raise ValueError(f"target: expected class indices or {PREDICTED!r}, got {target!r}")
    predicted, finite = _predicted(as_model(f), x)
    # The forward pass is computed anyway: checking its logits here is free.
    if _validation.is_concrete(finite):
      finite = np.asarray(finite)
      if not finite.all():
        raise _validation.nonfinite_logits_error(np.flatnonzero(~finite))
    return predicted
  if target is None:
    raise TypeError(f"target: expected class indices [B] or {PREDICTED!r}, got None")
  return _validation.check_target(target, batch, num_classes)


@jit
def _predicted(f, x: Array) -> tuple[Array, Array]:
  """The argmax class and whether each row's logits are finite."""
  logits = f(x)
  finite = jnp.isfinite(logits).reshape(logits.shape[0], -1).all(1)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), finite


@jit
def _finite_logit_rows(f, x: Array) -> Array:
  """Whether each row's logits are finite, ``[B]`` bool."""
  logits = f(x)
  return jnp.isfinite(logits).reshape(logits.shape[0], -1).all(1)


def prepare(f: Any, x: Any, target: Any):
  """Validates `f`, `x` and `target` before any work; returns ``(f, x, target)``.

  Shared by every explainer and metric. `f` becomes the plain ``x -> logits``
  model as data (a `Tapped` is unwrapped), `x` a floating array, and `target`
  an int32 array ``[B]`` (``"predicted"`` is resolved with one forward pass).
  """
  if not callable(f):
    raise TypeError(f"f: expected a model x[B, ...] -> logits[B, C], got {_validation.describe(f)}")
  f_in, x_in = f, x
  x = _validation.check_input(x)
  f = as_model(f)
  resolved = resolve_target(f, x, target)
  call = _validation.CURRENT.get()
  if (isinstance(target, str) and call is not None and _validation.is_concrete(x)
      and _validation.is_concrete(resolved)):
    # "predicted" ran the forward and found its logits finite: the method's
    # own check (the registry's) need not run it again.
    call.checked.append((f_in, x_in))
  return f, x, resolved


def target_logit(f: Callable, x: Array, target: Array) -> Array:
  """``f(x)[b, target[b]]`` for each row, shape `[B]`."""
  logits = f(x)
  return jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1)[:, 0]


# What an explainer or metric scores: the target's logit or its softmax probability.
# One name (``score=``) and one implementation for both, so that a metric run with
# an explainer's option means the same number.
SCORES = ("logit", "probability")


def check_score(score: Any, allowed: Sequence[str] = SCORES) -> str:
  return _validation.check_choice(score, "score", tuple(allowed))


def probabilities(logits: Array) -> Array:
  """Softmax over classes in at least float32, refusing a single score per example.

  The softmax of one score is 1 whatever the input, so every map or metric
  built on it would be constant: that is the case of a callable target
  (saljax.targets), whose model has one output, and of a one-logit model.
  """
  if logits.shape[-1] == 1:
    raise ValueError(
        "score='probability' needs class logits [B, C] with C >= 2, got one score per"
        " example (a callable target, or a one-logit model); use score='logit', with"
        " target=saljax.targets.class_probability(c) for a class probability")
  # At least float32 (bf16 logits are promoted), float64 kept under x64.
  return jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)


def class_scores(f: Callable, x: Array, score: str) -> Array:
  """Logits, or softmax probabilities (computed in float32), ``[B, C]``."""
  logits = f(x)
  if score == "probability":
    return probabilities(logits)
  return logits


def target_score(f: Callable, x: Array, target: Array, score: str) -> Array:
  """The target class's logit or probability per row, ``[B]``."""
  s = class_scores(f, x, score)
  return jnp.take_along_axis(s, target[:, None].astype(jnp.int32), axis=1)[:, 0]
