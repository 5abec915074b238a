"""Concept importance: which concepts of a layer drive a prediction, and where they are.

For an input ``x`` the tapped layer's activations ``A`` are encoded into
concept coefficients ``U = encode(A)`` (per spatial position for a conv
layer). A perturbation multiplies each concept's coefficients by a mask
``m [k]`` (the same at every position, CRAFT's "inpainting" of ``U``), the
activations are rebuilt as ``decode(U * m)`` (plus, with ``residual=True``,
the part ``A - decode(U)`` no concept explains), and the rest of the network
runs from there: the tapped forward adds ``decode(U m) - A`` to the layer, so
any tapped model works, not only a ``features``/``head`` split.

Importances (``[B, k]``, higher = more important):

- `sobol`: total Sobol indices of the masks (CRAFT, Fel et al. CVPR 2023):
  ``designs`` base points of a scrambled Sobol sequence in ``2k`` dimensions
  (matrices A, B; ``C_i`` = A with column i from B: ``designs (k + 2)``
  evaluations, Saltelli's scheme) and Jansen's estimator
  ``ST_i = mean((f(A) - f(C_i))²) / (2 Var f)``. Xplique's defaults: 32 designs,
  Sobol sampler, Jansen estimator.
- `gradient_input`: ``Σ_positions U ∂f/∂U``: for a head linear in the
  activations it is each concept's exact additive share of the score.
- `occlusion`: ``f(U) - f(U without concept i)``.

Evaluations (the holistic paper, Fel et al. NeurIPS 2023): `c_deletion`
removes concepts from the most important one on and records the score
(lower area = better importance), `c_insertion` adds them to an empty code
(higher area = better). For a linear head the score is
``Σ_i (U_i W w)`` plus a constant, so removing (adding) concepts in the
order of gradient x input is optimal for both: the paper's optimality result,
checked in tests/concepts/test_importance.py against every order.

`concept_maps` shows where each concept is: the spatial coefficients
``U [B, h, w, k]`` upsampled to the input (CRAFT's concept attribution maps).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from saljax import model as M
from saljax import parallel
from saljax import _validation
from saljax.concepts.extract import Concepts, decode, encode
from saljax.explainers import _qmc

Array = jax.Array
METHODS = ("sobol", "gradient_input", "occlusion")


def _setup(tapped: Any, layer: str, concepts: Concepts, x: Any, target: Any, score: str):
  tapped = tapped if isinstance(tapped, M.Tapped) else getattr(tapped, "tapped", tapped)
  M.check_layers(tapped, (layer,))
  if not isinstance(concepts, Concepts):
    raise TypeError(f"concepts: expected a saljax.concepts.Concepts (from fit), got"
                    f" {_validation.describe(concepts)}")
  score = M.check_score(score)
  x = _validation.check_input(x)
  shape = tapped.activation_shapes(x)[layer].shape
  if shape[-1] != concepts.dictionary.shape[1]:
    raise ValueError(f"concepts: the dictionary has {concepts.dictionary.shape[1]} channels, layer"
                     f" {layer!r} has {shape[-1]} (shape {shape})")
  target = M.resolve_target(tapped, x, target)
  return tapped, x, target, score


def _scorer(tapped, layer, concepts, x, target, score, residual):
  """``(scores(masks [B, k]) -> [B], U)`` for one batch: one forward for ``A``."""
  a = tapped(x)[1][layer]
  u = encode(concepts, a.astype(jnp.float32))
  rest = (a - decode(concepts, u)) if residual else jnp.zeros_like(a)
  mid = (slice(None),) + (None,) * (u.ndim - 2) + (slice(None),)

  def scores(masks: Array) -> Array:
    new = decode(concepts, u * masks[mid]) + rest
    logits = tapped(x, {layer: (new - a).astype(a.dtype)})[0]
    s = M.class_scores(lambda _: logits, x, score)
    return jnp.take_along_axis(s, target[:, None], axis=1)[:, 0]

  return scores, u


def sobol_masks(key: Array, dim: int, designs: int) -> Array:
  """Saltelli's design for total indices: ``[designs (dim + 2), dim]`` in [0, 1):
  rows ``A`` (designs), ``B`` (designs), then ``C_i`` (A with column i from B)
  for each i, from a scrambled Sobol sequence in ``2 dim`` dimensions."""
  scramble = _qmc.scrambled_sobol(key, 2 * dim)
  pts = jax.vmap(lambda i: _qmc.sobol_point(scramble, i))(jnp.arange(designs))
  a, b = pts[:, :dim], pts[:, dim:]
  eye = jnp.eye(dim, dtype=bool)
  c = jnp.where(eye[:, None, :], b[None], a[None])  # [dim, designs, dim]
  return jnp.concatenate([a, b, c.reshape(dim * designs, dim)])


def jansen_total(outputs: Array, dim: int, designs: int) -> Array:
  """Jansen's total-index estimator from outputs ``[designs (dim + 2), ...]`` in
  `sobol_masks` order: ``[..., dim]``; ``mean((f_A - f_Ci)²) / (2 Var[f_A, f_B])``."""
  f_a, f_b = outputs[:designs], outputs[designs:2 * designs]
  f_c = outputs[2 * designs:].reshape((dim, designs) + outputs.shape[1:])
  var = jnp.concatenate([f_a, f_b]).var(0)
  st = ((f_a[None] - f_c) ** 2).mean(1) / 2  # [dim, ...]
  return jnp.moveaxis(st / jnp.maximum(var, 1e-12), 0, -1)


def sobol_indices(key: Array, fn: Callable[[Array], Array], dim: int, *, designs: int = 32,
                  batch_size: int | None = None) -> Array:
  """Total Sobol indices of ``fn(m)`` for ``m`` uniform on ``[0, 1]^dim``.

  `fn` maps one mask ``[dim]`` to outputs of any shape ``S``; returns ``[*S,
  dim]``. ``designs (dim + 2)`` evaluations, `batch_size` of them vmapped at
  once. Deterministic under `key` (the Sobol scramble).
  """
  dim = parallel.check_count(dim, "dim")
  designs = parallel.check_count(designs, "designs", minimum=2)
  # One compiled program (`fn` is static, compared by identity) rather than op-by-op dispatch.
  return _sobol_indices(key, fn, dim=dim, designs=designs,
                        batch_size=_validation.check_batch_size(batch_size))


@functools.partial(jax.jit, static_argnames=("fn", "dim", "designs", "batch_size"))
def _sobol_indices(key, fn, *, dim, designs, batch_size):
  masks = sobol_masks(key, dim, designs)
  return jansen_total(parallel.chunked_map(fn, masks, batch_size=batch_size), dim, designs)


def _common(tapped, x, target, concepts, layer, score):
  return _setup(tapped, layer, concepts, x, target, score)


def sobol(key: Array, tapped: Any, x: Any, target: Any, concepts: Concepts, *, layer: str,
          designs: int = 32, batch_size: int | None = None, score: str = "logit",
          residual: bool = False) -> Array:
  """CRAFT's concept importance: total Sobol indices of the concept masks, ``[B, k]``.

  Args:
    key: PRNG key (the Sobol scramble); deterministic under it.
    tapped: a `Tapped` model (or a classifier with ``.tapped``).
    x: inputs ``[B, ...]``; target: class indices ``[B]``, an int or ``"predicted"``.
    concepts: from `saljax.concepts.fit` on this layer.
    layer: the tapped layer the concepts were learned on.
    designs: Sobol base points (default 32, Xplique's ``nb_design``):
      ``designs (k + 2)`` forward passes per example.
    batch_size: perturbations evaluated at once (each on the whole batch);
      None: automatic (`saljax.parallel`).
    score: ``"logit"`` (default) or ``"probability"`` of the target.
    residual: keep the unexplained part ``A - decode(U)`` (default False, as CRAFT).
  """
  tapped, x, target, score = _common(tapped, x, target, concepts, layer, score)
  designs = parallel.check_count(designs, "designs", minimum=2)
  return _sobol(key, tapped, x, target, concepts, layer=layer, designs=designs,
                batch_size=_validation.check_batch_size(batch_size), score=score,
                residual=bool(residual))


@functools.partial(jax.jit, static_argnames=("layer", "designs", "batch_size", "score", "residual"))
def _sobol(key, tapped, x, target, concepts, *, layer, designs, batch_size, score, residual):
  scores, u = _scorer(tapped, layer, concepts, x, target, score, residual)
  k = u.shape[-1]
  masks = sobol_masks(key, k, designs)
  out = parallel.chunked_map(lambda m: scores(jnp.broadcast_to(m, (x.shape[0], k))), masks,
                             batch_size=batch_size)
  return jansen_total(out, k, designs)


def gradient_input(tapped: Any, x: Any, target: Any, concepts: Concepts, *, layer: str,
                   score: str = "logit", residual: bool = False) -> Array:
  """Gradient x input on the concept coefficients, summed over positions: ``[B, k]``.

  The derivative of the score with respect to each concept's mask at 1, i.e.
  ``Σ_positions U_i ∂f/∂U_i``. One forward and one backward pass.
  """
  tapped, x, target, score = _common(tapped, x, target, concepts, layer, score)
  return _gxi(tapped, x, target, concepts, layer=layer, score=score, residual=bool(residual))


@functools.partial(jax.jit, static_argnames=("layer", "score", "residual"))
def _gxi(tapped, x, target, concepts, *, layer, score, residual):
  scores, u = _scorer(tapped, layer, concepts, x, target, score, residual)
  ones = jnp.ones((x.shape[0], u.shape[-1]), jnp.float32)
  return jax.grad(lambda m: scores(m).sum())(ones)


def occlusion(tapped: Any, x: Any, target: Any, concepts: Concepts, *, layer: str,
              batch_size: int | None = None, score: str = "logit",
              residual: bool = False) -> Array:
  """Score drop when one concept's coefficients are zeroed: ``[B, k]`` (k + 1 passes)."""
  tapped, x, target, score = _common(tapped, x, target, concepts, layer, score)
  return _occlusion(tapped, x, target, concepts, layer=layer,
                    batch_size=_validation.check_batch_size(batch_size), score=score,
                    residual=bool(residual))


@functools.partial(jax.jit, static_argnames=("layer", "batch_size", "score", "residual"))
def _occlusion(tapped, x, target, concepts, *, layer, batch_size, score, residual):
  scores, u = _scorer(tapped, layer, concepts, x, target, score, residual)
  k = u.shape[-1]
  masks = jnp.concatenate([jnp.ones((1, k)), 1 - jnp.eye(k)])
  out = parallel.chunked_map(lambda m: scores(jnp.broadcast_to(m, (x.shape[0], k))), masks,
                             batch_size=batch_size)
  return (out[0][None] - out[1:]).T


def estimate_importance(method: str, tapped: Any, x: Any, target: Any, concepts: Concepts, *,
               layer: str, key: Array | None = None, **options) -> Array:
  """Concept importance ``[B, k]`` by name (one of `METHODS`); `key` only for ``"sobol"``."""
  method = _validation.check_choice(method, "method", METHODS)
  if method == "sobol":
    if key is None:
      raise ValueError("importance: method 'sobol' needs a key (the Sobol scramble), got None")
    return sobol(key, tapped, x, target, concepts, layer=layer, **options)
  fn = gradient_input if method == "gradient_input" else occlusion
  return fn(tapped, x, target, concepts, layer=layer, **options)


def _curve(tapped, x, target, concepts, importances, layer, batch_size, score, residual, insert):
  tapped, x, target, score = _common(tapped, x, target, concepts, layer, score)
  k = concepts.num_concepts
  importances = jnp.asarray(importances)
  if importances.shape != (x.shape[0], k):
    raise ValueError(f"importances: expected [B, k] = [{x.shape[0]}, {k}], got {importances.shape}")
  return _curve_jit(tapped, x, target, concepts, importances, layer=layer,
                    batch_size=_validation.check_batch_size(batch_size), score=score,
                    residual=bool(residual), insert=insert)


@functools.partial(jax.jit, static_argnames=("layer", "batch_size", "score", "residual", "insert"))
def _curve_jit(tapped, x, target, concepts, importances, *, layer, batch_size, score, residual,
               insert):
  scores, u = _scorer(tapped, layer, concepts, x, target, score, residual)
  k = u.shape[-1]
  # rank[b, i]: position of concept i in example b's order (0 = most important).
  rank = jnp.argsort(jnp.argsort(-importances, axis=1), axis=1)
  steps = jnp.arange(k + 1)
  # Step j: the j most important concepts removed (deletion) or present (insertion).
  chosen = rank[None] < steps[:, None, None]  # [k+1, B, k]
  masks = (chosen if insert else ~chosen).astype(jnp.float32)
  return parallel.chunked_map(scores, masks, batch_size=batch_size).T  # [B, k+1]


def c_deletion(tapped: Any, x: Any, target: Any, concepts: Concepts, importances: Array, *,
               layer: str, batch_size: int | None = None, score: str = "logit",
               residual: bool = False) -> Array:
  """C-Deletion curve ``[B, k + 1]``: the score after removing the 0, 1, ..., k most
  important concepts (by `importances` ``[B, k]``); a lower area is better."""
  return _curve(tapped, x, target, concepts, importances, layer, batch_size, score, residual,
                False)


def c_insertion(tapped: Any, x: Any, target: Any, concepts: Concepts, importances: Array, *,
                layer: str, batch_size: int | None = None, score: str = "logit",
                residual: bool = False) -> Array:
  """C-Insertion curve ``[B, k + 1]``: the score with only the 0, 1, ..., k most
  important concepts kept; a higher area is better."""
  return _curve(tapped, x, target, concepts, importances, layer, batch_size, score, residual,
                True)


def area(curve: Array) -> Array:
  """Normalized area under curves ``[..., n]`` (trapezoids over ``[0, 1]``)."""
  c = jnp.asarray(curve)
  return ((c[..., 1:] + c[..., :-1]) / 2).mean(-1)


def concept_maps(tapped: Any, x: Any, concepts: Concepts, *, layer: str,
                 size: tuple[int, int] | None = None) -> Array:
  """Where each concept is: ``U [B, H, W, k]``, the layer's spatial coefficients
  resized (bilinear) to `size` (default: the input's height and width)."""
  tapped = tapped if isinstance(tapped, M.Tapped) else getattr(tapped, "tapped", tapped)
  M.check_layers(tapped, (layer,))
  x = _validation.check_input(x)
  shape = tapped.activation_shapes(x)[layer].shape
  if len(shape) != 4:
    raise ValueError(f"concept_maps: expected a spatial layer [B, h, w, c], {layer!r} gives"
                     f" {shape}")
  if shape[-1] != concepts.dictionary.shape[1]:
    raise ValueError(f"concepts: the dictionary has {concepts.dictionary.shape[1]} channels, layer"
                     f" {layer!r} has {shape[-1]}")
  size = tuple(size) if size is not None else tuple(x.shape[1:3])
  return _maps(tapped, x, concepts, layer=layer, size=size)


@functools.partial(jax.jit, static_argnames=("layer", "size"))
def _maps(tapped, x, concepts, *, layer, size):
  u = encode(concepts, tapped(x)[1][layer].astype(jnp.float32))
  return jax.image.resize(u, (u.shape[0],) + size + (u.shape[-1],), "bilinear")
