"""Robustness metrics with explainers passed in."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.metrics import robustness as R

KEY = jax.random.key(0)
KINDS = ["max_sensitivity", "local_lipschitz", "relative_input_stability"]


def _tanh_model():
  w = jax.random.normal(jax.random.key(1), (72, 3))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1)) @ w


@pytest.mark.parametrize("name", KINDS)
def test_gradient_of_linear_model_is_perfectly_stable(linear, name):
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  fn = saljax.metrics.get(name)
  out = fn(f, x, None, t, key=KEY, explainer=saljax.explainers.gradient, samples=5)
  np.testing.assert_allclose(out, 0.0, atol=1e-6)
  # Gradient x input moves with the input: not zero.
  out = fn(f, x, None, t, key=KEY, explainer=saljax.explainers.gradient_x_input, samples=5)
  assert (out > 1e-3).all()


def test_max_sensitivity_closed_form_for_gradient_x_input(linear):
  # E(x) = w * x, so E(x + d) - E(x) = w * d; the ratio is bounded by radius * |w| / |w x|.
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  e = saljax.explainers.gradient_x_input(f, x, t)
  out = R.max_sensitivity(f, x, e, t, key=KEY, explainer=saljax.explainers.gradient_x_input,
                          samples=20, radius=0.1)
  w = np.asarray(wm[:, t].T.reshape(x.shape))
  bound = 0.1 * np.linalg.norm(w.reshape(3, -1), axis=1) / np.linalg.norm(
      np.asarray(e).reshape(3, -1), axis=1)
  assert (out <= bound + 1e-6).all() and (out > 0.3 * bound).all()


def test_nonlinear_model_options_key_chunking_and_traces(counter):
  f = counter(_tanh_model())
  x = jax.random.normal(jax.random.key(2), (3, 6, 6, 2))
  t = jnp.array([0, 1, 2])
  kw = dict(key=KEY, explainer=saljax.explainers.smoothgrad,
            explainer_options={"samples": 4}, samples=6)
  a = R.local_lipschitz(f, x, None, t, **kw)
  b = R.local_lipschitz(f, x, None, t, **kw)
  np.testing.assert_array_equal(a, b)
  assert (a > 0).all()
  c = R.local_lipschitz(f, x, None, t, batch_size=4, **kw)
  np.testing.assert_allclose(a, c, rtol=1e-5)
  traces = f.traces
  R.local_lipschitz(f, x + 0.5, None, t, batch_size=4, **dict(kw, key=jax.random.key(5)))
  assert f.traces == traces
  # Larger perturbations change a gradient map of a nonlinear model more.
  small = R.max_sensitivity(f, x, None, t, key=KEY, explainer=saljax.explainers.gradient,
                            radius=0.01, samples=6)
  large = R.max_sensitivity(f, x, None, t, key=KEY, explainer=saljax.explainers.gradient,
                            radius=0.5, samples=6)
  assert (large > small).all()


def test_errors(linear):
  f, wm, x = linear
  t = jnp.array([0, 1, 2])
  g = saljax.explainers.gradient
  with pytest.raises(ValueError, match="explainer"):
    R.max_sensitivity(f, x, None, t, key=KEY)
  with pytest.raises(ValueError, match="key"):
    R.max_sensitivity(f, x, None, t, explainer=g)
  with pytest.raises(ValueError, match="explainer's output shape"):
    R.max_sensitivity(f, x, jnp.ones((3, 6, 6)), t, key=KEY, explainer=g)
  with pytest.raises(TypeError, match="hashable"):
    R.max_sensitivity(f, x, None, t, key=KEY, explainer=g, explainer_options={"a": [1]})
  with pytest.raises(ValueError, match="perturbation size"):
    R.max_sensitivity(f, x, None, t, key=KEY, explainer=g, radius=0.0)
  with pytest.raises(ValueError, match="samples"):
    R.max_sensitivity(f, x, None, t, key=KEY, explainer=g, samples=0)


def test_explainer_by_registered_name(linear):
  f, _, x = linear
  t = jnp.array([0, 1, 2])
  by_name = R.max_sensitivity(f, x, None, t, key=KEY, explainer="gradient_x_input", samples=5)
  by_fn = R.max_sensitivity(f, x, None, t, key=KEY, explainer=saljax.explainers.gradient_x_input,
                            samples=5)
  np.testing.assert_array_equal(by_name, by_fn)
  with pytest.raises(ValueError, match="registered explainer name.*got 'gradnet'"):
    R.max_sensitivity(f, x, None, t, key=KEY, explainer="gradnet", samples=5)
