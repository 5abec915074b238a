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
import jax.numpy as jnp
import numpy as np

from saljax import _adapt
from saljax import _validation as V

# What a method can need besides (f, x, target):
NEEDS = frozenset({
    "tapped",      # a `Tapped` model (layer methods), and a `layer` option
    "layers",      # several tapped layers (`layer=[...]`)
    "vit",         # a tapped vision transformer (attention probabilities)
    "key",         # a jax.random key
    "segments",    # a feature mask [B, H, W] (or a host-side segmentation by name)
    "references",  # reference inputs drawn from data
    "mask",        # a ground-truth region [B, H, W]
    "mosaic",      # 2x2 mosaics and which quadrants show the target class [B, 4]
    "explainer",   # an explainer to re-run (metrics that re-explain)
    "params",      # the model as (model_fn, params) (parameter randomization)
    "random_model",  # a second model (data randomization)
    "classes",     # class groups or a contrast class (contrastive scores)
    "prompt_cam",  # a tapped Prompt-CAM model (saljax.models.prompt_cam: class prompts on a ViT)
})

# What a method returns:
RETURNS = {
    "input": "a map shaped like x: [B, H, W, C]",
    "layer": "a map at the layer's resolution: [B, h, w]",
    "activation": "attributions shaped like the layer's activation: [B, h, w, C], [B, T, D], ...",
    "image": "a map at the input's resolution, one value per pixel: [B, H, W]",
    "scores": "per-example scores: [B]",
    "curve": "a dict {'score': [B], 'curve': [B, T]} (plus method-specific keys)",
}

# How a non-finite model output (NaN or inf logits) is caught, per method:
MODEL_OUTPUT = {
    # It reaches the result: the result is checked for NaN/inf (free when it is
    # finite) and only then is the model run on the offending examples, to say
    # whether its logits or the method produced them.
    "result": "a non-finite logit makes the result non-finite; the result is checked",
    # The method can turn non-finite logits into finite numbers (ranks, argmax,
    # clipped or thresholded scores): the model's logits on x are checked with
    # one forward pass after the method, unless target="predicted" already did.
    "forward": "the method can hide non-finite logits; one forward pass checks them",
    # The method never reads the logits (attention maps, a layer's principal
    # component, metrics of the attribution alone): nothing to check.
    "unused": "the method does not read the model's logits",
}

# How a map is shown (`Display`): channel aggregations and sign modes, the
# conventions of PAIR saliency's `VisualizeImageGrayscale` (sum of |values| over
# channels, clipped at the 99th percentile) and Captum's `visualize_image_attr`
# (sign "all" / "positive" / "negative" / "absolute_value").
AGGREGATIONS = ("sum", "abs_sum", "l2", "max_abs")
SIGNS = {
    "all": "both signs, a diverging colormap centred on 0 (limits +-the percentile of |map|)",
    "positive": "the positive part, a sequential colormap from 0",
    "negative": "the negative part (as magnitudes), a sequential colormap from 0",
    "absolute_value": "|map|, a sequential colormap from 0",
    # Maps whose values sit on an offset (RISE's mean masked score, ranks,
    # sensitivity indices): 0 is not special, the minimum is.
    "range": "the map's own values, a sequential colormap from its minimum",
}


