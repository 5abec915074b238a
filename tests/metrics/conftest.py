"""Small models whose right answers are known, shared by the metric tests."""
import jax
import jax.numpy as jnp
import pytest


@pytest.fixture
def region():
  """A two-class model on [B, 8, 8, 3] that reads only rows/cols 2..3.

  Returns (f, weights, x): logits = (s, -s) with s = sum(x * weights), weights
  zero outside the 2x2 region; x uniform in [0, 1].
  """
  w = jnp.zeros((8, 8, 3)).at[2:4, 2:4].set(
      jax.random.uniform(jax.random.key(10), (2, 2, 3), minval=0.5, maxval=1.5))

  def f(x):
    s = (x * w).sum((1, 2, 3))
    return jnp.stack([s, -s], 1)

  x = jax.random.uniform(jax.random.key(11), (4, 8, 8, 3))
  return f, w, x


@pytest.fixture
def linear():
  """f(x) = flatten(x) @ W on [B, 6, 6, 2], 3 classes; returns (f, W, x)."""
  wm = jax.random.normal(jax.random.key(20), (72, 3))
  x = jax.random.normal(jax.random.key(21), (3, 6, 6, 2))
  return (lambda x: x.reshape(x.shape[0], -1) @ wm), wm, x


class TraceCounter:
  """Wraps a model and counts how often it is traced (called with tracers)."""

  def __init__(self, f):
    self.f = f
    self.traces = 0

  def __call__(self, x):
    if isinstance(x, jax.core.Tracer):
      self.traces += 1
    return self.f(x)


@pytest.fixture
def counter():
  return TraceCounter
