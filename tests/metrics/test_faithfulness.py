"""Faithfulness metrics against closed forms and known orderings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

import saljax
from saljax.metrics import faithfulness as F

KEY = jax.random.key(0)


def _maps(f, w, x):
  good = x * w                     # relevance exactly where the model reads
  rand = jax.random.uniform(jax.random.key(5), x.shape)
  return good, rand, -good


def test_deletion_and_insertion_order_maps(region):
  f, w, x = region
  good, rand, inv = _maps(f, w, x)
  t = jnp.zeros(4, jnp.int32)
  d = [F.deletion(f, x, a, t, score="logit")["score"] for a in (good, rand, inv)]
  assert (d[0] < d[1]).all() and (d[1] < d[2]).all(), d
  ins = [F.insertion(f, x, a, t, score="logit", fill="zeros")["score"] for a in (good, rand, inv)]
  assert (ins[0] > ins[1]).all() and (ins[1] > ins[2]).all(), ins
  # The default softmax score keeps the ordering.
  dp = [F.deletion(f, x, a, t)["score"] for a in (good, inv)]
  assert (dp[0] < dp[1]).all()


def test_deletion_curve_closed_form_on_linear_model(linear):
  f, wm, x = linear
  t = jnp.array([0, 2, 1])
  a = jax.random.normal(jax.random.key(3), x.shape)
  out = F.deletion(f, x, a, t, steps=6, score="logit")
  assert out["curve"].shape == (3, 7) and out["score"].shape == (3,)
  contrib = np.asarray(x * wm[:, t].T.reshape(x.shape)).sum(-1).reshape(3, -1)  # per pixel
  order = np.argsort(-np.asarray(a).sum(-1).reshape(3, -1), axis=1, kind="stable")
  expected = np.zeros((3, 7))
  for b in range(3):
    for i in range(7):
      removed = order[b, : (i * 36) // 6]
      expected[b, i] = contrib[b].sum() - contrib[b, removed].sum()
  np.testing.assert_allclose(out["curve"], expected, rtol=1e-4, atol=1e-4)
  auc = np.trapezoid(expected, dx=1 / 6, axis=1)
  np.testing.assert_allclose(out["score"], auc, rtol=1e-4, atol=1e-4)


def test_patch_steps_remove_whole_patches(linear):
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  a = jax.random.normal(jax.random.key(4), x.shape[:3])
  out = F.deletion(f, x, a, t, steps=9, patch_size=2, score="logit")
  contrib = np.asarray(x * wm[:, t].T.reshape(x.shape)).sum(-1)
  pa = np.asarray(a).reshape(3, 3, 2, 3, 2).sum((2, 4)).reshape(3, 9)
  pc = contrib.reshape(3, 3, 2, 3, 2).sum((2, 4)).reshape(3, 9)
  order = np.argsort(-pa, axis=1, kind="stable")
  expected = np.stack([pc.sum(1) - np.take_along_axis(pc, order[:, :i], 1).sum(1)
                       for i in range(10)], 1)
  np.testing.assert_allclose(out["curve"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["deletion", "insertion", "pixel_flipping"])
def test_chunked_equals_unchunked_and_compiles_once(region, counter, metric):
  f, w, x = region
  model = counter(f)
  fn = saljax.metrics.get(metric)
  a = jax.random.normal(jax.random.key(1), x.shape)
  full = fn(model, x, a, 0, steps=8, batch_size=None)
  chunked = fn(model, x, a, 0, steps=8, batch_size=3)
  np.testing.assert_allclose(full["curve"], chunked["curve"], rtol=1e-6, atol=1e-6)
  traces = model.traces
  fn(model, x + 1.0, a * 2.0, 1, steps=8, batch_size=3)
  assert model.traces == traces


def test_fills(region):
  f, w, x = region
  a = jax.random.normal(jax.random.key(1), x.shape)
  for fill in ("zeros", "mean", "blur", 0.5, jnp.full(x.shape[1:], 0.25)):
    out = F.deletion(f, x, a, 0, steps=4, fill=fill, score="logit")
    assert np.isfinite(out["curve"]).all()
  # The last step has replaced everything: the score of the fill itself.
  out = F.deletion(f, x, a, 0, steps=4, fill=0.5, score="logit")
  np.testing.assert_allclose(out["curve"][:, -1], f(jnp.full_like(x, 0.5))[:, 0], rtol=1e-5)
  out = F.insertion(f, x, a, 0, steps=4, score="logit")
  np.testing.assert_allclose(out["curve"][:, -1], f(x)[:, 0], rtol=1e-5)
  np.testing.assert_allclose(out["curve"][:, 0], f(saljax.metrics._common.blur(x, 5.0))[:, 0],
                             rtol=1e-5)


def test_blur_fill_matches_rise_kernel_size():
  import scipy.ndimage
  x = np.random.default_rng(0).normal(size=(1, 16, 16, 1)).astype(np.float32)
  ours = saljax.metrics._common.blur(jnp.asarray(x), 5.0)
  ref = scipy.ndimage.gaussian_filter(x, (0, 5, 5, 0), truncate=1.0, mode="constant")
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_constant_map_ties_broken_by_key(region):
  f, w, x = region
  const = jnp.ones(x.shape)
  a = F.deletion(f, x, const, 0, steps=8, key=jax.random.key(1), score="logit")
  b = F.deletion(f, x, const, 0, steps=8, key=jax.random.key(1), score="logit")
  c = F.deletion(f, x, const, 0, steps=8, key=jax.random.key(2), score="logit")
  np.testing.assert_array_equal(a["curve"], b["curve"])
  assert not np.allclose(a["curve"], c["curve"])
  # Without a key: row-major order, so the region (rows 2-3) goes at steps 3-4.
  r = F.deletion(f, x, const, 0, steps=8, score="logit")["curve"]
  np.testing.assert_allclose(r[:, 0], r[:, 2], rtol=1e-6)
  np.testing.assert_allclose(r[:, 4], 0.0, atol=1e-5)


def test_pixel_flipping_orders_and_abpc(region):
  f, w, x = region
  good, _, inv = _maps(f, w, x)
  morf = F.pixel_flipping(f, x, good, 0, order="morf", score="logit")["score"]
  lerf = F.pixel_flipping(f, x, good, 0, order="lerf", score="logit")["score"]
  assert (lerf > morf).all()
  np.testing.assert_allclose(morf, F.deletion(f, x, good, 0, score="logit")["score"])
  assert (F.area_between_curves(f, x, good, 0, score="logit")["score"] > 0).all()
  assert (F.area_between_curves(f, x, inv, 0, score="logit")["score"] < 0).all()


@pytest.mark.parametrize("bad,err,match", [
    (lambda x: jnp.ones(x.shape[:2]), ValueError, "attribution: expected shape"),
    (lambda x: jnp.full(x.shape, jnp.nan), ValueError, "all-NaN"),
    (lambda x: jnp.ones(x.shape, jnp.int32), TypeError, "floating"),
])
def test_bad_attribution(region, bad, err, match):
  f, w, x = region
  with pytest.raises(err, match=match):
    F.deletion(f, x, bad(x), 0)


def test_bad_options(region):
  f, w, x = region
  a = jnp.ones(x.shape)
  with pytest.raises(ValueError, match="steps"):
    F.deletion(f, x, a, 0, steps=0)
  with pytest.raises(ValueError, match="steps"):
    F.deletion(f, x, a, 0, steps=65)
  with pytest.raises(ValueError, match="fill"):
    F.deletion(f, x, a, 0, fill="noise")
  with pytest.raises(ValueError, match="fill"):
    F.deletion(f, x, a, 0, fill=jnp.ones((3, 3)))
  with pytest.raises(ValueError, match="score"):
    F.deletion(f, x, a, 0, score="loss")
  with pytest.raises(ValueError, match="target"):
    F.deletion(f, x, a, 7)
  with pytest.raises(ValueError, match="key"):
    F.road(f, x, a, 0)
  with pytest.raises(ValueError, match="patch_size"):
    F.deletion(f, x, a, 0, patch_size=9)


# ----------------------------------------------------------------------------
# ROAD.


def _scipy_imputation(img, removed):
  """Reference: the sparse system of Rong et al. solved by spsolve."""
  h, w = removed.shape
  idx = -np.ones((h, w), int)
  unknown = np.argwhere(removed)
  idx[removed] = np.arange(len(unknown))
  stencil = [((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
             ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12)]
  a = scipy.sparse.lil_matrix((len(unknown), len(unknown)))
  rhs = np.zeros((len(unknown), img.shape[-1]))
  for r, (y, x) in enumerate(unknown):
    for (dy, dx), wt in stencil:
      yy, xx = y + dy, x + dx
      if 0 <= yy < h and 0 <= xx < w:
        a[r, r] += wt
        if removed[yy, xx]:
          a[r, idx[yy, xx]] -= wt
        else:
          rhs[r] += wt * img[yy, xx]
  sol = scipy.sparse.linalg.spsolve(a.tocsc(), rhs)
  out = img.copy()
  out[removed] = sol.reshape(len(unknown), -1)
  return out


def test_linear_imputation_matches_scipy():
  rng = np.random.default_rng(0)
  img = rng.uniform(size=(10, 9, 3)).astype(np.float32)
  removed = rng.uniform(size=(10, 9)) < 0.4
  ours = jax.jit(F.linear_imputation)(jnp.asarray(img), jnp.asarray(removed))
  np.testing.assert_allclose(ours, _scipy_imputation(img.astype(np.float64), removed), atol=1e-4)


def test_linear_imputation_constant_and_ramp():
  removed = np.zeros((8, 8), bool)
  removed[2:5, 3:6] = True
  const = jnp.full((8, 8, 2), 0.3)
  impute = jax.jit(F.linear_imputation)
  np.testing.assert_allclose(impute(const, jnp.asarray(removed)), const, atol=1e-6)
  yy, xx = np.mgrid[:8, :8]
  ramp = jnp.asarray((0.1 * yy + 0.05 * xx)[..., None], jnp.float32)
  np.testing.assert_allclose(impute(ramp, jnp.asarray(removed)), ramp, atol=1e-5)
  # Everything removed: no NaN (the system is singular; it stays at 0).
  allgone = impute(ramp, jnp.ones((8, 8), bool))
  assert np.isfinite(allgone).all()


def test_road_orders_maps_and_is_reproducible(region, counter):
  f, w, x = region
  # A bright object on the read region: imputing it from its surroundings
  # lowers the score, imputing the background does not change it.
  x = x + 2.0 * (w > 0)
  good, rand, inv = _maps(f, w, x)
  model = counter(f)
  kw = dict(key=KEY, score="logit", percentages=(0.1, 0.5, 0.9))
  s = [F.road(model, x, a, 0, **kw) for a in (good, rand, inv)]
  s = [o["score"] for o in s]
  assert (s[0] < s[1]).all() and (s[1] < s[2]).all(), s
  again = F.road(model, x, rand, 0, **kw)
  np.testing.assert_array_equal(again["score"], s[1])
  traces = model.traces
  F.road(model, x * 0.5, rand, 1, **dict(kw, key=jax.random.key(3)))
  assert model.traces == traces
  chunked = F.road(f, x, rand, 0, batch_size=2, **kw)
  np.testing.assert_allclose(chunked["score"], s[1], rtol=1e-5, atol=1e-5)
  assert chunked["curve"].shape == (4, 3)


# ----------------------------------------------------------------------------
# Random-subset correlations and infidelity.


def test_faithfulness_correlation_is_one_for_exact_attribution(linear, counter):
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  exact = x * wm[:, t].T.reshape(x.shape)  # gradient x input of a linear model
  model = counter(f)
  r = F.faithfulness_correlation(model, x, exact, t, key=KEY, samples=20)
  np.testing.assert_allclose(r, 1.0, atol=1e-5)
  rand = jax.random.normal(jax.random.key(9), x.shape)
  rr = F.faithfulness_correlation(model, x, rand, t, key=KEY, samples=20)
  assert (rr < 0.9).all()
  traces = model.traces
  F.faithfulness_correlation(model, x + 1, rand, t, key=jax.random.key(4), samples=20)
  assert model.traces == traces
  c = F.faithfulness_correlation(f, x, rand, t, key=KEY, samples=20, batch_size=7)
  np.testing.assert_allclose(c, rr, atol=1e-5)


def test_sensitivity_n_on_linear_model(linear):
  f, wm, x = linear
  t = jnp.array([2, 1, 0])
  exact = x * wm[:, t].T.reshape(x.shape)
  out = F.sensitivity_n(f, x, exact, t, key=KEY, n_values=(1, 4, 16), samples=10)
  assert out["curve"].shape == (3, 3)
  np.testing.assert_allclose(out["curve"], 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="n_values"):
    F.sensitivity_n(f, x, exact, t, key=KEY, n_values=(100,))


def test_infidelity_zero_for_gradient_of_linear_model(linear, counter):
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  grad = jnp.broadcast_to(wm[:, t].T.reshape(x.shape), x.shape)
  model = counter(f)
  np.testing.assert_allclose(F.infidelity(model, x, grad, t, key=KEY), 0.0, atol=1e-6)
  scaled = F.infidelity(model, x, 3.0 * grad, t, key=KEY)
  assert (scaled > 1e-3).all()
  np.testing.assert_allclose(F.infidelity(model, x, 3.0 * grad, t, key=KEY, normalize=True), 0.0,
                             atol=1e-4)
  traces = model.traces
  F.infidelity(model, x + 1, grad, t, key=jax.random.key(2))
  assert model.traces == traces
  b = F.infidelity(f, x, 3.0 * grad, t, key=KEY, batch_size=3)
  np.testing.assert_allclose(scaled, b, rtol=1e-5)


def test_registered_with_family():
  names = saljax.metrics.names("faithfulness")
  for n in ("deletion", "insertion", "pixel_flipping", "road", "faithfulness_correlation",
            "infidelity", "sensitivity_n", "area_between_curves"):
    assert n in names


def test_segment_steps_closed_form(linear):
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  a = jax.random.normal(jax.random.key(6), x.shape[:3])
  # Example 0: 4 quadrant segments with arbitrary label ids; 1 and 2: 2 halves (labels 5, 9).
  seg = np.zeros((3, 6, 6), int)
  seg[0, :3, 3:], seg[0, 3:, :3], seg[0, 3:, 3:] = 7, 2, 11
  seg[1:, :, :3], seg[1:, :, 3:] = 5, 9
  out = F.deletion(f, x, a, t, segments=seg, steps=4, score="logit")
  contrib = np.asarray(x * wm[:, t].T.reshape(x.shape)).sum(-1)
  for b in range(3):
    labels = np.unique(seg[b])
    means = np.array([np.asarray(a)[b][seg[b] == l].mean() for l in labels])
    order = labels[np.argsort(-means, kind="stable")]
    n = len(labels)
    for i in range(5):
      removed = np.isin(seg[b], order[: (i * n) // 4])
      np.testing.assert_allclose(out["curve"][b, i], contrib[b][~removed].sum(), rtol=1e-4,
                                 atol=1e-4)
  with pytest.raises(ValueError, match="segments"):
    F.deletion(f, x, a, t, segments=seg[:, :3])
  with pytest.raises(ValueError, match="steps"):
    F.deletion(f, x, a, t, segments=seg, steps=5)


def test_segments_on_a_time_series_remove_whole_steps():
  # [B, T, C] series, one segment per time step (labels like x[0]): each curve
  # step removes the next time step by mean relevance, all channels at once.
  b, n_t, c = 2, 5, 3
  x = jax.random.normal(jax.random.key(8), (b, n_t, c))
  w = jax.random.normal(jax.random.key(9), (n_t * c, 2))
  f = lambda x: x.reshape(x.shape[0], -1) @ w
  t = jnp.array([0, 1])
  a = jax.random.normal(jax.random.key(10), x.shape)
  steps = np.repeat(np.arange(n_t)[:, None], c, 1)
  contrib = np.asarray(x * w[:, t].T.reshape(x.shape)).sum(-1)  # [B, T]
  order = np.argsort(-np.asarray(a).mean(-1), axis=1, kind="stable")  # by mean relevance
  for name in ("deletion", "area_between_curves"):
    out = getattr(F, name)(f, x, a, t, segments=steps, score="logit", fill="zeros")
    assert out["curve"].shape == (b, n_t + 1)
  out = F.deletion(f, x, a, t, segments=steps, score="logit")
  for i in range(n_t + 1):
    kept = np.ones((b, n_t), bool)
    np.put_along_axis(kept, order[:, :i], False, 1)
    np.testing.assert_allclose(out["curve"][:, i], (contrib * kept).sum(1), rtol=1e-4, atol=1e-4)
  # Per-example labels [B, T, C] give the same curve; a wrong shape names the ones expected.
  same = F.deletion(f, x, a, t, segments=np.broadcast_to(steps, x.shape), score="logit")
  np.testing.assert_allclose(same["curve"], out["curve"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"segments: expected integer labels of shape \(2, 5, 3\)"
                                       r" or \(5, 3\)"):
    F.deletion(f, x, a, t, segments=np.arange(n_t))
