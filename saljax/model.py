"""The model contract and adapters.

An explainer receives ``f: x[B, ...] -> logits[B, C]``: any pure, traceable JAX
callable with its parameters closed over (PAIR saliency's ``call_model_function``,
Captum's ``forward_func``). A Haiku or Equinox model needs no adapter.

Layer methods also need activations at named layers and gradients with respect
to them. They take a *tapped* forward::

    forward(x, taps=None) -> (logits, activations: dict[str, Array])

where ``taps[name]`` is added to activation ``name`` (zeros by default), so the
gradient with respect to a zero tap is the gradient with respect to that
activation. One forward and one backward pass serve every requested layer.

Adapters here build a `Tapped` from a Flax linen module (``nn.intercept_methods``:
every submodule's ``__call__`` output can be tapped, no edit of the model), from
an NNX module (the same, through a class swap on a merged copy), and from a plain
``features``/``head`` pair.
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation

Array = jax.Array
Model = Callable[[Array], Array]
Taps = Mapping[str, Array]

PREDICTED = "predicted"


class Tapped:
  """A tapped forward: ``tapped(x, taps=None) -> (logits, activations)``.

  Attributes:
    layer_names: the names that can be tapped, in call order.
  Instances hash by identity, so one can be a static argument of `jax.jit`.
  """

  def __init__(self, forward: Callable[[Array, Taps | None], tuple[Array, dict[str, Array]]],
               layer_names: Sequence[str]):
    self._forward = forward
    self.layer_names = tuple(layer_names)
    self._shapes: dict = {}

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

  def activation_shapes(self, x: Array) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of every activation for the batch at hand, without running the model.

    The dict lists layers in the order the forward produces them. Cached per
    input shape and dtype, so a second call traces nothing.
    """
    k = (tuple(x.shape), jnp.dtype(x.dtype))
    if k not in self._shapes:
      self._shapes[k] = _shapes_in_call_order(self._forward, jax.ShapeDtypeStruct(*k))
    return dict(self._shapes[k])

  def zero_taps(self, x: Array, layers: Sequence[str]) -> dict[str, Array]:
    """Zero taps shaped like the activations of `layers` for batch `x`."""
    check_layers(self, layers)
    shapes = self.activation_shapes(x)
    return {k: jnp.zeros(shapes[k].shape, shapes[k].dtype) for k in layers}


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


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) or isinstance(x, jax.core.Tracer)


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

  def acts(x):
    a = forward(x, None)[1]
    order.extend(a)
    return a

  shapes = jax.eval_shape(acts, example)
  return {name: shapes[name] for name in order}


def _call_order(forward, example) -> list[str]:
  return list(_shapes_in_call_order(forward, example))


def from_linen(module, variables, *, method: str | Callable | None = None,
               apply_kwargs: Mapping[str, Any] | None = None,
               example: Array | None = None, names: Sequence[str] | None = None) -> Tapped:
  """Tapped forward of a Flax linen module, without editing it.

  Every submodule ``__call__`` whose output is a single array becomes a layer,
  named by its module path joined with ``/`` (``"Conv_0"``,
  ``"blocks_3/conv"``); a module called several times gets ``"#k"`` suffixes
  for calls after the first. Layer names are found by tracing once with
  ``jax.eval_shape`` on `example` (shape only, nothing runs); pass `names`
  instead to skip that.

  Args:
    module: the linen module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``).
    method: an optional method to apply instead of ``__call__``.
    apply_kwargs: extra keyword arguments for ``module.apply`` (e.g. ``train=False``).
    example: an input batch (or ShapeDtypeStruct) used to list layer names.
    names: the layer names, when known.
  """
  import flax.linen as nn

  apply_kwargs = dict(apply_kwargs or {})

  def forward(x, taps=None):
    rec = _Recorder(taps)

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name != "__call__" or not context.module.path:
        return out
      return rec(context.module.path, out)

    with nn.intercept_methods(interceptor):
      logits = module.apply(variables, x, method=method, **apply_kwargs)
    return logits, rec.acts

  if names is None:
    if example is None:
      raise ValueError("from_linen: pass `example` (an input batch) or `names` to list the layers")
    names = _call_order(forward, example)
  return Tapped(forward, names)


