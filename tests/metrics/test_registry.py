"""Every registered metric through the same contract checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax

KEY = jax.random.key(0)
W = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 3)) / 8.0
PARAMS = {"dense1": {"w": jax.random.normal(jax.random.key(2), (192, 16)) / 14.0},
          "dense2": {"w": jax.random.normal(jax.random.key(3), (16, 3)) / 4.0}}


def model_fn(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["dense1"]["w"])
  return h @ params["dense2"]["w"]


F = lambda x: model_fn(PARAMS, x)
PARAMS_R = jax.tree_util.tree_map(lambda w: w[::-1], PARAMS)  # "trained on other labels"
F_R = lambda x: model_fn(PARAMS_R, x)
X = jax.random.uniform(jax.random.key(4), (2, 8, 8, 3))
T = jnp.array([0, 2])
BOX = np.array([[1, 1, 5, 5], [2, 2, 8, 8]])
G = saljax.explainers.gradient

OPTIONS = {
    "deletion": dict(steps=4), "insertion": dict(steps=4), "pixel_flipping": dict(steps=4),
    "area_between_curves": dict(steps=4),
    "road": dict(key=KEY, percentages=(0.2, 0.5)),
    "faithfulness_correlation": dict(key=KEY, samples=4),
    "sensitivity_n": dict(key=KEY, samples=4, n_values=(2, 8)),
    "infidelity": dict(key=KEY, samples=4),
    "max_sensitivity": dict(key=KEY, explainer=G, samples=3),
    "local_lipschitz": dict(key=KEY, explainer=G, samples=3),
    "relative_input_stability": dict(key=KEY, explainer=G, samples=3),
    "random_logit": dict(key=KEY, explainer=G, similarity="spearman"),
    "class_sensitivity": dict(explainer=G),
    "data_randomization": dict(explainer=G, random_model=F_R),
    "model_parameter_randomization": dict(key=KEY, explainer=G, params=PARAMS),
    "pointing_game": dict(boxes=BOX), "energy_pointing_game": dict(boxes=BOX),
    "relevance_mass": dict(boxes=BOX), "relevance_rank": dict(boxes=BOX),
    "top_k_intersection": dict(boxes=BOX, k=5), "attribution_localisation": dict(boxes=BOX),
    "contrastive_class_score": dict(contrast=1, alphas=(0.2, 0.5)),
    "class_group_contrastivity": dict(group=np.array([0, 1]), alphas=(0.2, 0.5)),
    "pointwise_group_score": dict(group=np.array([0, 1]), alphas=(0.2, 0.5)),
    "contrastive_group_score": dict(group=np.array([0]), contrast_group=np.array([1, 2]),
                                    alphas=(0.2, 0.5)),
    "roar": dict(fraction=0.3), "diffroar": dict(fraction=0.3),
    "sparseness": {}, "complexity": {}, "effective_complexity": {},
}


def test_every_metric_has_options_here():
  """The metrics above run on this module's MLP; the rest (which need a tapped
  layer, parameters, segments or mosaics) run below on the tiny CNN of
  tests/_all_methods.py, whose `call_metric` supplies what each needs."""
  assert set(OPTIONS) <= set(saljax.metrics.names())
  assert set(OPTIONS) | set(OTHERS) == set(saljax.metrics.names())


OTHERS = sorted(set(saljax.metrics.names()) - set(OPTIONS))


@pytest.mark.parametrize("name", OTHERS)
def test_bad_attribution_refused_and_same_key_same_output(name):
  import _all_methods as A
  cnn, _, x, target = A.models()
  attribution = jax.random.normal(jax.random.key(1), x.shape)
  a = A.call_metric(name, cnn, x, attribution, target)
  b = A.call_metric(name, cnn, x, attribution, target)
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)),
                         a, b)
  with pytest.raises((ValueError, TypeError), match="attribution"):
    A.call_metric(name, cnn, x, jnp.ones((x.shape[0], 8)), target)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_contract_scores_and_bad_shape(name):
  fn = saljax.metrics.get(name)
  f = model_fn if name == "model_parameter_randomization" else F
  attr = G(F, X, T)
  out = fn(f, X, attr, T, **OPTIONS[name])
  score = out["score"] if isinstance(out, dict) else out
  assert score.shape == (2,), (name, score.shape)
  assert np.isfinite(np.asarray(score)).all(), name
  if isinstance(out, dict) and "curve" in out:
    assert out["curve"].shape[0] == 2
  with pytest.raises((ValueError, TypeError), match="attribution"):
    fn(f, X, jnp.ones((2, 8)), T, **OPTIONS[name])


@pytest.mark.parametrize("name", sorted(n for n in OPTIONS
                                        if saljax.metrics.entry(n).stochastic))
def test_same_key_same_output(name):
  fn = saljax.metrics.get(name)
  f = model_fn if name == "model_parameter_randomization" else F
  attr = G(F, X, T)
  a = fn(f, X, attr, T, **OPTIONS[name])
  b = fn(f, X, attr, T, **OPTIONS[name])
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)),
                         a, b)