@dataclasses.dataclass(frozen=True)
class Display:
  """How a method's map is drawn by `saljax.viz` (each explainer's default is
  ``saljax.explainers.entry(name).display``; every viz function takes overrides).

  Attributes:
    aggregation: how channels fold into one value per pixel, one of
      `AGGREGATIONS` (``"abs_sum"``: PAIR saliency's grayscale convention;
      ``"sum"`` keeps the sign). Ignored for maps without channels.
    sign: one of `SIGNS`.
    percentile: the colormap's limit is this percentile of the shown values,
      so a few outlier pixels do not wash out the rest (PAIR: 99; Captum's
      ``outlier_perc=2``: 98).
    cmap: a matplotlib colormap name; None: `saljax.viz`'s diverging map for
      ``sign="all"``, its sequential one otherwise.
  """
  aggregation: str = "abs_sum"
  sign: str = "absolute_value"
  percentile: float = 99.0
  cmap: str | None = None

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation: expected one of {AGGREGATIONS}, got {self.aggregation!r}")
    if self.sign not in SIGNS:
      raise ValueError(f"sign: expected one of {tuple(SIGNS)}, got {self.sign!r}")
    if not isinstance(self.percentile, (int, float)) or not 0 < self.percentile <= 100:
      raise ValueError(f"percentile: expected a number in (0, 100], got {self.percentile!r}")
    if self.cmap is not None and not isinstance(self.cmap, str):
      raise TypeError(f"cmap: expected a colormap name or None, got {type(self.cmap).__name__}")

  @property
  def signed(self) -> bool:
    """Drawn with the diverging colormap (both signs)."""
    return self.sign == "all"

  def replace(self, **changes) -> "Display":
    """A copy with `changes` (None values are ignored, so optional arguments pass through)."""
    return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


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


def _method_model(args, kwargs, needs):
  """``(model x -> logits, x)`` of a call, or ``(None, x)`` when there is none."""
  from saljax import model as M
  f = args[0] if args else kwargs.get("f", kwargs.get("model_fn"))
  x = args[1] if len(args) > 1 else kwargs.get("x")
  if not callable(f):
    return None, x
  if "params" in needs:  # the model as model_fn(params, x)
    params = kwargs.get("params")
    return (M.bind(f, params) if params is not None else None), x
  return M.as_model(f), x


@functools.partial(jax.jit, static_argnums=1)
def _rows_finite(leaves, batch):
  """``[batch]`` bool: every floating value of the row is finite (a leaf without
  a leading batch axis counts for every row)."""
  ok = jnp.ones((batch,), bool)
  for a in leaves:
    fin = jnp.isfinite(a)
    if a.ndim >= 1 and a.shape[0] == batch:
      ok &= fin.reshape(batch, -1).all(1)
    else:
      ok &= fin.all()
  return ok


def _host_bad_rows(rows_ok) -> list[int]:
  bad = []
  for start, block in V._local_rows(rows_ok):
    bad += (start + np.flatnonzero(~block)).tolist()
  return sorted(bad)


def _logit_bad_rows(model, x, rows):
  """The rows among `rows` where the model's logits are not finite, or None
  when the model cannot be evaluated (then nothing can be said)."""
  from saljax import model as M
  try:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return [r for r in _host_bad_rows(M._finite_logit_rows(model, x)) if r in set(rows)]
    finite = np.asarray(M._finite_logit_rows(model, jnp.asarray(x)[np.asarray(rows)]))
  except Exception:  # a model that cannot run here: report what is known
    return None
  return [r for r, ok in zip(rows, finite) if not ok]


