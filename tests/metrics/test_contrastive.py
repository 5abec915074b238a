"""RFxG contrastive maps and the four contrastive / group scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.metrics import contrastive as K

KEY = jax.random.key(0)


def _model():
  """4 classes on [B, 8, 8, 1]; class k reads quadrant k linearly."""
  w = np.zeros((8, 8, 1, 4), np.float32)
  for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
    w[r:r + 4, c:c + 4, 0, k] = 1.0
  w = jnp.asarray(w)
  return lambda x: jnp.einsum("bhwc,hwck->bk", x, w), w


X = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), minval=0.2, maxval=1.0)


def test_contrastive_and_group_maps_are_linear_combinations():
  f, w = _model()
  g = saljax.explainers.gradient
  a, b = jnp.array([0, 1, 2]), jnp.array([3, 0, 1])
  cm = K.contrastive_map(g, f, X, a, contrast=b)
  np.testing.assert_allclose(cm, g(f, X, a) - g(f, X, b), atol=1e-6)
  grp = np.array([[0, 1], [2, 3], [1, -1]])
  gm = K.contrastive_map(g, f, X, group=grp)
  expected = g(f, X, jnp.array([0, 2, 1])) + g(f, X, jnp.array([1, 3, 1])) * jnp.array(
      [1, 1, 0.0])[:, None, None, None]
  np.testing.assert_allclose(gm, expected, atol=1e-6)
  vs_set = K.contrastive_map(g, f, X, a, contrast_group=np.array([2, 3]))
  np.testing.assert_allclose(vs_set, g(f, X, a) - g(f, X, jnp.full(3, 2)) - g(f, X, jnp.full(3, 3)),
                             atol=1e-6)


def test_mask_count_and_nesting():
  a = jax.random.normal(jax.random.key(2), (3, 8, 8))
  prev = None
  for alpha in K.ALPHAS:
    m = K.mask_top(X, a, alpha, fill="zeros")
    removed = np.asarray((m == 0).all(-1))
    assert (removed.reshape(3, -1).sum(1) == int(np.floor(alpha * 64))).all()
    if prev is not None:
      assert (removed >= prev).all()  # nested as alpha grows
    prev = removed


def test_ccs_prefers_contrastive_map_and_auc_rule():
  f, w = _model()
  g = saljax.explainers.gradient
  a, b = jnp.array([0, 1, 2]), jnp.array([3, 3, 0])
  good = K.contrastive_map(g, f, X, a, contrast=b) * X     # "a and not b", gradient x input
  ccs_good = K.contrastive_class_score(f, X, good, a, contrast=b)
  ccs_inv = K.contrastive_class_score(f, X, -good, a, contrast=b)
  # Removing a's evidence first lowers p_a - p_b more than removing b's evidence first.
  assert (ccs_good["score"] < ccs_inv["score"]).all()
  c = np.asarray(ccs_good["curve"])
  np.testing.assert_allclose(ccs_good["score"], np.trapezoid(c, K.ALPHAS, axis=1), rtol=1e-5)


def test_group_scores_closed_forms():
  f, w = _model()
  group = np.array([0, 1])
  a = jnp.array([0, 0, 0])
  probe = jnp.zeros((3, 8, 8))
  # A map that removes nothing relevant to the model: every curve is constant.
  flat = jnp.ones((3, 8, 8, 1))
  pgs = K.pointwise_group_score(lambda x: 0 * f(x), flat, probe, a, group=group)
  np.testing.assert_allclose(pgs["curve"], 0.0, atol=1e-6)
  # Direct formulas on one alpha grid point.
  att = jax.random.normal(jax.random.key(3), (3, 8, 8))
  kw = dict(alphas=(0.3, 0.6))
  p0 = jax.nn.softmax(f(X))
  pa = [jax.nn.softmax(f(K.mask_top(X, att, al))) for al in (0.3, 0.6)]
  d = [p - p0 for p in pa]
  pgs = K.pointwise_group_score(f, X, att, a, group=group, **kw)["curve"]
  np.testing.assert_allclose(pgs, np.stack([-(di[:, :2]).mean(1) for di in d], 1), atol=1e-6)
  cgc = K.class_group_contrastivity(f, X, att, a, group=group, **kw)["curve"]
  np.testing.assert_allclose(cgc, np.stack([0.5 * (di[:, 0] + di[:, :2].mean(1)) for di in d], 1),
                             atol=1e-6)
  cgs = K.contrastive_group_score(f, X, att, a, group=group, contrast_group=np.array([2, 3]),
                                  **kw)["curve"]
  np.testing.assert_allclose(
      cgs, np.stack([0.5 * (di[:, :2].mean(1) + di[:, 2:].mean(1)) for di in d], 1), atol=1e-6)
  ccs = K.contrastive_class_score(f, X, att, a, contrast=3, **kw)["curve"]
  np.testing.assert_allclose(ccs, np.stack([p[:, 0] - p[:, 3] for p in pa], 1), atol=1e-6)


def test_chunking_keys_and_compiles(counter):
  f, w = _model()
  model = counter(f)
  att = jax.random.normal(jax.random.key(3), (3, 8, 8, 1))
  a = K.contrastive_class_score(model, X, att, 0, contrast=1, fill="uniform", key=KEY)
  b = K.contrastive_class_score(model, X, att, 0, contrast=1, fill="uniform", key=KEY)
  np.testing.assert_array_equal(a["curve"], b["curve"])
  traces = model.traces
  K.contrastive_class_score(model, X + 1, att, 1, contrast=2, fill="uniform", key=jax.random.key(2))
  assert model.traces == traces
  c = K.contrastive_class_score(f, X, att, 0, contrast=1, fill="uniform", key=KEY, batch_size=4)
  np.testing.assert_allclose(a["curve"], c["curve"], atol=1e-6)
  for fill in ("blur", jnp.zeros((8, 8, 1))):
    assert np.isfinite(K.contrastive_class_score(f, X, att, 0, contrast=1, fill=fill)["score"]).all()


def test_errors():
  f, w = _model()
  att = jnp.ones((3, 8, 8))
  with pytest.raises(ValueError, match="contrast"):
    K.contrastive_class_score(f, X, att, 0)
  with pytest.raises(ValueError, match="group"):
    K.pointwise_group_score(f, X, att, 0, group=np.array([7]))
  with pytest.raises(ValueError, match="empty"):
    K.pointwise_group_score(f, X, att, 0, group=np.zeros(4, bool))
  with pytest.raises(ValueError, match="key"):
    K.contrastive_class_score(f, X, att, 0, contrast=1, fill="uniform")
  with pytest.raises(ValueError, match="alphas"):
    K.contrastive_class_score(f, X, att, 0, contrast=1, alphas=(0.5, 1.5))
  with pytest.raises(ValueError, match="attribution"):
    K.contrastive_class_score(f, X, jnp.ones((3, 4)), 0, contrast=1)
  assert set(saljax.metrics.names("contrastive")) == {
      "contrastive_class_score", "class_group_contrastivity", "pointwise_group_score",
      "contrastive_group_score"}
