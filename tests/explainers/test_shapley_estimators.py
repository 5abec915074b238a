"""Shapley estimators (kernel_shap's samplings and exact enumeration,
shapley_sampling with antithetic permutations, owen_values) against the
Shapley values of a model known in closed form.

The model is a polynomial over M = 12 features with a fill baseline b:
linear terms, pairwise products and weak triple products. Writing
``x_i = b_i + s_i d_i`` (``s_i = 1`` when the feature is kept, ``d = x - b``),
each monomial expands into interactions ``prod_{i in T} s_i d_i`` whose
Shapley value splits equally among the members of T, so

- ``w x_i`` gives ``w d_i``;
- ``c x_i x_j`` gives i ``c d_i (b_j + x_j) / 2``;
- ``e x_i x_j x_k`` gives i ``e d_i (b_j b_k + (d_j b_k + b_j d_k) / 2 + d_j d_k / 3)``.

The triple terms matter: paired KernelSHAP and antithetic permutations are
exact for a game of order 2, so without them there would be no error to
shrink. Replicates are rows of one batch: example i draws from
``fold_in(key, i)``, so 24 copies of one input are 24 independent runs, and
each (estimator, budget) compiles once.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.explainers import perturbation as P
from saljax.explainers import shapley as SH

KEY = jax.random.key(11)
M_ = 12
_rng = np.random.default_rng(7)
W_LIN = _rng.normal(size=M_)
PAIRS = [(i, j, c) for (i, j), c in zip(
    [(0, 1), (2, 5), (3, 9), (4, 7), (6, 11), (8, 10), (1, 6), (5, 8)], _rng.normal(size=8))]
TRIPLES = [(i, (i + 4) % M_, (i + 7) % M_, 0.15 * e) for i, e in enumerate(_rng.normal(size=M_))]
X0 = _rng.normal(size=M_)
FILL0 = 0.5 * _rng.normal(size=M_)
REPLICATES = 24


def _value(x, lib=jnp, pairs=PAIRS, triples=TRIPLES, w=W_LIN):
  out = x @ lib.asarray(w)
  for i, j, c in pairs:
    out = out + c * x[:, i] * x[:, j]
  for i, j, k, e in triples:
    out = out + e * x[:, i] * x[:, j] * x[:, k]
  return out


def poly(x):
  """The closed-form model: logits ``[B, 2]``, the polynomial and its negation."""
  v = _value(x)
  return jnp.stack([v, -v], -1)


def pairwise(x):
  """Linear and pairwise terms only."""
  v = _value(x, triples=[])
  return jnp.stack([v, -v], -1)


def closed_form_shapley(x, b, pairs=PAIRS, triples=TRIPLES, w=W_LIN):
  """Exact Shapley values of `_value` at x with baseline b (float64, module docstring)."""
  x, b = np.asarray(x, np.float64), np.asarray(b, np.float64)
  d = x - b
  phi = np.asarray(w) * d
  for i, j, c in pairs:
    phi[i] += c * d[i] * (b[j] + x[j]) / 2
    phi[j] += c * d[j] * (b[i] + x[i]) / 2
  for t, e in ((t[:3], t[3]) for t in triples):
    for i in t:
      j, k = [u for u in t if u != i]
      phi[i] += e * d[i] * (b[j] * b[k] + (d[j] * b[k] + b[j] * d[k]) / 2 + d[j] * d[k] / 3)
  return phi


def brute_force_shapley(v, m):
  """Shapley values of the game `v` (a function of a tuple of players) by the subset sum."""
  phi = np.zeros(m)
  for i in range(m):
    others = [k for k in range(m) if k != i]
    for r in range(m):
      wt = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
      for s in itertools.combinations(others, r):
        phi[i] += wt * (v(s + (i,)) - v(s))
  return phi


def _game(x, b, model=lambda u: _value(u, np)):
  def v(s):
    u = np.array(b, np.float64)
    u[list(s)] = np.asarray(x, np.float64)[list(s)]
    return float(model(u[None])[0])
  return v


def _batch():
  x = jnp.asarray(np.repeat(X0[None], REPLICATES, 0), jnp.float32)
  fill = jnp.asarray(np.repeat(FILL0[None], REPLICATES, 0), jnp.float32)
  return x, fill, jnp.zeros(REPLICATES, jnp.int32)


# Budgets in model evaluations per example: 4, 16, 64 permutations of 13 steps;
# KernelSHAP spends 2 of them on the empty and full coalitions.
EVALS = (52, 208, 832)


def _estimators():
  x, fill, t = _batch()
  common = dict(segments="elements", fill=fill, return_stderr=True)

  def kernel(sampling):
    return lambda n: P.kernel_shap(poly, x, t, key=KEY, samples=n - 2, sampling=sampling, **common)

  def perms(antithetic):
    return lambda n: P.shapley_sampling(poly, x, t, key=KEY, samples=n // (M_ + 1),
                                        antithetic=antithetic, **common)

  return {"kernel": kernel("kernel"), "paired": kernel("paired"), "leverage": kernel("leverage"),
          "permutation": perms(False), "antithetic": perms(True)}


@pytest.fixture(scope="module")
def runs():
  """{(estimator, evaluations): (error [R, M], stderr [R, M])} against the closed form."""
  exact = closed_form_shapley(X0, FILL0)
  out = {}
  for name, run in _estimators().items():
    for n in EVALS:
      phi, se = run(n)
      out[name, n] = (np.asarray(phi, np.float64) - exact[None], np.asarray(se, np.float64))
  return out


def _mse(runs, name, n):
  return float((runs[name, n][0] ** 2).mean())


def test_closed_form_matches_brute_force():
  """The analytic oracle itself, against the subset sum in float64."""
  exact = brute_force_shapley(_game(X0, FILL0), M_)
  np.testing.assert_allclose(closed_form_shapley(X0, FILL0), exact, rtol=1e-10, atol=1e-10)


def test_exact_enumeration_equals_brute_force():
  x, fill, t = _batch()
  rows = slice(0, 3)
  # Three different inputs and baselines, so a row mix-up would show.
  x = x[rows] * jnp.array([[1.0], [0.5], [-1.2]])
  fill = fill[rows] * jnp.array([[1.0], [2.0], [0.0]])
  phi, se = P.kernel_shap(poly, x, t[rows], exact=True, segments="elements", fill=fill,
                          return_stderr=True, batch_size=100)
  for r in range(3):
    want = brute_force_shapley(_game(np.asarray(x[r]), np.asarray(fill[r])), M_)
    np.testing.assert_allclose(np.asarray(phi[r]), want, atol=1e-5, rtol=0)
  assert float(jnp.abs(se).max()) == 0.0
  # The exact path costs 2^M evaluations, as the registry says.
  assert saljax.explainers.entry("kernel_shap").cost(poly, x, exact=True, segments="elements") == 2 ** M_


@pytest.mark.parametrize("name", ["kernel", "paired", "leverage", "permutation", "antithetic"])
def test_error_shrinks_with_the_budget(runs, name):
  mse = [_mse(runs, name, n) for n in EVALS]
  # 4x the evaluations: about 4x less squared error; 2x is a margin for noise.
  assert mse[1] < mse[0] / 2 and mse[2] < mse[1] / 2, (name, mse)


@pytest.mark.parametrize("name", ["kernel", "paired", "leverage", "permutation", "antithetic"])
def test_stderr_is_calibrated(runs, name):
  """About 95% of |error| < 1.96 stderr over features x replicates, once the
  CLT has a few dozen units (the smallest budget has 4 permutations)."""
  for n in EVALS[1:]:
    err, se = runs[name, n]
    assert np.all(se > 0), (name, n)
    # 1e-5: float32 noise on values of order 1.
    covered = float((np.abs(err) < 1.96 * se + 1e-5).mean())
    assert 0.85 <= covered <= 1.0, (name, n, covered)


def test_paired_sampling_beats_plain_kernel_shap_at_equal_evaluations(runs):
  for n in EVALS:
    assert _mse(runs, "paired", n) < _mse(runs, "kernel", n) / 4, n
    assert _mse(runs, "antithetic", n) < _mse(runs, "permutation", n) / 4, n


def test_leverage_sampling_beats_plain_kernel_shap_at_equal_evaluations(runs):
  for n in EVALS:
    assert _mse(runs, "leverage", n) < _mse(runs, "kernel", n) / 4, n


def test_paired_and_antithetic_are_exact_on_a_pairwise_model():
  """Order-2 games: each pair's (or permutation pair's) errors cancel exactly."""
  x, fill, t = _batch()
  exact = closed_form_shapley(X0, FILL0, triples=[])
  for phi in (P.kernel_shap(pairwise, x[:4], t[:4], key=KEY, samples=40, sampling="paired",
                            segments="elements", fill=fill[:4]),
              P.shapley_sampling(pairwise, x[:4], t[:4], key=KEY, samples=2, antithetic=True,
                                 segments="elements", fill=fill[:4])):
    np.testing.assert_allclose(np.asarray(phi), np.broadcast_to(exact, (4, M_)), atol=1e-4)


def test_leverage_enumerates_everything_when_the_budget_allows():
  """With ``2^M - 2`` samples every pair stratum fits: the exact answer, stderr 0."""
  x, fill, t = _batch()
  m = 6
  f = lambda u: poly(jnp.concatenate([u, jnp.asarray(FILL0[m:], u.dtype)[None].repeat(
      u.shape[0], 0)], 1))
  phi, se = P.kernel_shap(f, x[:2, :m], t[:2], key=KEY, samples=2 ** m - 2, sampling="leverage",
                          segments="elements", fill=fill[:2, :m], return_stderr=True)
  want = brute_force_shapley(_game(X0[:m], FILL0[:m], lambda u: np.asarray(
      poly(jnp.asarray(np.concatenate([u, FILL0[None, m:]], 1), jnp.float32)))[:, 0]), m)
  np.testing.assert_allclose(np.asarray(phi), np.broadcast_to(want, (2, m)), atol=1e-4)
  assert float(jnp.abs(se).max()) == 0.0


def test_leverage_allocation_and_weights():
  """Pair strata of M = 8: sizes 1, 2, 3 and the middle (4, holding the last
  group): 8, 28, 56, 35 pairs. 40 pairs: the size-1 stratum whole, the 32
  left as evenly as counts allow (10 each, the 2 left over to the first)."""
  sizes = jnp.array([8.0, 28.0, 56.0, 35.0])
  n = np.asarray(SH._allocate(sizes, 40))
  np.testing.assert_array_equal(n, [8, 11, 11, 10])
  np.testing.assert_array_equal(np.asarray(SH._allocate(sizes, 1000)), sizes)
  z, w, stratum, fpc = SH.leverage_pairs(KEY, 40, jnp.array([8]), 8)
  z = np.asarray(z)[:, 0]
  # Pairs are complements, and no coalition repeats.
  np.testing.assert_array_equal(z[:40] + z[40:], 1.0)
  assert len({tuple(r) for r in z}) == 80
  # Size-1 stratum enumerated whole: the 8 singletons.
  assert sorted(map(tuple, z[:8])) == sorted(map(tuple, np.eye(8)))
  # Weight: Shapley kernel over the inclusion probability; every size-2 row
  # stands for 28 / 11 coalitions of kernel (M - 1) / (C(8, 2) 2 6).
  np.testing.assert_allclose(np.asarray(w)[8, 0], 7 / (28 * 2 * 6) * 28 / 11, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(w)[40 + 8, 0], np.asarray(w)[8, 0])  # its complement
  np.testing.assert_allclose(np.asarray(fpc)[0], [0.0, 1 - 11 / 28, 1 - 11 / 56, 1 - 10 / 35, 0.0],
                             rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(stratum)[:, 0], np.repeat([0, 1, 2, 3], [8, 11, 11, 10]))


@pytest.mark.parametrize("kind", ["kernel", "paired", "leverage", "antithetic"])
def test_draws_do_not_depend_on_the_batch(kind):
  """An example's map is the same alone and beside one with more groups
  (padding M) in a larger batch."""
  x, fill, t = _batch()
  seg = np.stack([np.arange(M_) // 2, np.arange(M_)])  # 6 groups, then 12
  if kind == "antithetic":
    run = lambda xs, fs, ts, sg: P.shapley_sampling(poly, xs, ts, key=KEY, samples=4,
                                                    antithetic=True, segments=sg, fill=fs)
  else:
    run = lambda xs, fs, ts, sg: P.kernel_shap(poly, xs, ts, key=KEY, samples=20, sampling=kind,
                                               segments=sg, fill=fs)
  both = run(x[:2], fill[:2], t[:2], seg)
  alone = run(x[:1], fill[:1], t[:1], seg[:1])
  np.testing.assert_allclose(np.asarray(both[0]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Owen values.


def test_owen_values_equal_shapley_values_for_an_additive_model():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.key(2), (8 * 8 * 3,))
  f = lambda u: jnp.stack([u.reshape(u.shape[0], -1) @ w, jnp.zeros(u.shape[0])], -1)
  fill = 0.3
  phi, se = saljax.owen_values(f, x, 0, segments="grid", segmentation_options={"cells": 4},
                               fill=fill, return_stderr=True)
  contrib = ((x - fill) * w.reshape(8, 8, 3)).reshape(2, 4, 2, 4, 2, 3).sum((2, 4, 5))
  got = np.asarray(phi)[:, ::2, ::2, 0]
  np.testing.assert_allclose(got, np.asarray(contrib), rtol=1e-4, atol=1e-4)
  assert se.shape == phi.shape and float(jnp.abs(se).max()) == 0.0


def test_owen_values_equal_shapley_values_up_to_pairwise_interactions():
  """A pairwise term's sibling is in or out with probability 1/2 at every
  level of the hierarchy, as in the Shapley value: order-2 games agree."""
  x, fill, t = _batch()
  phi = saljax.owen_values(pairwise, x[:1], t[:1], segments="elements", fill=fill[:1])
  np.testing.assert_allclose(np.asarray(phi[0]), closed_form_shapley(X0, FILL0, triples=[]),
                             atol=1e-4)
  # With the triple terms they differ, and efficiency still holds.
  phi = np.asarray(saljax.owen_values(poly, x[:1], t[:1], segments="elements", fill=fill[:1]))[0]
  assert np.abs(phi - closed_form_shapley(X0, FILL0)).max() > 1e-3  # the triples are weak
  np.testing.assert_allclose(phi.sum(), _value(X0[None], np)[0] - _value(FILL0[None], np)[0],
                             rtol=1e-4)


def test_owen_values_follow_the_hierarchy():
  """v = x0 x1 x2 over 4 features in a row: the root splits {0, 1} | {2, 3};
  each half gets p / 2, 0 and 1 share theirs, 2 takes all of its half (3 is a
  dummy): (p/4, p/4, p/2, 0), where Shapley gives (p/3, p/3, p/3, 0)."""
  x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  f = lambda u: jnp.stack([u[:, 0] * u[:, 1] * u[:, 2], jnp.zeros(u.shape[0])], -1)
  phi = saljax.owen_values(f, x, 0, segments="elements")
  np.testing.assert_allclose(np.asarray(phi[0]), [1.5, 1.5, 3.0, 0.0], rtol=1e-6)


def test_owen_cost_is_the_distinct_coalitions():
  x = jnp.zeros((1, 16, 16, 3))
  entry = saljax.explainers.entry("owen_values")
  # The docstring's counts, (2 M^2 + 4) / 3: 16 groups 172 evaluations, 64 groups 2,732.
  assert entry.cost(None, x, segmentation_options={"cells": 4}) == 172
  assert entry.cost(None, x) == 2732
  # The leaf formula's 2^(d+1) coalitions per leaf (512 for 16 leaves at depth
  # 4) share most rows; each leaf's coefficients sum to 0 (v(C + i) - v(C)).
  z, c = SH.owen_design(np.arange(16.0)[:, None], 16)
  assert z.shape == (172, 16) and len({tuple(r) for r in z}) == 172
  np.testing.assert_allclose(c.sum(0), 0.0, atol=1e-6)


# ----------------------------------------------------------------------------
# Options and errors.


def test_costs_and_option_errors():
  x, fill, t = _batch()
  ks = saljax.explainers.entry("kernel_shap")
  assert ks.cost(poly, x, samples=100, sampling="leverage", segments="elements") == 102
  ss = saljax.explainers.entry("shapley_sampling")
  assert ss.cost(poly, x, samples=6, antithetic=True, segments="elements") == 6 * (M_ + 1)
  with pytest.raises(ValueError, match="samples must be even"):
    P.kernel_shap(poly, x, t, key=KEY, samples=21, sampling="paired", segments="elements")
  with pytest.raises(ValueError, match="sampling"):
    P.kernel_shap(poly, x, t, key=KEY, samples=20, sampling="lev", segments="elements")
  with pytest.raises(ValueError, match="samples must be even"):
    P.shapley_sampling(poly, x, t, key=KEY, samples=3, antithetic=True, segments="elements")
  with pytest.raises(ValueError, match="at least 2 independent pairs"):
    P.shapley_sampling(poly, x, t, key=KEY, samples=2, antithetic=True, segments="elements",
                       return_stderr=True)


def test_leverage_with_many_groups_is_exact_on_a_linear_model():
  """40 groups: the middle strata hold ~10^11 pairs (uniform draws, the
  lgamma binomials) and the small ones are ranked; an additive model has no
  residual, so any sample recovers w (x - b) exactly."""
  m = 40
  w = jnp.linspace(-1.0, 1.0, m)
  f = lambda u: jnp.stack([u @ w, jnp.zeros(u.shape[0])], -1)
  x = jax.random.normal(jax.random.key(5), (2, m))
  phi, se = P.kernel_shap(f, x, 0, key=KEY, samples=200, sampling="leverage", segments="elements",
                          fill=0.5, return_stderr=True)
  np.testing.assert_allclose(np.asarray(phi), np.asarray((x - 0.5) * w), atol=1e-4)
  assert bool(jnp.isfinite(se).all()) and float(se.max()) < 1e-3
