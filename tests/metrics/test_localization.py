"""Localization metrics: pointing games, relevance mass/rank, top-k, localisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.metrics import localization as L

X = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
BOXES = np.array([[[4, 4, 10, 12]], [[20, 0, 32, 8]]])  # one box per image


def _point_map(y, x):
  return jnp.zeros((2, 32, 32)).at[:, y, x].set(1.0)


def test_pointing_game_tolerance_is_strict():
  box = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])  # the single pixel (0, 0)
  # Distance 15 exactly: a miss (TorchRay's strict < 15); distance sqrt(14^2+1) < 15: a hit.
  np.testing.assert_array_equal(L.pointing_game(None, X, _point_map(0, 15), None, boxes=box), 0.0)
  np.testing.assert_array_equal(L.pointing_game(None, X, _point_map(1, 14), None, boxes=box), 1.0)
  np.testing.assert_array_equal(
      L.pointing_game(None, X, _point_map(0, 0), None, boxes=box, tolerance=0), 1.0)
  np.testing.assert_array_equal(
      L.pointing_game(None, X, _point_map(0, 1), None, boxes=box, tolerance=0), 0.0)


def test_region_map_beats_random_and_inverted(region):
  f, w, x = region
  gt = jnp.broadcast_to((w.sum(-1) > 0), x.shape[:3])
  good = x * w
  rand = jax.random.normal(jax.random.key(3), x.shape)
  for metric in ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank",
                 "attribution_localisation"):
    fn = saljax.metrics.get(metric)
    kw = dict(mask=gt, tolerance=0) if metric == "pointing_game" else dict(mask=gt)
    g = fn(f, x, good, 0, **kw)
    r = fn(f, x, rand, 0, **kw)
    i = fn(f, x, -good, 0, **kw)
    np.testing.assert_allclose(g, 1.0, rtol=1e-6, err_msg=metric)
    assert g.mean() > r.mean() >= i.mean(), (metric, g, r, i)


def test_energy_closed_forms():
  uniform = jnp.ones((2, 32, 32))
  area = np.array([6 * 8, 12 * 8]) / 1024
  np.testing.assert_allclose(L.energy_pointing_game(None, X, uniform, None, boxes=BOXES), area,
                             rtol=1e-6)
  inside = jnp.asarray(L.boxes_to_mask(BOXES, (32, 32)), jnp.float32) * 3.0
  np.testing.assert_allclose(L.energy_pointing_game(None, X, inside, None, boxes=BOXES), 1.0)
  np.testing.assert_allclose(
      L.attribution_localisation(None, X, uniform, None, boxes=BOXES, weighted=True), 1.0,
      rtol=1e-5)
  # No positive relevance: scored as a uniform map.
  np.testing.assert_allclose(L.relevance_mass(None, X, -uniform, None, boxes=BOXES), area,
                             rtol=1e-6)


def test_rank_and_top_k():
  m = jnp.zeros((2, 32, 32)).at[0, 4:10, 4:8].set(1.0).at[1, 20:32, 0:8].set(
      jnp.arange(96.0).reshape(12, 8))
  # Image 0: 24 of the 48 box pixels carry relevance, the rest of the top 48 are ties at 0.
  rr = L.relevance_rank(None, X, m, None, boxes=BOXES)
  assert rr[1] > 0.98 and 0.5 <= rr[0] < 1.0
  tk = L.top_k_intersection(None, X, m, None, boxes=BOXES, k=20)
  np.testing.assert_allclose(tk, 1.0)
  with pytest.raises(ValueError, match="k: expected at most"):
    L.top_k_intersection(None, X, m, None, boxes=BOXES, k=2000)


def test_ties_broken_by_key():
  const = jnp.ones((2, 32, 32))
  a = L.pointing_game(None, X, const, None, boxes=BOXES, tolerance=0, key=jax.random.key(0))
  b = L.pointing_game(None, X, const, None, boxes=BOXES, tolerance=0, key=jax.random.key(0))
  np.testing.assert_array_equal(a, b)
  # Without a key the first pixel (0, 0) is the point: outside both boxes.
  np.testing.assert_array_equal(L.pointing_game(None, X, const, None, boxes=BOXES, tolerance=0), 0)
  hits = np.mean([L.relevance_rank(None, X, const, None, boxes=BOXES, key=jax.random.key(k))
                  for k in range(5)], 0)
  np.testing.assert_allclose(hits, np.array([48, 96]) / 1024, atol=0.08)


def test_boxes_padding_and_mask_equivalence():
  padded = np.array([[[4, 4, 10, 12], [0, 0, 0, 0]], [[20, 0, 32, 8], [5, 5, 5, 9]]])
  np.testing.assert_array_equal(L.boxes_to_mask(padded, (32, 32)), L.boxes_to_mask(BOXES, (32, 32)))
  m = jax.random.normal(jax.random.key(1), (2, 32, 32))
  gt = L.boxes_to_mask(BOXES, (32, 32))
  np.testing.assert_allclose(L.relevance_mass(None, X, m, None, boxes=BOXES),
                             L.relevance_mass(None, X, m, None, mask=gt))


@pytest.mark.parametrize("kw,match", [
    (dict(boxes=np.array([[4, 4, 40, 12], [0, 0, 2, 2]])), "inside the 32x32"),
    (dict(boxes=np.array([[-1, 4, 10, 12], [0, 0, 2, 2]])), "inside the 32x32"),
    (dict(boxes=np.array([[4, 4, 10], [0, 0, 2]])), "shape"),
    (dict(mask=np.zeros((2, 32, 32), bool)), "empty"),
    (dict(mask=np.ones((2, 16, 16), bool)), "mask: expected shape"),
    (dict(), "exactly one ground truth"),
    (dict(mask=np.ones((2, 32, 32), bool), boxes=BOXES), "exactly one ground truth"),
])
def test_bad_ground_truth(kw, match):
  with pytest.raises(ValueError, match=match):
    L.pointing_game(None, X, jnp.ones((2, 32, 32)), None, **kw)


def test_bad_map():
  with pytest.raises(ValueError, match="attribution: expected shape"):
    L.pointing_game(None, X, jnp.ones((2, 16, 16)), None, boxes=BOXES)
  with pytest.raises(ValueError, match="all-NaN"):
    L.relevance_mass(None, X, jnp.full((2, 32, 32), jnp.nan), None, boxes=BOXES)
  with pytest.raises(ValueError, match="tolerance"):
    L.pointing_game(None, X, jnp.ones((2, 32, 32)), None, boxes=BOXES, tolerance=-1)


def test_auc_known_answers(region):
  # Fawcett's textbook case: scores 0.1, 0.4, 0.35, 0.8 for labels 0, 0, 1, 1 -> 0.75.
  x1 = jnp.zeros((1, 2, 2, 1))
  m = jnp.array([[[0.1, 0.4], [0.35, 0.8]]])
  gt = np.array([[[False, False], [True, True]]])
  np.testing.assert_allclose(L.auc(None, x1, m, None, mask=gt), 0.75, rtol=1e-6)
  # A model that sees one region: its exact map ranks the region first (AUC 1),
  # the inverted map last (0), a constant map is chance (ties count one half).
  f, w, x = region
  gt = jnp.broadcast_to(w.sum(-1) > 0, x.shape[:3])
  np.testing.assert_allclose(saljax.metrics.auc(f, x, x * w, 0, mask=gt), 1.0)
  np.testing.assert_allclose(saljax.metrics.auc(f, x, -(x * w), 0, mask=gt), 0.0)
  np.testing.assert_allclose(saljax.metrics.auc(f, x, jnp.ones(x.shape), 0, mask=gt), 0.5)


def test_auc_matches_sklearn_with_ties():
  import sklearn.metrics
  m = jnp.round(jax.random.normal(jax.random.key(4), (2, 32, 32)) * 2)  # many ties
  gt = np.asarray(L.boxes_to_mask(BOXES, (32, 32)))
  want = [sklearn.metrics.roc_auc_score(gt[i].ravel(), np.asarray(m[i]).ravel()) for i in range(2)]
  np.testing.assert_allclose(L.auc(None, X, m, None, boxes=BOXES), want, rtol=1e-6)
  with pytest.raises(ValueError, match="at least one feature outside"):
    L.auc(None, X, m, None, mask=np.ones((2, 32, 32), bool))


def test_make_mosaics_places_the_target_class_where_quadrants_say():
  # Each source image is constant and equal to its label, so a tile reveals its class.
  labels = np.repeat(np.arange(4), 3)
  images = np.broadcast_to(labels[:, None, None, None], (12, 4, 4, 2)).astype(np.float32)
  mos, quads, targets = L.make_mosaics(images, labels, jax.random.key(0), count=20)
  assert mos.shape == (20, 8, 8, 2) and quads.shape == (20, 4) and targets.shape == (20,)
  np.testing.assert_array_equal(np.asarray(quads).sum(1), 2)  # two target tiles per mosaic
  tiles = np.asarray(mos)[:, ::4, ::4, 0].reshape(20, 4)  # quadrant order TL, TR, BL, BR
  np.testing.assert_array_equal(tiles == np.asarray(targets)[:, None], np.asarray(quads))
  # Positions vary between mosaics, and the key fixes them.
  assert len({tuple(q) for q in np.asarray(quads)}) > 2
  again = L.make_mosaics(images, labels, jax.random.key(0), count=20)
  np.testing.assert_array_equal(again[0], mos)
  with pytest.raises(ValueError, match="at least two classes"):
    L.make_mosaics(images, np.zeros(12, int), jax.random.key(0))


def test_focus_known_answers():
  x = jnp.zeros((3, 8, 8, 3))
  quads = np.array([[True, False, False, True], [False, True, True, False], [True, True, False, False]])
  gt = np.asarray(L.quadrant_mask(quads, (8, 8)))
  assert gt.sum() == 3 * 32 and gt[0, 0, 0] and gt[0, 7, 7] and not gt[0, 0, 7]
  # All positive relevance on the target tiles: 1; on the others: 0; uniform: 0.5.
  on = jnp.asarray(gt, jnp.float32)
  np.testing.assert_allclose(L.focus(None, x, on, None, quadrants=quads), 1.0)
  np.testing.assert_allclose(L.focus(None, x, 1.0 - on, None, quadrants=quads), 0.0)
  np.testing.assert_allclose(L.focus(None, x, jnp.ones((3, 8, 8)), None, quadrants=quads), 0.5)
  # Negative relevance is ignored: 3 on target, 1 elsewhere, -5 on target -> 3 / 4.
  m = np.zeros((3, 8, 8), np.float32)
  m[:, 0, 0], m[:, 7, 7] = 3.0, -5.0
  m[:, 0, 7] = 1.0
  m[1], m[2] = m[1].T, m[2, :, ::-1] * 0  # row 2: no positive relevance
  np.testing.assert_allclose(L.focus(None, x, jnp.asarray(m), None, quadrants=quads),
                             [0.75, 0.25, 0.5], rtol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(quadrants=None), "quadrants: expected"),
    (dict(quadrants=np.ones((2, 4), bool)), r"shape \(3, 4\)"),
    (dict(quadrants=np.zeros((3, 4), bool)), "at least one target quadrant"),
    (dict(quadrants=np.full((3, 4), 2)), "booleans"),
])
def test_focus_bad_quadrants(kw, match):
  with pytest.raises(ValueError, match=match):
    L.focus(None, jnp.zeros((3, 8, 8, 3)), jnp.ones((3, 8, 8)), None, **kw)
  with pytest.raises(ValueError, match="even height and width"):
    L.focus(None, jnp.zeros((3, 7, 8, 3)), jnp.ones((3, 7, 8)), None,
            quadrants=np.ones((3, 4), bool))
