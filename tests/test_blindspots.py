"""Level Set Traversal on a tiny trained CNN (the issue's done-when), SSIM
against skimage, straight-segment confidence, chunking, compiles, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from saljax import blindspots as B


@pytest.fixture(scope="module")
def cnn():
  """A tiny CNN trained on 16 px planted-shapes images (3 classes, colour decides)."""
  from experiments import robustness as R
  from experiments.configs import robustness as cfg
  c = cfg.get_config()
  c.data.n_train, c.data.n_test, c.data.size = 384, 32, 16
  c.train.steps = 150
  f, acc = R.train_model(c)
  x, y = R.shapes_data(c, "test")
  return f, acc, jnp.asarray(x), np.asarray(y)


def _pairs(y, n=16):
  """Source i and the first test image of another class as its target."""
  tgt = [next(j for j in range(len(y)) if y[j] != y[i]) for i in range(n)]
  return np.arange(n), np.asarray(tgt)


def test_paths_keep_source_confidence_and_end_near_target(cnn):
  f, acc, x, y = cnn
  assert acc > 0.8, acc
  si, ti = _pairs(y)
  src, tgt = x[si], x[ti]
  end, info = B.level_set_traversal(f, src, tgt, steps=60, step_size=0.08)
  conf = np.asarray(info["confidence"])
  label = np.asarray(info["label"])
  pred = np.asarray(jnp.argmax(f(end), -1))
  sim = np.asarray(B.ssim(end, tgt))
  held = (pred == label) & (np.abs(conf[:, -1] - conf[:, 0]) <= 0.05 * conf[:, 0])
  # The done-when: >= 90% of pairs keep the source class at its
  # confidence (within 5%) while looking like the target (SSIM > 0.8).
  assert (held & (sim > 0.8)).mean() >= 0.9, (conf[:, [0, -1]], sim)
  # The targets are of other classes, and the source looked nothing like them.
  assert (np.asarray(jnp.argmax(f(tgt), -1)) != label).mean() >= 0.9
  assert np.asarray(B.ssim(src, tgt)).max() < 0.3
  l2 = np.asarray(info["l2_to_target"])
  assert (l2[:, -1] < 0.5 * l2[:, 0]).all()
  # Without the correction the bare orthogonal steps drift off the level set more.
  _, bare = B.level_set_traversal(f, src, tgt, steps=60, step_size=0.08, correction=0.0)
  drift = lambda c: np.abs(np.asarray(c)[:, 1:] - np.asarray(c)[:, :1]).max(1).mean()
  assert drift(info["confidence"]) < drift(bare["confidence"])
  # Star-like: the straight segment source -> end keeps the source class.
  seg = np.asarray(B.segment_confidence(f, src, end, label, points=11))
  np.testing.assert_allclose(seg[:, 0], conf[:, 0], rtol=1e-5)
  np.testing.assert_allclose(seg[:, -1], conf[:, -1], rtol=1e-4)
  assert (seg.min(1) > 0.5).mean() >= 0.9, seg.min(1)


def test_ssim_matches_skimage():
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.uniform(k1, (3, 12, 10, 3))
  b = jnp.clip(a + 0.2 * jax.random.normal(k2, a.shape), 0, 1)
  got = np.asarray(B.ssim(a, b))
  want = [structural_similarity(np.asarray(a[i]), np.asarray(b[i]), channel_axis=-1,
                                data_range=1.0) for i in range(3)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(B.ssim(a, a)), 1.0, atol=1e-6)
  assert (got < 0.9).all()


def _apply(w, x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w) * 3


def test_chunked_equals_unchunked_and_one_trace_per_shape(monkeypatch):
  w = jax.random.normal(jax.random.key(1), (48, 3)) / 4
  f = jax.tree_util.Partial(_apply, w)
  s = jax.random.uniform(jax.random.key(2), (5, 4, 4, 3))
  t = jax.random.uniform(jax.random.key(3), (5, 4, 4, 3))
  a, ia = B.level_set_traversal(f, s, t, steps=8, step_size=0.2, batch_size=5)
  b, ib = B.level_set_traversal(f, s, t, steps=8, step_size=0.2, batch_size=2)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  np.testing.assert_allclose(np.asarray(ia["confidence"]), np.asarray(ib["confidence"]), atol=1e-6)
  assert ia["confidence"].shape == (5, 9) and ia["l2_to_target"].shape == (5, 9)
  calls = []
  inner = B._lst_one
  monkeypatch.setattr(B, "_lst_one", lambda *a, **k: calls.append(1) or inner(*a, **k))
  B.level_set_traversal(f, s, t, steps=8, step_size=0.2, batch_size=4)
  n = len(calls)  # one trace (body and remainder of the chunked map)
  f2 = jax.tree_util.Partial(_apply, w * 2)  # new weights, step size, correction: no retrace
  B.level_set_traversal(f2, s, t, steps=8, step_size=0.3, correction=0.5, batch_size=4)
  assert len(calls) == n


def test_bad_inputs():
  w = jnp.ones((48, 3))
  f = jax.tree_util.Partial(_apply, w)
  s = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match="target_images"):
    B.level_set_traversal(f, s, jnp.zeros((3, 4, 4, 3)))
  with pytest.raises(ValueError, match="step_size"):
    B.level_set_traversal(f, s, s, step_size=1.5)
  with pytest.raises(ValueError, match="correction"):
    B.level_set_traversal(f, s, s, correction=-1.0)
  with pytest.raises(ValueError, match="steps"):
    B.level_set_traversal(f, s, s, steps=0)
  with pytest.raises(ValueError, match="win_size"):
    B.ssim(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="ends"):
    B.segment_confidence(f, s, jnp.zeros((1, 4, 4, 3)), jnp.array([0, 1]))


class _TwoConv:
  """Built lazily: a linen CNN with two conv layers and a dense head."""

  @staticmethod
  def make():
    import flax.linen as nn

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="c1")(x))
        h = nn.relu(nn.Conv(6, (3, 3), strides=2, name="c2")(h))
        return nn.Dense(3, name="fc")(h.reshape(h.shape[0], -1))

    return Net()


def test_feature_distance_is_lpips_baseline_formula():
  import saljax
  net = _TwoConv.make()
  x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 3))
  v = net.init(jax.random.key(1), x[:1])
  tapped = saljax.from_linen(net, v, example=x[:1])
  a, b = x, jax.random.uniform(jax.random.key(2), x.shape)
  layers = ("c1", "c2", "fc")
  d = np.asarray(B.feature_distance(tapped, a, b, layers))
  # The formula by hand in numpy: unit channel vectors, squared L2, spatial mean, layer sum.
  _, ra = tapped(a)
  _, rb = tapped(b)
  want = np.zeros(5)
  for k in layers:
    ua, ub = (np.asarray(r[k], np.float64) for r in (ra, rb))
    ua = ua / (np.linalg.norm(ua, axis=-1, keepdims=True) + 1e-10)
    ub = ub / (np.linalg.norm(ub, axis=-1, keepdims=True) + 1e-10)
    want += ((ua - ub) ** 2).sum(-1).reshape(5, -1).mean(1)
  np.testing.assert_allclose(d, want, rtol=1e-5)
  assert (d > 0).all() and (d <= 2 * len(layers)).all()
  np.testing.assert_allclose(B.feature_distance(tapped, a, a, layers), 0.0, atol=1e-6)
  np.testing.assert_allclose(B.feature_distance(tapped, b, a, layers), d, rtol=1e-6)
  # Chunked == unchunked.
  np.testing.assert_allclose(B.feature_distance(tapped, a, b, layers, batch_size=2), d, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown layer"):
    B.feature_distance(tapped, a, b, ("c9",))
  with pytest.raises(ValueError, match="layers"):
    B.feature_distance(tapped, a, b, "c1")
  with pytest.raises(ValueError, match="shape of a"):
    B.feature_distance(tapped, a, b[:2], layers)
  with pytest.raises(TypeError, match="Tapped"):
    B.feature_distance(lambda z: z, a, b, layers)


def test_reference_update_keeps_its_threshold_and_reaches_the_target(cnn):
  """The authors' update (method="reference"): every step it keeps stays
  within `pthresh` of the clean source's confidence, by its acceptance rule,
  and the paths still end near the target."""
  f, _, x, y = cnn
  si, ti = _pairs(y)
  src, tgt = x[si], x[ti]
  end, info = B.level_set_traversal(f, src, tgt, method="reference", steps=60, step_size=0.08,
                                    pthresh=0.02, init_noise=0.0)
  conf = np.asarray(info["confidence"])
  assert (conf[:, 1:] > conf[:, :1] - 0.02 - 1e-6).all(), conf.min(1)
  sim = np.asarray(B.ssim(end, tgt))
  assert (sim > 0.8).mean() >= 0.9, sim
  # With noise: keyed, deterministic under the key; no key is refused before work.
  k = jax.random.key(3)
  a, _ = B.level_set_traversal(f, src[:4], tgt[:4], method="reference", steps=5, key=k)
  b, _ = B.level_set_traversal(f, src[:4], tgt[:4], method="reference", steps=5, key=k)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="key"):
    B.level_set_traversal(f, src, tgt, method="reference")
  with pytest.raises(ValueError, match="method"):
    B.level_set_traversal(f, src, tgt, method="adam")