def from_nnx(module, *, example: Array | None = None, names: Sequence[str] | None = None) -> Tapped:
  """Tapped forward of a Flax NNX module, without editing it.

  Every submodule whose ``__call__`` returns a single array becomes a layer,
  named by its attribute path joined with ``/`` (``"conv1"``, ``"blocks/0/mlp"``).
  The module is split once; each call merges a fresh copy and swaps the class
  of every submodule for a subclass whose ``__call__`` records the output and
  adds the tap, so the user's module object is never changed.
  """
  from flax import nnx

  graphdef, state = nnx.split(module)
  wrapped_classes: dict[type, type] = {}

  def wrap_class(cls):
    if cls not in wrapped_classes:
      orig_call = cls.__call__

      def __call__(self, *args, **kwargs):
        out = orig_call(self, *args, **kwargs)
        hook = getattr(self, "_saljax_hook", None)
        return hook(out) if hook is not None else out

      wrapped_classes[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
    return wrapped_classes[cls]

  def forward(x, taps=None):
    rec = _Recorder(taps)
    copy = nnx.merge(graphdef, state)
    for path, sub in nnx.iter_modules(copy):
      if not path:
        continue
      object.__setattr__(sub, "_saljax_hook", lambda out, path=path: rec(path, out))
      sub.__class__ = wrap_class(type(sub))
    logits = copy(x)
    return logits, rec.acts

  if names is None:
    if example is None:
      raise ValueError("from_nnx: pass `example` (an input batch) or `names` to list the layers")
    names = _call_order(forward, example)
  return Tapped(forward, names)


def from_features_head(features: Model, head: Callable[[Array], Array],
                       name: str = "features") -> Tapped:
  """Tapped forward of ``head(features(x))`` with one layer, `name`."""

  def forward(x, taps=None):
    a = features(x)
    if taps and name in taps:
      a = a + taps[name].astype(a.dtype)
    return head(a), {name: a}

  return Tapped(forward, [name])


def as_model(model: Model | Tapped) -> Model:
  """The plain ``x -> logits`` callable of a model or a tapped model."""
  return model.logits if isinstance(model, Tapped) else model


def output_shape(f: Model, x: Array) -> tuple[int, int]:
  """`(B, C)` of the model's logits for `x`, from an abstract evaluation, or raises.

  Cached per (model, shape, dtype), so validating a second call with the same
  shapes traces nothing.
  """
  return _output_shape(as_model(f), tuple(x.shape), jnp.dtype(x.dtype))


@functools.lru_cache(maxsize=256)
def _output_shape(f: Model, shape: tuple[int, ...], dtype) -> tuple[int, int]:
  x = jax.ShapeDtypeStruct(shape, dtype)
  try:
    out = jax.eval_shape(f, x)
  except Exception as e:  # the model cannot take this input at all
    raise ValueError(
        f"the model could not be evaluated on an input of shape {tuple(x.shape)}"
        f" and dtype {x.dtype}: {type(e).__name__}: {e}") from e
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != x.shape[0]:
    raise ValueError(
        f"the model must return logits [B, C] = [{x.shape[0]}, C]; for an input of"
        f" shape {tuple(x.shape)} it returned {shape if shape is not None else type(out).__name__}")
  return int(shape[0]), int(shape[1])


def resolve_target(f: Model | Tapped, x: Array, target: Any) -> Array:
  """Class indices `[B]` (int32) from ``"predicted"``, an int, or an int array."""
  batch, num_classes = output_shape(f, x)
  if isinstance(target, str):
    if target != PREDICTED:
      raise ValueError(f"target: expected class indices or {PREDICTED!r}, got {target!r}")
    return _predicted(as_model(f), x)
  if target is None:
    raise TypeError(f"target: expected class indices [B] or {PREDICTED!r}, got None")
  return _validation.check_target(target, batch, num_classes)


@functools.partial(jax.jit, static_argnums=0)
def _predicted(f: Model, x: Array) -> Array:
  return jnp.argmax(f(x), axis=-1).astype(jnp.int32)


def prepare(f: Any, x: Any, target: Any):
  """Validates `f`, `x` and `target` before any work; returns ``(f, x, target)``.

  Shared by every explainer and metric. `f` becomes the plain ``x -> logits``
  callable (a `Tapped` is unwrapped), `x` a floating array, and `target` an
  int32 array ``[B]`` (``"predicted"`` is resolved with one forward pass).
  """
  if not callable(f):
    raise TypeError(f"f: expected a model x[B, ...] -> logits[B, C], got {_validation.describe(f)}")
  x = _validation.check_input(x)
  f = as_model(f)
  target = resolve_target(f, x, target)
  return f, x, target


class WithParams:
  """``x -> model_fn(params, x)``, equal (and hashing the same) for the same
  `model_fn` and `params` objects, so jit and shape caches see one model."""

  def __init__(self, model_fn: Callable, params: Any):
    self.model_fn, self.params = model_fn, params

  def __call__(self, x: Array) -> Array:
    return self.model_fn(self.params, x)

  def __eq__(self, other):
    return (isinstance(other, WithParams) and other.model_fn is self.model_fn
            and other.params is self.params)

  def __hash__(self):
    return hash((id(self.model_fn), id(self.params)))


def target_logit(f: Model, x: Array, target: Array) -> Array:
  """``f(x)[b, target[b]]`` for each row, shape `[B]`."""
  logits = f(x)
  return jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1)[:, 0]
