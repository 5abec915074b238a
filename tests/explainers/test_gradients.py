"""Gradient explainers checked against answers known in closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import saljax
from saljax import ops
from saljax.explainers import gradients

RULES = gradients.RULES
GRADIENT_FAMILY = [n for n in saljax.explainers.names()
                   if saljax.explainers.get(n).__module__ == gradients.__name__]


def _expected_linear(w, x, baseline, target):
  return (x - baseline) * w[:, target].T.reshape(x.shape)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", ["zeros", 0.5, "blur", "array"])
def test_ig_equals_closed_form_on_linear_model(linear_model, images, rule, baseline):
  f, w = linear_model
  target = jnp.array([0, 3, 4])
  if baseline == "array":
    baseline = jax.random.normal(jax.random.key(7), images.shape)
  attr, gap = saljax.integrated_gradients(f, images, target, baseline=baseline, steps=6, rule=rule,
                                          return_delta=True)
  b = saljax.make_baseline(images, baseline)
  np.testing.assert_allclose(attr, _expected_linear(w, images, b, target), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(gap, 0.0, atol=1e-4)


def test_quadrature_weights_integrate_polynomials():
  for rule in RULES:
    a, w = gradients.path_nodes(9, rule)
    assert np.isclose(w.sum(), 1.0)
  a, w = gradients.path_nodes(5, "gauss_legendre")
  # Gauss-Legendre with n nodes is exact up to degree 2n - 1.
  assert np.isclose((w * a ** 9).sum(), 1 / 10)
  a, w = gradients.path_nodes(4, "left")
  np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75])


def test_completeness_gap_shrinks_with_steps(mlp_model, images):
  target = jnp.array([1, 2, 0])
  gaps = []
  for steps in (2, 4, 16):
    _, gap = saljax.integrated_gradients(mlp_model, 3 * images, target, steps=steps,
                                         return_delta=True)
    gaps.append(float(jnp.abs(gap).max()))
  assert gaps[0] > 1e-3, gaps  # the test could fail: 2 nodes are not exact here
  assert gaps[1] < gaps[0] and gaps[2] < gaps[1], gaps
  assert gaps[2] < 1e-4, gaps


def test_riemann_gap_is_first_order(mlp_model, images):
  target = jnp.array([1, 2, 0])
  g8 = saljax.integrated_gradients(mlp_model, 3 * images, target, steps=8, rule="left",
                                   return_delta=True)[1]
  g32 = saljax.integrated_gradients(mlp_model, 3 * images, target, steps=32, rule="left",
                                    return_delta=True)[1]
  ratio = float(jnp.abs(g8).sum() / jnp.abs(g32).sum())
  assert 2.5 < ratio < 6.0, ratio  # error ~ 1/steps


def test_gradient_and_gradient_x_input(linear_model, images):
  f, w = linear_model
  target = jnp.array([4, 0, 1])
  g = saljax.gradient(f, images, target)
  np.testing.assert_allclose(g, w[:, target].T.reshape(images.shape), rtol=1e-6)
  np.testing.assert_allclose(saljax.absolute_gradient(f, images, target), jnp.abs(g))
  np.testing.assert_allclose(saljax.gradient_x_input(f, images, target), images * g, rtol=1e-6)


def test_predicted_target(linear_model, images):
  f, _ = linear_model
  pred = jnp.argmax(f(images), -1)
  np.testing.assert_array_equal(saljax.gradient(f, images, "predicted"),
                                saljax.gradient(f, images, pred))
  np.testing.assert_array_equal(saljax.resolve_target(f, images, 2), jnp.full(3, 2))


def test_smoothgrad_with_tiny_noise_is_the_gradient(mlp_model, images):
  target = jnp.array([0, 1, 2])
  g = saljax.gradient(mlp_model, images, target)
  sg = saljax.smoothgrad(mlp_model, images, target, key=jax.random.key(0), noise_level=1e-7,
                         samples=8)
  np.testing.assert_allclose(sg, g, atol=1e-5)
  sq = saljax.squaregrad(mlp_model, images, target, key=jax.random.key(0), noise_level=1e-7,
                         samples=8)
  np.testing.assert_allclose(sq, g ** 2, atol=1e-5)
  var = saljax.vargrad(mlp_model, images, target, key=jax.random.key(0), noise_level=1e-7,
                       samples=8)
  np.testing.assert_allclose(var, 0.0, atol=1e-8)


def test_smoothgrad_with_real_noise_differs_and_vargrad_is_the_variance(mlp_model, images):
  target = jnp.array([0, 1, 2])
  key = jax.random.key(3)
  sg = saljax.smoothgrad(mlp_model, images, target, key=key, samples=16)
  sq = saljax.squaregrad(mlp_model, images, target, key=key, samples=16)
  var = saljax.vargrad(mlp_model, images, target, key=key, samples=16, batch_size=5,
                       sampler="qmc")  # the noise of smoothgrad and squaregrad's default
  g = saljax.gradient(mlp_model, images, target)
  assert float(jnp.abs(sg - g).max()) > 1e-3
  # Same key, same noise: Var = E[g^2] - E[g]^2.
  np.testing.assert_allclose(var, sq - sg ** 2, atol=1e-5)
  assert float(var.min()) >= 0.0


def test_smoothgrad_absolute_noise_and_wrapped_explainer(linear_model, images):
  f, w = linear_model
  target = jnp.array([0, 1, 2])
  # IG on a linear model is linear in x, so the noise averages out of the mean
  # only approximately; with identical keys, SmoothGrad-IG equals the mean of
  # IG over the same noisy inputs computed by hand.
  key = jax.random.key(5)
  sg_ig = saljax.smoothgrad(f, images, target, key=key, explainer="integrated_gradients",
                            explainer_options={"steps": 4}, samples=6, noise="absolute",
                            noise_level=0.3, sampler="mc")  # the draws recomputed below
  keys = jax.random.split(key, 6)
  manual = 0
  for k in keys:
    k_noise, _ = jax.random.split(k)
    xn = images + 0.3 * jax.random.normal(k_noise, images.shape)
    manual += (xn * w[:, target].T.reshape(images.shape)) / 6
  np.testing.assert_allclose(sg_ig, manual, atol=1e-5)


def test_expected_gradients_on_linear_model(linear_model, images):
  f, w = linear_model
  target = jnp.array([0, 1, 2])
  refs = jax.random.normal(jax.random.key(9), (5,) + images.shape[1:])
  eg = saljax.expected_gradients(f, images, target, key=jax.random.key(1), references=refs,
                                 samples=400)
  # E[(x - x') w] = (x - mean(refs)) w for a linear model.
  expected = (images - refs.mean(0)) * w[:, target].T.reshape(images.shape)
  np.testing.assert_allclose(eg, expected, atol=0.25)
  # Each draw is exact: with a single reference, EG equals IG from it.
  eg1 = saljax.expected_gradients(f, images, target, key=jax.random.key(1), references=refs[:1],
                                  samples=3)
  np.testing.assert_allclose(eg1, _expected_linear(w, images, refs[:1], target), atol=1e-5)
  gs = saljax.gradient_shap(f, images, target, key=jax.random.key(1), references=refs[:1])
  np.testing.assert_allclose(gs, eg1, atol=1e-5)


def test_guided_ig_on_linear_model_equals_ig(linear_model, images):
  f, w = linear_model
  target = jnp.array([2, 1, 0])
  gig = saljax.guided_ig(f, images, target, steps=20)
  np.testing.assert_allclose(gig, _expected_linear(w, images, 0.0, target), atol=1e-4)


def test_guided_ig_completeness_on_mlp(mlp_model, images):
  target = jnp.array([2, 1, 0])
  x = 2 * images
  gig = saljax.guided_ig(mlp_model, x, target, steps=64)
  gap = saljax.completeness_gap(mlp_model, x, gig, target, jnp.zeros_like(x))
  delta = mlp_model(x)[jnp.arange(3), target] - mlp_model(jnp.zeros_like(x))[jnp.arange(3), target]
  assert float(jnp.abs(gap).max()) < 0.05 * float(jnp.abs(delta).max()) + 1e-3, (gap, delta)
  # The path is not the straight line: Guided IG differs from IG here.
  ig = saljax.integrated_gradients(mlp_model, x, target)
  assert float(jnp.abs(gig - ig).max()) > 1e-3


def test_blur_ig_completeness_on_linear_model(linear_model):
  f, w = linear_model
  x = jax.random.uniform(jax.random.key(4), (2, 4, 4, 3))
  target = jnp.array([0, 1])
  attr = saljax.blur_ig(f, x, target, max_sigma=3.0, steps=200)
  blurred = ops.gaussian_blur(x, 3.0)
  delta = (f(x) - f(blurred))[jnp.arange(2), target]
  np.testing.assert_allclose(attr.reshape(2, -1).sum(1), delta, atol=0.02 * float(jnp.abs(delta).max()))


@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.5, 6.0])
def test_gaussian_blur_matches_scipy(mode, sigma):
  x = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)
  got = ops.gaussian_blur(jnp.asarray(x), sigma, mode=mode, max_sigma=6.0)
  want = np.stack([scipy.ndimage.gaussian_filter(xi, [sigma, sigma, 0], mode=mode) for xi in x])
  np.testing.assert_allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------
# Invariants over the whole gradient family.

def _options(name, images):
  refs = jax.random.normal(jax.random.key(9), (4,) + images.shape[1:])
  return {
      "integrated_gradients": {"steps": 7},
      "smoothgrad": {"samples": 7},
      "squaregrad": {"samples": 7},
      "vargrad": {"samples": 7},
      "expected_gradients": {"samples": 7, "references": refs},
      "gradient_shap": {"samples": 7, "references": refs, "stdev": 0.1},
      "guided_ig": {"steps": 6},
      "blur_ig": {"steps": 7, "max_sigma": 2.0},
  }.get(name, {})


@pytest.mark.parametrize("name", GRADIENT_FAMILY)
def test_family_shape_finite_and_one_compile_per_shape(name, mlp_model, images):
  traces = []

  def f(x):
    traces.append(x.shape)
    return mlp_model(x)

  entry = saljax.explainers.entry(name)
  key = {"key": jax.random.key(0)} if entry.stochastic else {}
  opts = _options(name, images)
  target = jnp.array([0, 1, 2])
  a1 = entry.fn(f, images, target, **key, **opts)
  n = len(traces)
  a2 = entry.fn(f, images + 1.0, target, **key, **opts)
  assert len(traces) == n, f"{name} retraced the model for a second call of the same shape"
  assert a1.shape == images.shape and a2.shape == images.shape
  assert bool(jnp.isfinite(a1).all())
  assert entry.fn.__doc__ and any(str(y) in entry.fn.__doc__ for y in range(2009, 2025)), (
      f"{name}: docstring must name its paper and year")


@pytest.mark.parametrize("name", [n for n in ("integrated_gradients", "smoothgrad", "squaregrad",
                                              "vargrad", "expected_gradients", "gradient_shap",
                                              "blur_ig")])
def test_family_chunked_equals_unchunked(name, mlp_model, images):
  entry = saljax.explainers.entry(name)
  key = {"key": jax.random.key(0)} if entry.stochastic else {}
  opts = _options(name, images)
  target = jnp.array([0, 1, 2])
  full = entry.fn(mlp_model, images, target, **key, **opts)
  for bs in (1, 3):  # 3 does not divide 7: the remainder path runs too
    chunked = entry.fn(mlp_model, images, target, batch_size=bs, **key, **opts)
    np.testing.assert_allclose(chunked, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in GRADIENT_FAMILY
                                  if saljax.explainers.entry(n).stochastic])
def test_family_same_key_identical_other_key_different(name, mlp_model, images):
  fn = saljax.explainers.get(name)
  opts = _options(name, images)
  target = jnp.array([0, 1, 2])
  a = fn(mlp_model, images, target, key=jax.random.key(11), **opts)
  b = fn(mlp_model, images, target, key=jax.random.key(11), **opts)
  c = fn(mlp_model, images, target, key=jax.random.key(12), **opts)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  with pytest.raises(ValueError, match="jax.random key"):
    fn(mlp_model, images, target, **opts)
