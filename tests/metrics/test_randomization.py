"""Randomization sanity checks on a CNN trained on scikit-learn digits."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.datasets

import saljax
from saljax.metrics import randomization as R

KEY = jax.random.key(0)


def conv3(x, w):
  """3x3 'SAME' convolution as one matmul over shifted copies (fast to train on CPU)."""
  h, wd = x.shape[1:3]
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([p[:, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], -1)
  return patches @ w.reshape(-1, w.shape[-1])


def cnn(params, x):
  h = jax.nn.relu(conv3(x, params["conv1"]["w"]) + params["conv1"]["b"])
  h = jax.nn.relu(conv3(h, params["conv2"]["w"]) + params["conv2"]["b"])
  h = h.reshape(h.shape[0], 4, 2, 4, 2, -1).mean((2, 4)).reshape(h.shape[0], -1)
  h = jax.nn.relu(h @ params["fc1"]["w"] + params["fc1"]["b"])
  return h @ params["fc2"]["w"] + params["fc2"]["b"]


def _digits():
  digits = sklearn.datasets.load_digits()
  return jnp.asarray(digits.images[..., None] / 16.0, jnp.float32), jnp.asarray(digits.target)


def _fit(x, y, steps, seed=0):
  """The CNN trained on (x, y) with full-batch Adam (lr 1e-2) for `steps` steps."""
  ks = jax.random.split(jax.random.key(seed), 4)
  he = lambda k, s: jax.random.normal(k, s) * jnp.sqrt(2.0 / np.prod(s[:-1]))
  params = {"conv1": {"w": he(ks[0], (3, 3, 1, 8)), "b": jnp.zeros(8)},
            "conv2": {"w": he(ks[1], (3, 3, 8, 16)), "b": jnp.zeros(16)},
            "fc1": {"w": he(ks[2], (256, 32)), "b": jnp.zeros(32)},
            "fc2": {"w": he(ks[3], (32, 10)), "b": jnp.zeros(10)}}
  opt = optax.adam(1e-2)

  @jax.jit
  def train(params):
    def step(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(
          lambda p: optax.softmax_cross_entropy_with_integer_labels(cnn(p, x), y).mean())(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    (p, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return p

  return train(params)


@pytest.fixture(scope="module")
def trained():
  """A small CNN trained on 500 8x8 digits for 100 full-batch Adam steps; returns
  (params, 16 held-out images, their labels)."""
  images, labels = _digits()
  params = _fit(images[:500], labels[:500], 100)
  held_x, held_y = images[1000:1200], labels[1000:1200]
  acc = float((jnp.argmax(cnn(params, held_x), -1) == held_y).mean())
  assert acc > 0.8, acc  # a trained model, or the sanity check means nothing
  return params, held_x[:16], held_y[:16]


@pytest.fixture(scope="module")
def random_labels():
  """The same CNN trained on the same 500 digits with permuted labels until it
  memorizes them (Adebayo et al. Sec. 4: > 95% training accuracy, chance on
  held-out digits)."""
  images, labels = _digits()
  y = labels[:500][np.random.default_rng(0).permutation(500)]
  params = _fit(images[:500], y, 400, seed=1)
  train_acc = float((jnp.argmax(cnn(params, images[:500]), -1) == y).mean())
  held_acc = float((jnp.argmax(cnn(params, images[1000:1200]), -1) == labels[1000:1200]).mean())
  assert train_acc > 0.95 and held_acc < 0.25, (train_acc, held_acc)
  return params


def sobel(f, x, target, *, key=None):
  """A fixed edge detector: the Sobel magnitude of the input, independent of the model."""
  gy = jax.scipy.signal.convolve2d
  k = jnp.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
  img = x[..., 0]
  conv = jax.vmap(lambda im: jnp.hypot(gy(im, k, mode="same"), gy(im, k.T, mode="same")))
  return conv(img)[..., None]


def test_cascading_randomization_separates_gradient_from_edge_detector(trained):
  params, x, y = trained
  grad = R.model_parameter_randomization(cnn, x, None, y, params=params, key=KEY,
                                         explainer=saljax.explainers.gradient)
  edge = R.model_parameter_randomization(cnn, x, None, y, params=params, key=KEY, explainer=sobel)
  assert grad["layers"] == ("fc2", "fc1", "conv2", "conv1")
  assert grad["curve"].shape == (16, 4)
  # Gradient maps lose their rank order once the model is randomized.
  assert float(grad["curve"][:, -1].mean()) < 0.5, grad["curve"].mean(0)
  assert float(grad["curve"].mean()) < 0.6
  # The edge detector does not read the model: unchanged at every stage.
  np.testing.assert_allclose(edge["curve"], 1.0, atol=1e-6)


def test_independent_mode_chunking_and_one_compile(trained):
  params, x, y = trained
  kw = dict(params=params, explainer=saljax.explainers.gradient, mode="independent")
  a = R.model_parameter_randomization(cnn, x[:4], None, y[:4], key=KEY, **kw)
  b = R.model_parameter_randomization(cnn, x[:4], None, y[:4], key=KEY, **kw)
  np.testing.assert_array_equal(a["curve"], b["curve"])
  size = R._randomization._cache_size()
  c = R.model_parameter_randomization(cnn, x[4:8], None, y[4:8], key=jax.random.key(1), **kw)
  assert R._randomization._cache_size() == size
  assert c["curve"].shape == (4, 4)
  d = R.model_parameter_randomization(cnn, x[:4], None, y[:4], key=KEY, batch_size=3, **kw)
  np.testing.assert_allclose(a["curve"], d["curve"], atol=1e-5)


def test_randomization_errors(trained):
  params, x, y = trained
  g = saljax.explainers.gradient
  with pytest.raises(ValueError, match="params"):
    R.model_parameter_randomization(cnn, x, None, y, key=KEY, explainer=g)
  with pytest.raises(ValueError, match="match no parameter"):
    R.model_parameter_randomization(cnn, x, None, y, params=params, key=KEY, explainer=g,
                                    layer=["conv9"])
  with pytest.raises(ValueError, match="mode"):
    R.model_parameter_randomization(cnn, x, None, y, params=params, key=KEY, explainer=g,
                                    mode="top")
  with pytest.raises(ValueError, match="output shape"):
    R.model_parameter_randomization(cnn, x, jnp.ones((16, 4, 4)), y, params=params, key=KEY,
                                    explainer=g)


def _two_region_model():
  """Class 0 reads the left half of a 16x16 image, class 1 the right half, class 2 all."""
  w = np.zeros((16, 16, 1, 3), np.float32)
  w[:, :8, 0, 0] = 1.0
  w[:, 8:, 0, 1] = 1.0
  w[..., 0, 2] = 0.1 * np.random.default_rng(0).normal(size=(16, 16))
  w = jnp.asarray(w)
  return lambda x: jnp.einsum("bhwc,hwck->bk", x ** 2, w)


@pytest.mark.parametrize("similarity", ["ssim", "spearman", "hog", "pearson"])
def test_random_logit_and_class_sensitivity(similarity):
  f = _two_region_model()
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 1))
  t = jnp.array([0, 1])
  kw = dict(explainer=saljax.explainers.gradient, similarity=similarity)
  if similarity == "hog":
    kw["similarity"] = "spearman"  # HOG needs 24x24+; checked below on a larger input
  s = R.random_logit(f, x, None, t, key=KEY, **kw)
  same = R.random_logit(lambda x: jnp.concatenate([f(x)[:, :1]] * 3, 1), x, None,
                        jnp.array([0, 0]), key=KEY, **kw)
  assert s.shape == (2,)
  np.testing.assert_allclose(same, 1.0, atol=1e-4)  # every class has the same map
  assert (s < 0.9).all()
  cs = R.class_sensitivity(f, x, **kw)
  assert cs.shape == (2,) and (cs < 0.9).all()


def test_hog_similarity_in_random_logit():
  x = jax.random.uniform(jax.random.key(4), (2, 24, 24, 1))
  f = lambda x: jnp.stack([(x[:, :12] ** 2).sum((1, 2, 3)), (x[:, 12:] ** 2).sum((1, 2, 3))], 1)
  s = R.random_logit(f, x, None, jnp.array([0, 1]), key=KEY, explainer=saljax.explainers.gradient,
                     similarity="hog")
  assert s.shape == (2,) and np.isfinite(s).all() and (s < 0.9).all()
  with pytest.raises(ValueError, match="similarity"):
    R.random_logit(f, x, None, 0, key=KEY, explainer=saljax.explainers.gradient,
                   similarity="cosine")


def test_flax_variables_layers_skip_batch_stats():
  variables = {"params": {"conv": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(3)}},
               "batch_stats": {"conv": {"mean": jnp.zeros(2)}}}
  assert R.layer_names(variables) == ("params/conv", "params/head")
  # Leaves in flatten order (batch_stats first): never randomized (-1).
  assert R._leaf_layers(variables, ("params/head", "params/conv")) == (-1, 1, 0)


def test_data_randomization_reproduces_the_papers_finding(trained, random_labels):
  """Adebayo et al. Sec. 4 / Fig. 5 on digits: the gradient of the random-label
  model shares no rank order with the true model's, while gradient x input
  keeps the digit's strokes (high absolute, low signed rank correlation)."""
  params, x, y = trained
  f = jax.tree_util.Partial(cnn, params)
  fr = jax.tree_util.Partial(cnn, random_labels)
  score = lambda m, absolute=True: float(R.data_randomization(
      f, x, None, y, random_model=fr, explainer=m, absolute=absolute).mean())
  assert score("gradient") < 0.3
  assert score("gradient_x_input") > 0.7
  assert score("gradient_x_input", absolute=False) < 0.4
  # The true-label model against itself: identical maps.
  same = R.data_randomization(f, x, None, y, random_model=f, explainer="gradient",
                              random_target="same")
  np.testing.assert_allclose(same, 1.0, atol=1e-5)
  # A precomputed map equals the computed one.
  e = saljax.gradient(f, x, y)
  np.testing.assert_allclose(
      R.data_randomization(f, x, e, y, random_model=fr, explainer="gradient"),
      R.data_randomization(f, x, None, y, random_model=fr, explainer="gradient"), atol=1e-6)


