"""Feature-guided black-box safety testing (saljax.safety): SIFT saliency, the
MCTS game search against random search on a digits CNN (outputs only), keys,
compiles, chunking, devices and bad input."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import safety_test
from saljax import safety

BUDGET = 300
N_IMAGES = 12


@pytest.fixture(scope="module")
def digits():
  """A digits CNN trained in a few seconds, and held-out images it classifies."""
  model, x, y, acc = safety_test.train_digits_cnn(seed=0, n_train=1000, steps=150)
  assert acc > 0.85, acc
  return model, x[:N_IMAGES]


def _no_gradients(model):
  """`model` behind a custom VJP whose backward raises: any reverse-mode
  gradient fails, and forward-mode (jvp) of a custom_vjp function is an error
  in JAX too. Also counts its (Python-level) calls: one per trace."""
  calls = []

  @jax.custom_vjp
  def guarded(x):
    calls.append(1)
    return model(x)

  def fwd(x):
    return guarded(x), None

  def bwd(_, g):
    raise AssertionError("a gradient of the model was taken")

  guarded.defvjp(fwd, bwd)
  return guarded, calls


@pytest.fixture(scope="module")
def searched(digits):
  model, x = digits
  guarded, calls = _no_gradients(model)
  before = safety._query._cache_size()
  mcts = safety.feature_guided_search(guarded, x, key=jax.random.key(0), max_queries=BUDGET)
  rnd = safety.random_search(guarded, x, key=jax.random.key(0), max_queries=BUDGET)
  compiled = safety._query._cache_size() - before
  return dict(model=model, guarded=guarded, calls=calls, x=x, mcts=mcts, rnd=rnd, compiled=compiled)


def test_the_guard_really_forbids_gradients(digits):
  model, x = digits
  guarded, _ = _no_gradients(model)
  with pytest.raises(AssertionError, match="gradient"):
    jax.grad(lambda z: guarded(z).sum())(jnp.asarray(x[:1]))
  with pytest.raises(TypeError):
    jax.jvp(guarded, (jnp.asarray(x[:1]),), (jnp.ones_like(x[:1]),))


def test_mcts_finds_adversarials_with_fewer_pixels_than_random(searched):
  mcts, rnd = searched["mcts"], searched["rnd"]
  assert mcts.success.mean() >= 0.8, mcts.l0
  k = 16
  med = lambda r: np.median(np.where(r.success, r.l0, k + 1))
  assert med(mcts) < med(rnd), (mcts.l0, rnd.l0)
  assert (mcts.queries <= BUDGET).all() and (rnd.queries <= BUDGET).all()


@pytest.mark.parametrize("which", ["mcts", "rnd"])
def test_results_are_real_adversarial_examples(searched, which):
  res, x, model = searched[which], searched["x"], searched["model"]
  ok = res.success
  pred = np.asarray(jnp.argmax(model(jnp.asarray(res.adversarial)), -1))
  np.testing.assert_array_equal(pred[ok], res.adversarial_label[ok])
  assert (pred[ok] != res.label[ok]).all()
  np.testing.assert_array_equal(pred[~ok], res.label[~ok])  # no success: the clean image back
  changed = (np.abs(res.adversarial - x) > 0).any(-1).reshape(len(x), -1).sum(1)
  np.testing.assert_array_equal(changed[ok], res.l0[ok])
  l2 = np.sqrt(((res.adversarial - x) ** 2).reshape(len(x), -1).sum(1))
  np.testing.assert_allclose(l2[ok], res.l2[ok], rtol=1e-5)
  assert np.isinf(res.l0[~ok]).all()
  assert res.adversarial.min() >= 0.0 and res.adversarial.max() <= 1.0
  assert [len(m) for m in np.asarray(res.moves, dtype=object)[ok]] == list(res.l0[ok])


def test_deterministic_under_the_key_and_compiled_once(searched):
  guarded, x = searched["guarded"], searched["x"]
  # One program per query shape: the MCTS batch and the random-search batch.
  assert searched["compiled"] == 2, searched["compiled"]
  before_calls, before = len(searched["calls"]), safety._query._cache_size()
  again = safety.feature_guided_search(guarded, x, key=jax.random.key(0), max_queries=BUDGET)
  other = safety.feature_guided_search(guarded, x, key=jax.random.key(1), max_queries=BUDGET // 2)
  assert safety._query._cache_size() == before  # new key, new budget: no new program
  assert len(searched["calls"]) == before_calls  # nor a new trace of the model
  first = searched["mcts"]
  np.testing.assert_array_equal(again.adversarial, first.adversarial)
  np.testing.assert_array_equal(again.queries, first.queries)
  assert again.moves == first.moves
  assert other.moves != first.moves


def test_chunked_queries_equal_unchunked(digits):
  model, x = digits
  a = safety.feature_guided_search(model, x[:3], key=jax.random.key(2), max_queries=80)
  b = safety.feature_guided_search(model, x[:3], key=jax.random.key(2), max_queries=80, batch_size=7)
  assert a.moves == b.moves
  np.testing.assert_array_equal(a.queries, b.queries)
  np.testing.assert_allclose(a.l2, b.l2, rtol=1e-6)


def test_sift_saliency_follows_the_features():
  img = np.zeros((16, 16))
  img[3:7, 9:13] = 1.0  # one bright square: its corners are the keypoints
  feat = safety.sift_saliency(img)
  assert not feat.fallback
  np.testing.assert_allclose(feat.saliency.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(feat.weights.sum(), 1.0, rtol=1e-6)
  # Most of the mass lies on and around the square, far from the empty half.
  assert feat.saliency[1:9, 7:15].sum() > 0.8, feat.saliency.round(3)
  assert feat.saliency[8:, :8].sum() < 0.05
  assert feat.regions.shape == (16, 16) and set(np.unique(feat.regions)) <= set(range(len(feat.weights)))


def test_sift_on_digits_and_the_fallback(digits):
  _, x = digits
  feats = [safety.sift_saliency(im) for im in x]
  assert not any(f.fallback for f in feats)  # upscaled 8x8 digits do have keypoints
  blank = safety.sift_saliency(np.zeros((8, 8, 1)))
  assert blank.fallback and len(blank.weights) == 9
  np.testing.assert_allclose(blank.saliency.sum(), 1.0, rtol=1e-6)


def test_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_safety_devices.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert json.loads(res.stdout.strip().splitlines()[-1]) == {
      "mcts": True, "random": True, "mcts_authors": True, "random_authors": True,
      "mcts_authors_succeeded": True, "random_authors_succeeded": True}


def test_bad_inputs(digits):
  model, x = digits
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="key"):
    safety.feature_guided_search(model, x[:1])
  with pytest.raises(TypeError, match="f: expected"):
    safety.random_search("model", x[:1], key=key)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    safety.feature_guided_search(model, x[:1, ..., 0], key=key)
  with pytest.raises(ValueError, match="tau"):
    safety.feature_guided_search(model, x[:1], key=key, tau=0.0)
  with pytest.raises(ValueError, match="max_pixels"):
    safety.random_search(model, x[:1], key=key, max_pixels=65)
  with pytest.raises(ValueError, match="within bounds"):
    safety.feature_guided_search(model, x[:1] + 2.0, key=key)
  with pytest.raises(ValueError, match="max_queries"):
    safety.feature_guided_search(model, x[:1], key=key, max_queries=0)
  with pytest.raises(ValueError, match="saliency"):
    safety.feature_guided_search(model, x[:2], key=key, saliency=[safety.sift_saliency(x[0])])
  with pytest.raises(ValueError, match="image"):
    safety.sift_saliency(np.zeros((2, 3, 4, 5)))
  with pytest.raises(ValueError, match="uniform"):
    safety.sift_saliency(x[0], uniform=1.5)
  with pytest.raises(ValueError, match="exploration"):
    safety.feature_guided_search(model, x[:1], key=key, exploration=-1.0)
  with pytest.raises(ValueError, match="manipulation: expected one of"):
    safety.random_search(model, x[:1], key=key, manipulation="white")
  with pytest.raises(ValueError, match="bounds"):
    safety.random_search(model, x[:1], key=key, manipulation="extreme", bounds=None)
  with pytest.raises(ValueError, match="backtrack"):
    safety.random_search(model, x[:1], key=key, backtrack=1)
  with pytest.raises(ValueError, match="max_queries: expected more than"):
    safety.random_search(model, x[:1], key=key, backtrack=True, max_queries=17)
  with pytest.raises(ValueError, match="reward"):
    safety.feature_guided_search(model, x[:1], key=key, reward="distance")
  with pytest.raises(ValueError, match="scale_factor"):
    safety.sift_saliency(x[0], scale_factor=0.0)
  with pytest.raises(ValueError, match="mixture"):
    safety.sift_saliency(x[0], mixture="yes")


def test_binary_writes_table_jsonl_and_png(tmp_path):
  import ml_collections
  from PIL import Image

  from experiments.configs import safety_test as cfg
  c = cfg.get_config()
  c.train.update(n_train=300, steps=40)
  c.n_images, c.examples = 3, 2
  c.search.update(max_queries=60, max_pixels=8)
  c.mcts.expansions = 4
  out = safety_test.run(ml_collections.ConfigDict(c), str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "safety.jsonl").read_text().splitlines()]
  assert [l["method"] for l in lines[:2]] == ["mcts", "random"]
  assert len(lines) == 2 + 2 * 3
  for row in out["rows"]:
    assert 0.0 <= row["success_rate"] <= 1.0 and row["mean_queries"] <= 60
  assert "| mcts |" in (tmp_path / "safety_table.md").read_text()
  png = np.asarray(Image.open(tmp_path / "safety_examples.png").convert("L"), np.float64)
  assert png.shape[1] > 400 and png.std() > 30  # digits on black panels, not a blank figure
  assert (png < 20).mean() > 0.2 and (png > 235).mean() > 0.1  # black panels, white margins


# ----------------------------------------------------------------------------
# The authors' rules (SafeCV): known answers on a 4x4 image and a hand-made model.


def _two_pixel_model(x):
  """Class 1 iff ``x[0, 0] + (1 - x[0, 1]) > 1.5``: on the clean image below
  (0.3 everywhere, 0.7 at (0, 1)) that needs BOTH (0, 0) white and (0, 1)
  black, and no other pixel matters."""
  s = x[:, 0, 0, 0] + (1.0 - x[:, 0, 1, 0])
  return jnp.stack([jnp.full_like(s, 1.5), s], -1)


def _two_pixel_images():
  x = np.full((2, 4, 4, 1), 0.3, np.float32)
  x[:, 0, 1] = 0.7
  return jnp.asarray(x)


def test_extreme_manipulation_offers_the_farther_bound_only():
  x = np.array([0.0, 0.3, 0.5, 0.7, 1.0], np.float32).reshape(1, 1, 5, 1)
  signs = safety._effective_signs(x, 1.0, (0.0, 1.0), "extreme")  # [-, +] per pixel
  np.testing.assert_array_equal(signs[0], [[0, 1], [0, 1], [1, 0], [1, 0], [1, 0]])  # 0.5 -> 0, as p < 255 - p
  both = safety._effective_signs(x, 1.0, (0.0, 1.0), "tau")
  np.testing.assert_array_equal(both[0], [[0, 1], [1, 1], [1, 1], [1, 1], [1, 0]])


@pytest.mark.parametrize("search", ["feature_guided_search", "random_search"])
def test_backtracking_keeps_exactly_the_needed_pixels(search):
  x = _two_pixel_images()
  run = lambda **kw: getattr(safety, search)(_two_pixel_model, x, key=jax.random.key(3), max_pixels=16,
                                             max_queries=60, manipulation="extreme", **kw)
  plain, back = run(), run(backtrack=True)
  assert plain.success.all() and back.success.all()
  if search == "random_search":  # (MCTS's saliency finds the two pixels outright here)
    assert (plain.l0 > 2).all(), plain.l0  # the playouts find more pixels than needed...
  np.testing.assert_array_equal(back.l0, [2, 2])  # ...backtracking undoes all but the two
  for moves in back.moves:
    assert sorted(moves) == [(0, 0, 1), (0, 1, -1)]
  np.testing.assert_allclose(back.adversarial[:, 0, 0, 0], 1.0)  # extreme: to the farther bound
  np.testing.assert_allclose(back.adversarial[:, 0, 1, 0], 0.0)
  np.testing.assert_allclose(back.l2, np.sqrt(0.7 ** 2 + 0.7 ** 2), rtol=1e-5)
  assert (back.queries <= 60).all()
  np.testing.assert_array_equal(np.asarray(jnp.argmax(_two_pixel_model(jnp.asarray(back.adversarial)), -1)), 1)
  before = safety._backtrack._cache_size()
  getattr(safety, search)(_two_pixel_model, x, key=jax.random.key(4), max_pixels=16, max_queries=50,
                          manipulation="extreme", backtrack=True)
  assert safety._backtrack._cache_size() == before  # new key and budget: the same backtracking program


def test_backtrack_batch_undoes_the_unneeded_moves_in_order():
  x = _two_pixel_images()
  label = jnp.zeros(2, jnp.int32)
  # Moves are 2 * pixel + (1 if + else 0): pixel 5 +, pixel 0 +, pixel 9 -, pixel 1 -, pixel 3 +;
  # row 1 lacks pixel 1 (not adversarial: nothing may be undone).
  moves = jnp.asarray([[11, 1, 18, 2, 7, -1], [11, 1, 18, 7, -1, -1]], jnp.int32)
  out, pred, l2 = safety.backtrack_batch(_two_pixel_model, x, jnp.arange(2), moves, label,
                                         jnp.asarray([1, 0]), jnp.asarray([9.0, 9.0]), 1.0, (0.0, 1.0), None)
  np.testing.assert_array_equal(out, [[-1, 1, -1, 2, -1, -1], [11, 1, 18, 7, -1, -1]])
  np.testing.assert_array_equal(pred, [1, 0])
  np.testing.assert_allclose(l2, [np.sqrt(2 * 0.7 ** 2), 9.0], rtol=1e-5)


def test_authors_reward_is_the_probability_drop_over_depth():
  assert safety._reward("probability", 0.9, 0.4, 2, 0.7) == pytest.approx(0.25)
  assert safety._reward("probability", 0.9, 0.95, 1, 0.0) == pytest.approx(-0.05)  # may be negative
  assert safety._reward("shaped", 0.9, 0.4, 2, 0.7) == pytest.approx(0.5 * 0.6 + 0.5 * 0.7)


def test_authors_gaussians_are_wider_and_a_mixture():
  img = np.zeros((16, 16))
  img[3:7, 9:13] = 1.0
  ours = safety.sift_saliency(img)
  theirs = safety.sift_saliency(img, scale_factor=2.0, scale_add=1.0, mixture=True)
  np.testing.assert_allclose(theirs.scales, 2.0 * ours.scales + 1.0)
  rr, cc = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
  dens = [np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * s * s)) for (r, c), s in zip(theirs.keypoints, theirs.scales)]
  want = sum(w * d / d.sum() for w, d in zip(theirs.weights, dens))
  np.testing.assert_allclose(theirs.saliency, want / want.sum(), rtol=1e-6)
  # Wider Gaussians put more mass away from the square than ours.
  assert theirs.saliency[8:, :8].sum() > ours.saliency[8:, :8].sum()
