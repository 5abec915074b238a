"""Complexity metrics against their closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax

M = saljax.metrics
X = jax.random.uniform(jax.random.key(0), (3, 8, 8, 3))


def test_gini_extremes_and_formula():
  onehot = jnp.zeros((3, 8, 8)).at[:, 1, 2].set(5.0)
  np.testing.assert_allclose(M.sparseness(None, X, onehot), 63 / 64, rtol=1e-6)
  np.testing.assert_allclose(M.sparseness(None, X, jnp.full((3, 8, 8), 2.0)), 0.0, atol=1e-6)
  np.testing.assert_allclose(M.sparseness(None, X, jnp.zeros((3, 8, 8))), 0.0)
  a = jax.random.normal(jax.random.key(1), X.shape)
  v = np.sort(np.abs(np.asarray(a)).sum(-1).reshape(3, -1), 1)
  n = v.shape[1]
  i = np.arange(1, n + 1)
  expected = ((2 * i - n - 1) * v).sum(1) / (n * v.sum(1))
  np.testing.assert_allclose(M.sparseness(None, X, a), expected, rtol=1e-5)
  # A one-hot map is the sparsest: every other map scores lower.
  assert (M.sparseness(None, X, a) < 63 / 64).all()


def test_entropy_extremes_and_formula():
  onehot = jnp.zeros((3, 8, 8)).at[:, 0, 0].set(-1.0)
  np.testing.assert_allclose(M.complexity(None, X, onehot), 0.0, atol=1e-6)
  np.testing.assert_allclose(M.complexity(None, X, jnp.ones((3, 8, 8))), np.log(64), rtol=1e-6)
  np.testing.assert_allclose(M.complexity(None, X, jnp.zeros((3, 8, 8))), np.log(64), rtol=1e-6)
  a = jax.random.normal(jax.random.key(2), X.shape)
  p = np.abs(np.asarray(a)).sum(-1).reshape(3, -1)
  p = p / p.sum(1, keepdims=True)
  np.testing.assert_allclose(M.complexity(None, X, a), -(p * np.log(p)).sum(1), rtol=1e-5)


def test_effective_complexity_counts():
  a = jnp.zeros((3, 8, 8)).at[0, :2].set(1.0).at[1, 0, 0].set(1e-6)
  np.testing.assert_array_equal(M.effective_complexity(None, X, a), [16, 0, 0])
  np.testing.assert_array_equal(M.effective_complexity(None, X, a, eps=1e-7), [16, 1, 0])
  with pytest.raises(ValueError, match="eps"):
    M.effective_complexity(None, X, a, eps=-1.0)


def test_non_image_inputs_and_errors():
  x = jnp.ones((2, 10))
  a = jnp.zeros((2, 10)).at[:, 3].set(1.0)
  np.testing.assert_allclose(M.sparseness(None, x, a), 0.9, rtol=1e-6)
  with pytest.raises(ValueError, match="attribution: expected shape"):
    M.sparseness(None, X, jnp.ones((3, 8)))
  with pytest.raises(ValueError, match="all-NaN"):
    M.complexity(None, X, jnp.full((3, 8, 8), jnp.nan))
  assert set(M.names("complexity")) == {"sparseness", "complexity", "effective_complexity"}
