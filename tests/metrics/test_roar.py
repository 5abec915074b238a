"""ROAR / DiffROAR masking and scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


import saljax

from saljax.metrics import removal as R


def test_remove_counts_and_fill(region):
  f, w, x = region
  a = jax.random.normal(jax.random.key(1), x.shape)
  for frac in (0.0, 0.25, 0.5, 1.0):
    m = R.remove_by_attribution(x, a, frac, fill=-1.0)
    assert int(np.asarray((m == -1).all(-1)).sum()) == 4 * int(np.floor(frac * 64))
  # Top removes the largest |a| pixels; bottom the smallest: complementary at 0.5.
  top = np.asarray(R.remove_by_attribution(x, a, 0.5, fill=-1.0) == -1)
  bot = np.asarray(R.remove_by_attribution(x, a, 0.5, fill=-1.0, remove="bottom") == -1)
  assert not (top & bot).any() and (top | bot).all()
  mag = np.abs(np.asarray(a)).sum(-1)
  lowest_removed = np.where(top[..., 0], mag, np.inf).min((1, 2))
  highest_kept = np.where(bot[..., 0], mag, -np.inf).max((1, 2))
  assert (lowest_removed >= highest_kept).all()
  per = R.remove_by_attribution(x, a, 0.25, fill=-1.0, per_coordinate=True)
  assert int(np.asarray(per == -1).sum()) == 4 * 48


def test_roar_and_diffroar_on_region_model(region):
  f, w, x = region
  t = jnp.zeros(4, jnp.int32)
  # Class 0 is predicted when the read region is intact (x > 0 there).
  good = x * w
  rand = jax.random.uniform(jax.random.key(2), x.shape)
  x2 = x - 0.5  # centred input: removing the region (fill 0) leaves s ~ 0
  f2 = lambda z: f(z) + jnp.array([0.0, 0.05])  # ties go to class 1
  np.testing.assert_array_equal(R.roar(f2, x2 + 1.0, good, t, fraction=4 / 64), 0.0)
  np.testing.assert_array_equal(R.roar(f2, x2 + 1.0, rand, t, fraction=4 / 64), 1.0)
  d_good = R.diffroar(f2, x2 + 1.0, good, t, fraction=4 / 64)
  outside = jnp.broadcast_to((w == 0).astype(jnp.float32), x.shape)  # high off the region
  d_rand = R.diffroar(f2, x2 + 1.0, outside, t, fraction=4 / 64)
  np.testing.assert_array_equal(d_good, 1.0)   # top-4 kept: the region, still class 0
  np.testing.assert_array_equal(d_rand, -1.0)  # keeps the wrong pixels
  assert "roar" in saljax.metrics.names("removal") and "diffroar" in saljax.metrics.names("removal")


def test_errors(region):
  f, w, x = region
  a = jnp.ones(x.shape)
  with pytest.raises(ValueError, match="fraction"):
    R.remove_by_attribution(x, a, 1.5)
  with pytest.raises(ValueError, match="remove"):
    R.remove_by_attribution(x, a, 0.5, remove="middle")
  with pytest.raises(ValueError, match="attribution"):
    R.roar(f, x, jnp.ones((4, 8)), 0)