def test_data_randomization_targets_and_errors(trained, random_labels):
  params, x, y = trained
  f = jax.tree_util.Partial(cnn, params)
  fr = jax.tree_util.Partial(cnn, random_labels)
  g = saljax.explainers.gradient
  pred = R.data_randomization(f, x, None, y, random_model=fr, explainer=g)
  same = R.data_randomization(f, x, None, y, random_model=fr, explainer=g, random_target="same")
  own = jnp.argmax(fr(x), -1)
  np.testing.assert_allclose(
      pred, R.data_randomization(f, x, None, y, random_model=fr, explainer=g, random_target=own),
      atol=1e-6)
  assert not np.allclose(pred, same)  # the random model's prediction is rarely the label
  with pytest.raises(ValueError, match="random_model: expected the same architecture"):
    R.data_randomization(f, x, None, y, explainer=g)
  with pytest.raises(ValueError, match="random_model: expected 10 classes"):
    R.data_randomization(f, x, None, y, random_model=lambda z: fr(z)[:, :3], explainer=g)
  with pytest.raises(ValueError, match="similarity"):
    R.data_randomization(f, x, None, y, random_model=fr, explainer=g, similarity="cosine")


def test_smooth_mprt_edge_detector_and_noise(trained):
  params, x, y = trained
  x = x[:4]
  kw = dict(params=params, key=KEY)
  # A map that does not read the model is unchanged at every stage, smoothed or not.
  edge = R.smooth_mprt(cnn, x, None, y[:4], explainer=sobel, samples=3, **kw)
  assert edge["layers"] == ("conv1", "conv2", "fc1", "fc2")  # bottom-up by default
  np.testing.assert_allclose(edge["curve"], 1.0, atol=1e-6)
  # Smoothing changes the maps (the noise is really added; noise_magnitude is
  # traced, so both calls share one compiled test) and the key fixes it.
  g = saljax.explainers.gradient
  five = R.smooth_mprt(cnn, x, None, y[:4], explainer=g, samples=3, **kw)
  again = R.smooth_mprt(cnn, x, None, y[:4], explainer=g, samples=3, **kw)
  clean = R.smooth_mprt(cnn, x, None, y[:4], explainer=g, samples=3, noise_magnitude=0.0, **kw)
  np.testing.assert_array_equal(five["curve"], again["curve"])
  assert np.abs(np.asarray(five["curve"]) - np.asarray(clean["curve"])).max() > 1e-3
  # The gradient loses its rank order once the model is fully randomized.
  assert float(five["curve"][:, -1].mean()) < 0.6, five["curve"]


