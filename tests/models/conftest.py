"""Helpers for the zoo tests."""
import jax
import pytest


def fast_init(module, x, seed=0):
  # XLA:CPU compiles threefry slowly (seconds per initializer on a loaded
  # machine); the "rbg" generator compiles in a fraction of that.
  return jax.jit(module.init)(jax.random.key(seed, impl="rbg"), x)


@pytest.fixture
def init():
  return fast_init