def _checked(fn, name: str, model_output: str, needs: frozenset):
  """`fn`, refusing non-finite model outputs and non-finite results.

  Every public method passes through here, so the check needs no code in the
  methods. Only the outermost registered call checks (a metric re-running an
  explainer checks once), and only concrete values: under a user's
  ``jax.jit``/``vmap``/``grad`` the result is a tracer and no host check is
  possible, so none is made.
  """

  @functools.wraps(fn)
  def call(*args, **kwargs):
    if V.CURRENT.get() is not None:
      return fn(*args, **kwargs)
    state = V.Call(name)
    token = V.CURRENT.set(state)
    try:
      out = fn(*args, **kwargs)
    finally:
      V.CURRENT.reset(token)
    leaves = [l for l in jax.tree_util.tree_leaves(out)
              if hasattr(l, "dtype") and jnp.issubdtype(l.dtype, jnp.inexact)]
    if not all(V.is_concrete(l) for l in leaves):
      return out
    model, x = _method_model(args, kwargs, needs)
    if not hasattr(x, "shape") or not V.is_concrete(x) or not getattr(x, "ndim", 0):
      return out
    batch = int(x.shape[0])
    bad = _host_bad_rows(_rows_finite(tuple(leaves), batch)) if leaves else []
    if bad:
      # The error path only: one forward on the whole batch names every example
      # whose logits are non-finite (a perturbation method may have hidden some).
      logit_rows = _logit_bad_rows(model, x, list(range(batch))) if model is not None else None
      if logit_rows:
        raise V.nonfinite_logits_error(logit_rows, name)
      because = ("although the model's logits for them are finite" if logit_rows == [] else
                 "(the model's logits could not be checked)")
      raise ValueError(
          f"{name}: produced non-finite values (NaN or inf) for examples {bad[:10]}"
          f" {because}; the result would be wrong (an input in float16/bfloat16 can"
          " overflow: try float32)")
    f_in = args[0] if args else None
    if model_output == "forward" and model is not None and not state.was_checked(f_in, x):
      logit_rows = _logit_bad_rows(model, x, list(range(batch)))
      if logit_rows:
        raise V.nonfinite_logits_error(logit_rows, name)
    return out

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
    model_output: how non-finite model outputs are caught, a key of
      `MODEL_OUTPUT` (tests/test_model_output.py holds the claim for every
      method).
    display: explainers: how `saljax.viz` draws the map by default (`Display`).
    year: explainers: the year of the method's paper (figure labels).
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
  model_output: str = "result"
  display: Display | None = None
  year: int | None = None

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
    # A "forward" method's check of the model's logits is one more forward
    # (none when target="predicted" ran it, which this count does not know).
    return int(self.evaluations(self.options(**options), f, x)) + (self.model_output == "forward")

  def better(self, **options) -> str | None:
    """Metrics: ``"higher"`` or ``"lower"`` is better for these options."""
    d = self.direction
    return d(self.options(**options)) if callable(d) else d


class Registry:

  def __init__(self, what: str, model_output: Mapping[str, str] | None = None,
               display: Callable[[str, str, str], Display | None] | None = None,
               year: Mapping[str, int] | None = None):
    """`model_output`: name -> a key of `MODEL_OUTPUT` for methods that are not
    ``"result"`` (a method may also state it in its `register` call).
    `display`: ``(name, family, returns) -> Display``, the default display of
    a method that does not state one. `year`: name -> the paper's year."""
    self._what = what
    self._entries: dict[str, Entry] = {}
    self._model_output = dict(model_output or {})
    self._display = display
    self._year = dict(year or {})

  def register(self, name: str, *, family: str, returns: str, evaluations, backward: bool,
               smoke: Mapping[str, Any] | None = None, needs=(), direction=None,
               jittable: bool = True, vmappable: bool = True, differentiable: bool = True,
               note: str = "", model_output: str | None = None,
               display: Display | None = None, year: int | None = None):
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
    model_output = model_output or self._model_output.get(name, "result")
    if model_output not in MODEL_OUTPUT:
      raise ValueError(f"{name}: model_output must be one of {sorted(MODEL_OUTPUT)}, got"
                       f" {model_output!r}")
    if display is None and self._display is not None:
      display = self._display(name, family, returns)
    if display is not None and not isinstance(display, Display):
      raise TypeError(f"{name}: display must be a Display, got {type(display).__name__}")
    year = year if year is not None else self._year.get(name)
    count = evaluations if callable(evaluations) else (lambda o, f, x, n=int(evaluations): n)

    unsupported = tuple(t for t, ok in zip(TRANSFORMS, (jittable, vmappable, differentiable))
                        if not ok)

    def deco(fn):
      raw = fn
      if unsupported:
        fn = _guarded(fn, name, unsupported, note)
      fn = _checked(fn, name, model_output, needs)
      fn = _adapt.adapt(fn, name, self._what, needs, returns)
      if name in self._entries and inspect.unwrap(self._entries[name].fn) is not raw:
        raise ValueError(f"{self._what} {name!r} is registered twice")
      self._entries[name] = Entry(
          name=name, fn=fn, family=family, needs=needs, returns=returns, evaluations=count,
          backward=backward, smoke=dict(smoke or {}), direction=direction, jittable=jittable,
          vmappable=vmappable, differentiable=differentiable, note=note,
          model_output=model_output, display=display, year=year)
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
