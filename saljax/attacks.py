"""Adversarial attacks: FGSM and PGD under L2 and Linf, for adversarial
training and robustness experiments.

- FGSM: Goodfellow, Shlens, Szegedy 2015, "Explaining and Harnessing
  Adversarial Examples", arXiv:1412.6572 (Linf); the L2 variant steps along
  the normalized gradient (Miyato et al. 2016's "fast gradient method").
- PGD: Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards Deep Learning
  Models Resistant to Adversarial Attacks", arXiv:1706.06083.
- C&W L2: Carlini, Wagner 2017, "Towards Evaluating the Robustness of Neural
  Networks", IEEE S&P, arXiv:1608.04644 (`cw_l2`: a minimal-norm attack, not
  a budgeted one).

Both maximize the cross-entropy of the true label. Two layers:

- `fgsm` / `pgd`: the public functions, ``attack(f, x, y, *, key=None, ...)``
  with ``f: x -> logits``; they validate their inputs and run a compiled core
  (the model is a static argument, everything numeric is traced, so changing
  `epsilon` or `step_size` does not recompile).
- `fgsm_perturb` / `pgd_perturb`: the pure cores over a ``loss_fn(x) -> [B]``
  closure, to call inside a user's jitted train step where the model
  parameters are traced (adversarial training).

Defaults (``steps=10``, ``step_size=2.5 * epsilon / steps``, random start)
follow Madry et al.'s recipe as packaged in MadryLab's `robustness` library.
Inputs are clipped to ``bounds`` (default None: no clipping, for inputs that
are already normalized; pass ``(0., 1.)`` for raw pixels).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from saljax import _validation as V
from saljax import model as M
from saljax import parallel

Array = jax.Array
NORMS = ("linf", "l2")
_TINY = 1e-12


def cross_entropy(f: M.Model) -> Callable[[Array, Array], Array]:
  """``(x, y) -> per-example softmax cross-entropy [B]`` of model `f`."""
  return lambda x, y: optax.softmax_cross_entropy_with_integer_labels(f(x), y)


def _flat_norm(v: Array) -> Array:
  return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1) + _TINY)


def _bcast(v: Array, x: Array) -> Array:
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _ascent_direction(g: Array, norm: str) -> Array:
  """The steepest-ascent unit step for the norm: sign (Linf) or g/||g|| (L2)."""
  if norm == "linf":
    return jnp.sign(g)
  return g / _bcast(_flat_norm(g), g)


def project(delta: Array, epsilon: Array, norm: str) -> Array:
  """Projects each row of `delta` onto the `norm` ball of radius `epsilon`."""
  if norm == "linf":
    return jnp.clip(delta, -epsilon, epsilon)
  n = _flat_norm(delta)
  scale = jnp.minimum(1.0, epsilon / n)
  return delta * _bcast(scale, delta)


def _clip(x: Array, bounds) -> Array:
  return x if bounds is None else jnp.clip(x, bounds[0], bounds[1])


def _random_start(key: Array, x: Array, epsilon: Array, norm: str) -> Array:
  """A uniform point of the Linf ball, or of the L2 ball (direction uniform on
  the sphere, radius ``eps * u^(1/d)``)."""
  if norm == "linf":
    return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * epsilon
  k1, k2 = jax.random.split(key)
  d = x[0].size
  v = jax.random.normal(k1, x.shape, x.dtype)
  v = v / _bcast(_flat_norm(v), v)
  r = epsilon * jax.random.uniform(k2, (x.shape[0],), x.dtype) ** (1.0 / d)
  return v * _bcast(r, v)


def fgsm_perturb(loss_fn: Callable[[Array], Array], x: Array, epsilon, *,
                 norm: str = "linf", bounds=None) -> Array:
  """One gradient step of size `epsilon` that increases ``loss_fn(x).sum()``.

  Pure and traceable; `loss_fn` maps ``x[B, ...]`` to per-example losses ``[B]``.
  """
  g = jax.grad(lambda z: loss_fn(z).sum())(x)
  return jax.lax.stop_gradient(_clip(x + epsilon * _ascent_direction(g, norm), bounds))


def pgd_perturb(loss_fn: Callable[[Array], Array], x: Array, key: Array | None, epsilon,
                step_size, *, steps: int, norm: str = "linf", random_start: bool = True,
                bounds=None) -> Array:
  """Projected gradient ascent on ``loss_fn(x).sum()`` within the `norm` ball.

  Pure and traceable: `steps` runs in a `lax.fori_loop`. `key` is only used
  (and required) when `random_start` is true.
  """
  x = jax.lax.stop_gradient(x)
  grad = jax.grad(lambda z: loss_fn(z).sum())
  delta = _random_start(key, x, epsilon, norm) if random_start else jnp.zeros_like(x)
  delta = _clip(x + delta, bounds) - x

  def body(_, delta):
    g = grad(x + delta)
    delta = project(delta + step_size * _ascent_direction(g, norm), epsilon, norm)
    return _clip(x + delta, bounds) - x

  delta = jax.lax.fori_loop(0, steps, body, delta)
  return jax.lax.stop_gradient(x + delta)


def _check(f, x, y, epsilon, norm, bounds):
  if not callable(f):
    raise TypeError(f"f: expected a model x[B, ...] -> logits[B, C], got {V.describe(f)}")
  x = V.check_input(x)
  f = M.as_model(f)
  _, num_classes = M.output_shape(f, x)
  y = V.check_target(y, x.shape[0], num_classes)
  V.check_choice(norm, "norm", NORMS)
  if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) and not hasattr(epsilon, "dtype"):
    raise TypeError(f"epsilon: expected a float >= 0, got {V.describe(epsilon)}")
  if V.is_concrete(epsilon) and float(epsilon) < 0:
    raise ValueError(f"epsilon: expected a float >= 0, got {float(epsilon)}")
  if bounds is not None:
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
      raise ValueError(f"bounds: expected (low, high) with low < high or None, got {bounds!r}")
    bounds = (float(bounds[0]), float(bounds[1]))
  return f, x, y, bounds


@M.jit(static_argnames=("norm", "bounds"))
def _fgsm(f, x, y, epsilon, norm, bounds):
  return fgsm_perturb(lambda z: cross_entropy(f)(z, y), x, epsilon, norm=norm, bounds=bounds)


def fgsm(f, x, y, *, key=None, epsilon: float, norm: str = "linf", bounds=None) -> Array:
  """Fast gradient sign method (Goodfellow et al. 2015, arXiv:1412.6572).

  Linf: ``x + eps * sign(grad)``; L2: ``x + eps * grad / ||grad||``, on the
  cross-entropy of label `y`, clipped to `bounds`.

  Args:
    f: model ``x[B, ...] -> logits[B, C]``.
    x: inputs, floating point.
    y: true labels ``[B]`` (int) or an int.
    key: unused (deterministic).
    epsilon: the perturbation budget (traced).
    norm: ``"linf"`` (default) or ``"l2"``.
    bounds: ``(low, high)`` to clip the adversarial input to, or None.
  Returns:
    the adversarial inputs, shaped like `x`.
  """
  f, x, y, bounds = _check(f, x, y, epsilon, norm, bounds)
  return _fgsm(f, x, y, jnp.asarray(epsilon, x.dtype), norm, bounds)


@M.jit(static_argnames=("steps", "norm", "random_start", "bounds"))
def _pgd(f, x, y, key, epsilon, step_size, steps, norm, random_start, bounds):
  return pgd_perturb(lambda z: cross_entropy(f)(z, y), x, key, epsilon, step_size,
                     steps=steps, norm=norm, random_start=random_start, bounds=bounds)


def pgd(f, x, y, *, key=None, epsilon: float, step_size: float | None = None,
        steps: int = 10, norm: str = "linf", random_start: bool = True,
        bounds=None) -> Array:
  """Projected gradient descent attack (Madry et al. 2018, arXiv:1706.06083).

  Starts from a uniform point of the `norm` ball (``random_start``, needs
  `key`) or from `x`, then takes `steps` steepest-ascent steps of size
  `step_size` on the cross-entropy of `y`, each projected back onto the ball
  of radius `epsilon` and clipped to `bounds`.

  Args:
    f: model ``x[B, ...] -> logits[B, C]``.
    x: inputs, floating point.
    y: true labels ``[B]`` (int) or an int.
    key: a `jax.random` key, required when ``random_start`` (same key ->
      identical output).
    epsilon: the radius of the ball (traced).
    step_size: default ``2.5 * epsilon / steps`` (Madry et al.; the
      `robustness` library's rule of thumb). Traced.
    steps: number of ascent steps (static), default 10.
    norm: ``"linf"`` (default) or ``"l2"``.
    random_start: default True, as in Madry et al.
    bounds: ``(low, high)`` to clip the adversarial input to, or None.
  Returns:
    the adversarial inputs, shaped like `x`, with ``||x_adv - x|| <= epsilon``.
  """
  f, x, y, bounds = _check(f, x, y, epsilon, norm, bounds)
  steps = parallel.check_count(steps, "steps")
  if random_start:
    from saljax.explainers._registry import require_key
    key = require_key(key, "pgd")
  else:
    key = jax.random.key(0)  # unused; keeps one signature for the compiled core
  if step_size is None:
    step_size = 2.5 * float(epsilon) / steps
  return _pgd(f, x, y, key, jnp.asarray(epsilon, x.dtype), jnp.asarray(step_size, x.dtype),
              steps, norm, bool(random_start), bounds)


# ----------------------------------------------------------------------------
# Carlini-Wagner L2.

CW_DEFAULTS = dict(binary_search_steps=9, max_iterations=200, learning_rate=1e-2,
                   initial_const=1e-3, kappa=0.0)


def _cw_margin(logits: Array, y: Array, kappa, targeted: bool) -> Array:
  """C&W's f6 on one example's logits ``[C]``: ``max(Z_y - max_{j!=y} Z_j, -kappa)``
  (untargeted) or ``max(max_{j!=y} Z_j - Z_y, -kappa)`` (targeted), shifted by
  +kappa so that it is 0 once the attack succeeds with confidence kappa."""
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  real = jnp.sum(jnp.where(onehot, logits, 0.0))
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits))
  gap = other - real if targeted else real - other
  return jnp.maximum(gap + kappa, 0.0)


def _cw_success(logits: Array, y: Array, kappa, targeted: bool) -> Array:
  """The reference code's `compare`: the label after moving Z_y by kappa."""
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
  if targeted:
    return jnp.argmax(logits - kappa * onehot) == y
  return jnp.argmax(logits + kappa * onehot) != y


def _cw_one(f, x, y, kappa, initial_const, learning_rate, *, binary_search_steps: int,
            max_iterations: int, targeted: bool, bounds):
  """C&W L2 on one example ``x[...]``; returns ``(x_adv, l2, success, const)``.

  Everything runs in traced loops: `lax.scan` over the binary search over
  the constant c, `lax.fori_loop` over the Adam iterations inside each
  search step. vmapped over the batch by `cw_l2`.
  """
  x = jax.lax.stop_gradient(x)
  if bounds is None:
    to_x = lambda w: x + w  # unconstrained: optimize the perturbation itself
  else:
    half, mid = (bounds[1] - bounds[0]) / 2, (bounds[1] + bounds[0]) / 2
    # The reference code's 0.999999: arctanh(+-1) is infinite at the box's edge.
    t0 = jnp.arctanh(jnp.clip((x - mid) / half, -1.0, 1.0) * 0.999999)
    to_x = lambda w: jnp.tanh(w + t0) * half + mid

  def objective(w, const):
    xa = to_x(w)
    logits = f(xa[None])[0]
    l2 = jnp.sum((xa - x) ** 2)
    return l2 + const * _cw_margin(logits, y, kappa, targeted), (xa, l2, logits)

  grad = jax.grad(objective, has_aux=True)
  opt = optax.adam(learning_rate)
  inf = jnp.asarray(jnp.inf, x.dtype)

  def search_step(carry, _):
    const, lower, upper, best_l2, best_x = carry
    w = jnp.zeros_like(x)  # every search step restarts from x with a fresh Adam
    state = opt.init(w)

    def it(_, c):
      w, state, step_l2, step_ok, best_l2, best_x = c
      g, (xa, l2, logits) = grad(w, const)
      ok = _cw_success(logits, y, kappa, targeted)
      # Scores of the iterate before its update, as the reference code does.
      step_ok = step_ok | ok
      better = ok & (l2 < best_l2)
      best_l2 = jnp.where(better, l2, best_l2)
      best_x = jnp.where(better, xa, best_x)
      step_l2 = jnp.where(ok, jnp.minimum(step_l2, l2), step_l2)
      u, state = opt.update(g, state, w)
      return optax.apply_updates(w, u), state, step_l2, step_ok, best_l2, best_x

    init = (w, state, inf, jnp.asarray(False), best_l2, best_x)
    _, _, _, step_ok, best_l2, best_x = jax.lax.fori_loop(0, max_iterations, it, init)
    # Binary search on c: success -> shrink c towards lower, failure -> grow it
    # (x10 until an upper bound is known), as in the reference code.
    upper = jnp.where(step_ok, jnp.minimum(upper, const), upper)
    lower = jnp.where(step_ok, lower, jnp.maximum(lower, const))
    bisect = (lower + upper) / 2
    const = jnp.where(upper < 1e9, bisect, const * 10)
    return (const, lower, upper, best_l2, best_x), None

  c0 = jnp.asarray(initial_const, x.dtype)
  carry = (c0, jnp.zeros_like(c0), jnp.full_like(c0, 1e10), inf, x)
  (const, _, upper, best_l2, best_x), _ = jax.lax.scan(search_step, carry, None,
                                                       length=binary_search_steps)
  success = jnp.isfinite(best_l2)
  return best_x, jnp.sqrt(jnp.where(success, best_l2, 0.0)), success, jnp.minimum(upper, const)


@M.jit(static_argnames=("binary_search_steps", "max_iterations", "targeted", "all_targets",
                        "num_classes", "bounds", "batch_size"))
def _cw(f, x, y, kappa, initial_const, learning_rate, binary_search_steps, max_iterations,
        targeted, all_targets, num_classes, bounds, batch_size):
  one = functools.partial(_cw_one, f, kappa=kappa, initial_const=initial_const,
                          learning_rate=learning_rate, binary_search_steps=binary_search_steps,
                          max_iterations=max_iterations, bounds=bounds)

  def per_example(a):
    x1, y1 = a
    if not all_targets:
      return one(x1, y1, targeted=targeted)
    # Every class but y1, as a targeted attack each (vmapped); keep the closest.
    k = jnp.arange(num_classes - 1)
    others = jnp.where(k >= y1, k + 1, k)
    adv, l2, ok, const = jax.vmap(lambda t: one(x1, t, targeted=True))(others)
    best = jnp.argmin(jnp.where(ok, l2, jnp.inf))
    return adv[best], l2[best], ok[best], const[best]

  return parallel.chunked_map(per_example, (x, y), batch_size=batch_size)


def cw_l2(f, x, y, *, key=None, targeted: bool = False,
          binary_search_steps: int = CW_DEFAULTS["binary_search_steps"],
          max_iterations: int = CW_DEFAULTS["max_iterations"],
          learning_rate: float = CW_DEFAULTS["learning_rate"],
          initial_const: float = CW_DEFAULTS["initial_const"],
          kappa: float = CW_DEFAULTS["kappa"], bounds=(0.0, 1.0), all_targets: bool = False,
          batch_size: int | None = None, return_info: bool = False):
  """Carlini-Wagner L2 attack (Carlini, Wagner 2017, "Towards Evaluating the
  Robustness of Neural Networks", IEEE S&P, arXiv:1608.04644).

  Per example, minimizes ``||x' - x||_2^2 + c * f6(x')`` over
  ``x' = tanh(w + arctanh(x)) * half + mid`` (the change of variables that
  keeps ``x'`` inside `bounds` without clipping), where f6 is the margin
  loss ``max(Z_y - max_{j!=y} Z_j + kappa, 0)`` on the logits Z (targeted:
  ``max(max_{j!=y} Z_j - Z_y + kappa, 0)``), with Adam from ``w = 0`` for
  `max_iterations` steps. The constant c starts at `initial_const` and is
  searched per example over `binary_search_steps` restarts: after a restart
  that found an adversarial, c is bisected down towards the largest failing
  c; after one that did not, it is bisected up (or multiplied by 10 while no
  c has succeeded). Of every iterate of every restart that is adversarial
  (argmax of the logits, moved by kappa, is not `y`; targeted: is `y`), the
  one closest to `x` is kept. The whole search of a batch is one compiled
  program (`lax.scan` over restarts, a fori loop over Adam steps, vmap over
  examples).

  Defaults follow the paper's reference code (github.com/carlini/nn_robust_attacks,
  l2_attack.py): 9 binary search steps, Adam at 1e-2, initial c 1e-3, kappa
  0; except `max_iterations`: 200 instead of 10000 (the reference code stops
  a restart early once its loss stalls, which a batched program cannot do
  without running as long as the slowest example; on the small models of
  this library's tests and reports the norms found change by under 1% past
  200 steps; raise it for large models).

  Untargeted, f6 follows the largest other logit, and the descent tends to
  stay with the class that is nearest at the start: on the tiny CNN of
  `tests/test_attacks_cw.py` it then found perturbations up to 40% longer
  than a targeted run towards another class (1.07 against 0.77), and lost
  to 20-step PGD at its
  own median norm. ``all_targets=True`` runs the targeted attack towards
  every other class and keeps the closest success (the paper's "best case"
  over targets), at ``C - 1`` times the cost. `bounds` defaults to ``(0, 1)``, the
  paper's pixel box; ``None`` optimizes ``x' = x + w`` unconstrained.

  Args:
    f: model ``x[B, ...] -> logits[B, C]``.
    x: inputs inside `bounds`.
    y: ``[B]`` (int) or an int: the true labels (untargeted: any other class
      counts), or with ``targeted=True`` the classes to reach.
    key: unused (deterministic).
    targeted: see `y`.
    all_targets: untargeted only: the minimum over targeted attacks towards
      every other class (default False: the reference code's f6 on the
      largest other logit).
    binary_search_steps, max_iterations: counts (static: a change recompiles).
    learning_rate, initial_const, kappa: traced (a change does not recompile).
    bounds: ``(low, high)`` box of valid inputs, or None.
    batch_size: at most this many examples attacked at once (memory bound);
      None: all at once or the library's automatic chunk.
    return_info: also return ``{"l2": [B], "success": [B], "const": [B]}``.
  Returns:
    the adversarial inputs (where no adversarial was found, `x` itself), and
    with `return_info` the info dict: the L2 norm of each perturbation (0
    where none was found), whether one was found, and the final constant.
  """
  f, x, y, bounds = _check(f, x, y, 0.0, "l2", bounds)
  binary_search_steps = parallel.check_count(binary_search_steps, "binary_search_steps")
  max_iterations = parallel.check_count(max_iterations, "max_iterations")
  batch_size = V.check_batch_size(batch_size)
  for name, v, positive in (("learning_rate", learning_rate, True),
                            ("initial_const", initial_const, True), ("kappa", kappa, False)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "dtype"):
      raise TypeError(f"{name}: expected a float, got {V.describe(v)}")
    if V.is_concrete(v) and not (float(v) > 0 if positive else float(v) >= 0):
      raise ValueError(f"{name}: expected a float {'> 0' if positive else '>= 0'}, got {float(v)}")
  if bounds is not None and V.is_concrete(x):
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if lo < bounds[0] or hi > bounds[1]:
      raise ValueError(
          f"x: expected values inside bounds {bounds} (C&W's tanh change of variables maps the"
          f" box onto the reals), got values in [{lo:.4g}, {hi:.4g}]; pass the inputs' box as"
          " bounds=(low, high), or bounds=None for unconstrained inputs")
  if batch_size is None:
    # One model evaluation per example per step: the automatic chunk counts
    # examples (`parallel.max_evals_per_chunk`), not the input's rows.
    batch_size = min(int(x.shape[0]), parallel.max_evals_per_chunk())
  dt = x.dtype
  if targeted and all_targets:
    raise ValueError("all_targets: expected False with targeted=True (y is then the one target),"
                     " got True")
  _, num_classes = M.output_shape(f, x)
  adv, l2, success, const = _cw(f, x, y, jnp.asarray(kappa, dt), jnp.asarray(initial_const, dt),
                                jnp.asarray(learning_rate, dt), binary_search_steps,
                                max_iterations, bool(targeted), bool(all_targets),
                                int(num_classes), bounds, batch_size)
  if return_info:
    return adv, {"l2": l2, "success": success, "const": const}
  return adv
