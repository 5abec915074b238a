"""Targets beyond class indices (saljax.targets): every registered explainer and
metric explains a callable score exactly as it explains the equal class index,
several targets at once equal one call per target and reuse the forward pass,
and linear targets give linear maps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import _adapt
from saljax import targets as T
import _all_methods as A

CNN, VIT, X, TARGET = A.models()
EXPLAINERS = saljax.explainers.names()
METRICS = saljax.metrics.names()


def _probability_default(entry) -> bool:
  return entry.options().get("score") in _adapt.CLASS_SCORES


def _close(a, b, rtol=1e-4, atol=1e-5):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_callable_and_several_targets_equal_class_indices(name):
  """One compile each for class indices, a callable and two targets at once
  (a test per method would compile the class-index call twice)."""
  e = saljax.explainers.entry(name)
  want = A.call_explainer(name, CNN, VIT, X, TARGET)
  other = (TARGET + 2) % 5
  got = A.call_explainer(name, CNN, VIT, X, jnp.stack([TARGET, other], axis=1))
  _close(jax.tree_util.tree_map(lambda a: a[:, 0] if a.ndim >= 2 else a, got), want)
  _close(jax.tree_util.tree_map(lambda a: a[:, 1] if a.ndim >= 2 else a, got),
         A.call_explainer(name, CNN, VIT, X, other))
  if name in _adapt.CLASS_METHODS:
    with pytest.raises(ValueError, match="has no classes"):
      A.call_explainer(name, CNN, VIT, X, T.class_logit(TARGET))
    return
  if _probability_default(e):
    # The class's probability as the target's one score, scored as it is.
    want = A.call_explainer_with(name, CNN, VIT, X, TARGET, score="probability")
    got = A.call_explainer_with(name, CNN, VIT, X, T.class_probability(TARGET), score="logit")
  else:
    got = A.call_explainer(name, CNN, VIT, X, T.class_logit(TARGET))
  _close(got, want)


@pytest.mark.parametrize("name", [n for n in EXPLAINERS
                                  if saljax.explainers.entry(n).options().get("score")])
def test_probability_of_a_callable_target_is_refused(name):
  with pytest.raises(ValueError, match="score='probability'"):
    A.call_explainer_with(name, CNN, VIT, X, T.class_logit(TARGET), score="probability")


@pytest.mark.parametrize("name", METRICS)
def test_metric_callable_target_equals_class_index(name):
  e = saljax.metrics.entry(name)
  att = jax.random.normal(jax.random.key(5), X.shape)
  if "classes" in e.needs or name in _adapt.CLASS_METHODS:
    with pytest.raises(ValueError, match="has no classes"):
      A.call_metric(name, CNN, X, att, T.class_logit(TARGET))
    return
  if "params" in e.needs:
    with pytest.raises(ValueError, match="model_fn, params"):
      A.call_metric(name, CNN, X, att, T.class_logit(TARGET))
    return
  # The random-label model explains the same score (a callable target has no
  # "predicted" class of its own).
  same = {"random_target": "same"} if name == "data_randomization" else {}
  if _probability_default(e):
    want = A.call_metric(name, CNN, X, att, TARGET, score="probability", **same)
    got = A.call_metric(name, CNN, X, att, T.class_probability(TARGET), score="logit", **same)
  else:
    want = A.call_metric(name, CNN, X, att, TARGET, **same)
    got = A.call_metric(name, CNN, X, att, T.class_logit(TARGET), **same)
  _close(got, want)


def test_all_classes_and_callable_with_several_scores():
  f = CNN.logits
  every = saljax.gradient(f, X[:2], "all")
  assert every.shape == (2, 5) + X.shape[1:]
  two = saljax.gradient(f, X[:2], lambda out: out[:, 1:3])
  _close(two, every[:, 1:3])


def _flops(fn, *args):
  c = jax.jit(fn).lower(*args).compile().cost_analysis()
  c = c[0] if isinstance(c, (list, tuple)) else c
  return c["flops"]


def test_several_targets_reuse_the_forward_pass():
  f = CNN.logits
  x = X[:2]
  one = lambda x: saljax.occlusion(f, x, 1, window=4, stride=4)
  four = lambda x: saljax.occlusion(f, x, jnp.array([[0, 1, 2, 3]] * 2))
  four = lambda x: saljax.occlusion(f, x, jnp.array([[0, 1, 2, 3]] * 2), window=4, stride=4)
  # Occlusion's evaluations do not depend on the target: four targets cost one.
  assert _flops(four, x) < 1.3 * _flops(one, x)
  g1 = lambda x: saljax.gradient(f, x, 1)
  g4 = lambda x: saljax.gradient(f, x, jnp.array([[0, 1, 2, 3]] * 2))
  # One forward, four backward passes: well under four full gradients.
  assert _flops(g4, x) < 3.6 * _flops(g1, x)


def test_weighted_target_is_the_weighted_sum_of_class_maps():
  w = jnp.array([0.5, -1.0, 0.0, 2.0, 0.25])
  for name, opts in [("gradient", {}), ("integrated_gradients", {"steps": 8}),
                     ("gradient_x_input", {})]:
    fn = saljax.explainers.get(name)
    got = fn(CNN.logits, X, T.weighted(w), **opts)
    want = sum(w[c] * fn(CNN.logits, X, c, **opts) for c in range(5))
    _close(got, want, rtol=1e-4, atol=1e-5)


def test_contrast_is_the_difference_of_class_maps():
  got = saljax.gradient(CNN.logits, X, T.contrast(TARGET, 4, num_classes=5))
  want = saljax.gradient(CNN.logits, X, TARGET) - saljax.gradient(CNN.logits, X, 4)
  _close(got, want)
  group = T.contrast(0, [1, 2], num_classes=5)
  want = (saljax.gradient(CNN.logits, X, 0) - saljax.gradient(CNN.logits, X, 1)
          - saljax.gradient(CNN.logits, X, 2))
  _close(saljax.gradient(CNN.logits, X, group), want)


def test_log_probability_gradient():
  lp = saljax.gradient(CNN.logits, X, T.log_probability(TARGET))
  want = jax.grad(lambda x: jnp.take_along_axis(
      jax.nn.log_softmax(CNN.logits(x)), TARGET[:, None], 1).sum())(X)
  _close(lp, want)


def _linear_segmenter():
  """A per-pixel linear segmentation model [B, H, W, C] -> [B, H, W, K]."""
  w = jax.random.normal(jax.random.key(7), (3, 4))
  return jax.tree_util.Partial(lambda w, x: jnp.einsum("bhwc,ck->bhwk", x, w), w), w


def test_integrated_gradients_of_a_segmentation_region_score():
  f, w = _linear_segmenter()
  region = jnp.zeros((8, 16, 16), bool).at[:, 4:9, 2:12].set(True)
  ig = saljax.integrated_gradients(f, X, T.segmentation(2, region), steps=4)
  base = jnp.zeros_like(X)
  want = (X - base) * w[:, 2] * region[..., None]
  _close(ig, want, rtol=1e-5, atol=1e-6)
  # Completeness: the map sums to the region's score.
  score = (jnp.einsum("bhwc,c->bhw", X, w[:, 2]) * region).sum((1, 2))
  _close(ig.sum((1, 2, 3)), score, rtol=1e-4, atol=1e-4)


def test_segmentation_default_region_is_the_predicted_one():
  f, w = _linear_segmenter()
  g = saljax.gradient(f, X, T.segmentation(1))
  pred = jnp.argmax(f(X), -1) == 1
  _close(g, w[:, 1] * pred[..., None])


def test_regression_and_embedding_targets():
  v = jax.random.normal(jax.random.key(8), (16 * 16 * 3,))
  reg = jax.tree_util.Partial(lambda v, x: x.reshape(x.shape[0], -1) @ v, v)  # [B]
  g = saljax.gradient(reg, X, T.regression())
  _close(g, jnp.broadcast_to(v.reshape(16, 16, 3), X.shape))
  m = jax.random.normal(jax.random.key(9), (16 * 16 * 3, 6))
  emb = jax.tree_util.Partial(lambda m, x: x.reshape(x.shape[0], -1) @ m, m)
  ref = jnp.arange(6.0)
  g = saljax.gradient(emb, X, T.embedding_similarity(ref, kind="dot"))
  _close(g, jnp.broadcast_to((m @ ref).reshape(16, 16, 3), X.shape), rtol=1e-4, atol=1e-4)
  cos = saljax.gradient(emb, X[:1], T.embedding_similarity(ref))
  want = jax.grad(lambda x: (lambda e: e @ ref / jnp.linalg.norm(e) / jnp.linalg.norm(ref))(
      emb(x)[0]))(X[:1])
  _close(cos, want, rtol=1e-4, atol=1e-6)


def test_detection_target_scores_the_matching_box():
  def detector(x):  # two fixed boxes whose class scores read two image halves
    left, right = x[:, :, :8].mean((1, 2, 3)), x[:, :, 8:].mean((1, 2, 3))
    boxes = jnp.broadcast_to(jnp.array([[0., 0, 8, 16], [8, 0, 16, 16]]), (x.shape[0], 2, 4))
    scores = jnp.stack([jnp.stack([left, -left], -1), jnp.stack([-right, right], -1)], 1)
    return boxes, scores
  ref = jnp.broadcast_to(jnp.array([[[8., 0, 16, 16]]]), (8, 1, 4))
  g = saljax.gradient(detector, X, T.detection(ref, jnp.ones((8, 1), jnp.int32)))
  assert np.abs(np.asarray(g[:, :, :8])).max() == 0  # the left box does not match
  np.testing.assert_allclose(np.asarray(g[:, :, 8:]), 1.0 / (16 * 8 * 3), rtol=1e-5)


def test_pytree_input_keeps_its_structure():
  w = jax.random.normal(jax.random.key(10), (16 * 16 * 3, 5))
  v = jax.random.normal(jax.random.key(11), (4, 5))

  def model(params, inputs):
    w, v = params
    return inputs["image"].reshape(inputs["image"].shape[0], -1) @ w + inputs["meta"] @ v

  f = jax.tree_util.Partial(model, (w, v))
  inputs = {"image": X, "meta": jax.random.normal(jax.random.key(12), (8, 4))}
  ig = saljax.integrated_gradients(f, inputs, TARGET, steps=4)
  assert jax.tree_util.tree_structure(ig) == jax.tree_util.tree_structure(inputs)
  _close(ig["image"], X * w[:, TARGET].T.reshape(8, 16, 16, 3), rtol=1e-5, atol=1e-6)
  _close(ig["meta"], inputs["meta"] * v[:, TARGET].T, rtol=1e-5, atol=1e-6)
  occ = saljax.occlusion(f, inputs, TARGET, segments="elements")
  _close(occ["meta"], inputs["meta"] * v[:, TARGET].T, rtol=1e-4, atol=1e-5)
  base = {"image": jnp.ones_like(X), "meta": jnp.zeros((8, 4))}
  ig_b = saljax.integrated_gradients(f, inputs, TARGET, baseline=base, steps=4)
  _close(ig_b["image"], (X - 1) * w[:, TARGET].T.reshape(8, 16, 16, 3), rtol=1e-5, atol=1e-5)


def test_bad_targets_are_clear():
  with pytest.raises(ValueError, match=r"scores \[B\]"):
    saljax.gradient(CNN.logits, X, lambda out: out.sum())
  with pytest.raises(ValueError, match="could not score"):
    saljax.gradient(CNN.logits, X, lambda out: out["missing"])
  f, _ = _linear_segmenter()
  with pytest.raises(ValueError, match="callable target"):
    saljax.gradient(f, X, 1)
  with pytest.raises(TypeError, match="integer tokens"):
    saljax.gradient(lambda d: d["t"].astype(jnp.float32), {"t": jnp.ones((2, 3), jnp.int32)}, 0)


def test_kernel_shap_on_a_tabular_linear_model_is_the_exact_shapley_values():
  """Features of a table [B, D]: each is its own player, and a linear model's
  Shapley values against a baseline are ``w_d (x_d - b_d)``."""
  w = jax.random.normal(jax.random.key(13), (6, 3))
  f = jax.tree_util.Partial(lambda w, x: x @ w, w)
  x = jax.random.normal(jax.random.key(14), (4, 6))
  t = jnp.array([0, 1, 2, 1])
  phi = saljax.kernel_shap(f, x, t, key=jax.random.key(0), segments="elements", exact=True)
  _close(phi, x * w[:, t].T, rtol=1e-5, atol=1e-5)
  # A callable target on the same table: the probability of class t.
  phi_p = saljax.kernel_shap(f, x, T.class_probability(t), key=jax.random.key(0),
                             segments="elements", exact=True)
  p = lambda z: jnp.take_along_axis(jax.nn.softmax(z @ w), t[:, None], 1)[:, 0]
  # Efficiency: the values sum to f(x) - f(baseline).
  _close(phi_p.sum(1), p(x) - p(jnp.zeros_like(x)), rtol=1e-4, atol=1e-5)


def test_multilabel_targets():
  both = saljax.gradient(CNN.logits, X, T.multilabel([1, 3], num_classes=5))
  _close(both, saljax.gradient(CNN.logits, X, 1) + saljax.gradient(CNN.logits, X, 3))
  mask = jnp.zeros((8, 5), bool).at[:, 2].set(True).at[::2, 4].set(True)
  sig = saljax.gradient(CNN.logits, X, T.multilabel(mask, score="sigmoid"))
  want = jax.grad(lambda x: (jax.nn.sigmoid(CNN.logits(x)) * mask).sum())(X)
  _close(sig, want, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="num_classes"):
    T.multilabel([1, 3])
