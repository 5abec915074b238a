"""saljax.visualize on a tiny CNN trained here on scikit-learn's 8x8 digits."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saljax import visualize as V
from saljax.visualize import _image as I
from saljax.visualize import activation as MX


@pytest.fixture(scope="module")
def digits():
  clf, acc, (x, y) = V.train_digits_cnn(steps=200)
  assert acc > 0.85, acc
  return clf, x, y


def _probs(clf, images, cls):
  return np.asarray(jax.nn.softmax(clf(jnp.asarray(images)), -1))[np.arange(len(cls)), cls]


def test_fourier_round_trip_and_colour():
  img = jax.random.uniform(jax.random.key(0), (2, 12, 10, 3), minval=0.05, maxval=0.95)
  back = I.fourier_to_image(I.image_to_fourier(img), (12, 10))
  np.testing.assert_allclose(back, img, atol=1e-4)
  grey = jax.random.uniform(jax.random.key(1), (9, 9, 1), minval=0.05, maxval=0.95)
  np.testing.assert_allclose(I.fourier_to_image(I.image_to_fourier(grey), (9, 9)), grey, atol=1e-4)
  # The recorrelation matrix is lucid's: largest column norm 1, and invertible.
  assert np.isclose(np.linalg.norm(I.COLOR_CORRELATION, axis=0).max(), 1.0)
  np.testing.assert_allclose(I.decorrelate(I.recorrelate(img)), img, atol=1e-5)
  # Zero parameters are a flat grey image; the 1/f scale is largest at the lowest frequency.
  np.testing.assert_allclose(I.fourier_to_image(jnp.zeros(I.fourier_shape((8, 8))), (8, 8)), 0.5)
  s = I.fourier_scale((8, 8))
  assert s[0, 0] == s.max() and s[4, 4] == s.min()


def test_maco_image_keeps_magnitude_and_warp_identity():
  mag = jnp.abs(jax.random.normal(jax.random.key(0), (3, 8, 5))) + 0.1
  ph = jax.random.normal(jax.random.key(1), (3, 8, 5))
  img = I.maco_to_image(ph, mag)
  assert img.shape == (8, 8, 3) and 0 < float(img.min()) and float(img.max()) < 1
  # A warp with no shift, scale 1 and angle 0 is the identity; a 90 degree turn is rot90.
  x = jax.random.uniform(jax.random.key(2), (7, 7, 2))
  np.testing.assert_allclose(I.warp(x, jnp.zeros(2), jnp.ones(()), jnp.zeros(())), x, atol=1e-5)
  turned = I.warp(x, jnp.zeros(2), jnp.ones(()), jnp.asarray(np.pi / 2))
  assert min(np.abs(turned - np.rot90(x, k)).max() for k in (1, 3)) < 1e-4


def test_class_objective_reaches_high_probability_in_one_batched_call(digits):
  clf, _, _ = digits
  cls = list(range(10))
  r = V.maximize(clf, V.classes(cls, score="log_softmax"), key=jax.random.key(0), size=8,
                 channels=1, steps=40, learning_rate=0.1, n_augment=2,
                 transforms=V.Transforms(jitter=0.05, degrees=5.0))
  assert r.images.shape == (10, 8, 8, 1) and r.values.shape == (10, 40)
  p = _probs(clf, r.images, cls)
  assert p.min() > 0.9, p
  # The objective rose from its start for every class.
  assert (np.asarray(r.values[:, -1]) > np.asarray(r.values[:, 0])).all()
  moved = V.transformed_scores(clf, r.images, V.classes(cls, score="probability"),
                               key=jax.random.key(1), n=8,
                               transforms=V.Transforms(jitter=0.05, degrees=5.0))
  assert moved.shape == (10, 8) and float(moved.mean(1).min()) > 0.5


def test_batched_equals_one_at_a_time_chunked_equals_unchunked_and_one_compile(digits):
  clf, _, _ = digits
  obj = V.channels("conv_1", [0, 3, 5])
  keys = jax.random.split(jax.random.key(3), 3)
  kw = dict(size=8, channels=1, steps=6, learning_rate=0.05, n_augment=2)
  before = MX._optimize._cache_size()
  full = V.maximize(clf, obj, key=keys, **kw)
  after_first = MX._optimize._cache_size()
  chunked = V.maximize(clf, obj, key=keys, batch_size=2, **kw)
  np.testing.assert_allclose(chunked.images, full.images, atol=1e-5)
  for i in range(3):
    one = V.maximize(clf, obj[i], key=keys[i:i + 1], **kw)
    np.testing.assert_allclose(one.images[0], full.images[i], atol=1e-4)
  # Deterministic under the key; another key gives another image.
  again = V.maximize(clf, obj, key=keys, **kw)
  np.testing.assert_array_equal(again.images, full.images)
  other = V.maximize(clf, obj, key=jax.random.split(jax.random.key(4), 3), **kw)
  assert np.abs(np.asarray(other.images) - np.asarray(full.images)).max() > 1e-3
  # One compiled program for the batch: the repeat and new channel indices reuse it.
  V.maximize(clf, V.channels("conv_1", [1, 2, 4]), key=keys, **kw)
  assert after_first - before == 1
  assert MX._optimize._cache_size() == after_first + 2  # + chunked + single-objective shapes


def test_neuron_and_direction_objectives_rise(digits):
  clf, _, _ = digits
  k = jax.random.key(5)
  for obj in (V.neurons("conv_0", [0, 1]), V.directions("dense", np.eye(64)[:2] + 0.1)):
    r = V.maximize(clf, obj, key=k, size=8, channels=1, steps=8, learning_rate=0.1,
                   transforms=None)
    assert (np.asarray(r.values[:, -1]) > np.asarray(r.values[:, 0])).all(), obj


def test_bad_input_is_refused_before_work(digits):
  clf, _, _ = digits
  with pytest.raises(ValueError, match="unknown layer"):
    V.maximize(clf, V.channels("nope", [0]), key=jax.random.key(0), size=8, channels=1)
  with pytest.raises(ValueError, match="expected a jax.random key"):
    V.maximize(clf, V.classes([1]), key=None, size=8, channels=1)
  with pytest.raises(ValueError, match="size"):
    V.maximize(clf, V.classes([1]), key=jax.random.key(0), size=2, channels=1)
  with pytest.raises(ValueError, match="could not be evaluated"):
    V.maximize(clf, V.classes([1]), key=jax.random.key(0), size=8, channels=3)
  with pytest.raises(ValueError, match="indices"):
    V.classes([-1])
  with pytest.raises(ValueError, match="class_indices"):
    V.evolve(clf, [12], key=jax.random.key(0), size=8, channels=1)


def test_multifaceted_starts_from_cluster_means_and_respects_center_bias(digits):
  clf, x, y = digits
  fc = V.multifaceted(clf, V.classes([3], score="log_softmax"), x[:120], key=jax.random.key(0),
                      embed_layer="dense", n_facets=3, n_top=30, steps=12, learning_rate=0.05,
                      blur=(0.0, 0.0), center_bias=(0.5,), transforms=None)
  assert fc.images.shape == (3, 8, 8, 1) and fc.starts.shape == (3, 8, 8, 1)
  labels, top = np.asarray(fc.labels), np.asarray(fc.top)
  for f in range(3):
    np.testing.assert_allclose(fc.starts[f], x[:120][top[labels == f]].mean(0), atol=1e-5)
  # The top candidates are the ones the model scores highest for the class.
  logp = np.asarray(jax.nn.log_softmax(clf(jnp.asarray(x[:120])), -1))[:, 3]
  assert logp[top].min() >= np.sort(logp)[-30] - 1e-5
  assert (np.asarray(fc.values[:, -1]) > np.asarray(fc.values[:, 0])).all()


def test_gradient_fooling_images_from_noise(digits):
  clf, _, _ = digits
  r = V.fooling_gradient(clf, list(range(10)), key=jax.random.key(0), size=8, channels=1,
                         steps=150, learning_rate=0.5)
  assert _probs(clf, r.images, list(range(10))).min() >= 0.99


def test_evolution_reads_only_outputs_and_fools_the_model(digits):
  clf, _, _ = digits

  @jax.custom_jvp
  def guard(z):
    return z

  @guard.defjvp
  def _guard_jvp(primals, tangents):
    raise AssertionError("the black-box search took a gradient of the model")

  blackbox = jax.tree_util.Partial(lambda m, x: guard(m(x)), clf)
  with pytest.raises(AssertionError, match="took a gradient"):  # the guard works
    jax.grad(lambda x: blackbox(x).sum())(jnp.zeros((1, 8, 8, 1)))
  cls = list(range(10))
  for enc, gens in (("direct", 400), ("cppn", 400)):
    e = V.evolve(blackbox, cls, key=jax.random.key(1), size=8, channels=1, encoding=enc,
                 generations=gens, population=64, batch_size=32)
    assert float(e.fitness.min()) >= 0.99, (enc, e.fitness)
    np.testing.assert_allclose(_probs(clf, e.images, cls), e.fitness, atol=1e-5)
    hist = np.asarray(e.history)
    assert (np.diff(hist, axis=0) >= 0).all()  # an archive cell never gets worse
  again = V.evolve(blackbox, [0, 1], key=jax.random.key(1), size=8, channels=1,
                   generations=5, population=8)
  same = V.evolve(blackbox, [0, 1], key=jax.random.key(1), size=8, channels=1,
                  generations=5, population=8)
  np.testing.assert_array_equal(again.images, same.images)


def test_kmeans_separates_planted_clusters():
  pts = np.concatenate([np.random.default_rng(0).normal(c, 0.1, (20, 2)) for c in (0, 5, 10)])
  centers, labels = V.kmeans(jnp.asarray(pts, jnp.float32), jax.random.key(0), 3)
  assert sorted(np.round(np.asarray(centers)[:, 0]).tolist()) == [0.0, 5.0, 10.0]
  assert all(len(set(np.asarray(labels)[i * 20:(i + 1) * 20].tolist())) == 1 for i in range(3))


def test_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_visualize_sharded.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == {"maximize", "evolve"}
  assert all(d < 1e-4 for d in diffs.values()), diffs


def test_visualize_page_renders_every_grid(tmp_path):
  import _browser
  from experiments import visualize as binary
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "classes.npz", images=rng.uniform(size=(8, 16, 16, 3)).astype(np.float32))
  np.savez(tmp_path / "evolve.npz", direct=rng.uniform(size=(10, 8, 8, 1)),
           cppn=rng.uniform(size=(10, 8, 8, 1)))
  summary = {"model": "efficientnet_lite0 <b>",
             "classes": {"classes": list(range(8)), "prob": [0.95] * 8,
                         "prob_transformed": [0.7] * 8, "seconds": 1.5},
             "evolve": {"direct": {"prob": [0.995] * 10, "min_prob": 0.995},
                        "cppn": {"prob": [0.999] * 10, "min_prob": 0.999}}}
  figs = binary.figures(tmp_path, summary)
  assert set(figs) == {"classes", "evolve"}
  from PIL import Image
  grid = np.asarray(Image.open(tmp_path / "classes.png").convert("RGB"), np.float32)
  assert grid.std() > 20  # the random images are drawn, not a blank canvas
  index = binary.write_html(tmp_path, summary, figs)
  text = index.read_text()
  assert "&lt;b&gt;" in text and "<b>" not in text.split("<body>")[1].split("</h1>")[0]
  facts = _browser.page_facts(index)
  assert sorted(src for src, _ in facts["images"]) == ["classes.png", "evolve.png"]
  assert all(w > 0 for _, w in facts["images"]), facts["images"]
  assert facts["std"] > 10 and facts["nonwhite"] > 0.1
