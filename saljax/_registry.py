"""A name -> entry registry, one instance for explainers and one for metrics.

The registry is the one place that states the facts about a method that other
code needs without calling it: its family (the README's table), what it needs
besides ``(f, x, target)``, what it returns, how many model evaluations it
costs for given options, small options for smoke tests, the direction of a
metric, and which JAX transformations it composes with. `experiments`, the
demo, the benchmark and the tests read these instead of inspecting signatures
or keeping tables of their own; tests hold every claim (tests/test_registry_facts.py
and tests/test_composability.py).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping

import jax

# What a method can need besides (f, x, target):
NEEDS = frozenset({
    "tapped",      # a `Tapped` model (layer methods), and a `layer` option
    "layers",      # several tapped layers (`layer=[...]`)
    "vit",         # a tapped vision transformer (attention probabilities)
    "key",         # a jax.random key
    "segments",    # a feature mask [B, H, W] (or a host-side segmentation by name)
    "references",  # reference inputs drawn from data
    "mask",        # a ground-truth region [B, H, W]
    "explainer",   # an explainer to re-run (metrics that re-explain)
    "params",      # the model as (model_fn, params) (parameter randomization)
    "random_model",  # a second model (data randomization)
    "classes",     # class groups or a contrast class (contrastive scores)
})

# What a method returns:
RETURNS = {
    "input": "a map shaped like x: [B, H, W, C]",
    "layer": "a map at the layer's resolution: [B, h, w]",
    "image": "a map at the input's resolution, one value per pixel: [B, H, W]",
    "scores": "per-example scores: [B]",
    "curve": "a dict {'score': [B], 'curve': [B, T]} (plus method-specific keys)",
}

# Transformations whose support is claimed per method.
TRANSFORMS = ("jit", "vmap", "grad")
# The tracer classes each transformation puts on a method's arguments (by name,
# so no private JAX module is imported).
_TRACERS = {"jit": ("DynamicJaxprTracer",), "vmap": ("BatchTracer",),
            "grad": ("LinearizeTracer", "JVPTracer")}


def _transform_of(args, kwargs) -> set[str]:
  """The transformations whose tracers reach the arguments (outermost only)."""
  found = set()
  for leaf in jax.tree_util.tree_leaves((args, kwargs)):
    kind = type(leaf).__name__
    found.update(t for t, names in _TRACERS.items() if kind in names)
  return found


def _guarded(fn, name: str, unsupported: tuple[str, ...], note: str):
  """`fn`, raising a ValueError that names the method, the transformation and
  the way around it when called under a transformation it does not support,
  instead of a tracer error deep inside (or, for `grad`, a wrong derivative)."""

  @functools.wraps(fn)
  def call(*args, **kwargs):
    bad = [t for t in unsupported if t in _transform_of(args, kwargs)]
    if bad:
      raise ValueError(f"{name}: does not support jax.{bad[0]}" + (f": {note}" if note else ""))
    return fn(*args, **kwargs)

  return call


@dataclasses.dataclass(frozen=True)
class Entry:
  """What the library knows about one registered method.

  Attributes:
    name, fn: the registered name and function.
    family: the README family (the module that defines it).
    needs: a subset of `NEEDS`.
    returns: a key of `RETURNS`.
    evaluations: ``(options, f, x) -> int``, model evaluations per example for
      the given options (defaults filled in): a forward pass, or a forward and
      backward pass when `backward`.
    backward: each evaluation includes a backward pass (gradient methods).
    smoke: small options for smoke tests on tiny models (arrays the method
      needs, as named by `needs`, are supplied by the caller).
    direction: metrics only: ``"higher"`` or ``"lower"`` is better, or a
      function of the options returning one of them.
    jittable, vmappable, differentiable: whether the method runs inside a
      user's ``jax.jit``, under ``jax.vmap`` over stacked model parameters, and
      whether ``jax.grad`` of its output with respect to the input is the true
      derivative. Where one is False, the method raises a ValueError naming the
      transformation and the way around it, rather than a JAX tracer error.
    note: why a transformation is not supported, for the docs.
  """
  name: str
  fn: Callable
  family: str
  needs: frozenset
  returns: str
  evaluations: Callable[[Mapping[str, Any], Any, Any], int]
  backward: bool
  smoke: Mapping[str, Any]
  direction: Any = None
  jittable: bool = True
  vmappable: bool = True
  differentiable: bool = True
  note: str = ""

  @property
  def stochastic(self) -> bool:
    """Takes a `key` that decides the result."""
    return "key" in self.needs

  @property
  def kind(self) -> str:
    """Explainers: ``"layer"`` (takes a tapped model) or ``"pixel"`` (a model
    returning logits)."""
    return "layer" if self.needs & {"tapped", "vit"} else "pixel"

  def options(self, **options) -> dict[str, Any]:
    """`options` with the function's defaults filled in; unknown names raise."""
    params = inspect.signature(self.fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
      raise TypeError(f"{self.name}: unknown option(s) {unknown}; it takes "
                      f"{[p for p in params if params[p].kind == inspect.Parameter.KEYWORD_ONLY]}")
    out = {n: p.default for n, p in params.items()
           if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}
    out.update(options)
    return out

  def cost(self, f=None, x=None, **options) -> int:
    """Model evaluations per example for `options` on model `f` and inputs `x`
    (both only needed where the count depends on them: windows, segments,
    channels of a layer)."""
    return int(self.evaluations(self.options(**options), f, x))

  def better(self, **options) -> str | None:
    """Metrics: ``"higher"`` or ``"lower"`` is better for these options."""
    d = self.direction
    return d(self.options(**options)) if callable(d) else d


class Registry:

  def __init__(self, what: str):
    self._what = what
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, *, family: str, returns: str, evaluations, backward: bool,
               smoke: Mapping[str, Any] | None = None, needs=(), direction=None,
               jittable: bool = True, vmappable: bool = True, differentiable: bool = True,
               note: str = ""):
    """Decorator: registers `fn` under `name` with the facts of `Entry`.

    `evaluations` is an int (a constant count) or ``(options, f, x) -> int``.
    """
    needs = frozenset(needs)
    if needs - NEEDS:
      raise ValueError(f"{name}: unknown needs {sorted(needs - NEEDS)}; known: {sorted(NEEDS)}")
    if returns not in RETURNS:
      raise ValueError(f"{name}: returns must be one of {sorted(RETURNS)}, got {returns!r}")
    if direction is not None and not callable(direction) and direction not in ("higher", "lower"):
      raise ValueError(f"{name}: direction must be 'higher', 'lower' or a function, got {direction!r}")
    count = evaluations if callable(evaluations) else (lambda o, f, x, n=int(evaluations): n)

    unsupported = tuple(t for t, ok in zip(TRANSFORMS, (jittable, vmappable, differentiable))
                        if not ok)

    def deco(fn):
      if unsupported:
        fn = _guarded(fn, name, unsupported, note)
      if name in self._entries and self._entries[name].fn is not fn:
        raise ValueError(f"{self._what} {name!r} is registered twice")
      self._entries[name] = Entry(
          name=name, fn=fn, family=family, needs=needs, returns=returns, evaluations=count,
          backward=backward, smoke=dict(smoke or {}), direction=direction, jittable=jittable,
          vmappable=vmappable, differentiable=differentiable, note=note)
      return fn
    return deco

  def names(self, family: str | None = None) -> list[str]:
    return sorted(n for n, e in self._entries.items() if family is None or e.family == family)

  def families(self) -> list[str]:
    return sorted({e.family for e in self._entries.values()})

  def entry(self, name: str) -> Entry:
    if name not in self._entries:
      raise KeyError(f"unknown {self._what} {name!r}; known: {self.names()}")
    return self._entries[name]

  def get(self, name: str) -> Callable:
    return self.entry(name).fn
