"""Peak memory is set by the chunk, not by the number of steps or samples."""
import jax
import jax.numpy as jnp
import numpy as np

import saljax
from saljax import parallel
from saljax.explainers import gradients


def _cnn():
  k1, k2 = jax.random.split(jax.random.key(0))
  w1 = jax.random.normal(k1, (3, 3, 3, 16)) / 5
  w2 = jax.random.normal(k2, (16, 10)) / 4

  def f(x):
    h = jax.lax.conv_general_dilated(x, w1.astype(x.dtype), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(h).mean((1, 2)) @ w2.astype(x.dtype)

  return f


def _temp_bytes(steps, batch_size):
  f = _cnn()
  x = jnp.ones((4, 32, 32, 3))
  t = jnp.zeros(4, jnp.int32)
  lowered = gradients._integrated_gradients.lower(
      f, x, t, jnp.zeros_like(x), steps, "gauss_legendre", batch_size, None)
  return lowered.compile().memory_analysis().temp_size_in_bytes


def test_ig_peak_memory_flat_in_steps_with_default_chunking():
  m50 = _temp_bytes(50, None)
  m500 = _temp_bytes(500, None)
  assert m500 <= 1.1 * m50, (m50, m500)
  # ... whereas evaluating all steps at once grows with them: the check can fail.
  all50 = _temp_bytes(50, 50)
  all500 = _temp_bytes(500, 500)
  assert all500 > 5 * all50, (all50, all500)


def test_auto_chunk_respects_the_budget(monkeypatch):
  monkeypatch.setenv("SALJAX_MAX_EVALS_PER_CHUNK", "12")
  fn = lambda a: jnp.ones((4, 3)) * a  # one item = 4 evaluations
  assert parallel.auto_batch_size(fn, jnp.arange(10.0), None) == 3
  assert parallel.auto_batch_size(fn, jnp.arange(10.0), 7) == 7
  monkeypatch.setenv("SALJAX_MAX_EVALS_PER_CHUNK", "2")
  assert parallel.auto_batch_size(fn, jnp.arange(10.0), None) == 1


def test_chunked_helpers_agree_with_plain_numpy():
  xs = jnp.arange(11.0)
  fn = lambda a: jnp.stack([a, a ** 2])
  want = np.stack([np.arange(11.0), np.arange(11.0) ** 2], 1)
  for bs in (None, 1, 4, 11, 20):
    np.testing.assert_allclose(parallel.chunked_map(fn, xs, batch_size=bs), want)
    np.testing.assert_allclose(parallel.chunked_sum(fn, xs, batch_size=bs), want.sum(0))
    mean, var = parallel.chunked_moments(fn, xs, batch_size=bs)
    np.testing.assert_allclose(mean, want.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, want.var(0), rtol=1e-5)


def test_bf16_compute_keeps_float32_attributions():
  f = _cnn()
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  t = jnp.array([1, 2])
  a32 = saljax.integrated_gradients(f, x, t, steps=16)
  a16 = saljax.integrated_gradients(f, x, t, steps=16, compute_dtype="bfloat16")
  assert a16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(a16 - a32) / jnp.linalg.norm(a32))
  assert 0 < rel < 0.05, rel  # bf16 differs, but only at bf16 precision
  g16 = saljax.gradient(f, x, t, compute_dtype=jnp.bfloat16)
  assert g16.dtype == jnp.float32
