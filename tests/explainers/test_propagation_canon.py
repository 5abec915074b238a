"""LRP canonization (batch norm merged, residual split, both depthwise
formulations as one conv) and DeepLIFT on the zoo's ResNet / EfficientNet-Lite."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import model as M
from saljax.explainers import propagation as P
from saljax.models import efficientnet, resnet

K = jax.random.split(jax.random.key(11), 12)
# Every preset conserves in the sense of the delta (what biases and stabilizers
# absorb is counted). Compilation dominates these tests, so each model gets
# few rule sets: the zoo ResNet alpha2-beta1 (the sign split), the tiny Lite
# epsilon_plus (test_depthwise_formulations...), the pretrained Lite0 epsilon
# and gamma-box (the two broken cases).
CONSERVING = ("epsilon_alpha2_beta1",)


def _randomize_bn(variables, key):
  """Non-trivial batch norm: running stats and affine parameters of mixed sign."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(key, len(leaves))
  out = []
  for (path, v), k in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if "var" in name:
      v = jax.random.uniform(k, v.shape, minval=0.5, maxval=2.0)
    elif "mean" in name or ("bn" in name and ("bias" in name or "scale" in name)):
      v = (1.0 if "scale" in name else 0.0) + 0.5 * jax.random.normal(k, v.shape)
    out.append(v)
  return jax.tree_util.tree_unflatten(tree, out)


def _zoo(name, impl=None):
  if name == "resnet":
    m = resnet.ResNet((1, 1), num_classes=5, width=6, small_inputs=True)
  else:
    m = efficientnet.tiny_efficientnet(num_classes=5, impl=impl)
  x = jax.random.normal(K[0], (2, 8, 8, 3))
  v = _randomize_bn(m.init(K[1], x), K[2])
  return (lambda x_: m.apply(v, x_)), x, m, v


# --- batch norm merged into the preceding convolution ----------------------

W1 = jax.random.normal(K[3], (3, 3, 3, 6)) / 3
W2 = jax.random.normal(K[4], (3, 3, 6, 5)) / 4
WD = jax.random.normal(K[5], (5, 4)) / 2
BN = [(0.3 * jax.random.normal(k1, (c,)), jax.random.uniform(k2, (c,), minval=0.5, maxval=2.0),
       jax.random.normal(k3, (c,)), 0.3 * jax.random.normal(k4, (c,)))
      for c, (k1, k2, k3, k4) in ((6, jax.random.split(K[6], 4)), (5, jax.random.split(K[7], 4)))]


def _conv(h, w):
  return jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn_net(x):
  h = x
  for w, (mean, var, scale, shift) in zip((W1, W2), BN):
    h = (_conv(h, w) - mean) * (scale / jnp.sqrt(var + 1e-3)) + shift  # inference batch norm
    h = jax.nn.relu(h)
  return h.mean((1, 2)) @ WD


def _folded_net(x):
  h = x
  for w, (mean, var, scale, shift) in zip((W1, W2), BN):
    s = scale / jnp.sqrt(var + 1e-3)
    h = jax.nn.relu(_conv(h, w * s) + (shift - mean * s))  # BN folded by hand
  return h.mean((1, 2)) @ WD


@pytest.mark.parametrize("rules", ["epsilon", "epsilon_alpha2_beta1", "epsilon_gamma_box",
                                   "epsilon_plus_flat"])
def test_batch_norm_is_merged_into_the_conv(rules):
  x = jax.random.normal(K[8], (2, 6, 6, 3))
  t = jnp.array([0, 3])
  np.testing.assert_allclose(_bn_net(x), _folded_net(x), rtol=1e-5, atol=1e-5)
  got, delta = saljax.lrp(_bn_net, x, t, rules=rules, return_delta=True)
  want = saljax.lrp(_folded_net, x, t, rules=rules)
  assert float(jnp.abs(want).max()) > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * float(jnp.abs(want).max()))
  np.testing.assert_allclose(delta, 0.0, atol=1e-4 * float(jnp.abs(_bn_net(x)).max()))


def test_delta_reports_relevance_lost_in_unsupported_operations():
  # A product of two input-dependent values gets its ordinary gradient, which
  # does not conserve: the delta must show it.
  def f(x):
    h = jax.nn.relu(_conv(x, W1)).mean((1, 2))
    return (h * h)[:, :4] @ WD[:4]

  x = jax.random.normal(K[8], (2, 6, 6, 3))
  _, delta = saljax.lrp(f, x, jnp.array([0, 1]), rules="epsilon", return_delta=True)
  assert float(jnp.abs(delta).max()) > 1e-2 * float(jnp.abs(f(x)).max())


