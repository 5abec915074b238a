"""Parity of saljax's localization metrics with Quantus 0.6 (experiments/_quantus/localization.py).

Every twin runs on the small CNN of `_twin` with the same attribution
(gradient x input) and the same ground truth, and must agree within the
twin's tolerance. Where Quantus computes something else (`differs`), the
twin is compared where both definitions coincide and saljax's version is
checked on a case with a known answer.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from experiments._quantus import localization as QL
from _quantus_parity import quantus_metrics, quiet
from _twin import small_twin, to_nchw

TWINS = {t.metric: t for t in QL.TWINS}
# Twins compared on non-negative maps only (Quantus sums signed relevance there).
NONNEGATIVE = {"relevance_mass"}


@pytest.fixture(scope="module")
def setup():
  f, net, x, x_nchw, y = small_twin()
  a = saljax.explainers.gradient(f, x, y) * x
  return f, net, x, x_nchw, y, a


def test_every_quantus_localisation_metric_has_a_twin():
  assert {t.quantus for t in QL.TWINS} == quantus_metrics("localisation")
  assert set(TWINS) <= set(saljax.metrics.names("localization"))


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("seed", [0, 1])
def test_parity(setup, name, seed):
  f, net, x, x_nchw, y, a = setup
  twin = TWINS[name]
  a = jnp.abs(a) if name in NONNEGATIVE else a
  ctx = twin.context(x, y, seed)
  ours = twin.run_saljax(f, x, a, y, **ctx)
  theirs = quiet(twin.run_quantus, net, x_nchw, to_nchw(a), y, **ctx)
  assert ours.shape == theirs.shape == (4,)
  np.testing.assert_allclose(ours, theirs, atol=twin.atol)
  # The ground truth matters: the scores are not all equal (a vacuous pass).
  assert np.ptp(ours) > 1e-3, ours


def test_relevance_mass_on_signed_maps_counts_positive_relevance(setup):
  """Quantus 0.6 (relevance_mass_accuracy.py:279-280) sums signed relevance; saljax
  counts positive relevance. Known answer: inside +2, outside +1 and -2."""
  f, net, x, x_nchw, y, _ = setup
  m = np.zeros((4, 8, 8), np.float32)
  m[:, 0, 0], m[:, 7, 7], m[:, 7, 6] = 2.0, 1.0, -2.0
  mask = np.zeros((4, 8, 8), bool)
  mask[:, :2, :2] = True
  ours = np.asarray(saljax.metrics.relevance_mass(f, x, jnp.asarray(m), y, mask=mask))
  np.testing.assert_allclose(ours, 2.0 / 3.0, rtol=1e-6)  # 2 / (2 + 1)
  theirs = quiet(QL.TWINS[[t.metric for t in QL.TWINS].index("relevance_mass")].run_quantus,
                 net, x_nchw, m[:, None], y, mask=mask)
  np.testing.assert_allclose(theirs, 2.0 / 1.0, rtol=1e-6)  # 2 / (2 + 1 - 2): outside [0, 1]


def test_weighted_attribution_localisation_is_the_papers(setup):
  """Kohlbrenner et al. 2020: mu_w = mu * S_tot / S_in (1 = chance). Quantus 0.6
  multiplies by a ratio of sizes that reads the whole batch (attribution_localisation.py:311,
  330). Known answer: a uniform map scores mu = area fraction and mu_w = 1."""
  import quantus
  f, net, x, x_nchw, y, _ = setup
  mask = np.zeros((4, 8, 8), bool)
  mask[:, :4, :2] = True  # area 8 / 64
  uniform = jnp.ones((4, 8, 8))
  mu = np.asarray(saljax.metrics.attribution_localisation(f, x, uniform, y, mask=mask))
  mu_w = np.asarray(saljax.metrics.attribution_localisation(f, x, uniform, y, mask=mask,
                                                            weighted=True))
  np.testing.assert_allclose(mu, 0.125, rtol=1e-6)
  np.testing.assert_allclose(mu_w, 1.0, rtol=1e-6)
  # Quantus refuses a uniform map; on a positive random map it returns the
  # unweighted ratio times 8 / x_batch[2:].size = 8 / (2 * 3 * 8 * 8), neither mu_w
  # nor a chance-scaled number.
  m = np.asarray(jax.random.uniform(jax.random.key(5), (4, 8, 8), minval=0.1, maxval=1.0))
  mu = np.asarray(saljax.metrics.attribution_localisation(f, x, jnp.asarray(m), y, mask=mask))
  np.testing.assert_allclose(mu, (m * mask).sum((1, 2)) / m.sum((1, 2)), rtol=1e-5)
  mu_w = saljax.metrics.attribution_localisation(f, x, jnp.asarray(m), y, mask=mask, weighted=True)
  np.testing.assert_allclose(mu_w, mu * 8, rtol=1e-5)
  theirs = quiet(quantus.AttributionLocalisation(weighted=True, abs=False, normalise=False,
                                                 disable_warnings=True),
                 model=net, x_batch=x_nchw, y_batch=y, a_batch=m[:, None],
                 s_batch=mask[:, None].astype(np.float32), device="cpu", channel_first=True)
  np.testing.assert_allclose(theirs, mu * 8 / (2 * 3 * 64), rtol=1e-5)
