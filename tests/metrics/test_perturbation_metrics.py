"""The perturbation faithfulness metrics (saljax.metrics.perturbation) on cases with
known answers: a linear model, a model that reads one 2x2 region, a constant map."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import saljax
from saljax.metrics import perturbation as P

KEY = jax.random.key(0)


def _grad_input(wm, x, t):
  return x * wm[:, t].T.reshape(x.shape)


def test_faithfulness_estimate_is_one_for_gradient_times_input(linear):
  f, wm, x = linear
  t = jnp.array([0, 2, 1])
  # Removing pixel i lowers the logit by exactly its gradient*input channel sum.
  np.testing.assert_allclose(P.faithfulness_estimate(f, x, _grad_input(wm, x, t), t), 1.0,
                             atol=1e-5)
  np.testing.assert_allclose(P.faithfulness_estimate(f, x, -_grad_input(wm, x, t), t), -1.0,
                             atol=1e-5)
  # A constant map correlates with nothing.
  np.testing.assert_array_equal(P.faithfulness_estimate(f, x, jnp.ones(x.shape), t), 0.0)


def test_monotonicity_on_the_region_model(region):
  f, w, x = region
  a = x * w
  np.testing.assert_array_equal(P.monotonicity(f, x, a, 0), 1.0)   # evidence only adds
  np.testing.assert_array_equal(P.monotonicity(f, x, a, 1), 0.0)   # the other class only falls
  np.testing.assert_array_equal(P.monotonicity(f, x, a, 0, score="logit", features_in_step=4),
                                1.0)


def test_monotonicity_correlation_closed_form(region):
  """Outside the region the model ignores resampling (variance exactly 0); inside
  it is positive. With the region's indicator as map, the Spearman correlation
  depends only on those two groups, whatever the draws."""
  f, w, x = region
  ind = jnp.zeros(x.shape[:3]).at[:, 2:4, 2:4].set(1.0)
  got = P.monotonicity_correlation(f, x, ind, 0, key=KEY, samples=2)
  var = np.zeros(64)
  var[:4] = [1, 2, 3, 4]  # any distinct positives
  a = np.zeros(64)
  a[:4] = 1
  np.testing.assert_allclose(got, scipy.stats.spearmanr(a, var)[0], atol=1e-5)
  # A constant map: 0.
  np.testing.assert_array_equal(
      P.monotonicity_correlation(f, x, jnp.ones(x.shape), 0, key=KEY, samples=2), 0.0)


def _s0(f, x):
  return np.asarray(f(x)[:, 0])


def test_region_perturbation_aopc_known_answer(region):
  f, w, x = region
  a = x * w  # all relevance in the 2x2 region, which is exactly patch (1, 1)
  s0 = _s0(f, x)
  morf = P.region_perturbation(f, x, a, 0, patch_size=2, regions=5, score="logit")
  np.testing.assert_allclose(morf["curve"], np.stack([0 * s0] + [s0] * 5, 1), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(morf["score"], 5 * s0 / 6, rtol=1e-5)
  lerf = P.region_perturbation(f, x, a, 0, patch_size=2, order="lerf", score="logit")
  assert lerf["curve"].shape == (4, 17)  # regions capped at the 16 patches
  np.testing.assert_allclose(lerf["curve"][:, :16], 0.0, atol=1e-5)
  np.testing.assert_allclose(lerf["score"], s0 / 17, rtol=1e-5)


def test_selectivity_known_answer(region):
  f, w, x = region
  s0 = _s0(f, x)
  out = P.selectivity(f, x, x * w, 0, patch_size=2, score="logit")
  expected = np.zeros((4, 17))
  expected[:, 0] = s0
  np.testing.assert_allclose(out["curve"], expected, atol=1e-5)
  np.testing.assert_allclose(out["score"], s0 / 32, rtol=1e-5)  # (s0 / 2) / 16 intervals


def test_irof_known_answer_and_uneven_segments(region):
  f, w, x = region
  quad = ((jnp.arange(8)[:, None] // 4) * 2 + jnp.arange(8)[None] // 4).astype(jnp.int32)
  seg = jnp.broadcast_to(quad, (4, 8, 8))
  p0 = np.asarray(jax.nn.softmax(f(x))[:, 0])
  out = P.irof(f, x, x * w, 0, segments=seg, fill=0.0)
  # Quadrant 0 holds the region: removing it leaves logits (0, 0), p = 1/2.
  r = 0.5 / p0
  curve = np.stack([np.ones(4), r, r, r, r], 1)
  np.testing.assert_allclose(out["curve"], curve, rtol=1e-5)
  np.testing.assert_allclose(out["score"], 1 - np.trapezoid(curve, dx=0.25, axis=1), rtol=1e-5)
  # Example 0 with two segments (the top half first): its own 2 steps on [0, 1].
  seg2 = seg.at[0].set((jnp.arange(8)[:, None] // 4).repeat(8, 1))
  out2 = P.irof(f, x, x * w, 0, segments=seg2, fill=0.0)
  c0 = np.asarray(out2["curve"][0])
  np.testing.assert_allclose(c0[1:], r[0], rtol=1e-5)  # finished after one step, kept
  np.testing.assert_allclose(out2["score"][0], 1 - np.trapezoid(c0[:3], dx=0.5), rtol=1e-5)
  np.testing.assert_allclose(out2["score"][1:], out["score"][1:], rtol=1e-6)


def test_sufficiency_known_answers(region):
  f, w, x = region
  # Predictions: rows 0-2 class 0 (s > 0), row 3 class 1 (s < 0).
  x = x.at[3].set(-x[3])
  v, u = (jax.random.normal(jax.random.key(i), (8, 8, 3)) for i in (1, 2))
  noise = 1e-3 * jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
  a = jnp.stack([v, v, u, u]) + noise
  # Pairs (0, 1) and (2, 3) are each other's only neighbours; 2 and 3 disagree.
  np.testing.assert_allclose(P.sufficiency(f, x, a), [1, 1, 0, 0])
  # A constant map: every example is everyone's neighbour.
  np.testing.assert_allclose(P.sufficiency(f, x, jnp.ones(x.shape)), [2 / 3, 2 / 3, 2 / 3, 0],
                             rtol=1e-6)


CHUNKED = {
    "faithfulness_estimate": dict(features_in_step=4),
    "monotonicity": dict(features_in_step=4),
    "monotonicity_correlation": dict(features_in_step=8, samples=2, key=KEY),
    "region_perturbation": dict(patch_size=2, regions=7),
    "selectivity": dict(patch_size=2),
    "irof": dict(segments=np.broadcast_to(np.arange(64).reshape(8, 8) // 8, (4, 8, 8))),
}


@pytest.mark.parametrize("name", sorted(CHUNKED))
def test_chunked_equals_unchunked_and_compiles_once(name, region, counter):
  f, w, x = region
  model = counter(f)
  fn = saljax.metrics.get(name)
  a = jax.random.normal(jax.random.key(1), x.shape)
  full = fn(model, x, a, 0, **CHUNKED[name])
  chunked = fn(model, x, a, 0, batch_size=3, **CHUNKED[name])
  for u, v in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(chunked)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
  traces = model.traces
  fn(model, x + 0.5, a * 2.0, 1, batch_size=3, **CHUNKED[name])
  assert model.traces == traces, name


def test_sufficiency_compiles_once(region, counter):
  f, w, x = region
  model = counter(f)
  P.sufficiency(model, x, x * w)
  traces = model.traces
  P.sufficiency(model, x + 1.0, x * w * 2.0)
  assert model.traces == traces


def test_bad_input_is_refused_before_work(region, linear):
  f, w, x = region
  a = x * w
  with pytest.raises(ValueError, match="segments"):
    P.irof(f, x, a, 0)
  with pytest.raises(ValueError, match="segments"):
    P.irof(f, x, a, 0, segments="watershed")
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda x: P.irof(f, x, a, 0, segments="slic")["score"])(x)
  with pytest.raises(ValueError, match="features_in_step"):
    P.faithfulness_estimate(f, x, a, 0, features_in_step=65)
  with pytest.raises(ValueError, match="key"):
    P.region_perturbation(f, x, a, 0, fill="uniform", patch_size=2)
  with pytest.raises(ValueError, match="low < high"):
    P.monotonicity_correlation(f, x, a, 0, key=KEY, low=1.0, high=0.0)
  with pytest.raises(ValueError, match="key"):
    P.monotonicity_correlation(f, x, a, 0)
  with pytest.raises(ValueError, match="attribution: expected shape"):
    P.selectivity(f, x, a[..., :2], 0, patch_size=2)
  lf, wm, lx = linear
  with pytest.raises(ValueError, match="NHWC"):
    P.selectivity(lf, lx.reshape(3, -1), lx.reshape(3, -1), 0, patch_size=2)


def test_uniform_fill_draws_from_the_key(region):
  f, w, x = region
  a = x * w
  one = P.region_perturbation(f, x, a, 0, patch_size=2, regions=3, fill="uniform", key=KEY)
  two = P.region_perturbation(f, x, a, 0, patch_size=2, regions=3, fill="uniform", key=KEY)
  other = P.region_perturbation(f, x, a, 0, patch_size=2, regions=3, fill="uniform",
                                key=jax.random.key(9))
  np.testing.assert_array_equal(one["curve"], two["curve"])
  assert not np.allclose(one["curve"], other["curve"])
