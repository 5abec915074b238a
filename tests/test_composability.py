"""Every registered method composes with the user's JAX transformations as its
registry entry claims: inside ``jax.jit``, under ``jax.vmap`` over a stacked
set of model parameters (an ensemble, several checkpoints), and under
``jax.grad`` with respect to the input (checked against float64 finite
differences on a smooth model) and to the parameters. Where an entry claims
no support, the method raises a ValueError naming the method, the
transformation and the way around it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
import _all_methods as A

SHAPE = (2, 16, 16, 3)
X = jax.random.normal(jax.random.key(42), SHAPE)
T = jnp.array([1, 3], jnp.int32)
KEY = jax.random.key(0)
EXPLAINERS = saljax.explainers.names()
METRICS = saljax.metrics.names()


class SmoothCNN(nn.Module):
  """The tiny CNN's layout (taps block1, block2) with smooth activations, so
  derivatives of gradient maps are not zero almost everywhere."""

  @nn.compact
  def __call__(self, x):
    x = nn.softplus(nn.Conv(6, (3, 3), name="block1")(x))
    x = jnp.tanh(nn.Conv(8, (3, 3), strides=2, name="block2")(x))
    return nn.Dense(5, name="dense")(x.mean((1, 2)))


def _smooth(seed=0, dtype=jnp.float32):
  m = SmoothCNN()
  v = m.init(jax.random.key(seed), jnp.zeros(SHAPE))
  v = jax.tree_util.tree_map(lambda a: a.astype(dtype), v)
  return saljax.from_linen(m, v, names=("block1", "block2", "dense"))


def _vit(seed=0):
  from _tiny_models import tiny_vit
  return tiny_vit(SHAPE, seed=seed)[2]


def _cnn(seed=0):
  from _tiny_models import tiny_cnn
  return tiny_cnn(SHAPE, seed=seed)[2]


def _explainer_call(name, model=None):
  """(model, call(model, x) -> output) for `name` with its smoke options."""
  e = saljax.explainers.entry(name)
  opts = {**e.smoke, **A._supplied(e, SHAPE)}
  key = {"key": KEY} if e.stochastic else {}
  if model is None:
    model = A.vit_for(e, _vit()) if "vit" in e.needs else _cnn()
  layer = e.kind == "layer"
  return model, lambda m, x: e.fn(m if layer else m.as_model(), x, T, **key, **opts)


def _metric_call(name):
  e = saljax.metrics.entry(name)
  opts = {**e.smoke, **A._supplied(e, SHAPE)}
  if "key" in e.needs:
    opts["key"] = KEY
  model = _cnn()
  attr = jax.random.normal(jax.random.key(7), SHAPE)
  if "params" in e.needs:  # the "model" is the parameters pytree
    module, variables, _ = A._CNN
    model_fn = A.cnn_as_function_of_params()[0]
    return variables["params"], lambda p, x: e.fn(model_fn, x, attr, T, params=p, **opts)
  if "random_model" in e.needs:
    opts["random_model"] = _cnn(seed=5).as_model()
  tapped = "tapped" in e.needs  # reads a layer: the tapped model itself
  return model, lambda m, x: e.fn(m if tapped else m.as_model(), x, attr, T, **opts)


def _leaves(out):
  return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(out)
          if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.number)]


def _close(a, b, name):
  for u, v in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-5 * (1 + np.abs(u).max()), err_msg=name)


def _call(name):
  return _explainer_call(name) if name in EXPLAINERS else _metric_call(name)


def _entry(name):
  return saljax.explainers.entry(name) if name in EXPLAINERS else saljax.metrics.entry(name)


@pytest.mark.parametrize("name", EXPLAINERS + METRICS)
def test_inside_user_jit(name):
  model, call = _call(name)
  eager = call(model, X)
  if _entry(name).jittable:
    _close(eager, jax.jit(call)(model, X), name)
  else:
    with pytest.raises(ValueError, match=rf"{name}.*jax\.jit"):
      jax.jit(call)(model, X)


@pytest.mark.parametrize("name", EXPLAINERS + METRICS)
def test_vmap_over_stacked_parameters(name):
  e = _entry(name)
  model, call = _call(name)
  other = jax.tree_util.tree_map(lambda a: 0.8 * a, model)
  stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), model, other)
  if e.vmappable:
    out = jax.vmap(lambda m: call(m, X))(stacked)
    _close(jax.tree_util.tree_map(lambda a: a[0], out), call(model, X), name)
    _close(jax.tree_util.tree_map(lambda a: a[1], out), call(other, X), name)
  else:
    with pytest.raises(ValueError, match=rf"{name}.*jax\.vmap"):
      jax.vmap(lambda m: call(m, X))(stacked)


def _scalar(call, model, w):
  return lambda x: sum(jnp.sum(jnp.asarray(a, x.dtype) * wi) for a, wi in
                       zip(jax.tree_util.tree_leaves(call(model, x)), w))


@pytest.mark.parametrize("name", EXPLAINERS)
def test_grad_wrt_input_matches_finite_differences(name):
  e = saljax.explainers.entry(name)
  with jax.enable_x64(True):
    smooth = A.vit_for(e, _vit()) if "vit" in e.needs else _smooth(dtype=jnp.float64)
    if "vit" in e.needs:
      smooth = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), smooth)
    model, call = _explainer_call(name, smooth)
    x = X.astype(jnp.float64)
    shapes = [a.shape for a in jax.tree_util.tree_leaves(call(model, x))]
    w = [jax.random.normal(jax.random.key(i), s, jnp.float64) for i, s in enumerate(shapes)]
    loss = _scalar(call, model, w)
    if not e.differentiable:
      with pytest.raises(ValueError, match=rf"{name}.*jax\.grad"):
        jax.grad(loss)(x)
      return
    g = jax.grad(loss)(x)
    v = jax.random.normal(jax.random.key(9), x.shape, jnp.float64)
    h = 1e-4
    fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    ad = jnp.vdot(g, v)
    assert np.isfinite(float(ad))
    np.testing.assert_allclose(float(ad), float(fd), rtol=2e-3, atol=1e-5 * (1 + abs(float(fd))),
                               err_msg=name)


# One method per family, differentiated with respect to the parameters: the
# use of attribution priors (Erion et al. 2021) and attacks on explanations.
# absolute_gradient is left to the input test: |g| has a kink wherever a
# gradient entry crosses zero, and a central difference over all parameters
# at once straddles some of them.
def _param_candidates(fam):
  return [n for n in saljax.explainers.names(fam)
          if saljax.explainers.entry(n).differentiable
          and "vit" not in saljax.explainers.entry(n).needs and not n.startswith("absolute")]


PARAM_FAMILIES = {fam: _param_candidates(fam)[0] for fam in saljax.explainers._REGISTRY.families()
                  if _param_candidates(fam)}


@pytest.mark.parametrize("name", sorted(PARAM_FAMILIES.values()))
def test_grad_wrt_parameters_matches_finite_differences(name):
  with jax.enable_x64(True):
    model, call = _explainer_call(name, _smooth(dtype=jnp.float64))
    x = X.astype(jnp.float64)
    shapes = [a.shape for a in jax.tree_util.tree_leaves(call(model, x))]
    w = [jax.random.normal(jax.random.key(i), s, jnp.float64) for i, s in enumerate(shapes)]
    loss = lambda m: _scalar(call, m, w)(x)
    g = jax.grad(loss)(model)
    v = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(11), a.shape, a.dtype),
                               model)
    h = 1e-4
    shift = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * b, model, v)
    fd = (loss(shift(h)) - loss(shift(-h))) / (2 * h)
    ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g),
                                             jax.tree_util.tree_leaves(v)))
    assert abs(float(ad)) > 0, name
    np.testing.assert_allclose(float(ad), float(fd), rtol=2e-3, atol=1e-5 * (1 + abs(float(fd))),
                               err_msg=name)
