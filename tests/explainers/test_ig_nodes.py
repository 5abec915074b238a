"""Integrated gradients' node placement (the adaptive rule) and the
quasi-Monte Carlo draws of RISE masks and SmoothGrad noise, checked on models
whose integrals are known."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.explainers import gradients as G

from _tiny_models import tiny_cnn

# Sigmoid steps along the path: with baseline 0 and x = 1 the path's mean
# input is alpha, so F(alpha) = sum_i h_i sigmoid(k_i (alpha - c_i)) and the
# exact integral of dF/dalpha is F(1) - F(0), which the gap is measured against.
STEPS_K = jnp.array([40.0, 60.0, 20.0])
STEPS_C = jnp.array([0.6, 0.3, 0.75])
STEPS_H = jnp.array([1.0, 0.7, -0.5])


def _steps_model(x):
  s = x.reshape(x.shape[0], -1).mean(1)
  out = (STEPS_H * jax.nn.sigmoid(STEPS_K * (s[:, None] - STEPS_C))).sum(1)
  return jnp.stack([out, -out], -1)


def _gap(rule, steps, x, **kw):
  _, gap = saljax.integrated_gradients(_steps_model, x, 0, steps=steps, rule=rule,
                                       return_delta=True, **kw)
  return np.abs(np.asarray(gap))


def test_adaptive_beats_gauss_legendre_at_16_and_shrinks_with_steps():
  x = jnp.ones((1, 4, 4, 3))
  gl16 = _gap("gauss_legendre", 16, x).max()
  ad = {n: _gap("adaptive", n, x).max() for n in (8, 16, 32)}
  assert gl16 > 1e-2, gl16  # the case is hard for 16 Gauss-Legendre nodes: the test can fail
  assert ad[16] < 0.5 * gl16, (ad, gl16)
  assert ad[32] < ad[16] < ad[8], ad


def test_every_rule_reports_its_gap_and_the_gap_shrinks():
  x = jnp.ones((2, 4, 4, 3)) * jnp.array([1.0, 0.8])[:, None, None, None]
  for rule in G.RULES:
    coarse, fine = _gap(rule, 8, x).max(), _gap(rule, 64, x).max()
    assert fine < coarse, (rule, coarse, fine)


def test_adaptive_completeness_on_a_tiny_cnn():
  _, _, f = tiny_cnn((2, 8, 8, 3))
  x = 3.0 * jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
  t = jnp.array([1, 3])
  _, gap = saljax.integrated_gradients(f, x, t, steps=32, rule="adaptive", return_delta=True)
  delta = G.M.target_logit(G.M.as_model(f), x, t) - G.M.target_logit(G.M.as_model(f), 0 * x, t)
  assert float(jnp.abs(delta).min()) > 0.05  # a nonzero change to account for
  np.testing.assert_allclose(gap, 0.0, atol=2e-3 * float(jnp.abs(delta).max()))


@pytest.mark.parametrize("steps", [1, 3, 4, 9, 16, 50])
def test_adaptive_nodes_integrate_polynomials_for_any_guide(steps):
  values = jax.random.normal(jax.random.key(steps), (3, 9)).cumsum(-1) ** 2
  a, w = G.path_nodes(steps, "adaptive", values)
  assert a.shape == w.shape == (3, steps)
  assert bool((w > 0).all()) and bool(((a > 0) & (a < 1)).all())
  exact = 2 * min(steps, G.ADAPTIVE_PANEL) - 1
  for k in range(exact + 1):
    np.testing.assert_allclose((w * a ** k).sum(-1), 1.0 / (k + 1), rtol=2e-5, atol=1e-6)
  if steps <= G.ADAPTIVE_PANEL:  # one degree more is not exact: the claim is sharp
    k = exact + 1
    assert np.abs((w * a ** k).sum(-1) - 1.0 / (k + 1)).max() > 1e-5
  # A flat guide gives equal panels, the nodes `path_nodes` returns without values.
  a0, w0 = G.path_nodes(steps, "adaptive")
  af, wf = G.path_nodes(steps, "adaptive", jnp.zeros((1, 9)))
  np.testing.assert_allclose(af[0], a0, atol=1e-6)
  np.testing.assert_allclose(wf[0], w0, atol=1e-6)
  with pytest.raises(ValueError, match="only rule='adaptive'"):
    G.path_nodes(steps, "left", values)


def test_adaptive_nodes_follow_the_change_of_the_logit():
  # All of the change in the third of eight segments: most nodes go there.
  values = jnp.array([[0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
  a, _ = G.path_nodes(16, "adaptive", values)
  inside = int(((a >= 2 / 8) & (a <= 3 / 8)).sum())
  assert inside >= 8, np.asarray(a)  # uniform placement would put 2 there


def test_per_example_nodes_differ_and_match_per_example_calls():
  x = jnp.ones((3, 4, 4, 3)) * jnp.array([1.0, 0.7, 1.3])[:, None, None, None]
  values = G.path_values(_steps_model, x, 0)
  assert values.shape == (3, G.DEFAULT_GUIDE + 1)
  a, _ = G.path_nodes(16, "adaptive", values)
  assert not np.allclose(a[0], a[1], atol=1e-3) and not np.allclose(a[1], a[2], atol=1e-3)
  together = saljax.integrated_gradients(_steps_model, x, 0, steps=16, rule="adaptive")
  for i in range(3):
    alone = saljax.integrated_gradients(_steps_model, x[i:i + 1], 0, steps=16, rule="adaptive")
    np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-5, atol=1e-7)


def test_adaptive_chunked_equals_unchunked(mlp_model, images):
  t = jnp.array([1, 2, 0])
  full = saljax.integrated_gradients(mlp_model, 3 * images, t, steps=12, rule="adaptive",
                                     batch_size=None)
  for bs in (1, 5, 12):
    part = saljax.integrated_gradients(mlp_model, 3 * images, t, steps=12, rule="adaptive",
                                       batch_size=bs)
    np.testing.assert_allclose(part, full, rtol=1e-5, atol=1e-6)


def test_adaptive_cost_counts_the_guide_and_compiles_once(mlp_model, images):
  entry = saljax.explainers.entry("integrated_gradients")
  assert entry.cost(steps=16, rule="adaptive") == 16 + G.DEFAULT_GUIDE + 1
  assert entry.cost(steps=16, rule="adaptive", guide=4) == 16 + 5
  assert entry.cost(steps=16, rule="gauss_legendre") == 16
  traces = []

  def f(x):
    traces.append(x.shape)
    return mlp_model(x)

  t = jnp.array([0, 1, 2])
  saljax.integrated_gradients(f, images, t, steps=8, rule="adaptive")
  n = len(traces)
  saljax.integrated_gradients(f, images + 1.0, t, steps=8, rule="adaptive")
  assert len(traces) == n, "a second call of the same shape retraced the model"
  with pytest.raises(ValueError, match="guide"):
    saljax.integrated_gradients(f, images, t, rule="adaptive", guide=0)


# ----------------------------------------------------------------------------
# Quasi-Monte Carlo draws.

from saljax.explainers import _qmc as QMC  # noqa: E402
from saljax.explainers import perturbation as P  # noqa: E402


def test_sobol_directions_give_scipys_points_and_the_scramble_keeps_the_balance():
  from scipy.stats import qmc
  d, n = 5, 64
  v = QMC.sobol_directions(d).astype(np.uint64)
  mine = np.stack([np.bitwise_xor.reduce(v[:, [j for j in range(30) if i >> j & 1]], axis=1)
                   if i else np.zeros(d, np.uint64) for i in range(n)]) / 2.0 ** 30
  ref = qmc.Sobol(d, scramble=False).random(n)
  assert {tuple(r) for r in np.round(mine, 9)} == {tuple(r) for r in np.round(ref, 9)}
  for seed in range(3):
    scramble = QMC.scrambled_sobol(jax.random.key(seed), d)
    pts = np.asarray(jax.vmap(lambda i: QMC.sobol_point(scramble, i))(jnp.arange(n)))
    # Every coordinate puts one point in each of the 64 strata (i.i.d. draws would not).
    assert all(len(np.unique(np.floor(pts[:, j] * n))) == n for j in range(d))
  with pytest.raises(ValueError, match="21201"):
    QMC.sobol_directions(QMC.SOBOL_MAX_DIM + 1)


def test_qmc_rise_masks_keep_the_requested_probability():
  for p in (0.3, 0.5):
    for seed in range(3):
      u = P._rise_uniforms(jax.random.key(seed), 4 * 4 + 2, 1024, "qmc")
      grid = np.asarray(jax.vmap(u)(jnp.arange(1024)))[:, :16] < p
      # Each cell is kept in p of the 1024 masks up to one mask.
      np.testing.assert_allclose(grid.mean(0), p, atol=1.01 / 1024)
    m = P.rise_masks(jax.random.key(0), 1024, (16, 16), 4, p)
    assert abs(float(m.mean()) - p) < 0.005
  mc = P.rise_masks(jax.random.key(0), 1024, (16, 16), 4, 0.3, sampler="mc")
  assert not np.allclose(mc, P.rise_masks(jax.random.key(0), 1024, (16, 16), 4, 0.3))


def _linear16():
  w = jax.random.normal(jax.random.key(5), (16, 16, 3))
  return lambda x: jnp.stack([(x * w).sum((1, 2, 3)), jnp.zeros(x.shape[0])], -1)


def test_qmc_rise_has_lower_variance_at_equal_masks():
  f = _linear16()
  x = jax.random.normal(jax.random.key(3), (1, 16, 16, 3))

  def spread(sampler):
    maps = [P.rise(f, x, 0, key=jax.random.key(k), masks=128, cells=4, score="logit",
                   sampler=sampler) for k in range(8)]
    return float(np.var(np.stack(maps), 0).mean())

  mc, qmc = spread("mc"), spread("qmc")
  assert qmc < 0.5 * mc, (qmc, mc)  # measured about a tenth


def test_qmc_rise_chunking_masks_and_compiles():
  f = _linear16()
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  t = jnp.array([0, 0])
  a = P.rise(f, x, t, key=KEY_Q, masks=100, cells=4, score="logit", batch_size=7)
  b = P.rise(f, x, t, key=KEY_Q, masks=100, cells=4, score="logit", batch_size=None)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  m = P.rise_masks(KEY_Q, 100, (16, 16), 4, 0.5)
  want = jnp.einsum("nb,nhw->bhw", jax.vmap(lambda mi: f(x * mi[None, :, :, None])[:, 0])(m), m)
  np.testing.assert_allclose(a[..., 0], want / 50.0, rtol=1e-4, atol=1e-3)
  traces = []

  def g(z):
    traces.append(1)
    return f(z)

  P.rise(g, x, t, key=KEY_Q, masks=16, cells=4)
  n = len(traces)
  P.rise(g, x + 1.0, t, key=jax.random.key(9), masks=16, cells=4)
  assert len(traces) == n


KEY_Q = jax.random.key(11)


def test_qmc_smoothgrad_noise_is_stratified_per_element_and_per_example():
  n, shape = 16, (3, 4)
  rule = QMC.lattice(jax.random.key(0), n, shape)
  u = np.asarray(jax.vmap(lambda s: QMC.lattice_point(rule, s, n))(jnp.arange(n)))
  strata = np.floor(u * n).reshape(n, -1)
  assert all(len(set(strata[:, j])) == n for j in range(strata.shape[1]))
  # exact s z mod n for large n (no uint32 overflow)
  big = 999983
  z, shift = QMC.lattice(jax.random.key(1), big, (5,))
  got = np.asarray(QMC.lattice_point((z, shift), big - 1, big))
  want = np.mod(np.asarray(z, np.int64) * (big - 1) % big / big + np.asarray(shift), 1.0)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_qmc_smoothgrad_lower_variance_prefix_and_chunking(mlp_model, images):
  t = jnp.array([0, 1, 2])

  def spread(sampler):
    maps = [saljax.smoothgrad(mlp_model, images, t, key=jax.random.key(k), samples=16,
                              noise_level=0.3, sampler=sampler) for k in range(8)]
    return float(np.var(np.stack(maps), 0).mean())

  assert spread("qmc") < 0.95 * spread("mc")  # measured 0.64 to 0.83
  key = jax.random.key(4)
  full = saljax.smoothgrad(mlp_model, images, t, key=key, samples=10)
  # Example b's noise comes from fold_in(key, b): a prefix batch gives the same maps.
  np.testing.assert_allclose(saljax.smoothgrad(mlp_model, images[:2], t[:2], key=key, samples=10),
                             full[:2], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(saljax.smoothgrad(mlp_model, images, t, key=key, samples=10,
                                               batch_size=3), full, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="sampler"):
    saljax.smoothgrad(mlp_model, images, t, key=key, sampler="sobol")


def test_adaptive_evaluations_are_the_rows_the_model_sees(mlp_model, images):
  rows = [0]

  def count(x):
    rows[0] += x.shape[0]

  def f(x):
    jax.debug.callback(count, x[:, 0, 0, 0])
    return mlp_model(x)

  entry = saljax.explainers.entry("integrated_gradients")
  for opts in ({"steps": 8, "rule": "adaptive", "guide": 4}, {"steps": 6, "rule": "adaptive"}):
    rows[0] = 0
    jax.block_until_ready(saljax.integrated_gradients(f, images, jnp.array([0, 1, 2]), **opts))
    jax.effects_barrier()
    assert rows[0] / images.shape[0] == entry.cost(f, images, **opts), (opts, rows[0])


def test_qmc_rise_over_feature_groups_sobol_and_past_sobols_dimensions():
  w = jax.random.normal(jax.random.key(6), (40,))
  f = lambda x: jnp.stack([x @ w, jnp.zeros(x.shape[0])], -1)
  x = jax.random.normal(jax.random.key(7), (1, 40))

  def spread(sampler):
    maps = [P.rise(f, x, 0, key=jax.random.key(k), masks=64, segments="elements", score="logit",
                   sampler=sampler) for k in range(8)]
    return float(np.var(np.stack(maps), 0).mean())

  assert spread("qmc") < 0.85 * spread("mc")  # measured 0.70: 40 binary groups gain less than the grid
  # Past 21201 groups the draws come from a shifted lattice: each group is
  # kept in exactly p of the masks.
  d = QMC.SOBOL_MAX_DIM + 9
  u = np.asarray(jax.vmap(P._rise_uniforms(jax.random.key(0), d, 8, "qmc"))(jnp.arange(8)))
  np.testing.assert_array_equal((u < 0.5).sum(0), 4)
