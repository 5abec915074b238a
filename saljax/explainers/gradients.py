"""Gradient explainers: vanilla gradient, gradient x input, integrated gradients,
the noise wrappers (SmoothGrad, SquareGrad, VarGrad), expected gradients /
GradientSHAP, Guided IG and Blur IG.

Every function follows the explainer contract
``explainer(f, x, target, *, key=None, **options) -> Array shaped like x``:
`f` maps a batch ``x[B, ...]`` to logits ``[B, C]``; `target` is an int array
``[B]``, an int, or ``"predicted"``. The gradient is that of the target logit
(pre-softmax), as in Captum and PAIR saliency.

Work per example (path steps, noise samples) runs through the chunked helpers
of `saljax.parallel`: ``batch_size`` is how many steps or samples are evaluated
together for every example of the batch (`None`: all at once), and results are
accumulated in a scan carry, so peak memory does not grow with `steps`.
"""
from __future__ import annotations

import functools
import typing
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import ops
from saljax import parallel
from saljax.explainers import _masking as MK
from saljax.explainers import _qmc as QMC
from saljax.explainers._registry import REGISTRY, prepare, require_key

Array = jax.Array


def _noise_evaluations(o, f, x) -> int:
  """Samples times the evaluations of the wrapped explainer."""
  from saljax.explainers._registry import cost_of
  return o["samples"] * cost_of(o["explainer"], o["explainer_options"], f, x)


def _grad_fn(f: M.Model, compute_dtype: str | None = None) -> Callable[[Array, Array], Array]:
  """``(x, target) -> d f(x)[b, target[b]] / d x`` for every row at once.

  With `compute_dtype` (e.g. ``"bfloat16"``) the input is cast before the model
  and the logit back to float32, so the gradient that comes back, and every
  sum of gradients built from it, is float32.
  """
  if compute_dtype is None:
    return jax.grad(lambda x, t: M.target_logit(f, x, t).sum())
  cd = jnp.dtype(compute_dtype)
  return jax.grad(
      lambda x, t: M.target_logit(f, x.astype(cd), t).astype(jnp.float32).sum())


def _check_dtype(compute_dtype) -> str | None:
  if compute_dtype is None:
    return None
  try:
    dt = jnp.dtype(compute_dtype)
  except TypeError as e:
    raise TypeError(f"compute_dtype: expected a floating dtype name, got {compute_dtype!r}") from e
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"compute_dtype: expected a floating dtype, got {dt}")
  return dt.name


