"""TCAV (saljax.concepts.tcav) on a tiny CNN trained here on planted patterns:
class 1 images carry a cross, class 0 a square (tests/concepts/_planted.py)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import concepts

sys.path.insert(0, os.path.dirname(__file__))
import _planted as P  # noqa: E402

R, N = 8, 16


@pytest.fixture(scope="module")
def setup():
  tapped, acc = P.train(seed=0, n=384, steps=250)
  assert acc > 0.95, acc  # the class is learnable from the cross
  rng = np.random.default_rng(5)
  crosses = P.background(rng, N)
  P.stamp(rng, crosses, P.CROSS)
  conc = np.stack([crosses, P.background(rng, N)])  # concept 0: the cross; 1: random images
  rand = P.background(rng, R * N).reshape(R, N, P.HW, P.HW, 1)
  x, y = P.dataset(7, 48)
  xc = jnp.asarray(x[y == 1])
  res = concepts.tcav(tapped, xc, 1, jnp.asarray(conc), jnp.asarray(rand), layer="block2",
                      key=jax.random.key(0))
  return tapped, xc, jnp.asarray(conc), jnp.asarray(rand), res


def test_planted_concept_is_significant_and_random_concept_is_not(setup):
  *_, res = setup
  assert res.scores.shape == (2, R) and res.random_scores.shape == (R,)
  assert res.alpha == pytest.approx(0.05 / 2)  # Bonferroni over the 2 concepts
  # The cross raises the class-1 logit for every example along every CAV.
  assert res.scores[0].min() > 0.9, res.scores
  assert res.accuracies[0].mean() > 0.9, res.accuracies  # a real, separable concept
  assert res.significant[0] and res.p_values[0] < 0.01, res.p_values
  # Random images against random images: chance accuracy, and no significance.
  assert not res.significant[1] and res.p_values[1] > 0.05, res.p_values
  assert res.accuracies[1].mean() < 0.8, res.accuracies
  assert np.allclose(np.linalg.norm(res.cavs, axis=-1), 1, atol=1e-5)


def test_deterministic_under_key_chunked_equals_unchunked_one_compile(setup):
  tapped, xc, conc, rand, res = setup
  calls = []

  def forward(x, taps=None):
    calls.append(1)
    return tapped(x, taps)

  counted = saljax.Tapped(forward, tapped.layer_names)
  kw = dict(layer="block2", key=jax.random.key(0))
  a = concepts.tcav(counted, xc, 1, conc, rand, batch_size=5, **kw)
  n = len(calls)
  b = concepts.tcav(counted, xc + 0.01, 1, conc + 0.01, rand, batch_size=5, **kw)
  assert len(calls) == n, "a second call of the same shapes traced the model again"
  # Chunks of 5 examples against the automatic chunk: the same numbers.
  np.testing.assert_allclose(a.cavs, res.cavs, atol=1e-5)
  np.testing.assert_array_equal(a.scores, res.scores)
  np.testing.assert_array_equal(a.random_scores, res.random_scores)
  assert not np.allclose(a.cavs, b.cavs)  # the inputs matter
  c = concepts.tcav(tapped, xc, 1, conc, rand, layer="block2", key=jax.random.key(1))
  assert not np.allclose(c.accuracies, res.accuracies) or not np.allclose(c.cavs, res.cavs)


def test_train_cavs_recovers_a_known_direction():
  # Two Gaussian clouds 4 sigma apart along u; three runs at once.
  k = jax.random.split(jax.random.key(3), 3)
  d = 20
  u = jax.random.normal(k[0], (3, d))
  u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  neg = jax.random.normal(k[1], (3, 40, d))
  pos = jax.random.normal(k[2], (3, 40, d)) + 4.0 * u[:, None]
  cavs, acc = concepts.train_cavs(pos, neg, key=jax.random.key(0))
  cos = (cavs * u).sum(-1)
  assert cos.min() > 0.85, cos  # points towards the positive cloud, along u
  assert acc.min() >= 0.9, acc
  # Without a held-out split (the same rows fit), swapping the sets flips the CAV.
  full, _ = concepts.train_cavs(pos, neg, key=jax.random.key(0), test_split=0.0)
  swapped, _ = concepts.train_cavs(neg, pos, key=jax.random.key(0), test_split=0.0)
  np.testing.assert_allclose(swapped, -full, atol=1e-4)


def test_tcav_scores_of_known_gradients():
  g = jnp.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
  sign, mag = concepts.tcav_scores(g, jnp.array([[1.0, 0.0], [0.0, -1.0]]))
  np.testing.assert_allclose(sign, [0.5, 0.0])
  np.testing.assert_allclose(mag, [3.0 / 4.0, 0.0])


def test_bad_input_is_refused_before_work(setup):
  tapped, xc, conc, rand, _ = setup
  with pytest.raises(ValueError, match="at least 2 random sets"):
    concepts.tcav(tapped, xc, 1, conc, rand[:1], layer="block2", key=jax.random.key(0))
  with pytest.raises(ValueError, match="concepts: expected sets of images"):
    concepts.tcav(tapped, xc, 1, conc[0], rand, layer="block2", key=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown layer"):
    concepts.tcav(tapped, xc, 1, conc, rand, layer="nope", key=jax.random.key(0))
  with pytest.raises(ValueError, match="alpha"):
    concepts.tcav(tapped, xc, 1, conc, rand, layer="block2", key=jax.random.key(0), alpha=2.0)
  with pytest.raises(ValueError, match="train_cavs"):
    concepts.train_cavs(jnp.zeros((2, 4, 3)), jnp.zeros((3, 4, 3)), key=jax.random.key(0))


def test_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_sharded_concepts.py")
  res = subprocess.run([sys.executable, script, "tcav"], capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == {"scores", "magnitudes", "random_scores", "cavs", "p_values"}
  assert max(diffs.values()) < 1e-5, diffs
