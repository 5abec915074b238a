"""Region explainers (XRAI, LiMA) checked on models whose answers are known."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.explainers import regions as R

SEG16 = (np.arange(8)[:, None] // 2) * 4 + (np.arange(8)[None, :] // 2)  # 4 x 4 grid of 2 x 2 regions
WTS = jnp.asarray(np.random.RandomState(0).permutation(16).astype(np.float32)) / 4


def additive(x):
  """The target probability is monotone in the sum of the weights of the kept regions."""
  s = x[..., 0].reshape(x.shape[0], 4, 2, 4, 2).mean((2, 4)).reshape(x.shape[0], 16) @ WTS
  return jnp.stack([s - 8, jnp.zeros_like(s)], -1)


_K1, _K2 = jax.random.split(jax.random.key(5))
_W1 = jax.random.normal(_K1, (8 * 8 * 3, 32)) / math.sqrt(8 * 8 * 3)
_W2 = jax.random.normal(_K2, (32, 4)) * 2


def _mlp(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ _W1 * 3) @ _W2


@pytest.fixture
def mlp():
  # One function object for every test, so compiled searches are reused across tests.
  return _mlp


# ----------------------------------------------------------------------------
# LiMA.


@pytest.mark.parametrize("pending", [None, 2, 5])
def test_lima_orders_an_additive_model_by_weight(pending):
  x = jnp.ones((2, 8, 8, 3))
  out = R.lima_search(additive, x, 0, segments=SEG16, pending=pending, confidence=0.0)
  want = np.argsort(-np.asarray(WTS))
  np.testing.assert_array_equal(out["order"], np.stack([want, want]))
  # The map gives the region at rank i the value M - i.
  m = np.asarray(out["map"])[0, ..., 0]
  assert m[SEG16 == want[0]].min() == 16 and m[SEG16 == want[-1]].max() == 1


def test_lima_curves_endpoints_and_area(mlp):
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t = jnp.array([1, 2])
  out = R.lima_search(mlp, x, t, segments=SEG16, pending=4)
  p = lambda z: np.asarray(jax.nn.softmax(mlp(z)))[np.arange(2), np.asarray(t)]
  np.testing.assert_allclose(out["insertion"][:, 0], p(jnp.zeros_like(x)), rtol=1e-5)
  np.testing.assert_allclose(out["insertion"][:, -1], p(x), rtol=1e-5)
  np.testing.assert_allclose(out["deletion"][:, 0], p(x), rtol=1e-5)
  np.testing.assert_allclose(out["deletion"][:, -1], p(jnp.zeros_like(x)), rtol=1e-5)
  np.testing.assert_allclose(out["area"][:, 0], 0.0)
  np.testing.assert_allclose(out["area"][:, -1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.diff(out["area"], axis=1), 4 / 64, rtol=1e-5)
  for b in range(2):
    assert sorted(np.asarray(out["order"][b]).tolist()) == list(range(16))
  # AUC is the trapezoid over the area axis (sklearn's auc).
  from sklearn.metrics import auc
  np.testing.assert_allclose(out["insertion_auc"][0], auc(out["area"][0], out["insertion"][0]),
                             rtol=1e-5)


def test_lima_beats_random_orderings_on_insertion(mlp):
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  t = jnp.argmax(mlp(x), -1)
  out = R.lima_search(mlp, x, t, segments=SEG16, pending=4)
  rng = np.random.RandomState(0)
  orders = np.stack([np.stack([rng.permutation(16) for _ in range(2)]) for _ in range(12)])
  rand = np.stack([np.asarray(R.region_curves(mlp, x, t, SEG16, o)["insertion_auc"]) for o in orders])
  ours = np.asarray(out["insertion_auc"])
  assert np.all(ours >= rand.max(0)), (ours, rand.max(0))
  assert np.all(ours > rand.mean(0) + 0.05), (ours, rand.mean(0))
  # Deletion: removing the best regions first should hurt more than random.
  rand_del = np.stack([np.asarray(R.region_curves(mlp, x, t, SEG16, o)["deletion_auc"]) for o in orders])
  assert np.all(np.asarray(out["deletion_auc"]) < rand_del.mean(0))


def test_lima_plain_greedy_equals_pending_at_least_m(mlp):
  x = jax.random.normal(jax.random.key(3), (1, 8, 8, 3))
  a = R.lima_search(mlp, x, 0, segments=SEG16, pending=None, curves=False)["order"]
  b = R.lima_search(mlp, x, 0, segments=SEG16, pending=16, curves=False)["order"]
  np.testing.assert_array_equal(a, b)


def test_lima_examples_with_different_region_counts(mlp):
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
  seg = np.stack([SEG16, SEG16 // 2])  # 16 and 8 regions
  out = R.lima_search(mlp, x, 0, segments=seg, pending=3)
  np.testing.assert_array_equal(out["counts"], [16, 8])
  assert sorted(np.asarray(out["order"][1, :8]).tolist()) == list(range(8))
  np.testing.assert_array_equal(out["order"][1, 8:], np.arange(8, 16))  # padding last
  np.testing.assert_allclose(out["area"][1, 8:], 1.0, rtol=1e-6)
  m = np.asarray(out["map"])
  assert m[1].max() == 8 and m[1].min() == 1


def test_bidirectional_iteration_count():
  # Reference Part 2.3: floor((k - Np) / 2) + Np iterations.
  for m, npend in [(50, 8), (51, 8), (16, 4), (5, 12), (2, 1)]:
    want = (m - npend) // 2 + npend if m > npend else m
    assert R.bidirectional_iterations(m, npend) == want, (m, npend)


def test_lima_compiles_once_per_shape():
  traces = []

  def f(x):
    traces.append(1)
    return additive(x)

  x = jnp.ones((1, 8, 8, 3))
  R.lima_search(f, x, 0, segments=SEG16, pending=3, curves=False)
  n = len(traces)
  R.lima_search(f, 0.5 * x, 0, segments=SEG16, pending=3, curves=False, consistency=2.0)
  assert len(traces) == n


def test_lima_registered_map(mlp):
  x = jax.random.normal(jax.random.key(6), (1, 8, 8, 3))
  a = saljax.explainers.get("lima")(mlp, x, 0, segments=SEG16, pending=4)
  assert a.shape == x.shape
  assert sorted(np.unique(np.asarray(a)).tolist()) == list(range(1, 17))
  assert not saljax.explainers.entry("lima").stochastic


def test_lima_bad_inputs(mlp):
  x = jnp.ones((1, 8, 8, 3))
  with pytest.raises(ValueError, match="consistency: expected a non-negative weight"):
    R.lima_search(mlp, x, 0, segments=SEG16, consistency=-1.0)
  with pytest.raises(ValueError, match="pending: expected an int >= 1, got 0"):
    R.lima_search(mlp, x, 0, segments=SEG16, pending=0)
  with pytest.raises(ValueError, match="do not cover the input"):
    R.lima_search(mlp, x, 0, segments=SEG16 - 1)
  with pytest.raises(ValueError, match="order: expected shape"):
    R.region_curves(mlp, x, 0, SEG16, np.zeros((1, 3), np.int32))


def test_prior_regions_smdl_division():
  prior = jax.random.uniform(jax.random.key(9), (2, 20, 20))
  lab = R.prior_regions(prior, grid=10, cells_per_region=4)
  assert lab.shape == (2, 20, 20) and lab.min() == 0 and lab.max() == 24
  cells = np.asarray(jax.image.resize(prior, (2, 10, 10), "linear")).reshape(2, -1)
  for b in range(2):
    top4 = set(np.argsort(-cells[b])[:4].tolist())
    region0 = {r // 2 * 10 + c // 2 for r, c in zip(*np.nonzero(lab[b] == 0))}
    assert region0 == top4
    assert np.all(np.bincount(lab[b].ravel()) == 16)  # 4 cells of 2 x 2 pixels each
  # 10 x 10 cells, 3 per region: 33 regions, the leftover cell joins the last one.
  lab = R.prior_regions(prior, grid=10, cells_per_region=3)
  assert lab.max() == 32 and np.bincount(lab[0].ravel())[-1] == 16
  with pytest.raises(ValueError, match="cells_per_region: expected at most"):
    R.prior_regions(prior, grid=2, cells_per_region=5)


# ----------------------------------------------------------------------------
# XRAI.


def _xrai_given(attr, masks, **kw):
  x = jnp.zeros(attr.shape + (1,))
  f = lambda z: jnp.zeros((z.shape[0], 2)) + z.sum((1, 2, 3))[:, None]
  return np.asarray(R.xrai(f, x, 0, attribution=attr, segments=masks, **kw))[..., 0]


def test_xrai_greedy_closed_form():
  attr = jnp.zeros((1, 8, 8)).at[0, :4, :4].set(3.0).at[0, 4:, :].set(1.0)
  big = np.ones((8, 8), bool)  # everything: density of what remains
  small = np.zeros((8, 8), bool)
  small[:4, :4] = True  # density 3: picked first
  bottom = np.zeros((8, 8), bool)
  bottom[4:] = True  # density 1
  masks = np.stack([big, small, bottom])[None]
  out = _xrai_given(attr, masks, min_pixel_diff=1)[0]
  np.testing.assert_allclose(out[:4, :4], 3.0)
  # Next: bottom (density 1) beats what big adds (rows 0-3, cols 4-7: 0, plus bottom 1 -> 0.5).
  np.testing.assert_allclose(out[4:], 1.0)
  np.testing.assert_allclose(out[:4, 4:], 0.0)


def test_xrai_min_pixel_diff_and_uncovered_pixels():
  attr = jnp.arange(64.0).reshape(1, 8, 8)
  a = np.zeros((8, 8), bool)
  a[:4] = True
  tiny = np.zeros((8, 8), bool)
  tiny[7, 7] = True  # 1 new pixel < min_pixel_diff: dropped
  out = _xrai_given(attr, np.stack([a, tiny])[None], min_pixel_diff=2)[0]
  np.testing.assert_allclose(out[:4], np.arange(32.0).mean())
  # Uncovered pixels get their own mean attribution, so the sum matches the attribution's.
  np.testing.assert_allclose(out[4:], np.arange(32.0, 64.0).mean())
  np.testing.assert_allclose(out.sum(), float(attr.sum()), rtol=1e-6)


def test_xrai_default_path_with_ig():
  x = jax.random.normal(jax.random.key(7), (2, 16, 16, 3))
  w = jax.random.normal(jax.random.key(8), (16 * 16 * 3, 3))
  f = lambda z: z.reshape(z.shape[0], -1) @ w
  # resize=(32, 32) instead of PAIR's 224 keeps the host-side segmentation fast.
  a = R.xrai(f, x, jnp.array([0, 2]), steps=4, min_pixel_diff=5, resize=(32, 32))
  assert a.shape == x.shape and bool(jnp.isfinite(a).all())
  np.testing.assert_array_equal(
      a, R.xrai(f, x, jnp.array([0, 2]), steps=4, min_pixel_diff=5, resize=(32, 32)))
  masks = R.xrai_segments(x, resize=(32, 32))
  assert masks.shape[0] == 2 and masks.shape[2:] == (16, 16) and masks.any(axis=(2, 3)).sum() > 6
  # The union of each image's masks covers it.
  assert masks.any(1).all()


def test_xrai_bad_inputs():
  x = jnp.zeros((1, 8, 8, 1))
  f = lambda z: jnp.zeros((z.shape[0], 2))
  with pytest.raises(TypeError, match="boolean masks"):
    R.xrai(f, x, 0, attribution=jnp.zeros((1, 8, 8)), segments=np.zeros((1, 2, 8, 8), np.int32))
  with pytest.raises(ValueError, match=r"segments: expected masks of shape \[1, K, 8, 8\]"):
    R.xrai(f, x, 0, attribution=jnp.zeros((1, 8, 8)), segments=np.zeros((1, 2, 4, 4), bool))
  with pytest.raises(ValueError, match="attribution: expected shape"):
    R.xrai(f, x, 0, attribution=jnp.zeros((1, 4, 4)))
  with pytest.raises(ValueError, match="area_threshold"):
    R.xrai(f, x, 0, area_threshold=0.0)


def test_effectiveness_terms():
  emb = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
  d = np.asarray(R.region_distances(emb))
  np.testing.assert_allclose(d, d.T, atol=1e-6)
  np.testing.assert_allclose(np.diag(d), 0.0, atol=2e-3)  # arccos near 1 is steep in float32
  assert d.min() >= 0 and d.max() <= 1
  np.testing.assert_allclose(d[0, 1], 0.5, atol=1e-6)
  np.testing.assert_allclose(d[0, 3], 1.0, atol=1e-6)
  dj = jnp.asarray(d)
  assert float(R.effectiveness_score(jnp.array([0.0, 1.0, 0.0, 0.0]), dj)) == 0.0
  # {0, 1, 2}: mins are d02 = 0.25, d12 = 0.25, d20 = 0.25.
  np.testing.assert_allclose(R.effectiveness_score(jnp.array([1.0, 1.0, 1.0, 0.0]), dj), 0.75,
                             atol=1e-5)


def test_lima_with_embedding(mlp):
  x = jax.random.normal(jax.random.key(10), (2, 8, 8, 3))
  emb = lambda z: jnp.tanh(z.reshape(z.shape[0], -1)[:, :16])
  out = R.lima_search(mlp, x, 0, segments=SEG16, pending=4, effectiveness=1.0, embedding=emb,
                      curves=False)
  for b in range(2):
    assert sorted(np.asarray(out["order"][b]).tolist()) == list(range(16))
  with pytest.raises(ValueError, match="effectiveness > 0 needs `embedding`"):
    R.lima_search(mlp, x, 0, segments=SEG16, effectiveness=1.0)
