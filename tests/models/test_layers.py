"""Depthwise convolution: the shifted-sum formulation equals XLA's grouped conv."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saljax.models import layers


@pytest.mark.parametrize("k,stride,size", [(3, 1, 8), (3, 2, 8), (5, 2, 9), (5, 1, 7), (3, 2, 7)])
def test_shifts_equal_xla_forward_and_input_gradient(k, stride, size):
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, size, size + 1, 4))
  kernel = jax.random.normal(kk, (k, k, 1, 4))
  xla = jax.jit(layers.depthwise_conv_xla, static_argnums=2)
  shifts = jax.jit(layers.depthwise_conv_shifts, static_argnums=2)
  a = xla(x, kernel, stride)
  b = shifts(x, kernel, stride)
  assert a.shape == b.shape == (2, -(-size // stride), -(-(size + 1) // stride), 4)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  ct = jax.random.normal(kg, a.shape)
  ga = jax.jit(jax.grad(lambda x: (xla(x, kernel, stride) * ct).sum()))(x)
  gb = jax.jit(jax.grad(lambda x: (shifts(x, kernel, stride) * ct).sum()))(x)
  np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-5)


def test_depthwise_equals_per_channel_correlation():
  # Closed form: with one channel and a delta kernel, the output is the shifted input.
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)  # picks x[i-1, j-1]
  for impl in layers.DEPTHWISE_IMPLS:
    out = layers.depthwise_conv(x, kernel, 1, impl)
    want = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))[:, :5, :5]
    np.testing.assert_allclose(out, want)


def test_same_pads_match_tensorflow():
  assert layers.same_pads(224, 3, 2) == (0, 1)
  assert layers.same_pads(224, 5, 2) == (1, 2)
  assert layers.same_pads(112, 3, 1) == (1, 1)
  assert layers.same_pads(7, 5, 1) == (2, 2)


def test_switch_forces_and_rejects():
  try:
    layers.set_depthwise_impl("xla")
    assert layers.depthwise_impl() == "xla"
    layers.set_depthwise_impl("shifts")
    assert layers.depthwise_impl() == "shifts"
    layers.set_depthwise_impl("auto")
    assert layers.depthwise_impl() == layers.DEPTHWISE_AUTO.get(jax.default_backend(), "xla")
    with pytest.raises(ValueError, match="expected one of"):
      layers.set_depthwise_impl("fast")
    with pytest.raises(ValueError, match="expected one of"):
      layers.depthwise_conv(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), 1, "fast")
  finally:
    layers.set_depthwise_impl("auto")
