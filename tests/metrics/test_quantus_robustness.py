"""Parity with Quantus 0.6 for every robustness and axiomatic metric.

Each twin (experiments/_quantus/robustness.py) runs saljax and Quantus on the
same CNN (`small_twin`: flax and torch, same weights), the same attributions,
the same re-explanations (torch autograd gradients on Quantus' side) and the
same noise draws (saljax's, fed to Quantus' perturb_func). Where Quantus departs
from the paper the twin says why and the test checks the paper's version on a
known answer instead.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from experiments._quantus import robustness as QR
from _twin import small_twin, to_nchw

QUANTUS_NAMES = {"AvgSensitivity", "Consistency", "Continuity", "LocalLipschitzEstimate",
                 "MaxSensitivity", "RelativeInputStability", "RelativeOutputStability",
                 "RelativeRepresentationStability", "Completeness", "InputInvariance",
                 "NonSensitivity"}
AGREE = [t for t in QR.TWINS if not t.differs]


@pytest.fixture(scope="module")
def twin():
  f, net, x, xc, y = small_twin()
  a = np.asarray(saljax.gradient(f, x, jnp.asarray(y)))
  return f, net, np.asarray(x), xc, y, a


def test_every_quantus_robustness_and_axiomatic_metric_has_a_twin():
  import quantus
  assert {t.quantus for t in QR.TWINS} == QUANTUS_NAMES
  for name in QUANTUS_NAMES:  # the names are Quantus 0.6's
    assert hasattr(quantus, name), name
  assert {t.metric for t in QR.TWINS} <= set(saljax.metrics.names())


@pytest.mark.parametrize("t", AGREE, ids=lambda t: t.metric)
def test_parity(twin, t):
  f, net, x, xc, y, a = twin
  ctx = t.context(x, y, 0) if t.context else {}
  s = t.run_saljax(f, x, a, y, **ctx)
  q = t.run_quantus(net, xc, to_nchw(a), y, **ctx)
  assert s.shape == q.shape == (x.shape[0],)
  assert np.isfinite(q).all(), "a perturbation changed the prediction: Quantus returned NaN"
  np.testing.assert_allclose(s, q, rtol=t.rtol, atol=t.atol)
  if t.metric == "consistency":  # the arranged case (see the twin)
    np.testing.assert_allclose(s, [0.5, 0.5, 0.0, 0.0], atol=1e-6)
  elif t.metric == "non_sensitivity":
    # Nearly every zeroed value (a quarter of them) is a used feature given no
    # relevance; the full gradient map has almost no violations.
    assert (np.abs(s - x[0].size // 4) <= 5).all()
  else:
    assert (s > 0).all() and np.ptp(s) > 0  # a real number per row, not a constant


def test_sampling_twins_feed_quantus_the_metric_draws(twin):
  # The fed draws are those the metric makes: with a different key saljax
  # disagrees with the Quantus run on the twin's draws.
  f, net, x, xc, y, a = twin
  t = next(t for t in QR.TWINS if t.metric == "max_sensitivity")
  ctx = t.context(x, y, 0)
  q = t.run_quantus(net, xc, to_nchw(a), y, **ctx)
  other = t.run_saljax(f, x, a, y, **dict(ctx, seed=1))
  assert np.abs(other - q).max() > 1e-3


def test_input_invariance_differs_and_the_paper_version_holds(twin):
  f, net, x, xc, y, a = twin
  t = next(t for t in QR.TWINS if t.metric == "input_invariance")
  assert "pytorch_model.py" in t.differs
  # Quantus: its shifted model is not the original model on a padded CNN, so
  # even the gradient (invariant by construction) fails.
  np.testing.assert_array_equal(t.run_quantus(net, xc, to_nchw(a), y), 0.0)
  # The paper: f'(x + s) = f(x) for every x, so the gradient is the same map
  # and gradient x input (which multiplies by the shifted input) is not.
  np.testing.assert_array_equal(t.run_saljax(f, x, a, y), 1.0)
  gxi = saljax.gradient_x_input(f, jnp.asarray(x), jnp.asarray(y))
  out = saljax.metrics.input_invariance(f, jnp.asarray(x), gxi, jnp.asarray(y),
                                        explainer=saljax.gradient_x_input)
  np.testing.assert_array_equal(out, 0.0)


def test_completeness_quantus_boolean_is_exact_equality(twin):
  # Quantus returns sum(a) == f(x) - f(baseline) compared exactly: False for a
  # float32 gradient, True only where both sides are exactly equal (here a
  # map summing to exactly 0 on a constant image, whose "black" baseline is
  # the image itself; Quantus refuses an all-zero map).
  f, net, x, xc, y, a = twin
  same, gap = QR.quantus_completeness(net, xc, to_nchw(a), y)
  assert not same.any() and (gap > 1e-3).all()
  flat = np.full_like(xc, 0.3)
  zero_sum = np.zeros_like(xc)
  zero_sum[:, 0, 0, 0], zero_sum[:, 1, 2, 3] = 0.7, -0.7
  same, gap = QR.quantus_completeness(net, flat, zero_sum, y)
  assert same.all() and (gap == 0).all()
  out = saljax.metrics.completeness(f, jnp.full(x.shape, 0.3),
                                    jnp.asarray(zero_sum.transpose(0, 2, 3, 1)), jnp.asarray(y),
                                    baseline="min")
  np.testing.assert_array_equal(out, 0.0)
