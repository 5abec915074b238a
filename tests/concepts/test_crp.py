"""Concept relevance propagation (saljax.concepts.crp): conservation against
saljax's LRP, a hand-built model whose class depends on one channel's region,
parity with Zennit 0.5.1 plus a channel mask on a torch twin (zennit-crp's
mechanism), and the common contracts (chunks, traces, 8 devices)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import saljax
from saljax import concepts
from saljax import model as M

sys.path.insert(0, os.path.dirname(__file__))
import _planted as P  # noqa: E402


@pytest.fixture(scope="module")
def planted():
  """The planted CNN with random (non-zero) biases, and a bias-free copy."""
  module = P.PlantedCNN()
  v = module.init(jax.random.key(0), jnp.zeros((1, P.HW, P.HW, 1)))
  keys = iter(jax.random.split(jax.random.key(1), 8))
  biased = jax.tree_util.tree_map_with_path(
      lambda path, a: 0.1 * jax.random.normal(next(keys), a.shape)
      if path[-1].key == "bias" else a, v)
  ex = jnp.zeros((1, P.HW, P.HW, 1))
  x = jnp.asarray(P.dataset(3, 4)[0])
  return M.from_linen(module, biased, example=ex), M.from_linen(module, v, example=ex), x


@pytest.mark.parametrize("rules", ["epsilon_plus", "epsilon_gamma_box"])
def test_channel_maps_sum_to_the_lrp_map(planted, rules):
  tapped, _, x = planted
  res = concepts.crp(tapped, x, 1, layer="block1", rules=rules)
  assert res.maps.shape == (4, 8) + x.shape[1:]
  assert res.channel_relevance.shape == (4, 8)
  full = saljax.lrp(tapped, x, 1, rules=rules)
  scale = float(jnp.abs(full).max())
  assert scale > 0
  np.testing.assert_allclose(res.maps.sum(1), full, atol=1e-5 * scale)
  # Conditions are linear: two channels together = the sum of their maps.
  pair = concepts.crp(tapped, x, 1, layer="block1", rules=rules,
                      conditions=np.array([[1, 0, 1, 0, 0, 0, 0, 0]], bool)).maps[:, 0]
  np.testing.assert_allclose(pair, res.maps[:, 0] + res.maps[:, 2], atol=1e-5 * scale)


@pytest.mark.parametrize("rules,epsilon", [("epsilon", 1e-9), ("epsilon_plus", None)])
def test_conditional_map_sums_to_the_channel_relevance_without_biases(planted, rules, epsilon):
  _, bias_free, x = planted
  res = concepts.crp(bias_free, x, 1, layer="block2", rules=rules, epsilon=epsilon)
  sums = res.maps.reshape(4, 8, -1).sum(-1)
  scale = float(jnp.abs(res.channel_relevance).max())
  assert scale > 0
  np.testing.assert_allclose(sums, res.channel_relevance, atol=1e-4 * scale)
  # And the channels' relevances add up to the logit (nothing is absorbed above either).
  logit = bias_free.logits(x)[:, 1]
  np.testing.assert_allclose(res.channel_relevance.sum(1), logit, rtol=1e-4)


def _one_channel_model():
  """features: ReLU of a 1x1 identity conv on a 2-channel 8x8 input; the class-1
  logit sums channel 0 over the top-left 4x4 region, the class-0 logit is 0."""
  eye = jnp.eye(2)[None, None]  # HWIO

  def features(x):
    return jax.nn.relu(jax.lax.conv_general_dilated(x, eye, (1, 1), "VALID",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")))

  w = np.zeros((8, 8, 2, 2), np.float32)
  w[:4, :4, 0, 1] = 1.0
  w = jnp.asarray(w.reshape(-1, 2))

  def head(a):
    return a.reshape(a.shape[0], -1) @ w

  return M.from_features_head(features, head, name="features")


def test_a_class_that_depends_on_one_channel_region_gives_a_map_there():
  model = _one_channel_model()
  x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 2), minval=0.1, maxval=1.0)
  res = concepts.crp(model, x, 1, layer="features", rules="epsilon")
  region = np.zeros((8, 8, 2), bool)
  region[:4, :4, 0] = True
  m0, m1 = np.asarray(res.maps[:, 0]), np.asarray(res.maps[:, 1])
  assert np.abs(m1).max() == 0  # the other channel carries nothing
  assert np.abs(m0[:, ~region]).max() == 0 and m0[:, region].min() > 0
  np.testing.assert_allclose(m0[:, region], np.asarray(x)[:, region], atol=1e-5)
  np.testing.assert_allclose(res.channel_relevance[:, 0], x[:, :4, :4, 0].sum((1, 2)), rtol=1e-5)
  np.testing.assert_allclose(res.channel_relevance[:, 1], 0)
  # RelMax for channel 0 ranks the examples by that region; ActMax for channel 1
  # by channel 1's total activation.
  idx, val = concepts.relevance_maximization(model, x, 1, layer="features", top=3,
                                             rules="epsilon", batch_size=2)
  want = np.argsort(-np.asarray(x[:, :4, :4, 0].sum((1, 2))))[:3]
  np.testing.assert_array_equal(idx[0], want)
  idx, _ = concepts.relevance_maximization(model, x, 1, layer="features", top=3,
                                           mode="activation")
  np.testing.assert_array_equal(idx[1], np.argsort(-np.asarray(x[..., 1].sum((1, 2))))[:3])


def test_chunked_equals_unchunked_and_one_trace_per_shape(planted):
  tapped, _, x = planted
  calls = []

  def forward(xx, taps=None):
    calls.append(1)
    return tapped(xx, taps)

  counted = saljax.Tapped(forward, tapped.layer_names)
  a = concepts.crp(counted, x, 1, layer="block2", batch_size=3)
  n = len(calls)
  b = concepts.crp(counted, x + 0.1, 1, layer="block2", batch_size=3,
                   conditions=np.eye(8)[::-1].astype(bool))
  assert len(calls) == n, "a second call of the same shapes traced the model again"
  full = concepts.crp(tapped, x, 1, layer="block2")
  scale = float(jnp.abs(full.maps).max())
  np.testing.assert_allclose(a.maps, full.maps, atol=1e-6 * scale)
  assert not np.allclose(b.maps, a.maps[:, ::-1])  # the input matters
  np.testing.assert_allclose(a.channel_relevance, full.channel_relevance, rtol=1e-6, atol=1e-9)


def test_bad_input_is_refused(planted):
  tapped, _, x = planted
  with pytest.raises(ValueError, match="conditions: expected channel indices"):
    concepts.crp(tapped, x, 1, layer="block1", conditions=np.array([0, 8]))
  with pytest.raises(ValueError, match="conditions: expected None"):
    concepts.crp(tapped, x, 1, layer="block1", conditions=np.ones((2, 5)))
  with pytest.raises(ValueError, match="unknown layer"):
    concepts.crp(tapped, x, 1, layer="nope")
  with pytest.raises(ValueError, match="top"):
    concepts.relevance_maximization(tapped, x, 1, layer="block1", top=9)


# --- parity with Zennit plus a channel mask (zennit-crp's mechanism) ---------


def _zennit():
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "explainers"))
  from test_propagation_zennit import zennit  # the helper imports zennit 0.5.1 from the venv
  return zennit


def test_crp_equals_zennit_with_a_channel_mask_on_a_torch_twin():
  zennit = _zennit()
  rng = np.random.default_rng(0)
  w1 = rng.normal(size=(6, 3, 3, 3)) / 5
  b1 = 0.1 * rng.normal(size=6)
  w2 = rng.normal(size=(8, 6, 3, 3)) / 7
  b2 = 0.1 * rng.normal(size=8)
  fc = rng.normal(size=(4, 8)) / 3
  fcb = 0.1 * rng.normal(size=4)
  x = rng.normal(size=(2, 8, 8, 3))
  target = np.array([1, 3])

  def conv(h, w, b):
    return jax.lax.conv_general_dilated(h, jnp.asarray(w.transpose(2, 3, 1, 0)), (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

  features = lambda h: jax.nn.relu(conv(h, w1, b1))  # noqa: E731
  head = lambda a: jax.nn.relu(conv(a, w2, b2)).mean((1, 2)) @ jnp.asarray(fc.T) + fcb  # noqa: E731
  model = M.from_features_head(features, head, name="relu1")

  def tconv(w, b):
    m = torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
      m.weight.copy_(torch.from_numpy(w))
      m.bias.copy_(torch.from_numpy(b))
    return m

  lin = torch.nn.Linear(8, 4, dtype=torch.float64)
  with torch.no_grad():
    lin.weight.copy_(torch.from_numpy(fc))
    lin.bias.copy_(torch.from_numpy(fcb))
  relu1 = torch.nn.ReLU()
  net = torch.nn.Sequential(tconv(w1, b1), relu1, tconv(w2, b2), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), lin).eval()
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tt = torch.from_numpy(target)
  mask = torch.zeros(6, dtype=torch.float64)

  # zennit-crp conditions a layer by multiplying the gradient (Zennit's
  # relevance) at the layer's output with the channel mask.
  def condition(mod, inp, out):
    out.register_hook(lambda g: g * mask[None, :, None, None])  # returns None: output kept

  relu1.register_forward_hook(condition)
  want = []
  for c in range(6):
    mask.zero_()
    mask[c] = 1.0
    xr = xt.clone().requires_grad_(True)
    with zennit.composites.EpsilonPlus().context(net) as modified:
      out = modified(xr)
      seed = torch.nn.functional.one_hot(tt, 4).to(out.dtype) * out.detach()
      rel, = torch.autograd.grad(out, xr, seed)
    want.append(rel.detach().numpy().transpose(0, 2, 3, 1))
  want = np.stack(want, 1)
  with jax.enable_x64(True):
    got = np.asarray(concepts.crp(model, jnp.asarray(x), jnp.asarray(target), layer="relu1").maps)
  assert got.dtype == np.float64
  scale = float(np.abs(want).max())
  assert scale > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * scale)


def test_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_sharded_concepts.py")
  res = subprocess.run([sys.executable, script, "crp"], capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == {"maps", "channels"}
  assert max(diffs.values()) < 1e-5, diffs
