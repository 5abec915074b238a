"""Parity of saljax's complexity metrics with Quantus 0.6 (experiments/_quantus/complexity.py).

Two attributions on the small CNN of `_twin`: gradient x input (dense) and
the same map with its weaker half of pixels scaled to 1e-7 (sparse, so that
effective complexity counts something other than every pixel).
"""
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from experiments._quantus import complexity as QC
from _quantus_parity import quantus_metrics, quiet
from _twin import small_twin, to_nchw

TWINS = {t.metric: t for t in QC.TWINS}


@pytest.fixture(scope="module")
def setup():
  f, net, x, x_nchw, y = small_twin()
  a = saljax.explainers.gradient(f, x, y) * x
  mag = jnp.abs(a).sum(-1, keepdims=True)
  weak = mag < jnp.median(mag.reshape(4, -1), axis=1)[:, None, None, None]
  return f, net, x, x_nchw, y, {"dense": a, "sparse": jnp.where(weak, 1e-7 * a, a)}


def test_every_quantus_complexity_metric_has_a_twin():
  assert {t.quantus for t in QC.TWINS} == quantus_metrics("complexity")
  assert set(TWINS) <= set(saljax.metrics.names("complexity"))


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("which", ["dense", "sparse"])
def test_parity(setup, name, which):
  f, net, x, x_nchw, y, maps = setup
  twin, a = TWINS[name], maps[which]
  ours = twin.run_saljax(f, x, a, y)
  theirs = quiet(twin.run_quantus, net, x_nchw, to_nchw(a), y)
  assert ours.shape == theirs.shape == (4,)
  np.testing.assert_allclose(ours, theirs, atol=twin.atol)


def test_sparse_maps_score_as_sparser(setup):
  """The parity inputs differ in what the metrics measure (no vacuous agreement)."""
  f, net, x, x_nchw, y, maps = setup
  run = lambda name, which: TWINS[name].run_saljax(f, x, maps[which], y)
  assert (run("sparseness", "sparse") > run("sparseness", "dense")).all()
  assert (run("complexity", "sparse") < run("complexity", "dense")).all()
  np.testing.assert_array_equal(run("effective_complexity", "dense"), 64)
  np.testing.assert_array_equal(run("effective_complexity", "sparse"), 32)
