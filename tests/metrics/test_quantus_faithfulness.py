"""Parity of the faithfulness metrics with Quantus 0.6 on a small CNN and its torch twin.

Every twin in experiments/_quantus/faithfulness.py runs saljax and Quantus on
the same weights, attributions and random draws; they agree within the twin's
`atol`, or the twin documents why Quantus differs from the paper and the test
asserts that documented behaviour and the paper's version on a known answer.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from experiments._quantus import faithfulness as QF
from experiments._quantus import twins
from _twin import small_twin, to_nchw

TWINS = {t.metric: t for t in QF.TWINS}
SIZE = 4  # 16 pixels: Quantus' per-pixel loops stay short


@pytest.fixture(scope="module")
def case():
  f, net, x, xc, y = small_twin(size=SIZE)
  # A signed map that differs across channels: the twins must reduce it as saljax does.
  a = jax.random.normal(jax.random.key(3), x.shape)
  return f, net, x, xc, y, a


def _run(twin, case):
  f, net, x, xc, y, a = case
  ctx = twin.context(x, y, 0) if twin.context else {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    s = np.asarray(twin.run_saljax(f, x, a, y, **ctx), np.float64)
    q = np.asarray(twin.run_quantus(net, xc, to_nchw(a), y, **ctx), np.float64)
  return s, q


def test_every_quantus_faithfulness_class_has_a_twin():
  import quantus.metrics.faithfulness as qf
  classes = {n for n in dir(qf) if isinstance(getattr(qf, n), type)}
  # BatchSufficiency is held by the sufficiency twin (test below).
  assert classes - {"BatchSufficiency"} == {t.quantus for t in QF.TWINS}
  assert set(TWINS) <= set(twins())
  for t in QF.TWINS:
    assert t.metric in saljax.metrics.names("faithfulness"), t.metric


@pytest.mark.parametrize("name", sorted(n for n, t in TWINS.items() if not t.differs))
def test_agrees_with_quantus(name, case):
  twin = TWINS[name]
  s, q = _run(twin, case)
  assert s.shape == q.shape, (s.shape, q.shape)
  assert np.isfinite(s).all()
  np.testing.assert_allclose(s, q, rtol=0, atol=twin.atol, err_msg=name)


def test_monotonicity_differs_as_documented(case, region):
  """Quantus never restores the input (monotonicity.py L350): all True. The paper
  (AIX360) restores features from x: the region model's target-0 evidence is
  added monotonically (1), the opposite class's score only falls (0)."""
  s, q = _run(TWINS["monotonicity"], case)
  assert (q == 1).all()
  assert (s == 0).any()  # saljax finds non-monotone curves on the same case
  f, w, x = region
  a = x * w
  one = saljax.metrics.monotonicity(f, x, a, 0)
  zero = saljax.metrics.monotonicity(f, x, a, 1)
  np.testing.assert_array_equal(one, 1.0)
  np.testing.assert_array_equal(zero, 0.0)


def test_sensitivity_n_differs_as_documented(case, linear):
  """Quantus' SensitivityN gives one correlation per removal step across the
  batch (sensitivity_n.py L330-333); the paper's is per example and is exactly 1
  for gradient * input on a linear model (Ancona et al. 2018, Prop. 1)."""
  f_, net, x_, xc, y, a_ = case
  s, q = _run(TWINS["sensitivity_n"], case)
  assert s.shape == (x_.shape[0], 2)
  # One number per step: Quantus keeps int(0.8 * H * W // features_in_step) steps
  # (sensitivity_n.py L323), whatever the batch.
  assert q.shape == (int(0.8 * SIZE * SIZE // 3),)
  f, wm, x = linear
  t = jnp.array([0, 2, 1])
  gi = x * wm[:, t].T.reshape(x.shape)
  out = saljax.metrics.sensitivity_n(f, x, gi, t, key=jax.random.key(0), samples=16,
                                     n_values=(1, 5, 20))
  np.testing.assert_allclose(out["curve"], 1.0, atol=1e-5)


def test_batch_sufficiency_fails_on_batches(case):
  """Quantus' BatchSufficiency computes what Sufficiency does, but passes
  x_batch[0].shape to shape_input (sufficiency.py L264): any batch of more than
  one example fails to reshape. Sufficiency is the twin."""
  import quantus
  f, net, x, xc, y, a = case
  m = quantus.BatchSufficiency(disable_warnings=True, display_progressbar=False)
  with pytest.raises(ValueError, match="reshape"):
    m(model=net, x_batch=xc, y_batch=y, a_batch=to_nchw(a), device="cpu", channel_first=True,
      batch_size=len(xc))


def test_sufficiency_agrees_on_a_case_with_neighbours(region):
  """The shared case is degenerate for sufficiency (an untrained CNN predicts one
  class, random maps are about equidistant); here two pairs of near-equal maps,
  one pair split across classes, on the one-region model and its torch twin."""
  import torch
  f, w, x = region
  x = x.at[3].set(-x[3])  # row 3 predicted as class 1
  v, u = (jax.random.normal(jax.random.key(i), (8, 8, 3)) for i in (1, 2))
  a = jnp.stack([v, v, u, u]) + 1e-3 * jax.random.normal(jax.random.key(3), x.shape)
  w_t = torch.from_numpy(np.asarray(w).transpose(2, 0, 1).copy())

  class Region(torch.nn.Module):
    def forward(self, xt):
      s = (xt * w_t).sum((1, 2, 3))
      return torch.stack([s, -s], 1)

  twin = TWINS["sufficiency"]
  y = np.zeros(4, int)
  s = twin.run_saljax(f, x, a, y)
  q = twin.run_quantus(Region().eval(), to_nchw(x), to_nchw(a), y)
  np.testing.assert_allclose(s, [1, 1, 0, 0])
  np.testing.assert_allclose(q, s, atol=twin.atol)


def test_irof_slic_segments_agree_with_quantus(case):
  """segments="slic" segments each image as Quantus' default IROF does."""
  f, net, x, xc, y, a = case
  twin = TWINS["irof"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    s = twin.run_saljax(f, x, a, y, segments="slic")
    q = twin.run_quantus(net, xc, to_nchw(a), y, segments=None)
  np.testing.assert_allclose(s, q, atol=twin.atol)
