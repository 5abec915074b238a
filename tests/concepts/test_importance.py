"""Concept importance (saljax.concepts.importance): planted concepts, Sobol against
brute force, the holistic paper's optimality of gradient x input for a linear head,
keys, compiles, 8 devices."""
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saljax import concepts as C
from saljax import model as M

sys.path.insert(0, os.path.dirname(__file__))
import _planted_dict as _planted  # noqa: E402

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def planted():
  """The planted-concept CNN (trained once), the held-out images of the class
  (about 64, crops are drawn from them) and 24 of them to explain."""
  tapped, (x, y, region), acc = _planted.train(steps=150)
  assert acc >= 0.95, acc
  pos = y == 1
  return tapped, jnp.asarray(x[pos]), jnp.asarray(x[pos][:24]), region[pos][:24]


def _overlap(maps: np.ndarray, region: np.ndarray) -> tuple[float, float]:
  """(share of the map's top-|R| pixels inside R, share of its positive mass inside R), means."""
  maps = np.maximum(maps, 0).reshape(len(maps), -1)
  r = region.reshape(len(region), -1)
  top = np.argsort(-maps, 1)
  hits = [r[i, top[i, :int(r[i].sum())]].mean() for i in range(len(r))]
  mass = (maps * r).sum(1) / np.maximum(maps.sum(1), 1e-12)
  return float(np.mean(hits)), float(mass.mean())


@pytest.mark.parametrize("method", ["nmf", "sae"])
def test_planted_concept_ranks_first_and_is_where_it_was_planted(planted, method):
  tapped, pool, x, region = planted
  feats = C.layer_features(tapped, "block2")
  # CRAFT: concepts from random crops of the class's images, resized to the input.
  crops, _ = C.random_crops(KEY, pool, 128, crop_size=8)
  # NMF: 15 passes over chunks of 64; the SAE is SGD: 80 Adam steps of 64 crops.
  opts = (dict(epochs=15, code_steps=50) if method == "nmf"
          else dict(epochs=40, learning_rate=1e-2))
  con = C.fit(KEY, crops, method, 4, features=feats, batch_size=64, **opts)
  imp = np.asarray(C.sobol(KEY, tapped, x, 1, con, layer="block2", designs=16)).mean(0)
  top = int(np.argmax(imp))
  maps = np.asarray(C.concept_maps(tapped, x, con, layer="block2"))
  hits, mass = _overlap(maps[..., top], region)
  assert hits >= 0.7, (method, imp, hits, mass)
  assert mass >= 0.6, (method, imp, hits, mass)
  # (Another concept may also sit on the checkerboard: NMF can split it in two parts.)


def test_sobol_matches_analytic_and_brute_force_indices():
  # Additive: ST_i = a_i^2 / sum a^2 for uniform masks.
  a = jnp.array([1.0, 2.0, 0.5, 0.0])
  st = C.sobol_indices(KEY, lambda m: m @ a, 4, designs=512)
  np.testing.assert_allclose(np.asarray(st), np.asarray(a ** 2 / (a ** 2).sum()), atol=0.03)

  # With an interaction, g = m0 m1 + m2, against E[Var(g | m_~i)] / Var(g) on a grid.
  def g(m):
    return m[..., 0] * m[..., 1] + m[..., 2]

  grid = (np.arange(40) + 0.5) / 40
  mm = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1)
  vals = np.asarray(g(mm))
  brute = np.array([vals.var(axis=i).mean() for i in range(3)]) / vals.var()
  np.testing.assert_allclose(brute, [4 / 19, 4 / 19, 12 / 19], atol=0.01)  # and the closed form
  st = C.sobol_indices(KEY, g, 3, designs=512, batch_size=100)
  np.testing.assert_allclose(np.asarray(st), brute, atol=0.03)