def test_smooth_mprt_averages_noisy_explanations():
  """Known answer: an explainer returning its input makes the smoothed map the
  mean of the noisy inputs, (x + sum_n (x + std z_n)) / samples, with std 10% of
  each input's range; with noise_magnitude=0 it is x exactly."""
  from saljax.metrics import randomization as RR
  x = jax.random.uniform(jax.random.key(1), (2, 6, 6, 1))
  ident = lambda f, x, t, *, key=None: x
  e = RR._smoothed(ident, None, x, jnp.zeros(2, jnp.int32), KEY, saljax._validation.Options.split(None),
                   jnp.zeros((2, 2, 6, 6, 1)), 0.1)
  np.testing.assert_allclose(e, x, atol=1e-6)
  z = jax.random.normal(jax.random.key(2), (2, 2, 6, 6, 1))
  e = RR._smoothed(ident, None, x, jnp.zeros(2, jnp.int32), KEY, saljax._validation.Options.split(None),
                   z, 0.1)
  std = 0.1 * (x.max((1, 2, 3)) - x.min((1, 2, 3)))[:, None, None, None]
  np.testing.assert_allclose(e, x + std * z.sum(0) / 3, atol=1e-6)


def test_discrete_entropy_matches_numpy_histograms():
  import scipy.stats
  m = jax.random.normal(jax.random.key(3), (3, 10, 10))
  want = [scipy.stats.entropy(np.histogram(np.asarray(v), bins=100)[0]) for v in m]
  np.testing.assert_allclose(R.discrete_entropy(m, 100), want, rtol=1e-5)
  two = jnp.array([[0.0, 0.0, 1.0, 1.0]])
  np.testing.assert_allclose(R.discrete_entropy(two, 2), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(R.discrete_entropy(jnp.ones((1, 9)), 10), 0.0)


def test_efficient_mprt_known_answers(trained):
  params, x, y = trained
  x, y = x[:4], y[:4]
  kw = dict(params=params, key=KEY)
  # A model-independent map keeps its complexity: a relative rise of exactly 0.
  np.testing.assert_allclose(R.efficient_mprt(cnn, x, None, y, explainer=sobel, **kw), 0.0)
  # A constant map (the edges of a blank image) has no entropy to rise from.
  with pytest.raises(ValueError, match="constant for rows \\[0, 1, 2, 3\\]"):
    R.efficient_mprt(cnn, jnp.zeros_like(x), None, y, explainer=sobel, **kw)
  # The rise is (H(random) - H(trained)) / H(trained), computed from the two maps.
  g = saljax.explainers.gradient
  got = R.efficient_mprt(cnn, x, None, y, explainer=g, **kw)
  rand = R.random_parameters(params, KEY)
  bind = saljax.model.bind  # one compiled gradient for both parameter sets
  h0 = R.discrete_entropy(jnp.asarray(g(bind(cnn, params), x, y)).sum(-1), 100)
  h1 = R.discrete_entropy(jnp.asarray(g(bind(cnn, rand), x, y)).sum(-1), 100)
  np.testing.assert_allclose(got, (h1 - h0) / h0, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="bins"):
    R.efficient_mprt(cnn, x, None, y, explainer=g, bins=1, **kw)


def test_random_other_class_is_uniform_over_the_others():
  t = jnp.arange(4000) % 5
  o = np.asarray(R.random_other_class(KEY, t, 5))
  assert (o != np.asarray(t)).all() and o.min() == 0 and o.max() == 4
  counts = np.bincount(o[np.asarray(t) == 0], minlength=5)[1:]
  assert counts.min() > 150  # ~200 each of the 4 other classes
