"""The tapped-forward contract: the gradient with respect to a zero tap is the
gradient with respect to that activation, for linen, NNX and features/head."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import saljax


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name="conv1")(x)
    x = nn.relu(x)
    x = nn.Conv(6, (3, 3), name="conv2")(x)
    x = x.mean((1, 2))
    return nn.Dense(3, name="head")(x)


class Reversed(nn.Module):
  """Call order differs from alphabetical order."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="b_second")(nn.Dense(3, name="z_first")(x))


class NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(4, 6, (3, 3), rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = self.conv2(x)
    return self.head(x.mean((1, 2)))


X = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))


def _check_tap_gradient(tapped, layer, head_from_layer):
  """d logit / d tap == d logit / d activation computed from the split model."""
  taps = tapped.zero_taps(X, [layer])
  logits, acts = tapped(X, taps)
  np.testing.assert_allclose(logits, tapped.logits(X), rtol=1e-6)
  g_tap = jax.grad(lambda t: tapped(X, t)[0][:, 1].sum())(taps)[layer]
  g_ref = jax.grad(lambda a: head_from_layer(a)[:, 1].sum())(acts[layer])
  np.testing.assert_allclose(g_tap, g_ref, rtol=1e-5, atol=1e-6)
  # A non-zero tap shifts the activation and so changes the logits.
  shifted, acts2 = tapped(X, {layer: jnp.ones_like(taps[layer])})
  np.testing.assert_allclose(acts2[layer], acts[layer] + 1.0, rtol=1e-6)
  assert not np.allclose(shifted, logits)


def test_linen_tapped_forward():
  module = LinenNet()
  variables = module.init(jax.random.key(1), X)
  tapped = saljax.from_linen(module, variables, example=X)
  assert tapped.layer_names == ("conv1", "conv2", "head")
  assert list(tapped.activation_shapes(X)) == ["conv1", "conv2", "head"]
  p = variables["params"]

  def head_from_conv2(a):
    return a.mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]

  _check_tap_gradient(tapped, "conv2", head_from_conv2)
  shapes = tapped.activation_shapes(X)
  assert shapes["conv1"].shape == (2, 6, 6, 4)


def test_layer_names_follow_call_order():
  m = Reversed()
  v = m.init(jax.random.key(0), jnp.ones((1, 4)))
  tapped = saljax.from_linen(m, v, example=jnp.ones((1, 4)))
  assert tapped.layer_names == ("z_first", "b_second")


def test_linen_shared_module_gets_call_suffix():
  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      d = nn.Dense(4, name="d")
      return d(jnp.tanh(d(x)))

  module = Twice()
  v = module.init(jax.random.key(0), jnp.ones((1, 4)))
  tapped = saljax.from_linen(module, v, example=jnp.ones((1, 4)))
  assert tapped.layer_names == ("d", "d#1")


def test_nnx_tapped_forward_leaves_the_module_alone():
  model = NNXNet(nnx.Rngs(0))
  before = model(X)
  tapped = saljax.from_nnx(model, example=X)
  assert tapped.layer_names == ("conv1", "conv2", "head")  # call order

  def head_from_conv2(a):
    return model.head(a.mean((1, 2)))

  _check_tap_gradient(tapped, "conv2", head_from_conv2)
  assert type(model.conv1) is nnx.Conv  # the user's object was not changed
  np.testing.assert_allclose(model(X), before)
  # Works under jit as a static model.
  g = saljax.gradient(tapped, X, 0)
  np.testing.assert_allclose(g, saljax.gradient(model, X, 0), rtol=1e-5, atol=1e-6)


def test_features_head_pair():
  w = jax.random.normal(jax.random.key(3), (4, 3))
  features = lambda x: jnp.tanh(x.mean((1, 2)) @ jnp.ones((3, 4)))
  head = lambda a: a @ w
  tapped = saljax.from_features_head(features, head)
  _check_tap_gradient(tapped, "features", head)
  np.testing.assert_allclose(saljax.as_model(tapped)(X), head(features(X)))
