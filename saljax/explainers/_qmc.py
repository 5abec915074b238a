"""Randomized quasi-Monte Carlo draws for the sampling explainers.

Two constructions, both randomized so that every point is exactly uniform
(the estimators stay unbiased) while the point set is more even than
independent draws:

* scrambled Sobol points (Sobol 1967; Joe and Kuo 2008 direction numbers, as
  scipy's `qmc.Sobol`) with Matousek's linear matrix scramble and a digital
  shift (the randomization scipy's ``scramble=True`` uses), for up to
  `SOBOL_MAX_DIM` dimensions: RISE's ``cells^2 + 2`` mask uniforms;
* a randomly shifted rank-1 lattice ``frac(s z / n + shift)`` with a random
  generating vector ``z`` of units mod ``n`` (Cranley and Patterson 1976),
  for any dimension: SmoothGrad's noise, one coordinate per input element,
  past Sobol's limit for any image. With ``z_j`` coprime to ``n`` each
  coordinate takes every stratum ``[k/n, (k+1)/n)`` exactly once over the
  ``n`` samples, a Latin hypercube in every coordinate.

Point ``i`` is computed from its index inside the compiled loop, so no
``[count, d]`` array is ever built and the draws do not depend on chunking.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SAMPLERS = ("mc", "qmc")
SOBOL_MAX_DIM = 21201  # scipy's table of direction numbers
_BITS = 30  # scipy's Sobol points carry 30 bits


@functools.lru_cache(maxsize=16)
def sobol_directions(d: int) -> np.ndarray:
  """Sobol direction numbers ``[d, 30]`` (uint32, scipy's unscrambled table):
  point i in natural order is the XOR of the columns j with bit j of i set."""
  if not 1 <= d <= SOBOL_MAX_DIM:
    raise ValueError(
        f"Sobol points: expected 1 to {SOBOL_MAX_DIM} dimensions (scipy's direction numbers),"
        f" got {d}")
  from scipy.stats import qmc
  engine = qmc.Sobol(d, scramble=False, bits=_BITS)
  table = getattr(engine, "_sv", None)
  if table is None or table.shape != (d, _BITS):
    raise RuntimeError("scipy.stats.qmc.Sobol no longer exposes its direction numbers (_sv);"
                       " saljax's Sobol points need them")
  return np.asarray(table, np.uint32)


def scrambled_sobol(key: Array, d: int) -> tuple[Array, Array]:
  """A random linear matrix scramble and digital shift of the first `d` Sobol
  coordinates, from `key`: ``(directions [d, 30], shift [d])`` for `sobol_point`."""
  v = jnp.asarray(sobol_directions(d))
  k_mat, k_shift = jax.random.split(key)
  # Bit b of a coordinate is its (b+1)-th binary digit (b = 0 the most
  # significant). A lower-triangular L with unit diagonal mixes each digit
  # with the more significant ones only, which keeps the net's balance.
  low = jax.random.bernoulli(k_mat, 0.5, (d, _BITS, _BITS)).astype(jnp.int32)
  mat = jnp.tril(low, -1) + jnp.eye(_BITS, dtype=jnp.int32)
  weights = jnp.uint32(1) << jnp.arange(_BITS - 1, -1, -1, dtype=jnp.uint32)
  digits = ((v[..., None] >> jnp.arange(_BITS - 1, -1, -1, dtype=jnp.uint32)) & 1).astype(jnp.int32)
  mixed = jnp.einsum("dbc,djc->djb", mat, digits) & 1
  scrambled = (mixed.astype(jnp.uint32) * weights).sum(-1, dtype=jnp.uint32)
  shift = jax.random.bits(k_shift, (d,), jnp.uint32) >> (32 - _BITS)
  return scrambled, shift


def sobol_point(scramble: tuple[Array, Array], i: Array) -> Array:
  """Point `i` (natural order) of the scrambled sequence: ``[d]`` float32 in [0, 1)."""
  directions, shift = scramble
  bit = ((jnp.asarray(i, jnp.uint32) >> jnp.arange(_BITS, dtype=jnp.uint32)) & 1).astype(bool)
  picked = jnp.where(bit[None, :], directions, jnp.uint32(0))
  y = jax.lax.reduce(picked, np.uint32(0), jax.lax.bitwise_xor, (1,)) ^ shift
  # 24 bits: exactly representable in float32, so no point rounds up to 1.
  return (y >> (_BITS - 24)).astype(jnp.float32) * jnp.float32(2.0 ** -24)


@functools.lru_cache(maxsize=16)
def _units(n: int) -> np.ndarray:
  """The integers in [1, n) coprime to n (just 1 for n <= 2)."""
  k = np.arange(1, max(n, 2))
  return k[np.gcd(k, n) == 1].astype(np.uint32)


def lattice(key: Array, n: int, shape: tuple[int, ...]) -> tuple[Array, Array]:
  """A random rank-1 lattice rule of `n` points for coordinates shaped
  `shape`: ``(z, shift)``, `z` drawn uniformly from the units mod `n` (so each
  coordinate is stratified) and `shift` uniform on [0, 1)."""
  units = jnp.asarray(_units(n))
  k_z, k_shift = jax.random.split(key)
  z = units[jax.random.randint(k_z, shape, 0, units.shape[0])]
  return z, jax.random.uniform(k_shift, shape)


def lattice_point(rule: tuple[Array, Array], s: Array, n: int) -> Array:
  """Point `s` of a `lattice` rule: ``frac(s z / n + shift)``, float32 in (0, 1).

  ``s z mod n`` is formed exactly in uint32 by doubling and adding over the
  bits of `s` (``n < 2**31``), so no product overflows.
  """
  if not 1 <= n < 2 ** 31:
    raise ValueError(f"lattice: expected 1 <= n < 2**31 points, got {n}")
  z, shift = rule
  s = jnp.asarray(s, jnp.uint32)
  nn = jnp.uint32(n)
  r = jnp.zeros_like(z)
  for b in reversed(range(max(1, math.ceil(math.log2(n + 1))))):
    r = r + r
    r = jnp.where(r >= nn, r - nn, r)
    r = r + jnp.where((s >> b) & 1 == 1, z, jnp.uint32(0))
    r = jnp.where(r >= nn, r - nn, r)
  t = r.astype(jnp.float32) / jnp.float32(n) + shift
  u = t - jnp.floor(t)
  eps = jnp.float32(2.0 ** -24)
  return jnp.clip(u, eps, 1 - eps)
