"""Concept extraction (saljax.concepts.extract): reconstruction, streaming, keys, compiles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saljax import concepts as C
from saljax import model as M

KEY = jax.random.key(0)
# One set of static options shared by the tests, so that fits of one shape share a compile.
OPTS = dict(batch_size=80, epochs=10, code_steps=60, sparsity=0.01, learning_rate=1e-2)


@pytest.fixture(scope="module")
def acts():
  """Non-negative activations with 6 planted atoms: ``[250, 12]`` (rank 6 plus a little
  noise); 250 rows make chunks of 80 ragged."""
  w = jax.random.uniform(jax.random.key(1), (6, 12))
  u = jax.random.uniform(jax.random.key(2), (250, 6))
  u = u * (jax.random.uniform(jax.random.key(3), (250, 6)) < 0.5)
  return u @ w + 0.01 * jax.random.uniform(jax.random.key(4), (250, 12))


# k-means and dictionary learning: their fits are covered by the chunking test
# (each compile costs seconds on CI's 2 cores).
@pytest.mark.parametrize("method", ["nmf", "pca", "sae"])
def test_reconstruction_error_falls_with_concepts(acts, method):
  errs = []
  for k in (1, 3, 6):
    # The SAE keeps top_k latents per row; as SGD it needs more steps (200 of 25 rows).
    opts = dict(OPTS, batch_size=25, epochs=20) if method == "sae" else OPTS
    con = C.fit(KEY, acts, method, k, top_k=max(1, k // 2), **opts)
    errs.append(float(C.reconstruction_error(con, acts)))
  assert errs[0] > errs[1] > errs[2], errs
  assert errs[0] <= 1.05  # relative to the variance: one concept is not worse than the mean
  if method in ("nmf", "pca"):  # exact rank 6: nearly perfect
    assert errs[2] < 0.01, errs


def test_pca_is_the_top_principal_subspace(acts):
  con = C.fit(KEY, acts, "pca", 3, **OPTS)
  a = np.asarray(acts, np.float64)
  _, _, vt = np.linalg.svd(a - a.mean(0), full_matrices=False)
  w = np.asarray(con.dictionary, np.float64)
  # Same subspace: the projection of W's rows onto the top-3 right singular vectors keeps them.
  np.testing.assert_allclose(np.linalg.norm(w @ vt[:3].T, axis=1), 1, atol=1e-4)
  np.testing.assert_allclose(np.asarray(con.params["mean"]), a.mean(0), atol=1e-5)


@pytest.mark.parametrize("method", ["nmf", "pca", "kmeans", "dictionary"])
def test_chunked_fit_equals_one_pass(acts, method):
  """The stream's chunking only changes the order of sums (sufficient statistics)."""
  one = C.fit(KEY, acts, method, 3, **dict(OPTS, batch_size=250))
  chunked = C.fit(KEY, acts, method, 3, **OPTS)  # chunks of 80, the last ragged
  np.testing.assert_allclose(np.asarray(chunked.dictionary), np.asarray(one.dictionary),
                             rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["nmf", "sae"])
def test_deterministic_under_key(acts, method):
  a = C.fit(KEY, acts, method, 3, top_k=1, **OPTS)
  b = C.fit(KEY, acts, method, 3, top_k=1, **OPTS)
  c = C.fit(jax.random.key(7), acts, method, 3, top_k=1, **OPTS)
  np.testing.assert_array_equal(np.asarray(a.dictionary), np.asarray(b.dictionary))
  assert np.abs(np.asarray(a.dictionary) - np.asarray(c.dictionary)).max() > 1e-3


def _conv_features():
  w = jax.random.normal(jax.random.key(5), (3, 3, 3, 8)) * 0.5

  def feats(x):
    return jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return feats


def test_streamed_features_equal_precomputed_activations():
  feats = _conv_features()
  x = jax.random.uniform(jax.random.key(6), (40, 6, 6, 3))
  for pool in ("none",):  # every position a row: the harder bookkeeping of weights
    streamed = C.fit(KEY, x, "nmf", 3, features=feats, pool=pool, batch_size=16, epochs=5)
    direct = C.fit(KEY, feats(x), "nmf", 3, pool=pool, batch_size=16, epochs=5)
    np.testing.assert_allclose(np.asarray(streamed.dictionary), np.asarray(direct.dictionary),
                               rtol=1e-4, atol=1e-5)
    e1 = C.reconstruction_error(streamed, x, features=feats, pool=pool, batch_size=7)
    e2 = C.reconstruction_error(streamed, feats(x), pool=pool)
    np.testing.assert_allclose(float(e1), float(e2), rtol=1e-4)