# --- the zoo ---------------------------------------------------------------


def test_lrp_conserves_on_the_zoo_resnet():
  f, x, _, _ = _zoo("resnet")
  t = jnp.array([1, 4])
  logit = f(x)[jnp.arange(2), t]
  for rules in CONSERVING:
    rel, delta = saljax.lrp(f, x, t, rules=rules, return_delta=True)
    assert bool(jnp.isfinite(rel).all()), rules
    np.testing.assert_allclose(delta, 0.0, atol=1e-3 * float(jnp.abs(logit).max()), err_msg=rules)


def test_depthwise_formulations_give_the_same_lrp_map():
  f_xla, x, m, v = _zoo("lite", impl="xla")
  m_shifts = efficientnet.tiny_efficientnet(num_classes=5, impl="shifts")
  f_shifts = lambda x_: m_shifts.apply(v, x_)  # noqa: E731 - same weights
  t = jnp.array([1, 4])
  logit = f_xla(x)[jnp.arange(2), t]
  for rules in ("epsilon_plus",):
    a = saljax.lrp(f_xla, x, t, rules=rules)
    b, delta = saljax.lrp(f_shifts, x, t, rules=rules, return_delta=True)
    assert float(jnp.abs(a).max()) > 1e-4, rules
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * float(jnp.abs(a).max()), err_msg=rules)
    # and the "shifts" Lite conserves (the sign split through the shifts groups)
    np.testing.assert_allclose(delta, 0.0, atol=1e-3 * float(jnp.abs(logit).max()), err_msg=rules)


@pytest.mark.parametrize("zoo", ["resnet", "lite_shifts"])
def test_deeplift_summation_to_delta_on_zoo_models(zoo):
  name, _, impl = zoo.partition("_")
  f, x, _, _ = _zoo(name, impl=impl or None)
  t = jnp.array([1, 4])
  base = 0.3 * jax.random.normal(K[9], x.shape)
  attr, delta = saljax.deeplift(f, x, t, baseline=base, return_delta=True)
  want = f(x)[jnp.arange(2), t] - f(base)[jnp.arange(2), t]
  np.testing.assert_allclose(attr.reshape(2, -1).sum(1), want, rtol=1e-3,
                             atol=1e-4 * float(jnp.abs(want).max()))
  np.testing.assert_allclose(delta, 0.0, atol=1e-3 * float(jnp.abs(want).max()))


def test_lrp_refuses_differentiation_through_the_parameters():
  f, x, m, v = _zoo("resnet")
  t = jnp.array([1, 4])

  def loss(params):
    return saljax.lrp(lambda x_: m.apply(params, x_), x, t).sum()

  with pytest.raises(ValueError, match=r"lrp.*jax\.grad"):
    jax.grad(loss)(v)
  with pytest.raises(ValueError, match=r"lrp.*jax\.grad"):
    jax.grad(lambda x_: saljax.lrp(f, x_, t).sum())(x)
  assert not saljax.explainers.entry("lrp").differentiable


def test_lrp_conserves_on_the_pretrained_lite0():
  # The case: the cat photo at 224 px gave a relevance sum of -125 for
  # a logit of 8.9 (and NaN for "epsilon"); gamma's denominator crossed 0 on
  # the expand convs (delta 1.8e13). The "xla" depthwise compiles in about
  # half the time of "shifts" (the CPU default); their maps are equal (test
  # above).
  from saljax.data import photos
  from saljax.models.pretrained import load_pretrained
  m = load_pretrained("efficientnet_lite0")
  f = lambda x_: m.module.clone(impl="xla").apply(m.params, x_)  # noqa: E731
  x = m.preprocess(photos()["chelsea"][None])
  logits = f(x)
  t = jnp.argmax(logits, -1)
  for rules in ("epsilon", "epsilon_gamma_box"):
    rel, delta = saljax.lrp(f, x, t, rules=rules, return_delta=True)
    assert bool(jnp.isfinite(rel).all()), rules
    assert float(jnp.abs(rel).max()) > 0, rules
    np.testing.assert_allclose(delta, 0.0, atol=1e-3 * float(logits[0, t[0]]), err_msg=rules)
