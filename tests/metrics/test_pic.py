"""SIC and AIC (saljax.metrics.information) against PAIR saliency 0.2.1's
`saliency.metrics.pic.compute_pic_metric`, and known answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from saliency.metrics import pic

import saljax
from saljax import metrics
from saljax.metrics import information

from _twin import SmallCNN
from saljax import model as M

LOW, HIGH = -3.0, 4.0  # covers the twin's normal inputs
THRESHOLDS = (0.01, 0.03, 0.07, 0.13, 0.34, 0.5, 0.75)


@pytest.fixture(autouse=True)
def _numpy_trapz(monkeypatch):
  """PAIR 0.2.1 calls `np.trapz`, which NumPy 2.4 removed; `np.trapezoid` is
  the same function under its new name (NumPy 2.0)."""
  if not hasattr(np, "trapz"):
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def _dequantize(u8):
  """PAIR's pred_func side: uint8 pixels -> the model's space (saljax's formula)."""
  return LOW + jnp.asarray(u8).astype(jnp.float32) / 255.0 * (HIGH - LOW)


def _quantize(x):
  return np.asarray(jnp.clip(jnp.round((x - LOW) / (HIGH - LOW) * 255.0), 0, 255).astype(jnp.uint8))


_JITTED = {}


def _jitted(f):
  """One compiled forward per model for PAIR's one-image pred_func calls."""
  if id(f) not in _JITTED:
    _JITTED[id(f)] = (f, jax.jit(lambda z: f(z)))
  return _JITTED[id(f)][1]


def _pair(kind, f, u8, maps, seeds, target, **kw):
  """PAIR's result per example, or None where it raises ComputePicMetricError."""
  jf = _jitted(f)
  with information._one_blas_thread():  # PAIR's griddata: as fast as saljax's host step
    return _pair_rows(kind, jf, u8, maps, seeds, target, **kw)


def _pair_rows(kind, jf, u8, maps, seeds, target, **kw):
  out = []
  for i in range(u8.shape[0]):
    def pred_func(batch, i=i):
      logits = jf(_dequantize(batch))
      if kind == "sic":
        return list(np.asarray(jax.nn.softmax(logits, -1)[:, target[i]], np.float64))
      return list((np.asarray(jnp.argmax(logits, -1)) == target[i]).astype(np.float64))
    try:
      out.append(pic.compute_pic_metric(u8[i], maps[i], seeds[i], pred_func, list(THRESHOLDS),
                                        **kw))
    except pic.ComputePicMetricError:
      out.append(None)
  return out


@pytest.fixture(scope="module")
def twin():
  # The parity tests' CNN (tests/metrics/_twin.py) without its torch twin.
  x = jax.random.normal(jax.random.key(1), (6, 16, 16, 3))
  m = SmallCNN(5)
  f = M.from_linen(m, m.init(jax.random.key(0), x), example=x).as_model()
  # Explain the class predicted on the uint8 image, so the originals score high.
  target = np.asarray(jnp.argmax(f(_dequantize(_quantize(x))), -1))
  maps = jnp.abs(saljax.gradient(f, x, target)).sum(-1)
  return f, x, target, maps


@pytest.mark.parametrize("kind,keep_monotonous", [("sic", True), ("aic", True), ("sic", False)])
def test_matches_pair(twin, kind, keep_monotonous):
  f, x, target, maps = twin
  seeds = np.asarray(metrics.random_mask(jax.random.key(1), x.shape[:3], fraction=0.05))
  opts = dict(min_pred_value=0.0, keep_monotonous=keep_monotonous)
  got = metrics.get(kind)(f, x, maps, target, thresholds=THRESHOLDS, random_mask=seeds,
                          pixel_range=(LOW, HIGH), **opts)
  want = _pair(kind, f, _quantize(x), np.asarray(maps), seeds, target, **opts)
  valid = np.asarray(got["valid"])
  np.testing.assert_array_equal(valid, [w is not None for w in want])
  assert valid.sum() >= 1, valid  # the comparison below is not empty
  for i in np.flatnonzero(valid):
    np.testing.assert_allclose(got["curve"][i], want[i].curve_y, atol=1e-4, err_msg=f"row {i}")
    np.testing.assert_allclose(got["score"][i], want[i].auc, atol=1e-4)
  # The aggregate (PAIR's median over the images it did not skip).
  agg = pic.aggregate_individual_pic_results([w for w in want if w is not None], "median")
  mine = metrics.aggregate_pic(got)
  np.testing.assert_allclose(mine["curve"], agg.curve_y, atol=1e-4)
  np.testing.assert_allclose(mine["score"], agg.auc, atol=1e-4)


def test_ties_at_zero_information_match_pair(twin):
  """A threshold whose image is the fully blurred one puts a second point at
  x = 0 (with its own performance) next to PAIR's appended (0, 0): PAIR's
  interp1d (np.interp on stably sorted points) takes the last, (0, 0)."""
  f, x, target, _ = twin
  # The most salient pixels are the corners, which PAIR always keeps: 1 % of
  # 256 pixels reveals 3 of them, so the image is the fully blurred one.
  corners = jnp.zeros((16, 16)).at[::15, ::15].set(1.0)
  maps = jnp.broadcast_to(corners + 0.5 * jnp.linspace(0, 1, 256).reshape(16, 16), x.shape[:3])
  seeds = np.zeros(x.shape[:3], bool)
  got = metrics.sic(f, x, maps, target, thresholds=THRESHOLDS, random_mask=seeds,
                    pixel_range=(LOW, HIGH), min_pred_value=0.0)
  want = _pair("sic", f, _quantize(x), np.asarray(maps), seeds, target, min_pred_value=0.0)
  assert len(want) == x.shape[0]
  rows = [i for i, w in enumerate(want) if w is not None]
  assert rows
  for i in rows:
    assert got["information"][i, 0] == 0.0
    assert got["curve"][i, 0] == want[i].curve_y[0] == 0.0
    np.testing.assert_allclose(got["curve"][i], want[i].curve_y, atol=1e-4)
    np.testing.assert_allclose(got["score"][i], want[i].auc, atol=1e-4)


def test_region_model_known_answer(region):
  """The model reads a 2x2 region (4 of 64 pixels) that is bright on a dark,
  noisy image: once a map has revealed the region, the image scores as the
  original (normalized performance exactly 1); the map that ranks the region
  last leaves it interpolated from dark pixels, and scores a lower SIC."""
  _, w, x = region
  inside = w.sum(-1) > 0
  x = jnp.where(inside[None, ..., None], 1.0, 0.2 * x)
  s0 = float(w.sum()) / 2

  def f(z):  # original: s - s0 = s0 > 0; region blurred dark: about -s0
    s = (z * w).sum((1, 2, 3)) - s0
    return jnp.stack([s, -s], 1)

  good = jnp.broadcast_to(inside + 0.01 * jnp.arange(64.0).reshape(8, 8) / 64, x.shape[:3])
  target, key = jnp.zeros(4, jnp.int32), jax.random.key(0)
  thresholds = (0.07, 0.2, 0.5)  # each reveals the whole region (4/64 = 0.0625)
  g = metrics.sic(f, x, good, target, key=key, thresholds=thresholds)
  b = metrics.sic(f, x, -good, target, key=key, thresholds=thresholds)
  assert np.asarray(g["valid"]).all() and np.asarray(b["valid"]).all()
  # Each thresholded image scores exactly as the original: the curve rises
  # linearly from the appended (0, 0) to the least informative of them and is
  # 1 after, so the AUC is 1 - x_min / 2 (up to the grid).
  np.testing.assert_array_equal(np.asarray(g["performance"]), 1.0)
  assert (np.asarray(b["performance"]) < 0.05).all()
  grid = np.append(np.linspace(0, 1, 1000, endpoint=False), 1.0)
  x_min = np.asarray(g["information"]).min(1, keepdims=True)
  np.testing.assert_allclose(g["curve"], np.minimum(grid / x_min, 1.0), atol=1e-5)
  np.testing.assert_allclose(g["score"], 1 - x_min[:, 0] / 2, atol=1e-3)
  assert (np.asarray(g["score"]) > np.asarray(b["score"]) + 0.2).all()
  # AIC: the region decides the class the same way.
  a = metrics.aic(f, x, good, target, key=key, thresholds=thresholds)
  np.testing.assert_array_equal(np.asarray(a["performance"]), 1.0)
  np.testing.assert_allclose(a["score"], g["score"], atol=1e-6)


def test_constant_model_is_invalid(region):
  _, _, x = region
  f = lambda x: jnp.zeros((x.shape[0], 3))
  out = metrics.sic(f, x, x.sum(-1), 0, key=jax.random.key(0), thresholds=(0.1, 0.5),
                    min_pred_value=0.0)
  assert not np.asarray(out["valid"]).any()  # blurred == original performance: PAIR skips
  with pytest.raises(ValueError, match="no valid row"):
    metrics.aggregate_pic(out)


def test_same_key_same_seed_pixels():
  a = metrics.random_mask(jax.random.key(3), (2, 20, 10), fraction=0.1)
  np.testing.assert_array_equal(a, metrics.random_mask(jax.random.key(3), (2, 20, 10), 0.1))
  np.testing.assert_array_equal(np.asarray(a).sum((1, 2)), [20, 20])


def test_bad_input_is_clear(region):
  f, _, x = region
  a, key = x.sum(-1), jax.random.key(0)
  with pytest.raises(ValueError, match="C = 1 or 3"):
    metrics.sic(f, x[..., :2], a, 0, key=key)
  with pytest.raises(ValueError, match="ascending"):
    metrics.sic(f, x, a, 0, key=key, thresholds=(0.5, 0.1))
  with pytest.raises(ValueError, match="low < high"):
    metrics.aic(f, x, a, 0, key=key, pixel_range=(1.0, 0.0))
  with pytest.raises(ValueError, match="random_mask"):
    metrics.sic(f, x, a, 0, random_mask=np.ones((3, 3), bool))
  with pytest.raises(ValueError, match="key"):
    metrics.sic(f, x, a, 0)