def test_one_compile_per_shape():
  traces = []
  base = _conv_features()

  def feats(x):
    traces.append(1)
    return base(x)

  x = jax.random.uniform(jax.random.key(6), (20, 6, 6, 3))
  C.fit(KEY, x, "kmeans", 3, features=feats, batch_size=8, epochs=3)
  n = len(traces)
  C.fit(jax.random.key(3), x * 2, "kmeans", 3, features=feats, batch_size=8, epochs=3)
  assert len(traces) == n and n > 0


def test_layer_features_of_a_tapped_model():
  feats = _conv_features()
  tapped = M.from_features_head(feats, lambda a: a.mean((1, 2)), name="conv")
  x = jax.random.uniform(jax.random.key(6), (10, 6, 6, 3))
  lf = C.layer_features(tapped, "conv")
  np.testing.assert_allclose(np.asarray(lf(x)), np.asarray(feats(x)), atol=1e-6)
  with pytest.raises(ValueError, match="unknown layer"):
    C.layer_features(tapped, "nope")


def test_encode_decode_contracts(acts):
  nmf = C.fit(KEY, acts, "nmf", 3, **OPTS)
  assert float(nmf.dictionary.min()) >= 0 and float(C.encode(nmf, acts).min()) >= 0
  km = C.fit(KEY, acts, "kmeans", 3, **OPTS)
  u = np.asarray(C.encode(km, acts))
  np.testing.assert_array_equal(u.sum(1), 1)  # one-hot
  sae = C.fit(KEY, acts, "sae", 3, top_k=1, **OPTS)
  assert int((np.asarray(C.encode(sae, acts)) > 0).sum(1).max()) <= 1


def test_archetypal_sae_atoms_stay_in_the_hull_of_data_rows(acts):
  con = C.fit(KEY, acts, "sae", 3, top_k=1, archetypes=16, relaxation=0.01,
              **dict(OPTS, batch_size=25, epochs=20))
  mix, arch = np.asarray(con.params["mix"]), np.asarray(con.params["archetypes"])
  assert mix.shape == (3, 16) and arch.shape == (16, 12)
  np.testing.assert_allclose(mix.sum(1), 1, atol=1e-5)
  assert mix.min() >= 0
  # Every candidate is a data row; every atom is their mixture up to the relaxation.
  dist = np.abs(arch[:, None] - np.asarray(acts)[None]).max(-1).min(1)
  assert dist.max() < 1e-5
  off = np.linalg.norm(np.asarray(con.dictionary) - mix @ arch, axis=1)
  assert off.max() <= 0.01 + 1e-5, off
  err = float(C.reconstruction_error(con, acts))
  assert err < 0.5, err
  with pytest.raises(ValueError, match="archetypes"):
    C.fit(KEY, acts, "nmf", 3, archetypes=4)


def test_random_crops():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  crops, boxes = C.random_crops(KEY, x, 5, crop_size=4, out_size=4)
  again, _ = C.random_crops(KEY, x, 5, crop_size=4, out_size=4)
  np.testing.assert_array_equal(np.asarray(crops), np.asarray(again))
  for c, (i, t, l, s) in zip(np.asarray(crops), np.asarray(boxes)):
    np.testing.assert_allclose(c, np.asarray(x)[i, t:t + s, l:l + s], atol=1e-4)
  big, _ = C.random_crops(KEY, x, 3, crop_size=0.5)
  assert big.shape == (3, 8, 8, 3)


def test_bad_input(acts):
  with pytest.raises(ValueError, match="method"):
    C.fit(KEY, acts, "ica", 3)
  with pytest.raises(ValueError, match="PCA gives at most"):
    C.fit(KEY, acts, "pca", 13)
  with pytest.raises(ValueError, match="top_k"):
    C.fit(KEY, acts, "sae", 3, top_k=4)
  with pytest.raises(ValueError, match="data"):
    C.fit(KEY, jnp.ones((5,)), "nmf", 3)
  con = C.fit(KEY, acts, "pca", 3, **OPTS)
  with pytest.raises(ValueError, match="12 channels"):
    C.encode(con, jnp.ones((3, 5)))
  with pytest.raises(ValueError, match="crop_size"):
    C.random_crops(KEY, jnp.ones((1, 8, 8, 3)), 2, crop_size=9)
