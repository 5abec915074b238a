"""MeGe and ReCo (saljax.metrics.generalizability): known answers, and the
Xplique convention on a hand-computed case."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from saljax import metrics

# Two 4-pixel maps with Spearman correlation exactly 0 (sum of squared rank
# differences 10 = n (n^2 - 1) / 12): their distance is sqrt(1 - 0) = 1.
A = np.array([1.0, 2.0, 3.0, 4.0])
B = np.array([3.0, 1.0, 4.0, 2.0])


def test_uncorrelated_pair_has_distance_one():
  assert spearmanr(A, B)[0] == 0.0


def test_identical_explanations_give_mege_one():
  e = np.broadcast_to(jax.random.normal(jax.random.key(0), (6, 5, 5)), (3, 6, 5, 5))
  correct = np.ones((3, 6), bool)
  out = metrics.mege_reco(np.asarray(e), correct)
  assert out["mege"] == pytest.approx(1.0, abs=1e-6)
  assert out["equal"] == 3 * 6 and out["different"] == 0
  assert out["reco"] == 0.0  # nothing to separate


def test_separated_sets_give_reco_one_and_mege_from_the_mean_distance():
  """Models 0 and 1 are right and explain alike up to sign (|rho| = 1, d = 0);
  model 2 is wrong on example 0 and explains it uncorrelated (d = 1), and right
  on example 1 with a half-correlated map."""
  e = np.zeros((3, 2, 2, 2), np.float32)
  e[:, 0] = A.reshape(2, 2)
  e[1, 0] = -A.reshape(2, 2)
  e[2, 0] = B.reshape(2, 2)
  e[:, 1] = A.reshape(2, 2)
  c = np.array([2.0, 1.0, 4.0, 3.0])  # rho(A, c) = 0.6 exactly
  e[2, 1] = c.reshape(2, 2)
  rho = spearmanr(A, c)[0]
  correct = np.array([[True, True], [True, True], [False, True]])
  out = metrics.mege_reco(e, correct)
  # S=: (0,1) on both examples (d = 0), (0,2) and (1,2) on example 1 (d = sqrt(1 - 0.6)).
  # S!=: (0,2) and (1,2) on example 0 (d = 1).
  assert (out["equal"], out["different"]) == (4, 2)
  d = np.sqrt(1 - abs(rho))
  assert out["mege"] == pytest.approx(1 / (1 + 2 * d / 4), abs=1e-6)
  assert out["reco"] == pytest.approx(1.0)
  # Xplique's loop agrees here (gamma = d: TPR = 2/2 with the two d's counted
  # nowhere, TNR = 2/2).
  x = metrics.mege_reco(e, correct, convention="xplique")
  assert x["reco"] == pytest.approx(1.0, abs=1e-6) and x["mege"] == out["mege"]


def test_reco_conventions_differ_on_a_tie_across_the_sets():
  """S= = {0, 0.5}, S!= = {0.5, 1}. Paper (d <= gamma is "equal"): gamma = 0
  gives TPR 1/2, TNR 1; gamma = 0.5 gives TPR 1, TNR 1/2: ReCo 0.5. Xplique's
  strict inequalities drop the tied 0.5 from both sets at gamma = 0.5: TPR
  1/1, TNR 1/1, ReCo 1, though no threshold separates the sets."""
  from saljax.metrics import generalizability as G
  d = jnp.array([0.0, 0.5, 0.5, 1.0])
  eq = jnp.array([True, True, False, False])
  assert float(G._reco(d, eq, ~eq, "paper")) == pytest.approx(0.5)
  assert float(G._reco(d, eq, ~eq, "xplique")) == pytest.approx(1.0, abs=1e-6)


def test_channels_are_averaged_and_constant_maps_dropped():
  e = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 3, 3, 3)))
  correct = np.ones((2, 4), bool)
  e2 = e.copy()
  e2[1, 0] = 0.0  # a constant map: no correlation, left out (Xplique drops NaN)
  full = metrics.mege_reco(e, correct)
  out = metrics.mege_reco(e2, correct)
  assert full["equal"] == 4 and out["equal"] == 3
  want = [np.sqrt(1 - abs(spearmanr(e[0, n].mean(-1).ravel(), e[1, n].mean(-1).ravel())[0]))
          for n in range(4)]
  assert full["mege"] == pytest.approx(1 / (1 + np.mean(want)), abs=1e-5)
  assert out["mege"] == pytest.approx(1 / (1 + np.mean(want[1:])), abs=1e-5)


def test_folds_restrict_pairs_to_their_held_out_examples():
  e = np.asarray(jax.random.normal(jax.random.key(2), (3, 6, 4, 4)))
  correct = np.ones((3, 6), bool)
  folds = np.array([0, 0, 1, 1, 2, 2])
  out = metrics.mege_reco(e, correct, folds=folds)
  # Each example is compared by the 2 pairs that include its fold's model.
  assert out["equal"] == 6 * 2
  assert metrics.mege(e, correct, folds=folds) == out["mege"]
  assert metrics.reco(e, correct, folds=folds) == out["reco"]


def test_bad_input_is_clear():
  e = np.zeros((3, 4, 5, 5), np.float32)
  with pytest.raises(ValueError, match="correct: expected bool"):
    metrics.mege_reco(e, np.ones((3, 5), bool))
  with pytest.raises(ValueError, match="at least 2 models"):
    metrics.mege_reco(e[:1], np.ones((1, 4), bool))
  with pytest.raises(ValueError, match="folds"):
    metrics.mege_reco(e, np.ones((3, 4), bool), folds=np.array([0, 1, 2, 3]))
  with pytest.raises(ValueError, match="S= is empty"):
    metrics.mege_reco(e + np.arange(25.0).reshape(5, 5), np.zeros((3, 4), bool))
  with pytest.raises(ValueError, match="convention"):
    metrics.mege_reco(e, np.ones((3, 4), bool), convention="other")