def _bcast(v: Array, x: Array) -> Array:
  """Reshapes a per-example vector `[B]` to broadcast against `x[B, ...]`."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


# ----------------------------------------------------------------------------
# Vanilla gradient and gradient x input.


@M.jit(static_argnames=("absolute", "compute_dtype"))
def _gradient(f, x, target, absolute, compute_dtype):
  g = _grad_fn(f, compute_dtype)(x, target)
  return jnp.abs(g) if absolute else g


@REGISTRY.register("gradient", family="gradients", returns="input", evaluations=1, backward=True)
def gradient(f, x, target, *, key=None, absolute: bool = False, compute_dtype=None) -> Array:
  """Input gradient of the target logit (Simonyan et al. 2014, "Deep Inside
  Convolutional Networks", arXiv:1312.6034; Baehrens et al. 2010).

  Args:
    f: model ``x[B, ...] -> logits[B, C]``.
    x: input batch, floating point.
    target: class indices ``[B]``, an int, or ``"predicted"``.
    key: unused (the method is deterministic).
    absolute: return ``|grad|`` (Simonyan et al.'s saliency map before the
      channel max). Default False: the signed gradient, as Captum's `Saliency`
      with ``abs=False``.
    compute_dtype: cast inputs to this dtype before the model (e.g.
      ``"bfloat16"``) while gradients and their sums stay float32; the
      model's own parameter dtype decides the precision of its matmuls.
      Default None: the input's dtype.
  """
  f, x, target = prepare(f, x, target)
  return _gradient(f, x, target, bool(absolute), _check_dtype(compute_dtype))


@REGISTRY.register("absolute_gradient", family="gradients", returns="input", evaluations=1,
    backward=True)
def absolute_gradient(f, x, target, *, key=None) -> Array:
  """``|grad|`` of the target logit: `gradient` with ``absolute=True``
  (Simonyan et al. 2014; Captum's `Saliency` default)."""
  return gradient(f, x, target, absolute=True)


@M.jit(static_argnames=())
def _gradient_x_input(f, x, target):
  return x * _grad_fn(f)(x, target)


@REGISTRY.register("gradient_x_input", family="gradients", returns="input", evaluations=1,
    backward=True)
def gradient_x_input(f, x, target, *, key=None) -> Array:
  """Gradient times input (Shrikumar et al. 2016, "Not Just a Black Box",
  arXiv:1605.01713). Inputs are in the model's input space (after
  normalization), as Captum's `InputXGradient`."""
  f, x, target = prepare(f, x, target)
  return _gradient_x_input(f, x, target)


# ----------------------------------------------------------------------------
# Integrated gradients.

RULES = ("left", "right", "middle", "trapezoid", "gauss_legendre", "adaptive")

# The "adaptive" rule (see `adaptive_nodes`): Gauss-Legendre panels of this
# many nodes (exact for polynomials of degree 7 on every panel), placed by the
# inverse CDF of a density that keeps this share uniform so that no stretch of
# the path goes without nodes when the guide pass misses a change. Both were
# chosen on sums of sigmoid steps along the path (tests/explainers/test_ig_nodes.py).
ADAPTIVE_PANEL = 4
ADAPTIVE_FLOOR = 0.3
DEFAULT_GUIDE = 8


def _panel_layout(steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Static layout of the adaptive rule's `steps` nodes: ``(u_bounds [P + 1],
  panel [steps], t [steps], w [steps])``, panel i holding Gauss-Legendre nodes
  `t` and weights `w` on [0, 1] and probability mass ``u_bounds[i + 1] -
  u_bounds[i]`` proportional to its node count."""
  panels = max(1, steps // ADAPTIVE_PANEL)
  counts = np.full(panels, steps // panels)
  counts[: steps % panels] += 1
  t = np.concatenate([(np.polynomial.legendre.leggauss(int(c))[0] + 1) / 2 for c in counts])
  w = np.concatenate([np.polynomial.legendre.leggauss(int(c))[1] / 2 for c in counts])
  panel = np.repeat(np.arange(panels), counts)
  u_bounds = np.concatenate([[0.0], np.cumsum(counts)]) / steps
  return u_bounds, panel, t, w


def adaptive_nodes(values: Any, steps: int) -> tuple[Array, Array]:
  """Nodes and weights ``[..., steps]`` of the adaptive rule from guide values.

  `values` ``[..., G + 1]`` is the target logit at ``alpha = j / G`` (the
  guide pass, `path_values`). In the manner of Bhat, Assoa and Raychowdhury 2023
  ("Non-Uniform Interpolation in Integrated Gradients for Low-Latency
  Explainable-AI", ISCAS; arXiv:2302.11107) and of the adaptive sampling of
  integrated decision gradients (Walker, Jha, Chen, Ewetz 2024, AAAI), the
  change ``|F(alpha_{j+1}) - F(alpha_j)|`` on each guide segment sets a
  piecewise-constant density on [0, 1] (mixed with the uniform density,
  share `ADAPTIVE_FLOOR`); the panel bounds are its inverse CDF at equal
  steps of probability, and each panel holds `ADAPTIVE_PANEL` (or one more)
  Gauss-Legendre nodes with the panel's width times their weights. So the
  rule is a composite Gauss-Legendre rule on a partition chosen per example:
  weights are positive and sum to 1, and every polynomial of degree up to
  ``2 * ADAPTIVE_PANEL - 1`` (``2 * steps - 1`` for ``steps < 4``) is
  integrated exactly whatever the guide said. A flat or linear guide gives
  equal panels. Unlike the papers' piecewise-uniform Riemann sums, the
  panels keep Gauss-Legendre's order, which is what the completeness gap
  rewards.
  """
  n = parallel.check_count(steps, "steps")
  values = jnp.asarray(values)
  if values.ndim < 1 or values.shape[-1] < 2:
    raise ValueError(
        f"values: expected guide values [..., G + 1] with G >= 1, got shape {tuple(values.shape)}")
  values = values.astype(jnp.result_type(values.dtype, jnp.float32))
  g = values.shape[-1] - 1
  grid = jnp.linspace(0.0, 1.0, g + 1, dtype=values.dtype)
  change = jnp.abs(jnp.diff(values, axis=-1))
  total = change.sum(-1, keepdims=True)
  share = jnp.where(total > 0, change / jnp.where(total > 0, total, 1.0), 1.0 / g)
  mass = (1.0 - ADAPTIVE_FLOOR) * share + ADAPTIVE_FLOOR / g
  cdf = jnp.concatenate([jnp.zeros_like(mass[..., :1]), jnp.cumsum(mass, -1)], -1)
  cdf = cdf / cdf[..., -1:]
  u_bounds, panel, t, w = _panel_layout(n)
  lead = cdf.shape[:-1]
  flat = cdf.reshape(-1, g + 1)
  bounds = jax.vmap(lambda c: jnp.interp(jnp.asarray(u_bounds, c.dtype), c, grid))(flat)
  bounds = bounds.at[:, 0].set(0.0).at[:, -1].set(1.0)
  width = jnp.diff(bounds, axis=-1)[:, panel]
  alphas = bounds[:, panel] + width * jnp.asarray(t, bounds.dtype)
  weights = width * jnp.asarray(w, bounds.dtype)
  return alphas.reshape(lead + (n,)), weights.reshape(lead + (n,))


def path_nodes(steps: int, rule: str, values: Any = None) -> tuple[Any, Any]:
  """Nodes ``alpha`` in [0, 1] and weights summing to 1 for a quadrature rule.

  left/right/middle Riemann sums use weights ``1/steps``; the trapezoid rule
  puts `steps` nodes at both ends (needs ``steps >= 2``); Gauss-Legendre maps
  numpy's `leggauss` nodes from [-1, 1] to [0, 1] (Captum's default rule).
  "adaptive" places its nodes from guide `values` ``[..., G + 1]`` of the
  target logit along the path (`adaptive_nodes`; ``[..., steps]`` arrays,
  one row per example); without `values` it gives the nodes of a flat guide
  (equal Gauss-Legendre panels). The other rules take no `values`.
  """
  V.check_choice(rule, "rule", RULES)
  n = parallel.check_count(steps, "steps")
  if rule == "adaptive":
    if values is None:
      a, w = adaptive_nodes(np.zeros(2), n)
      return np.asarray(a, np.float64), np.asarray(w, np.float64)
    return adaptive_nodes(values, n)
  if values is not None:
    raise ValueError(f"values: only rule='adaptive' takes guide values, got rule={rule!r}")
  if rule == "left":
    return np.arange(n) / n, np.full(n, 1.0 / n)
  if rule == "right":
    return np.arange(1, n + 1) / n, np.full(n, 1.0 / n)
  if rule == "middle":
    return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
  if rule == "trapezoid":
    if n < 2:
      raise ValueError(f"steps: the trapezoid rule needs steps >= 2, got {n}")
    w = np.full(n, 1.0 / (n - 1))
    w[[0, -1]] *= 0.5
    return np.linspace(0.0, 1.0, n), w
  t, w = np.polynomial.legendre.leggauss(n)
  return (t + 1) / 2, w / 2


def make_baseline(x: Array, baseline: Any = None, *, blur_sigma: float = 10.0) -> Array:
  """A baseline shaped like `x`, in the model's input space.

  Args:
    baseline: None or ``"zeros"`` (all zeros), a float (a constant),
      ``"blur"`` (the input blurred with `blur_sigma` pixels, over axes 1 and 2
      of NHWC images), or an array shaped like `x` or like ``x[0]``.
  """
  if baseline is None or (isinstance(baseline, str) and baseline == "zeros"):
    return jnp.zeros_like(x)
  if isinstance(baseline, str):
    if baseline == "blur":
      if x.ndim != 4:
        raise ValueError(
            f"baseline='blur' needs NHWC images [B, H, W, C], got x of shape {tuple(x.shape)}")
      return ops.gaussian_blur(x, blur_sigma, max_sigma=blur_sigma, mode="reflect")
    raise ValueError(
        f"baseline: expected None, 'zeros', 'blur', a float or an array, got {baseline!r}")
  if isinstance(baseline, (int, float, np.floating, np.integer)) and not isinstance(baseline, bool):
    return jnp.full_like(x, float(baseline))
  return V.check_same_shape(baseline, x, name="baseline")


def _logit_fn(f: M.Model, compute_dtype: str | None = None) -> Callable[[Array, Array], Array]:
  """``(x, target) -> f(x)[b, target[b]]`` as `_grad_fn` evaluates it."""
  if compute_dtype is None:
    return lambda x, t: M.target_logit(f, x, t)
  cd = jnp.dtype(compute_dtype)
  return lambda x, t: M.target_logit(f, x.astype(cd), t).astype(jnp.float32)


def _path_values(f, x, target, baseline, guide, batch_size, compute_dtype):
  """``[B, guide + 1]`` target logits at ``alpha = j / guide`` (forward only)."""
  logit = _logit_fn(f, compute_dtype)
  delta = x - baseline
  grid = jnp.linspace(0.0, 1.0, guide + 1, dtype=x.dtype)
  vals = parallel.chunked_map(lambda a: logit(baseline + a * delta, target), grid,
                              batch_size=batch_size)
  return vals.T


@M.jit(static_argnames=("guide", "batch_size", "compute_dtype"))
def _path_values_jit(f, x, target, baseline, guide, batch_size, compute_dtype):
  return _path_values(f, x, target, baseline, guide, batch_size, compute_dtype)


def path_values(f, x, target, *, baseline: Any = None, guide: int = DEFAULT_GUIDE,
                batch_size: int | None = None, compute_dtype=None) -> Array:
  """The adaptive rule's guide pass: the target logit at ``alpha = j / guide``,
  ``j = 0..guide``, along the straight path from `baseline` to `x`;
  ``[B, guide + 1]``, ``guide + 1`` forward evaluations per example (no
  gradient). ``path_nodes(steps, "adaptive", path_values(...))`` gives the
  nodes `integrated_gradients` uses with ``rule="adaptive"``."""
  f, x, target = prepare(f, x, target)
  guide = parallel.check_count(guide, "guide")
  b = make_baseline(x, baseline)
  return _path_values_jit(f, x, target, b, guide, V.check_batch_size(batch_size),
                          _check_dtype(compute_dtype))


@M.jit(static_argnames=("steps", "rule", "batch_size", "compute_dtype", "guide"))
def _integrated_gradients(f, x, target, baseline, steps, rule, batch_size, compute_dtype,
                          guide=DEFAULT_GUIDE):
  if rule == "adaptive":
    # Each example its own nodes: [B, steps], from its own guide pass.
    values = _path_values(f, x, target, baseline, guide, batch_size, compute_dtype)
    alphas, weights = adaptive_nodes(values, steps)
  else:
    a, w = path_nodes(steps, rule)
    alphas = jnp.broadcast_to(jnp.asarray(a, x.dtype), (x.shape[0], steps))
    weights = jnp.broadcast_to(jnp.asarray(w, x.dtype), (x.shape[0], steps))
  grad = _grad_fn(f, compute_dtype)
  delta = x - baseline

  def one(aw):
    a, w = aw  # [B] each: node k of every example
    return _bcast(w, x) * grad(baseline + _bcast(a, x) * delta, target)

  avg = parallel.chunked_sum(
      one, (alphas.T.astype(x.dtype), weights.T.astype(x.dtype)), batch_size=batch_size)
  return delta * avg


def _ig_evaluations(o, f, x) -> int:
  """`steps` gradients, plus ``guide + 1`` forwards of the adaptive rule's guide pass."""
  return o["steps"] + (o["guide"] + 1 if o["rule"] == "adaptive" else 0)


# One return type per flag value: an array, or (array, gap) with return_delta=True.
@typing.overload
def integrated_gradients(f, x, target, *, key=..., baseline: Any = ..., steps: int = ...,
                         rule: str = ..., batch_size: int | None = ...,
                         return_delta: Literal[False] = ..., compute_dtype=...,
                         guide: int = ...) -> Array: ...
@typing.overload
def integrated_gradients(f, x, target, *, key=..., baseline: Any = ..., steps: int = ...,
                         rule: str = ..., batch_size: int | None = ...,
                         return_delta: Literal[True], compute_dtype=...,
                         guide: int = ...) -> tuple[Array, Array]: ...

@REGISTRY.register("integrated_gradients", family="gradients", returns="input",
    evaluations=_ig_evaluations, backward=True, smoke={"steps": 4})
def integrated_gradients(f, x, target, *, key=None, baseline: Any = None, steps: int = 50,
                         rule: str = "gauss_legendre", batch_size: int | None = None,
                         return_delta: bool = False, compute_dtype=None,
                         guide: int = DEFAULT_GUIDE):
  """Integrated gradients (Sundararajan, Taly, Yan 2017, "Axiomatic Attribution
  for Deep Networks", arXiv:1703.01365).

  ``(x - baseline) * sum_k w_k grad f(baseline + alpha_k (x - baseline))``.

  Args:
    baseline: None/"zeros" (default), a float, "blur" or an array (see
      `make_baseline`); in the model's input space, i.e. after normalization.
    steps: number of path points, default 50 (Captum's `n_steps`).
    rule: "gauss_legendre" (default, as Captum), "left", "right", "middle",
      "trapezoid" or "adaptive". "adaptive" (`adaptive_nodes`) first runs a
      forward-only guide pass, the target logit at ``guide + 1`` equally
      spaced points of the path, then puts each example's `steps` gradient
      nodes where its logit changes (Gauss-Legendre panels placed by the
      inverse CDF of ``|dF/dalpha|``, each example its own nodes, one
      compiled program). Its cost in the registry's `evaluations` is
      ``steps + guide + 1``: the guide's forwards count as evaluations too,
      though each costs about a third of a gradient.
    guide: segments of the adaptive rule's guide pass, default 8 (9 forward
      evaluations; finer guides placed nodes no better on sums of sigmoid
      steps). Ignored by the other rules.
    batch_size: path points (and guide points) evaluated together per example
      (None: automatic, see `saljax.parallel`).
    return_delta: also return the completeness gap
      ``sum(attr) - (f(x)[t] - f(baseline)[t])`` per example, shape ``[B]``.
    compute_dtype: cast inputs to this dtype before the model (e.g.
      ``"bfloat16"``) while gradients and their sums stay float32; the
      model's own parameter dtype decides the precision of its matmuls.
      Default None: the input's dtype.

  Returns:
    attributions shaped like `x`, or ``(attributions, gap)``.
  """
  f, x, target = prepare(f, x, target)
  V.check_choice(rule, "rule", RULES)
  steps = parallel.check_count(steps, "steps")
  guide = parallel.check_count(guide, "guide")
  batch_size = V.check_batch_size(batch_size)
  b = make_baseline(x, baseline)
  attr = _integrated_gradients(f, x, target, b, steps, rule, batch_size,
                               _check_dtype(compute_dtype), guide if rule == "adaptive" else 0)
  if return_delta:
    return attr, completeness_gap(f, x, attr, target, b)
  return attr


def completeness_gap(f, x, attribution, target, baseline) -> Array:
  """``sum(attribution) - (f(x)[t] - f(baseline)[t])`` per example, ``[B]``.

  Zero for an exact path method (completeness axiom of Sundararajan et al.).
  """
  f = M.as_model(f)
  delta = M.target_logit(f, x, target) - M.target_logit(f, baseline, target)
  return attribution.reshape(x.shape[0], -1).sum(1) - delta


# ----------------------------------------------------------------------------
# Noise wrappers.

NOISE_MODES = ("relative", "absolute")


def _resolve_explainer(explainer) -> tuple[Callable, bool]:
  if isinstance(explainer, str):
    e = REGISTRY.entry(explainer)
    if e.kind != "pixel":
      raise ValueError(
          f"explainer: noise wrappers need a pixel-level explainer, {explainer!r} is {e.kind}-level")
    return e.fn, e.stochastic
  if not callable(explainer):
    raise TypeError(f"explainer: expected a registered name or a callable, got {explainer!r}")
  return explainer, True


@M.jit(static_argnames=("base", "stochastic", "samples", "noise", "reduce", "batch_size",
                        "sampler"))
def _noise_wrapper(f, x, target, key, options, base, stochastic, samples, noise_level,
                   noise, reduce, batch_size, sampler="mc"):
  if noise == "relative":
    axes = tuple(range(1, x.ndim))
    sigma = noise_level * (x.max(axes) - x.min(axes))
    sigma = _bcast(sigma, x)
  else:
    sigma = jnp.asarray(noise_level, x.dtype)
  options = options.kwargs()
  if sampler == "qmc":
    # Example b's lattice comes from fold_in(key, b): its noise does not
    # depend on the batch it is in.
    rules = jax.vmap(lambda b: QMC.lattice(jax.random.fold_in(key, b), samples, x.shape[1:]))(
        jnp.arange(x.shape[0]))

  def one(sk):
    s, k = sk
    k_noise, k_base = jax.random.split(k)
    if sampler == "qmc":
      eps = jax.scipy.special.ndtri(QMC.lattice_point(rules, s, samples)).astype(x.dtype)
    else:
      eps = jax.random.normal(k_noise, x.shape, x.dtype)
    xn = x + sigma * eps
    extra = {"key": k_base} if stochastic else {}
    a = base(f, xn, target, **extra, **options)
    return a * a if reduce == "square" else a

  xs = (jnp.arange(samples), jax.random.split(key, samples))
  if reduce == "variance":
    _, var = parallel.chunked_moments(one, xs, batch_size=batch_size)
    return var
  return parallel.chunked_sum(one, xs, batch_size=batch_size) / samples


def _noise_explainer(reduce: str, f, x, target, *, key, explainer, samples, noise_level, noise,
                     batch_size, explainer_options, sampler):
  f, x, target = prepare(f, x, target)
  key = require_key(key, "smoothgrad" if reduce == "mean" else reduce)
  base, stochastic = _resolve_explainer(explainer)
  samples = parallel.check_count(samples, "samples")
  batch_size = V.check_batch_size(batch_size)
  V.check_choice(noise, "noise", NOISE_MODES)
  V.check_choice(sampler, "sampler", QMC.SAMPLERS)
  # A number, traced: a new noise level reuses the compiled program.
  if V.is_concrete(noise_level) and not float(noise_level) >= 0:
    raise ValueError(f"noise_level: expected a non-negative float, got {noise_level!r}")
  options = V.Options.split(explainer_options)
  return _noise_wrapper(f, x, target, key, options, base, stochastic, samples,
                        jnp.asarray(noise_level, x.dtype), noise, reduce, batch_size, sampler)


_NOISE_DOC = """
  Adds Gaussian noise to the input `samples` times and aggregates the maps of
  `explainer` (any registered pixel explainer or a callable with the explainer
  contract), so SmoothGrad-IG is ``smoothgrad(..., explainer="integrated_gradients")``.

  Args:
    key: a `jax.random` key (required); the same key gives bit-identical maps.
    explainer: name or callable, default "gradient".
    samples: noisy copies per example, default 50 (Smilkov et al. found 50
      enough; Captum's `NoiseTunnel` defaults to 5, PAIR to 25).
    noise_level: sigma. With ``noise="relative"`` (default) it is a fraction of
      each example's input range ``max(x) - min(x)``, default 0.15 as PAIR's
      ``stdev_spread``; with ``noise="absolute"`` it is sigma itself.
    batch_size: noisy copies evaluated together (None: automatic, see `saljax.parallel`).
    explainer_options: options forwarded to `explainer` (arrays are traced,
      everything else must be hashable).
    sampler: ``"qmc"``: each example's noise is a randomly shifted rank-1
      lattice mapped through the Gaussian inverse CDF (`_qmc.lattice`, one
      lattice per example from ``fold_in(key, b)``, so an example's noise
      does not depend on its batch), and over the `samples` copies every
      input element's noise is stratified (a Latin hypercube per element);
      unbiased, each copy still exactly Gaussian. Scrambled Sobol points
      would need one dimension per input element, past scipy's 21201 for
      any image. ``"mc"``: independent Gaussian noise per copy, drawn for
      the whole batch from ``split(key, samples)`` (saljax's draws before
      the option). The default is "qmc" for smoothgrad and squaregrad, which
      it made less variable over keys at equal samples (variance of the map
      x0.64-0.83 on a tanh MLP and a tiny CNN, 8 and 50 samples, 12 keys),
      and "mc" for vargrad, which it did not help (x1.00-1.10). With the
      same key and sampler the three see the same noise.
"""


@REGISTRY.register("smoothgrad", family="gradients", returns="input", needs=("key",),
    evaluations=_noise_evaluations, backward=True, smoke={"samples": 4})
def smoothgrad(f, x, target, *, key=None, explainer: Any = "gradient", samples: int = 50,
               noise_level: float = 0.15, noise: str = "relative", batch_size: int | None = None,
               explainer_options: dict | None = None, sampler: str = "qmc") -> Array:
  return _noise_explainer("mean", f, x, target, key=key, explainer=explainer, samples=samples,
                          noise_level=noise_level, noise=noise, batch_size=batch_size,
                          explainer_options=explainer_options, sampler=sampler)


smoothgrad.__doc__ = ("""SmoothGrad: the mean map over noisy inputs (Smilkov et al. 2017,
  "SmoothGrad: removing noise by adding noise", arXiv:1706.03825).
""" + _NOISE_DOC)


@REGISTRY.register("squaregrad", family="gradients", returns="input", needs=("key",),
    evaluations=_noise_evaluations, backward=True, smoke={"samples": 4})
def squaregrad(f, x, target, *, key=None, explainer: Any = "gradient", samples: int = 50,
               noise_level: float = 0.15, noise: str = "relative", batch_size: int | None = None,
               explainer_options: dict | None = None, sampler: str = "qmc") -> Array:
  return _noise_explainer("square", f, x, target, key=key, explainer=explainer, samples=samples,
                          noise_level=noise_level, noise=noise, batch_size=batch_size,
                          explainer_options=explainer_options, sampler=sampler)


squaregrad.__doc__ = ("""SmoothGrad-Squared: the mean of squared maps over noisy inputs
  (Hooker et al. 2019, "A Benchmark for Interpretability Methods in Deep Neural
  Networks", arXiv:1806.10758; PAIR's ``magnitude=True``).
""" + _NOISE_DOC)


@REGISTRY.register("vargrad", family="gradients", returns="input", needs=("key",),
    evaluations=_noise_evaluations, backward=True, smoke={"samples": 4})
def vargrad(f, x, target, *, key=None, explainer: Any = "gradient", samples: int = 50,
            noise_level: float = 0.15, noise: str = "relative", batch_size: int | None = None,
            explainer_options: dict | None = None, sampler: str = "mc") -> Array:
  return _noise_explainer("variance", f, x, target, key=key, explainer=explainer, samples=samples,
                          noise_level=noise_level, noise=noise, batch_size=batch_size,
                          explainer_options=explainer_options, sampler=sampler)


vargrad.__doc__ = ("""VarGrad: the (population) variance of maps over noisy inputs
  (Adebayo et al. 2018, "Local Explanation Methods for Deep Neural Networks
  Lack Sensitivity to Parameter Values", arXiv:1810.03307; Hooker et al. 2019).
  Chunks are merged with a numerically stable parallel variance update.
""" + _NOISE_DOC)


# ----------------------------------------------------------------------------
# Expected gradients / GradientSHAP.


@M.jit(static_argnames=("samples", "batch_size"))
def _expected_gradients(f, x, target, key, references, stdev, samples, batch_size):
  grad = _grad_fn(f)
  b = x.shape[0]

  def one(k):
    k_ref, k_alpha, k_noise = jax.random.split(k, 3)
    idx = jax.random.randint(k_ref, (b,), 0, references.shape[0])
    ref = references[idx]
    alpha = _bcast(jax.random.uniform(k_alpha, (b,), x.dtype), x)
    xn = x + stdev * jax.random.normal(k_noise, x.shape, x.dtype)
    delta = xn - ref
    return delta * grad(ref + alpha * delta, target)

  return parallel.chunked_sum(one, jax.random.split(key, samples), batch_size=batch_size) / samples


def _check_references(references, x):
  if references is None:
    raise ValueError(
        f"references: expected a reference batch [R, {', '.join(map(str, x.shape[1:]))}]"
        " to sample baselines from, got None")
  if not hasattr(references, "shape"):
    references = jnp.asarray(references)
  if tuple(references.shape[1:]) != tuple(x.shape[1:]) or references.ndim != x.ndim or references.shape[0] == 0:
    raise ValueError(
        f"references: expected shape [R, {', '.join(map(str, x.shape[1:]))}] with R >= 1,"
        f" got {tuple(references.shape)}")
  return V.check_input(references, name="references").astype(x.dtype)


@REGISTRY.register("expected_gradients", family="gradients", returns="input",
    needs=("key", "references"), evaluations=lambda o, f, x: o["samples"], backward=True,
    smoke={"samples": 4})
def expected_gradients(f, x, target, *, key=None, references=None, samples: int = 50,
                       batch_size: int | None = None) -> Array:
  """Expected gradients (Erion et al. 2021, "Improving performance of deep
  learning models with axiomatic attribution priors and expected gradients",
  arXiv:1906.10670).

  ``mean_k (x - x'_k) * grad f(x'_k + alpha_k (x - x'_k))`` with `x'_k` drawn
  uniformly from `references` and ``alpha_k ~ U(0, 1)``, independently per
  example and sample.

  Args:
    key: a `jax.random` key (required).
    references: the reference batch ``[R, ...]`` (e.g. training images), in
      the model's input space.
    samples: (reference, alpha) draws per example, default 50.
    batch_size: draws evaluated together (None: automatic, see `saljax.parallel`).
  """
  f, x, target = prepare(f, x, target)
  key = require_key(key, "expected_gradients")
  references = _check_references(references, x)
  samples = parallel.check_count(samples, "samples")
  return _expected_gradients(f, x, target, key, references, jnp.zeros((), x.dtype), samples,
                             V.check_batch_size(batch_size))


@REGISTRY.register("gradient_shap", family="gradients", returns="input",
    needs=("key", "references"), evaluations=lambda o, f, x: o["samples"], backward=True,
    smoke={"samples": 4})
def gradient_shap(f, x, target, *, key=None, references=None, samples: int = 5,
                  stdev: float = 0.0, batch_size: int | None = None) -> Array:
  """GradientSHAP (Lundberg and Lee 2017, "A Unified Approach to Interpreting
  Model Predictions", arXiv:1705.07874; as in Captum's `GradientShap`).

  Expected gradients with Gaussian noise of standard deviation `stdev`
  (absolute, input space) added to the input of every draw:
  ``mean_k (x~_k - x'_k) * grad f(x'_k + alpha_k (x~_k - x'_k))``,
  ``x~_k = x + N(0, stdev^2)``. Defaults follow Captum: ``samples=5``,
  ``stdev=0.0``.
  """
  f, x, target = prepare(f, x, target)
  key = require_key(key, "gradient_shap")
  references = _check_references(references, x)
  samples = parallel.check_count(samples, "samples")
  if V.is_concrete(stdev) and not float(stdev) >= 0:
    raise ValueError(f"stdev: expected a non-negative float, got {stdev!r}")
  return _expected_gradients(f, x, target, key, references, jnp.asarray(stdev, x.dtype), samples,
                             V.check_batch_size(batch_size))


# ----------------------------------------------------------------------------
# Guided IG.


# fraction stays static: it sets the bound of the inner loop (max_inner).
@M.jit(static_argnames=("steps", "fraction", "max_inner"))
def _guided_ig(f, x, target, baseline, steps, fraction, max_dist, max_inner):
  def single(xi, bi, ti):
    def grad1(z):
      return jax.grad(lambda z: f(z[None])[0, ti])(z)

    diff = xi - bi
    l1_total = jnp.abs(diff).sum()
    dtype = xi.dtype

    def step(s, carry):
      x_cur, attr = carry
      g_actual = grad1(x_cur)
      alpha = (s + 1.0) / steps
      a_min = jnp.maximum(alpha - max_dist, 0.0)
      a_max = jnp.minimum(alpha + max_dist, 1.0)
      x_min = bi + diff * a_min
      x_max = bi + diff * a_max
      l1_target = l1_total * (1.0 - (s + 1.0) / steps)

      def cond(state):
        _, _, gamma, done, it = state
        return (~done) & (gamma > 1.0) & (it < max_inner)

      def body(state):
        x_c, attr_c, _, _, it = state
        x_old = x_c
        x_alpha = jnp.where(diff != 0, (x_c - bi) / jnp.where(diff != 0, diff, 1.0), a_max)
        x_c = jnp.where(x_alpha < a_min, x_min, x_c)
        l1_cur = jnp.abs(x_c - xi).sum()
        # PAIR uses math.isclose with 1e-9 in float64; in float32 the gamma <= 1
        # branch below lands on the target exactly, so a float32 tolerance is kept.
        tol = 1e-6 * jnp.maximum(jnp.abs(l1_target), jnp.abs(l1_cur))
        close = jnp.abs(l1_target - l1_cur) <= jnp.maximum(tol, 1e-9)
        g = jnp.where(x_c == x_max, jnp.inf, g_actual)
        thr = jnp.quantile(jnp.abs(g).ravel(), fraction, method="lower")
        sel = (jnp.abs(g) <= thr) & (g != jnp.inf)
        l1_s = (jnp.abs(x_c - x_max) * sel).sum()
        gamma = jnp.where(l1_s > 0, (l1_cur - l1_target) / jnp.where(l1_s > 0, l1_s, 1.0), jnp.inf)
        moved = jnp.where(gamma > 1.0, jnp.where(sel, x_max, x_c),
                          jnp.where(sel, x_c + (x_max - x_c) * gamma, x_c))
        x_new = jnp.where(close, x_c, moved)
        attr_c = attr_c + (x_new - x_old) * g_actual
        return x_new, attr_c, gamma.astype(dtype), close, it + 1

      init = (x_cur, attr, jnp.asarray(jnp.inf, dtype), jnp.asarray(False), 0)
      x_cur, attr, _, _, _ = jax.lax.while_loop(cond, body, init)
      return x_cur, attr

    _, attr = jax.lax.fori_loop(0, steps, step, (bi, jnp.zeros_like(xi)))
    return attr

  return jax.vmap(single)(x, baseline, target)


@REGISTRY.register("guided_ig",
    differentiable=False, note="its path is chosen with a while_loop of data-dependent length, which reverse mode cannot differentiate; use integrated_gradients under jax.grad", family="gradients", returns="input",
    evaluations=lambda o, f, x: o["steps"], backward=True, smoke={"steps": 4})
def guided_ig(f, x, target, *, key=None, baseline: Any = None, steps: int = 200,
              fraction: float = 0.25, max_dist: float = 0.02) -> Array:
  """Guided Integrated Gradients (Kapishnikov et al. 2021, "Guided Integrated
  Gradients: An Adaptive Path Method for Removing Noise", arXiv:2106.09788).

  An adaptive path from the baseline to the input: at each of `steps` steps the
  `fraction` of features with the smallest absolute gradient move first, and no
  feature strays more than `max_dist` (in alpha) from the straight line. The
  update rule is that of the authors' reference code (PAIR saliency
  `guided_ig.py`), with its defaults: ``steps=200, fraction=0.25,
  max_dist=0.02``. Steps are sequential by nature (each depends on the last);
  examples run in parallel under `vmap`, so memory is one gradient per example.

  Args:
    baseline: as in `integrated_gradients` (default zeros).
  """
  f, x, target = prepare(f, x, target)
  steps = parallel.check_count(steps, "steps")
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction: expected a float in (0, 1], got {fraction!r}")
  if V.is_concrete(max_dist) and not 0.0 <= float(max_dist) <= 1.0:
    raise ValueError(f"max_dist: expected a float in [0, 1], got {max_dist!r}")
  b = make_baseline(x, baseline)
  max_inner = int(np.ceil(1.0 / fraction)) * 4 + 8
  return _guided_ig(f, x, target, b, steps, float(fraction), jnp.asarray(max_dist, x.dtype),
                    max_inner)


# ----------------------------------------------------------------------------
# Blur IG.


# max_sigma and grad_step stay static: they bound the blur kernels' sizes.
@M.jit(static_argnames=("steps", "max_sigma", "grad_step", "sqrt",
                                             "batch_size"))
def _blur_ig(f, x, target, steps, max_sigma, grad_step, sqrt, batch_size):
  i = np.arange(steps + 1, dtype=np.float64)
  sigmas = np.sqrt(i * max_sigma / steps) if sqrt else i * max_sigma / steps
  dsig = np.diff(sigmas)
  grad = _grad_fn(f)
  blur = functools.partial(ops.gaussian_blur, max_sigma=max_sigma + grad_step, mode="constant")

  def one(sd):
    s, d = sd
    x_step = blur(x, s)
    gauss_grad = (blur(x, s + grad_step) - x_step) / grad_step
    return d * gauss_grad * grad(x_step, target)

  total = parallel.chunked_sum(
      one, (jnp.asarray(sigmas[:-1], x.dtype), jnp.asarray(dsig, x.dtype)), batch_size=batch_size)
  return -total


@REGISTRY.register("blur_ig", family="gradients", returns="input",
    evaluations=lambda o, f, x: o["steps"], backward=True, smoke={"steps": 4, "max_sigma": 2.0})
def blur_ig(f, x, target, *, key=None, max_sigma: float = 50.0, steps: int = 100,
            grad_step: float = 0.01, sqrt: bool = False, batch_size: int | None = None) -> Array:
  """Blur Integrated Gradients (Xu, Venugopalan, Sundararajan 2020,
  "Attribution in Scale and Space", arXiv:2004.03383).

  Integrates along the scale-space path from the input blurred with
  `max_sigma` to the input itself:
  ``-sum_i (sigma_{i+1} - sigma_i) * d blur(x, sigma_i)/d sigma * grad f(blur(x, sigma_i))``,
  with the sigma-derivative taken by a forward difference of `grad_step`.
  Defaults follow PAIR saliency's `BlurIG`: ``max_sigma=50, steps=100,
  grad_step=0.01, sqrt=False``, zero-padded Gaussian blur with scipy's kernel
  (truncate 4.0). Needs NHWC images: the path blurs over height and width,
  which other inputs do not have (use `integrated_gradients` for them).
  """
  f, x, target = prepare(f, x, target)
  MK.check_images(x, "blur_ig", needed_by="its path blurs over height and width, so it",
                  fix="for other inputs ([B, D], [B, T, C], ...) use integrated_gradients,"
                  " whose straight-line path works on any shape")
  steps = parallel.check_count(steps, "steps")
  if not max_sigma > 0 or not grad_step > 0:
    raise ValueError(
        f"max_sigma and grad_step: expected positive floats, got {max_sigma!r}, {grad_step!r}")
  return _blur_ig(f, x, target, steps, float(max_sigma), float(grad_step), bool(sqrt),
                  V.check_batch_size(batch_size))
