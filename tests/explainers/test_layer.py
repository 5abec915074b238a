"""Layer and neuron attribution checked against known answers: completeness,
models linear after the layer, hand-computed gradients, conductance against
integrated gradients, chunked against unchunked, one compile per shape, and
Captum's LayerIntegratedGradients / LayerConductance on a torch twin."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import model as M
from saljax.explainers import cam, layer as L

from _tiny_models import TinyCNN, tiny_cnn, torch_conv_relu_pool_linear


@pytest.fixture(scope="module")
def cnn():
  m, v, tapped = tiny_cnn((2, 8, 8, 3))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  return m, v, tapped, x, jnp.array([1, 3])


class TinyText(nn.Module):
  """Token embedding, a tanh mixing layer, mean pooling over tokens, a dense head."""
  vocab: int = 11
  dim: int = 6
  classes: int = 4

  @nn.compact
  def __call__(self, tokens):
    e = nn.Embed(self.vocab, self.dim, name="embed")(tokens)
    h = jnp.tanh(nn.Dense(8, name="mix")(e))
    return nn.Dense(self.classes, name="head")(h.mean(1))


@pytest.fixture(scope="module")
def text():
  m = TinyText()
  tokens = jax.random.randint(jax.random.key(2), (3, 5), 1, 11).astype(jnp.int32)
  v = m.init(jax.random.key(3), tokens)
  return m, v, M.from_linen(m, v, example=tokens), tokens, jnp.array([0, 2, 3])


def _logit(logits, target):
  return np.take_along_axis(np.asarray(logits), np.asarray(target)[:, None], 1)[:, 0]


def _layer_grad(tapped, x, target, layer):
  """(activation, d target logit / d activation) by the tap, for the hand checks."""
  _, acts, grads = cam.activations_and_gradients(tapped, x, target, (layer,))
  return np.asarray(acts[layer], np.float64), np.asarray(grads[layer], np.float64)


# ----------------------------------------------------------------------------
# Layer integrated gradients.


def test_layer_ig_completeness_on_a_cnn(cnn):
  m, v, tapped, x, target = cnn
  # block1 is followed by a conv, a ReLU, pooling and a dense head: not linear.
  attr, gap = saljax.layer_integrated_gradients(tapped, x, target, layer="block1", steps=64,
                                                return_delta=True)
  assert attr.shape == (2, 8, 8, 6) and gap.shape == (2,)
  want = _logit(m.apply(v, x), target) - _logit(m.apply(v, jnp.zeros_like(x)), target)
  assert np.abs(want).min() > 1e-2  # not a vacuous comparison
  np.testing.assert_allclose(np.asarray(attr).reshape(2, -1).sum(1), want, atol=1e-3)
  assert np.abs(np.asarray(gap)).max() < 1e-3


def test_layer_ig_completeness_on_integer_tokens(text):
  m, v, tapped, tokens, target = text
  pad = 0
  attr, gap = saljax.layer_integrated_gradients(tapped, tokens, target, layer="embed", steps=64,
                                                baseline=pad, return_delta=True)
  assert attr.shape == (3, 5, 6)
  want = _logit(m.apply(v, tokens), target) - _logit(m.apply(v, jnp.full_like(tokens, pad)),
                                                      target)
  assert np.abs(want).min() > 1e-3
  np.testing.assert_allclose(np.asarray(attr).reshape(3, -1).sum(1), want, atol=1e-3)
  np.testing.assert_allclose(gap, np.asarray(attr).reshape(3, -1).sum(1) - want, atol=1e-6)
  # A reference token array shaped like x[0] is the same baseline for every row.
  same = saljax.layer_integrated_gradients(tapped, tokens, target, layer="embed", steps=64,
                                           baseline=jnp.full((5,), pad, jnp.int32))
  np.testing.assert_allclose(same, attr, rtol=1e-6, atol=1e-8)
  # Attributions to a token at the pad token are zero: its embedding does not move.
  at_pad = saljax.layer_integrated_gradients(tapped, tokens.at[:, 2].set(pad), target,
                                             layer="embed", steps=8, baseline=pad)
  assert np.abs(np.asarray(at_pad)[:, 2]).max() == 0


def test_layer_ig_is_exact_on_a_model_linear_after_the_layer(cnn):
  _, _, tapped, x, target = cnn
  # block2 -> average pooling -> dense: dS/da is the constant w / (h w).
  a, g = _layer_grad(tapped, x, target, "block2")
  a0, _ = _layer_grad(tapped, jnp.zeros_like(x), target, "block2")
  for rule in ("gauss_legendre", "left"):
    got = saljax.layer_integrated_gradients(tapped, x, target, layer="block2", steps=5, rule=rule)
    np.testing.assert_allclose(got, (a - a0) * g, rtol=1e-5, atol=1e-7)
  # An activation-space baseline: (a - a0) w exactly, and F(baseline) is the
  # model with the layer set to it.
  lb = 0.3 * jax.random.normal(jax.random.key(5), a.shape[1:])
  got, gap = saljax.layer_integrated_gradients(tapped, x, target, layer="block2", steps=3,
                                               layer_baseline=lb, return_delta=True)
  np.testing.assert_allclose(got, (a - np.asarray(lb)) * g, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(gap)).max() < 1e-5


# ----------------------------------------------------------------------------
# Gradient x activation, internal influence, conductance.


def test_layer_gradient_x_activation_by_hand(cnn, text):
  m, v, tapped, x, target = cnn
  a = m.apply(v, x, method=TinyCNN.features)
  g = jax.grad(lambda a: jnp.take_along_axis(
      m.apply(v, a, method=TinyCNN.head), target[:, None], 1).sum())(a)
  got = saljax.layer_gradient_x_activation(tapped, x, target, layer="block2")
  assert np.abs(np.asarray(a * g)).max() > 1e-3
  np.testing.assert_allclose(got, a * g, rtol=1e-5, atol=1e-8)
  plain = saljax.layer_gradient_x_activation(tapped, x, target, layer="block2",
                                             multiply_by_activation=False)
  np.testing.assert_allclose(plain, g, rtol=1e-5, atol=1e-8)
  both = saljax.layer_gradient_x_activation(tapped, x, target, layer=["block1", "block2"])
  assert set(both) == {"block1", "block2"}
  np.testing.assert_allclose(both["block2"], got, rtol=1e-6)
  # Integer tokens: the embedding times the gradient at it.
  tm, tv, ttapped, tokens, ttarget = text
  p = tv["params"]
  e = p["embed"]["embedding"][tokens]
  head = lambda e: (jnp.tanh(e @ p["mix"]["kernel"] + p["mix"]["bias"]).mean(1)
                    @ p["head"]["kernel"] + p["head"]["bias"])
  np.testing.assert_allclose(head(e), tm.apply(tv, tokens), rtol=1e-5)
  ge = jax.grad(lambda e: jnp.take_along_axis(head(e), ttarget[:, None], 1).sum())(e)
  np.testing.assert_allclose(
      saljax.layer_gradient_x_activation(ttapped, tokens, ttarget, layer="embed"), e * ge,
      rtol=1e-5, atol=1e-8)


def test_internal_influence_is_the_path_average_of_the_layer_gradient(cnn):
  _, _, tapped, x, target = cnn
  # Linear after block2: the average of a constant gradient is that gradient.
  _, g = _layer_grad(tapped, x, target, "block2")
  np.testing.assert_allclose(saljax.internal_influence(tapped, x, target, layer="block2",
                                                       steps=4), g, rtol=1e-5, atol=1e-9)
  # block1: the quadrature of the gradients at the path points, by hand.
  alphas, weights = saljax.explainers.path_nodes(6, "gauss_legendre")
  want = sum(w * _layer_grad(tapped, a * x, target, "block1")[1] for a, w in zip(alphas, weights))
  got = saljax.internal_influence(tapped, x, target, layer="block1", steps=6, batch_size=4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)


def test_conductance_by_hand_and_its_sum_is_integrated_gradients(cnn):
  _, _, tapped, x, target = cnn
  # Captum's sum over steps + 1 Gauss-Legendre nodes, one node at a time.
  alphas, _ = saljax.explainers.path_nodes(7, "gauss_legendre")
  at = [_layer_grad(tapped, a * x, target, "block1") for a in alphas]
  want = sum(g0 * (a1 - a0) for (a0, g0), (a1, _) in zip(at[:-1], at[1:]))
  for bs in (None, 3):  # one chunk; chunks of 3 and a remainder of 1 (7 nodes)
    got = saljax.layer_conductance(tapped, x, target, layer="block1", steps=6, batch_size=bs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8, err_msg=str(bs))
  # Summed over the neurons: F(x) - F(0), as the input integrated gradients.
  cond = saljax.layer_conductance(tapped, x, target, layer="block1", steps=64)
  ig = saljax.integrated_gradients(tapped.as_model(), x, target, steps=64)
  np.testing.assert_allclose(np.asarray(cond).reshape(2, -1).sum(1),
                             np.asarray(ig).reshape(2, -1).sum(1), rtol=2e-3, atol=1e-3)


def test_chunked_equals_unchunked(cnn, text):
  _, _, tapped, x, target = cnn
  for name, opts in [("layer_integrated_gradients", {"layer": "block1"}),
                     ("internal_influence", {"layer": "block1"}),
                     ("layer_conductance", {"layer": "block1"}),
                     ("neuron_integrated_gradients", {"layer": "block2", "neuron": (1, 2, 3)})]:
    f = saljax.explainers.get(name)
    whole = f(tapped, x, target, steps=7, **opts)
    # Chunks of 3 and a remainder: a scan and one more vmapped call.
    np.testing.assert_allclose(f(tapped, x, target, steps=7, batch_size=3, **opts), whole,
                               rtol=1e-5, atol=1e-8, err_msg=name)
  _, _, ttapped, tokens, ttarget = text
  np.testing.assert_allclose(
      saljax.layer_integrated_gradients(ttapped, tokens, ttarget, layer="embed", steps=7,
                                        batch_size=2),
      saljax.layer_integrated_gradients(ttapped, tokens, ttarget, layer="embed", steps=7),
      rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------
# Neurons.


def test_neuron_gradient_equals_jax_grad_of_the_neuron(cnn):
  m, v, tapped, x, _ = cnn
  neuron = lambda z: m.apply(v, z, method=TinyCNN.features)[:, 1, 2, 3]
  want = jax.grad(lambda z: neuron(z).sum())(x)
  assert np.abs(np.asarray(want)).max() > 1e-3
  got = saljax.neuron_gradient(tapped, x, layer="block2", neuron=(1, 2, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
  # Negative indices, a callable and a slice (its neurons summed, as Captum).
  np.testing.assert_allclose(saljax.neuron_gradient(tapped, x, layer="block2",
                                                    neuron=(-3, 2, -5)), got, rtol=1e-6)
  np.testing.assert_allclose(saljax.neuron_gradient(tapped, x, layer="block2",
                                                    neuron=_pick_123), got, rtol=1e-6)
  both = jax.grad(lambda z: m.apply(v, z, method=TinyCNN.features)[:, 1, 2, 3:5].sum())(x)
  np.testing.assert_allclose(saljax.neuron_gradient(tapped, x, layer="block2",
                                                    neuron=(1, 2, slice(3, 5))), both, rtol=1e-5)


def _pick_123(a):
  return a[:, 1, 2, 3]


def test_neuron_integrated_gradients_known_answers(cnn):
  m, v, tapped, x, _ = cnn
  # A neuron of the first conv (before its ReLU) is affine in x: IG = x * grad exactly.
  g = saljax.neuron_gradient(tapped, x, layer="block1/conv", neuron=(3, 4, 1))
  got = saljax.neuron_integrated_gradients(tapped, x, layer="block1/conv", neuron=(3, 4, 1),
                                           steps=5)
  np.testing.assert_allclose(got, x * g, rtol=1e-5, atol=1e-8)
  # Completeness for a neuron after two ReLUs: sum = n(x) - n(0).
  n = lambda z: np.asarray(m.apply(v, z, method=TinyCNN.features)[:, 1, 2, 3])
  ig = saljax.neuron_integrated_gradients(tapped, x, None, layer="block2", neuron=(1, 2, 3),
                                          steps=64)
  want = n(x) - n(jnp.zeros_like(x))
  assert np.abs(want).max() > 1e-2
  np.testing.assert_allclose(np.asarray(ig).reshape(2, -1).sum(1), want, atol=1e-3)


# ----------------------------------------------------------------------------
# One compile per shape.


def _counting(tapped):
  calls = []

  def forward(x, taps=None):
    calls.append(1)
    return tapped(x, taps)

  return M.Tapped(forward, tapped.layer_names), calls


KERNELS = {
    "layer_integrated_gradients": L._layer_integrated_gradients,
    "layer_gradient_x_activation": L._gradient_x_activation,
    "internal_influence": L._internal_influence,
    "layer_conductance": L._conductance,
    "neuron_gradient": L._neuron_gradient,
    "neuron_integrated_gradients": L._neuron_integrated_gradients,
}


@pytest.mark.parametrize("name,opts", [
    ("layer_integrated_gradients", {"layer": "block1", "steps": 3}),
    ("layer_gradient_x_activation", {"layer": "block1"}),
    ("internal_influence", {"layer": "block1", "steps": 3}),
    ("layer_conductance", {"layer": "block1", "steps": 3, "batch_size": 2}),
    ("neuron_gradient", {"layer": "block2", "neuron": (1, 2, 3)}),
    ("neuron_integrated_gradients", {"layer": "block2", "neuron": (1, 2, 3), "steps": 3}),
])
def test_a_second_call_with_new_values_traces_nothing(cnn, name, opts):
  m, v, tapped, x, _ = cnn
  x = jnp.concatenate([x, x[:1]])  # a batch shape no other test uses
  counted, calls = _counting(tapped)
  f = saljax.explainers.get(name)
  size = KERNELS[name]._cache_size()
  first = f(counted, x, jnp.array([1, 3, 0]), **opts)
  n = len(calls)
  assert n >= 1 and KERNELS[name]._cache_size() == size + 1
  second = f(counted, x + 0.5, jnp.array([4, 2, 2]), **opts)
  assert len(calls) == n, (len(calls), n)  # no trace, not even of the shapes
  assert not np.allclose(np.asarray(first), np.asarray(second))
  # Another checkpoint of the architecture reuses the compiled program.
  f(tapped, x, jnp.array([1, 3, 0]), **opts)
  size = KERNELS[name]._cache_size()
  other = M.from_linen(m, jax.tree_util.tree_map(lambda a: 0.9 * a, v), names=tapped.layer_names)
  f(other, x, jnp.array([1, 3, 0]), **opts)
  assert KERNELS[name]._cache_size() == size


def test_one_compile_per_shape_on_tokens(text):
  _, _, tapped, tokens, target = text
  size = L._layer_integrated_gradients._cache_size()
  saljax.layer_integrated_gradients(tapped, tokens, target, layer="embed", steps=3)
  assert L._layer_integrated_gradients._cache_size() == size + 1
  saljax.layer_integrated_gradients(tapped, (tokens + 3) % 11, jnp.array([1, 1, 0]),
                                    layer="embed", steps=3, baseline=5)
  assert L._layer_integrated_gradients._cache_size() == size + 1


# ----------------------------------------------------------------------------
# Errors before work.


def test_errors_name_what_was_expected(cnn, text):
  _, _, tapped, x, target = cnn
  with pytest.raises(TypeError, match="tapped model"):
    saljax.layer_integrated_gradients(tapped.logits, x, target, layer="block2")
  with pytest.raises(ValueError, match="unknown layer.*block1"):
    saljax.layer_conductance(tapped, x, target, layer="nope")
  with pytest.raises(ValueError, match="one layer name"):
    saljax.layer_integrated_gradients(tapped, x, target, layer=["block1", "block2"])
  with pytest.raises(ValueError, match="pass one of them"):
    saljax.layer_integrated_gradients(tapped, x, target, layer="block2", baseline=0.0,
                                      layer_baseline=0.0)
  with pytest.raises(ValueError, match=r"layer_baseline: expected shape"):
    saljax.layer_integrated_gradients(tapped, x, target, layer="block2",
                                      layer_baseline=jnp.zeros((3, 3)))
  with pytest.raises(TypeError, match="neuron: expected an index"):
    saljax.neuron_gradient(tapped, x, layer="block2")
  with pytest.raises(ValueError, match="neuron: expected 3 indices"):
    saljax.neuron_gradient(tapped, x, layer="block2", neuron=(1, 2))
  with pytest.raises(ValueError, match="out of range for axis 3"):
    saljax.neuron_integrated_gradients(tapped, x, layer="block2", neuron=(1, 2, 8))
  with pytest.raises(ValueError, match="target"):
    saljax.neuron_gradient(tapped, x, jnp.array([0, 9]), layer="block2", neuron=(0, 0, 0))
  _, _, ttapped, tokens, ttarget = text
  with pytest.raises(TypeError, match="baseline: x holds integer token ids"):
    saljax.layer_integrated_gradients(ttapped, tokens, ttarget, layer="embed", baseline=0.5)
  with pytest.raises(ValueError, match=r"baseline: expected token ids of shape \(3, 5\)"):
    saljax.layer_integrated_gradients(ttapped, tokens, ttarget, layer="embed",
                                      baseline=jnp.zeros((4,), jnp.int32))
  # Methods that move the input need a floating x.
  with pytest.raises(TypeError, match="x: expected a floating-point array"):
    saljax.layer_conductance(ttapped, tokens, ttarget, layer="embed")


# ----------------------------------------------------------------------------
# Parity with Captum on a torch twin.


def _twin():
  k = jax.random.normal(jax.random.key(12), (3, 3, 3, 4))  # HWIO
  bias = 0.3 * jax.random.normal(jax.random.key(13), (4,))
  w = jax.random.normal(jax.random.key(14), (4, 5))

  def forward(params, x, taps=None):
    k, bias, w = params
    taps = taps or {}
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    y = y + taps.get("conv", 0.0)
    a = jax.nn.relu(y) + taps.get("relu", 0.0)
    return a.mean((1, 2)) @ w, {"conv": y, "relu": a}

  return (k, bias, w), forward


def test_parity_with_captum_layer_ig_and_conductance():
  import captum.attr as ca  # torch and captum are in the test extra
  import torch

  with jax.enable_x64(True):
    params, forward = _twin()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    tapped = M.Tapped(jax.tree_util.Partial(forward, params), ("conv", "relu"))
    x = jax.random.normal(jax.random.key(15), (2, 6, 6, 3), jnp.float64)
    base = 0.2 * jax.random.normal(jax.random.key(16), (6, 6, 3), jnp.float64)
    target = jnp.array([2, 4])
    net = torch_conv_relu_pool_linear(*params)
    nchw = lambda a: torch.from_numpy(np.array(a, np.float64).transpose(0, 3, 1, 2).copy())
    xt, bt = nchw(x), nchw(jnp.broadcast_to(base, x.shape))
    tt = torch.from_numpy(np.array(target)).long()
    nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)
    # The conv output (before the ReLU): the model is not linear after it.
    ig_theirs = nhwc(ca.LayerIntegratedGradients(net, net[0]).attribute(
        xt, baselines=bt, target=tt, n_steps=16))
    ig_ours = saljax.layer_integrated_gradients(tapped, x, target, layer="conv", baseline=base,
                                                steps=16)
    cond_theirs = nhwc(ca.LayerConductance(net, net[0]).attribute(
        xt, baselines=bt, target=tt, n_steps=16))
    cond_ours = saljax.layer_conductance(tapped, x, target, layer="conv", baseline=base,
                                         steps=16, batch_size=5)
    ii_theirs = nhwc(ca.InternalInfluence(net, net[0]).attribute(
        xt, baselines=bt, target=tt, n_steps=16))
    ii_ours = saljax.internal_influence(tapped, x, target, layer="conv", baseline=base,
                                        steps=16)
  for ours, theirs in ((ig_ours, ig_theirs), (cond_ours, cond_theirs), (ii_ours, ii_theirs)):
    assert np.abs(theirs).max() > 1e-2
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-8)
