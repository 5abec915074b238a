"""Known answers for the stability and axiomatic metrics, chunking and tracing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.metrics import axiomatic as A
from saljax.metrics import stability as S

KEY = jax.random.key(0)
T3 = jnp.array([0, 1, 2])
G, GXI = saljax.explainers.gradient, saljax.explainers.gradient_x_input


def _tapped_linear(wm):
  """The linear model of the `linear` fixture as a tapped model: a hidden layer
  h = flatten(x) @ W (tap "hidden") and logits = h."""
  def forward(x, taps=None):
    h = x.reshape(x.shape[0], -1) @ wm
    if taps and "hidden" in taps:
      h = taps["hidden"]
    return h, {"hidden": h}
  return saljax.Tapped(forward, ["hidden"])


def test_gradient_of_linear_model_is_perfectly_stable_and_invariant(linear):
  f, wm, x = linear
  tf = _tapped_linear(wm)
  kw = dict(key=KEY, samples=4)
  for name, model, extra in [("avg_sensitivity", f, {}), ("relative_output_stability", f, {}),
                             ("relative_representation_stability", tf, {"layer": "hidden"})]:
    fn = saljax.metrics.get(name)
    np.testing.assert_allclose(fn(model, x, None, T3, explainer=G, **kw, **extra), 0.0, atol=1e-6)
    # Gradient x input moves with the input.
    assert (fn(model, x, None, T3, explainer=GXI, **kw, **extra) > 1e-3).all(), name
  np.testing.assert_allclose(S.continuity(f, x, None, T3, explainer=G, steps=4), 0.0, atol=1e-6)
  assert (S.continuity(f, x, None, T3, explainer=GXI, steps=4) > 1e-3).all()
  np.testing.assert_array_equal(A.input_invariance(f, x, None, T3, explainer=G), 1.0)
  np.testing.assert_array_equal(A.input_invariance(f, x, None, T3, explainer=GXI), 0.0)


def test_avg_sensitivity_is_the_mean_of_max_sensitivity_draws(linear):
  # Same key -> same draws: the mean never exceeds the max, and for
  # gradient x input of a linear model both are bounded by radius |w| / |w x|.
  f, wm, x = linear
  e = GXI(f, x, T3)
  kw = dict(key=KEY, explainer=GXI, samples=6, radius=0.1)
  avg = S.avg_sensitivity(f, x, e, T3, **kw)
  mx = saljax.metrics.max_sensitivity(f, x, e, T3, **kw)
  assert (avg <= mx + 1e-7).all() and (avg > 0.3 * mx).all()


def test_relative_output_stability_closed_form(linear):
  # Gradient x input of f(x) = x @ W: E(x') - E(x) = w * d (w the target's
  # column), logits move by d @ W; one sample gives the ratio exactly.
  f, wm, x = linear
  from saljax.metrics import robustness as R
  out = S.relative_output_stability(f, x, None, T3, key=KEY, explainer=GXI, samples=1,
                                    radius=0.01)
  _, kn, _ = R.sample_keys(KEY, 1)
  d = R.noise(kn[0], x.shape, x.dtype, 0.01, "relative_output_stability").reshape(3, -1)
  w = np.asarray(wm[:, T3].T)
  e = w * np.asarray(x).reshape(3, -1)
  num = np.linalg.norm(w * np.asarray(d) / e, axis=1)
  den = np.linalg.norm(np.asarray(d) @ np.asarray(wm), axis=1)
  np.testing.assert_allclose(out, num / den, rtol=1e-4)


def test_continuity_translation_schedule():
  np.testing.assert_array_equal(S.translations(8, 5), [-5, -2, 1, 4, 7])
  x = jnp.arange(4.0)[None, None, :, None]
  np.testing.assert_array_equal(S.translate(x, jnp.int32(1), -1.0)[0, 0, :, 0], [-1, 0, 1, 2])
  np.testing.assert_array_equal(S.translate(x, jnp.int32(-2), -1.0)[0, 0, :, 0], [2, 3, -1, -1])
  with pytest.raises(ValueError, match="steps <= 17"):
    S.translations(8, 18)


def test_consistency_known_answer(region):
  f, w, x = region
  # Predicted classes [0, 0, 1, 1] (the model's sign flips with x);
  # rows 0-2 share one explanation, row 3 has its own.
  x = x.at[2:].multiply(-1.0)
  base = jax.random.normal(jax.random.key(3), x.shape)
  a = jnp.stack([base[0], base[0], base[0], base[3]])
  np.testing.assert_allclose(S.consistency(f, x, a), [0.5, 0.5, 0.0, 0.0])
  # Discrete explanations are top features by magnitude: the same first
  # entries with different top features are different explanations.
  b = jnp.zeros((2, 12)).at[:, :5].set(0.01).at[0, 11].set(9.0).at[1, 10].set(9.0)
  g = lambda z: jnp.stack([z.sum(1), -z.sum(1)], 1)
  np.testing.assert_array_equal(S.consistency(g, jnp.ones((2, 12)), b, top_k=1), 0.0)
  np.testing.assert_array_equal(S.consistency(g, jnp.ones((2, 12)), b.at[1].set(b[0]), top_k=1),
                                1.0)


def test_completeness_known_answers(linear):
  f, wm, x = linear
  np.testing.assert_allclose(A.completeness(f, x, GXI(f, x, T3), T3), 0.0, atol=1e-4)
  assert (A.completeness(f, x, G(f, x, T3), T3) > 1e-2).all()
  # A nonlinear model: integrated gradients approaches completeness with steps.
  w = jax.random.normal(jax.random.key(1), (72, 3))
  g = lambda z: jnp.tanh(z.reshape(z.shape[0], -1)) @ w
  ig = lambda n: saljax.explainers.integrated_gradients(g, x, T3, steps=n)
  coarse, fine = A.completeness(g, x, ig(4), T3), A.completeness(g, x, ig(64), T3)
  assert (fine < coarse).all() and (fine < 0.05).all()


def test_non_sensitivity_known_answers(region):
  f, w, x = region
  t = jnp.zeros(4, jnp.int32)
  # The true weights: relevance exactly on the 12 values the model reads.
  np.testing.assert_array_equal(A.non_sensitivity(f, x, jnp.broadcast_to(w, x.shape), t,
                                                  fill=-1.0), 0.0)
  # A constant map gives relevance to the 180 values the model ignores.
  ones = jnp.ones(x.shape)
  np.testing.assert_array_equal(A.non_sensitivity(f, x, ones, t, fill=-1.0), 180.0)
  np.testing.assert_array_equal(A.non_sensitivity(f, x, ones, t, fill=-1.0, features="pixel"),
                                60.0)
  # Chunked over features: the same counts.
  np.testing.assert_array_equal(
      A.non_sensitivity(f, x, ones, t, fill=-1.0, batch_size=7), 180.0)


def test_chunking_and_one_trace_per_shape(counter):
  w = jax.random.normal(jax.random.key(1), (72, 3))
  f = counter(lambda z: jnp.tanh(z.reshape(z.shape[0], -1)) @ w)
  x = jax.random.normal(jax.random.key(2), (3, 6, 6, 2))
  kw = dict(key=KEY, explainer=G, samples=5)
  a = S.avg_sensitivity(f, x, None, T3, **kw)
  np.testing.assert_allclose(S.avg_sensitivity(f, x, None, T3, batch_size=2, **kw), a, rtol=1e-5)
  c = S.continuity(f, x, None, T3, explainer=G, steps=4)
  np.testing.assert_allclose(S.continuity(f, x, None, T3, explainer=G, steps=4, batch_size=3), c,
                             rtol=1e-5)
  calls = [
      lambda x, k: S.avg_sensitivity(f, x, None, T3, **dict(kw, key=k)),
      lambda x, k: S.relative_output_stability(f, x, None, T3, **dict(kw, key=k)),
      lambda x, k: S.continuity(f, x, None, T3, explainer=G, steps=4),
      lambda x, k: A.input_invariance(f, x, None, T3, explainer=G),
      lambda x, k: A.completeness(f, x, x, T3),
      lambda x, k: A.non_sensitivity(f, x, x, T3, features="pixel"),
      lambda x, k: S.consistency(f, x, x),
  ]
  first = [np.asarray(c(x, KEY)) for c in calls]
  traces = f.traces
  second = [np.asarray(c(x + 0.5, jax.random.key(5))) for c in calls]
  assert f.traces == traces  # new values and keys, same shapes: no retrace
  # The scores moved with the inputs (input invariance stays 1: gradients are
  # invariant; counts and consistency may coincide).
  for i in (0, 1, 2, 4):
    assert not np.array_equal(first[i], second[i]), i
  np.testing.assert_array_equal(first[3], 1.0)


def test_errors(linear):
  f, wm, x = linear
  with pytest.raises(TypeError, match="tapped model"):
    S.relative_representation_stability(f, x, None, T3, key=KEY, explainer=G, layer="h")
  with pytest.raises(ValueError, match="layer"):
    S.relative_representation_stability(_tapped_linear(wm), x, None, T3, key=KEY, explainer=G,
                                        layer="nope")
  with pytest.raises(ValueError, match="explainer"):
    S.avg_sensitivity(f, x, None, T3, key=KEY)
  with pytest.raises(ValueError, match="steps <= 13"):
    S.continuity(f, x, None, T3, explainer=G, steps=14)
  with pytest.raises(ValueError, match="NHWC"):
    S.continuity(f, x.reshape(3, -1), None, T3, explainer=G)
  with pytest.raises(ValueError, match="top_k <= the 72"):
    S.consistency(f, x, x, top_k=100)
  with pytest.raises(ValueError, match="features"):
    A.non_sensitivity(f, x, x, T3, features="channel")
  with pytest.raises(TypeError, match="baseline"):
    A.completeness(f, x, x, T3, baseline=None)
  with pytest.raises(ValueError, match="eps > 0"):
    S.relative_output_stability(f, x, None, T3, key=KEY, explainer=G, eps=0.0)
