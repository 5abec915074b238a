"""Adversarial attacks: FGSM and PGD under L2 and Linf, for adversarial
training and robustness experiments.

- FGSM: Goodfellow, Shlens, Szegedy 2015, "Explaining and Harnessing
  Adversarial Examples", arXiv:1412.6572 (Linf); the L2 variant steps along
  the normalized gradient (Miyato et al. 2016's "fast gradient method").
- PGD: Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards Deep Learning
  Models Resistant to Adversarial Attacks", arXiv:1706.06083.

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