@pytest.fixture(scope="module")
def linear_head():
  """A ReLU conv layer ("conv") and a linear head on its spatial mean; NMF concepts."""
  wc = jax.random.normal(jax.random.key(1), (3, 3, 3, 10)) * 0.5
  wh = jax.random.normal(jax.random.key(2), (10, 3))

  def features(x):
    return jax.nn.relu(jax.lax.conv_general_dilated(
        x, wc, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

  tapped = M.from_features_head(features, lambda a: a.mean((1, 2)) @ wh, name="conv")
  x = jax.random.uniform(jax.random.key(3), (6, 6, 6, 3))
  con = C.fit(KEY, x, "nmf", 5, features=features, pool="none", batch_size=6, epochs=10)
  return tapped, x, con


def test_gradient_input_is_optimal_for_c_deletion_and_insertion_with_a_linear_head(linear_head):
  """Fel et al. 2023, Theorem: for a linear last layer the score is additive in the
  concepts, so the gradient x input order minimizes C-Deletion's area and maximizes
  C-Insertion's. Checked against all 5! orders of one example."""
  tapped, x, con = linear_head
  x1 = x[:1]
  gxi = C.gradient_input(tapped, x1, 0, con, layer="conv")
  # Linear head: occlusion of one concept removes exactly its gradient x input share.
  np.testing.assert_allclose(np.asarray(C.occlusion(tapped, x1, 0, con, layer="conv")),
                             np.asarray(gxi), rtol=1e-4, atol=1e-5)
  orders = np.array(list(itertools.permutations(range(5))))  # [120, 5]
  imps = np.zeros((120, 5), np.float32)
  np.put_along_axis(imps, orders, np.arange(5, 0, -1, dtype=np.float32)[None], 1)
  # Every order, and gradient x input's last (one batch: one compile per curve).
  imps = jnp.concatenate([jnp.asarray(imps), gxi])
  xs = jnp.repeat(x1, 121, 0)
  dele = np.asarray(C.area(C.c_deletion(tapped, xs, 0, con, imps, layer="conv", batch_size=3)))
  ins = np.asarray(C.area(C.c_insertion(tapped, xs, 0, con, imps, layer="conv")))
  assert dele[-1] <= dele[:-1].min() + 1e-4 and ins[-1] >= ins[:-1].max() - 1e-4, (
      dele[-1], dele.min(), ins[-1], ins.max())
  assert dele.max() - dele.min() > 1e-2  # the order matters in this case


def test_curves_start_and_end_where_they_must(linear_head):
  tapped, x, con = linear_head
  imp = C.gradient_input(tapped, x, 1, con, layer="conv")
  d = np.asarray(C.c_deletion(tapped, x, 1, con, imp, layer="conv"))
  i = np.asarray(C.c_insertion(tapped, x, 1, con, imp, layer="conv"))
  full = np.asarray(tapped.logits(x))[:, 1]
  a = tapped(x)[1]["conv"]
  recon = np.asarray(tapped._forward.unwrap().head(C.decode(con, C.encode(con, a))))[:, 1]
  np.testing.assert_allclose(d[:, 0], recon, rtol=1e-4, atol=1e-5)  # nothing removed
  np.testing.assert_allclose(i[:, -1], recon, rtol=1e-4, atol=1e-5)  # everything inserted
  np.testing.assert_allclose(d[:, -1], i[:, 0], rtol=1e-4, atol=1e-5)  # empty code
  # With the residual the unperturbed score is the model's own.
  dr = np.asarray(C.c_deletion(tapped, x, 1, con, imp, layer="conv", residual=True))
  np.testing.assert_allclose(dr[:, 0], full, rtol=1e-4, atol=1e-5)


def test_deterministic_under_key_and_one_compile(linear_head):
  tapped, x, con = linear_head
  traces = []
  head = tapped._forward.unwrap().head

  def features(x):
    traces.append(1)
    return tapped._forward.unwrap().features(x)

  counted = M.from_features_head(features, head, name="conv")
  a = C.sobol(KEY, counted, x, 0, con, layer="conv", designs=8, batch_size=5)
  n = len(traces)
  b = C.sobol(KEY, counted, x, 0, con, layer="conv", designs=8, batch_size=5)
  c = C.sobol(jax.random.key(5), counted, x + 0.1, 0, con, layer="conv", designs=8, batch_size=5)
  assert len(traces) == n and n > 0
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4
  # Chunked perturbations equal unchunked.
  whole = C.sobol(KEY, counted, x, 0, con, layer="conv", designs=8, batch_size=1000)
  np.testing.assert_allclose(np.asarray(whole), np.asarray(a), rtol=1e-4, atol=1e-6)
  o1 = C.occlusion(counted, x, 0, con, layer="conv", batch_size=2)
  o2 = C.occlusion(counted, x, 0, con, layer="conv")
  np.testing.assert_allclose(np.asarray(o1), np.asarray(o2), rtol=1e-4, atol=1e-5)


def test_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_sharded_dict.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == {"fit_nmf", "fit_pca", "fit_kmeans", "fit_dictionary", "fit_sae", "sobol",
                        "gradient_input", "occlusion", "c_deletion", "concept_maps"}
  for name, d in diffs.items():
    # PCA's components are eigenvectors of a covariance summed in another order
    # across devices: float32 rounding over the eigengap (1.3e-4 measured).
    assert d < (1e-3 if name == "fit_pca" else 1e-4), (name, d)


def test_bad_input(linear_head):
  tapped, x, con = linear_head
  with pytest.raises(ValueError, match="unknown layer"):
    C.sobol(KEY, tapped, x, 0, con, layer="nope")
  other = C.Concepts(jnp.ones((2, 4)), {}, "nmf")
  with pytest.raises(ValueError, match="4 channels"):
    C.gradient_input(tapped, x, 0, other, layer="conv")
  with pytest.raises(ValueError, match="importances"):
    C.c_deletion(tapped, x, 0, con, jnp.ones((2, 5)), layer="conv")
  with pytest.raises(ValueError, match="needs a key"):
    C.estimate_importance("sobol", tapped, x, 0, con, layer="conv")
  with pytest.raises(TypeError, match="Concepts"):
    C.occlusion(tapped, x, 0, jnp.ones((5, 10)), layer="conv")
