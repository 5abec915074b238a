"""Modified backward rules checked against hand-written propagation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.explainers import propagation as P

from _tiny_models import tiny_cnn

K = jax.random.split(jax.random.key(0), 8)
W1 = jax.random.normal(K[0], (12, 10)) / 2
W2 = jax.random.normal(K[1], (10, 6)) / 2
W3 = jax.random.normal(K[2], (6, 4)) / 2
B1 = 0.3 * jax.random.normal(K[3], (10,))
B2 = 0.3 * jax.random.normal(K[4], (6,))
B3 = 0.3 * jax.random.normal(K[5], (4,))
X = jax.random.normal(K[6], (3, 2, 2, 3))
T = jnp.array([0, 2, 3])


def relu_mlp(bias):
  def f(x):
    h = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ W1 + (B1 if bias else 0))
    h = jnp.maximum(h @ W2 + (B2 if bias else 0), 0.0)  # the other way to write a ReLU
    return h @ W3 + (B3 if bias else 0)
  return f


def _np_forward(x, bias):
  a0 = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  ws = [np.asarray(w, np.float64) for w in (W1, W2, W3)]
  bs = [np.asarray(b, np.float64) if bias else np.zeros(w.shape[1]) for b, w in zip((B1, B2, B3), ws)]
  acts, zs = [a0], []
  for i, (w, b) in enumerate(zip(ws, bs)):
    z = acts[-1] @ w + b
    zs.append(z)
    acts.append(np.maximum(z, 0) if i < 2 else z)
  return ws, bs, acts, zs


def _np_lrp(x, target, layer_rule, first_rule=None, bias=True):
  """Reference LRP on the MLP, one layer at a time (loops over layers only)."""
  ws, bs, acts, zs = _np_forward(x, bias)
  r = np.zeros_like(zs[-1])
  idx = np.arange(x.shape[0])
  r[idx, target] = zs[-1][idx, target]
  for i in (2, 1, 0):
    rule = first_rule if (i == 0 and first_rule) else layer_rule
    r = rule(acts[i], ws[i], bs[i], r)
  return r.reshape(x.shape)


def _stab(z, eps):
  return z + eps * np.where(z >= 0, 1, -1)


def _np_eps(eps):
  def rule(a, w, b, r):
    return a * ((r / _stab(a @ w + b, eps)) @ w.T)
  return rule


def _np_gamma(g, eps=1e-6):
  # Zennit's (generalized) gamma: inputs split by sign; positive outputs are
  # explained by the positive contributions boosted, negative ones by the
  # negative contributions boosted (the layer input X has both signs).
  def rule(a, w, b, r):
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    wup, wun = w + g * np.maximum(w, 0), w + g * np.minimum(w, 0)  # W + g W+, W + g W-
    z = a @ w + b
    sp = np.where(z > 0, r, 0) / _stab(ap @ wup + an @ wun + b + g * np.maximum(b, 0), eps)
    sn = np.where(z < 0, r, 0) / _stab(ap @ wun + an @ wup + b + g * np.minimum(b, 0), eps)
    return ap * (sp @ wup.T + sn @ wun.T) + an * (sp @ wun.T + sn @ wup.T)
  return rule


def _np_alpha_beta(alpha, beta, eps=1e-6):
  def rule(a, w, b, r):
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    zp = ap @ wp + an @ wn + np.maximum(b, 0)
    zn = ap @ wn + an @ wp + np.minimum(b, 0)
    sp, sn = r / _stab(zp, eps), r / _stab(zn, eps)
    return alpha * (ap * (sp @ wp.T) + an * (sp @ wn.T)) - beta * (ap * (sn @ wn.T) + an * (sn @ wp.T))
  return rule


def _np_zbox(low, high, eps=1e-6):
  def rule(a, w, b, r):
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    l, h = np.full_like(a, low), np.full_like(a, high)
    s = r / _stab(a @ w - l @ wp - h @ wn, eps)
    return a * (s @ w.T) - l * (s @ wp.T) - h * (s @ wn.T)
  return rule


@pytest.mark.parametrize("case", ["epsilon", "gamma", "alpha2_beta1", "zplus", "zbox_first"])
def test_lrp_rules_equal_hand_computation(case):
  f = relu_mlp(bias=True)
  if case == "epsilon":
    rules, ref = {"dense": P.Rule("epsilon", epsilon=0.1)}, _np_lrp(X, T, _np_eps(0.1))
  elif case == "gamma":
    rules, ref = {"dense": P.Rule("gamma", gamma=0.25)}, _np_lrp(X, T, _np_gamma(0.25))
  elif case == "alpha2_beta1":
    rules = {"dense": P.Rule("alpha_beta", alpha=2.0, beta=1.0)}
    ref = _np_lrp(X, T, _np_alpha_beta(2.0, 1.0))
  elif case == "zplus":
    rules, ref = {"dense": "zplus"}, _np_lrp(X, T, _np_alpha_beta(1.0, 0.0))
  else:
    rules = {"first": P.Rule("zbox", low=-3.0, high=3.0), "dense": P.Rule("epsilon", epsilon=0.1)}
    ref = _np_lrp(X, T, _np_eps(0.1), first_rule=_np_zbox(-3.0, 3.0))
  got = saljax.lrp(f, X, T, rules=rules)
  assert np.abs(ref).max() > 1e-2
  np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5)


def test_lrp_epsilon_conserves_logit_as_epsilon_goes_to_zero():
  f = relu_mlp(bias=False)
  logit = f(X)[jnp.arange(3), T]
  gaps = []
  for eps in (1.0, 1e-2, 1e-6):
    rel, delta = saljax.lrp(f, X, T, rules="epsilon", epsilon=eps, return_delta=True)
    # The delta counts what the stabilizer absorbed: ~0 whatever epsilon.
    np.testing.assert_allclose(delta, 0.0, atol=1e-5 * float(jnp.abs(logit).max()))
    gaps.append(float(jnp.abs(rel.reshape(3, -1).sum(1) - logit).max()))
  assert gaps[0] > 1e-3, gaps   # epsilon absorbs relevance: the check can fail
  assert gaps[2] < 1e-4 * float(jnp.abs(logit).max()), gaps
  assert gaps[2] < gaps[1] < gaps[0], gaps


def test_lrp_zero_on_bias_free_relu_net_is_gradient_times_input():
  f = relu_mlp(bias=False)
  np.testing.assert_allclose(saljax.lrp(f, X, T, rules="zero"),
                             saljax.gradient_x_input(f, X, T), rtol=1e-4, atol=1e-6)


def test_lrp_on_cnn_conserves_with_zero_biases_and_presets_run():
  _, _, tapped = tiny_cnn()
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  for preset in sorted(P.PRESETS):
    rel, delta = saljax.lrp(tapped, x, jnp.array([1, 2]), rules=preset, return_delta=True)
    assert rel.shape == x.shape and bool(jnp.isfinite(rel).all()), preset
    if preset in ("epsilon", "zero", "epsilon_plus", "epsilon_alpha2_beta1"):
      # linen biases start at zero and average pooling is a sum: conserved.
      np.testing.assert_allclose(delta, 0.0, atol=1e-4), preset


def test_residual_sum_splits_relevance():
  w = jax.random.normal(K[7], (12, 12)) / 3

  def f(x):
    h = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ w) + h   # a residual connection
    return h @ W1[:, :4]

  rel, delta = saljax.lrp(f, X, T, rules="epsilon", epsilon=1e-9, return_delta=True)
  np.testing.assert_allclose(delta, 0.0, atol=1e-4)


def test_guided_backprop_and_deconvnet_equal_hand_computation():
  f = relu_mlp(bias=True)
  ws, bs, acts, zs = _np_forward(X, True)
  onehot = np.eye(4)[np.asarray(T)]
  g2 = onehot @ ws[2].T
  guided = ((np.maximum((zs[1] > 0) * np.maximum(g2, 0) @ ws[1].T, 0) * (zs[0] > 0)) @ ws[0].T)
  deconv = (np.maximum(np.maximum(g2, 0) @ ws[1].T, 0) @ ws[0].T)
  np.testing.assert_allclose(saljax.guided_backprop(f, X, T), guided.reshape(X.shape), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(saljax.deconvnet(f, X, T), deconv.reshape(X.shape), rtol=1e-4,
                             atol=1e-6)
  plain = saljax.gradient(f, X, T)
  assert float(jnp.abs(plain - saljax.guided_backprop(f, X, T)).max()) > 1e-3


def test_guided_backprop_non_negative_behind_a_relu():
  # Behind a ReLU the guided rule keeps only positive gradients: a model
  # whose first operation is a ReLU gets a non-negative map at the input.
  f0 = relu_mlp(bias=True)

  def f(x):
    return f0(jax.nn.relu(x))

  g = saljax.guided_backprop(f, X, T)
  d = saljax.deconvnet(f, X, T)
  assert float(g.min()) >= 0 and float(d.min()) >= 0
  assert float(g.max()) > 0
  np.testing.assert_array_equal(g[X <= 0], 0.0)
  assert float(saljax.gradient(f, X, T).min()) < 0  # the plain gradient is not


@pytest.mark.parametrize("act", [jax.nn.relu, jnp.tanh, jax.nn.sigmoid, jax.nn.silu])
def test_deeplift_summation_to_delta(act):
  def f(x):
    h = x.reshape(x.shape[0], -1)
    h = act(h @ W1 + B1)
    h = act(h @ W2 + B2)
    return h @ W3 + B3

  base = 0.5 * jax.random.normal(jax.random.key(9), X.shape)
  attr, delta = saljax.deeplift(f, X, T, baseline=base, return_delta=True)
  want = f(X)[jnp.arange(3), T] - f(base)[jnp.arange(3), T]
  np.testing.assert_allclose(attr.reshape(3, -1).sum(1), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(delta, 0.0, atol=1e-4)
  # Not a plain gradient x delta: the rescale rule changed something.
  gxd = (X - base) * saljax.gradient(f, X, T)
  assert float(jnp.abs(gxd - attr).max()) > 1e-3


def test_deeplift_single_relu_closed_form():
  w = jax.random.normal(K[7], (12,))

  def f(x):
    z = x.reshape(x.shape[0], -1) @ w + 0.2
    return jnp.stack([jax.nn.relu(z), -z], -1)

  base = jnp.zeros_like(X)
  z = X.reshape(3, -1) @ w + 0.2
  z0 = 0.2
  mult = np.where(np.abs(z - z0) > 1e-7, (np.maximum(z, 0) - max(z0, 0)) / (z - z0), 0)
  want = (X - base) * (w.reshape(1, 2, 2, 3) * mult[:, None, None, None])
  np.testing.assert_allclose(saljax.deeplift(f, X, 0, baseline=base), want, rtol=1e-4, atol=1e-6)


def test_deeplift_cnn_summation_to_delta():
  _, _, tapped = tiny_cnn()
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  _, delta = saljax.deeplift(tapped, x, jnp.array([0, 4]), baseline="blur", return_delta=True)
  np.testing.assert_allclose(delta, 0.0, atol=1e-4)


def test_one_compile_per_shape_and_model_not_edited():
  f = relu_mlp(bias=True)
  x = jnp.concatenate([X, X[:2]])  # a batch shape no other test uses
  t = jnp.array([0, 1, 2, 3, 0])
  before = f(x)
  n0 = P._lrp._cache_size()
  saljax.lrp(f, x, t)
  saljax.lrp(f, x * 2, jnp.array([1, 1, 1, 1, 1]))
  assert P._lrp._cache_size() == n0 + 1
  n1 = P._modified_gradient._cache_size()
  saljax.guided_backprop(f, x, t)
  saljax.guided_backprop(f, x + 1, t)
  assert P._modified_gradient._cache_size() == n1 + 1
  np.testing.assert_array_equal(f(x), before)
  np.testing.assert_array_equal(saljax.gradient(f, X, T), jax.grad(
      lambda x: f(x)[jnp.arange(3), T].sum())(X))


def test_errors():
  f = relu_mlp(bias=True)
  with pytest.raises(ValueError, match="preset"):
    saljax.lrp(f, X, T, rules="nope")
  with pytest.raises(ValueError, match="rules key"):
    saljax.lrp(f, X, T, rules={"middle": "epsilon"})
  with pytest.raises(ValueError, match="alpha - beta = 1"):
    P.Rule("alpha_beta", alpha=2.0, beta=0.5)
  with pytest.raises(ValueError, match="rule"):
    P.Rule("bogus")
  with pytest.raises(ValueError, match="baseline"):
    saljax.deeplift(f, X, T, baseline=jnp.zeros((2, 2, 2)))
  with pytest.raises(TypeError, match="floating"):
    saljax.guided_backprop(f, jnp.ones((3, 2, 2, 3), jnp.int32), T)
  with pytest.raises(ValueError, match="target"):
    saljax.deconvnet(f, X, jnp.array([0, 1, 7]))


def test_guided_backprop_on_relu6():
  def f(x):
    h = jax.nn.relu6(3 * x.reshape(x.shape[0], -1) @ W1)
    return h @ W1[:10, :4]

  h = 3 * np.asarray(X, np.float64).reshape(3, -1) @ np.asarray(W1, np.float64)
  g = np.eye(4)[np.asarray(T)] @ np.asarray(W1[:10, :4], np.float64).T
  want = (((h > 0) & (h < 6)) * np.maximum(g, 0)) @ (3 * np.asarray(W1, np.float64).T)
  assert ((h > 6).any())  # some units saturate: the test can fail
  np.testing.assert_allclose(saljax.guided_backprop(f, X, T), want.reshape(X.shape), rtol=1e-4,
                             atol=1e-6)


def test_parity_with_captum_on_a_relu_mlp():
  import captum.attr as ca  # torch and captum are in the test extra
  import torch

  torch.manual_seed(0)
  ws = [np.asarray(w, np.float64) for w in (W1, W2, W3)]
  bs = [np.asarray(b, np.float64) for b in (B1, B2, B3)]
  lins = []
  for w, b in zip(ws, bs):
    lin = torch.nn.Linear(*w.shape).double()
    lin.weight.data = torch.from_numpy(w.T.copy())
    lin.bias.data = torch.from_numpy(b.copy())
    lins.append(lin)
  net = torch.nn.Sequential(lins[0], torch.nn.ReLU(), lins[1], torch.nn.ReLU(), lins[2]).eval()
  # Torch gets the NHWC batch flattened in the same order as relu_mlp.
  xt = torch.from_numpy(np.array(X, np.float64).reshape(3, -1)).requires_grad_()
  tt = torch.from_numpy(np.array(T)).long()
  base = 0.3 * jax.random.normal(jax.random.key(4), X.shape)
  f = relu_mlp(bias=True)
  cases = {
      "guided_backprop": (ca.GuidedBackprop(net).attribute(xt, target=tt),
                          saljax.guided_backprop(f, X, T)),
      "deconvnet": (ca.Deconvolution(net).attribute(xt, target=tt), saljax.deconvnet(f, X, T)),
      "deeplift": (ca.DeepLift(net).attribute(
          xt, target=tt, baselines=torch.from_numpy(np.array(base, np.float64).reshape(3, -1))),
          saljax.deeplift(f, X, T, baseline=base)),
      "lrp_epsilon": (ca.LRP(net).attribute(xt, target=tt),  # Captum: epsilon 1e-9 on Linear
                      saljax.lrp(f, X, T, rules="epsilon", epsilon=1e-9)),
  }
  for name, (theirs, ours) in cases.items():
    theirs = theirs.detach().numpy().reshape(X.shape)
    assert np.abs(theirs).max() > 1e-3, name
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5, err_msg=name)


def test_zbox_default_bounds_are_each_examples_min_and_max():
  f = relu_mlp(bias=True)
  rules = {"first": P.Rule("zbox"), "dense": P.Rule("epsilon", epsilon=0.1)}
  got = saljax.lrp(f, X, T, rules=rules)
  for b in range(3):
    lo, hi = float(X[b].min()), float(X[b].max())
    ref = _np_lrp(X[b:b + 1], T[b:b + 1], _np_eps(0.1), first_rule=_np_zbox(lo, hi))
    np.testing.assert_allclose(got[b:b + 1], ref, rtol=2e-4, atol=2e-5)


def test_models_that_compare_their_input():
  # Comparisons give booleans (no derivative): they must neither reach
  # jax.jvp (DeepLIFT crashed with a raw TypeError on bool tangents) nor be
  # seen by the rules. Here a threshold activation (where(h > .5, h, 0)) and a
  # mask from comparing the input itself (where(x[..., 0] > 5, ...)).
  def f(x):
    h = x.reshape(x.shape[0], -1) @ W1 + B1
    h = jnp.where(h > 0.5, h, 0.0)
    h = h * jnp.where(x[:, :1, 0, 0] > 5, 0.5, 1.0)
    return jax.nn.relu(h @ W2 + B2) @ W3 + B3

  x = X.at[0, 0, 0, 0].set(6.0)  # only example 0 crosses the input comparison
  for name in ("deeplift", "lrp", "guided_backprop", "deconvnet"):
    a = getattr(saljax, name)(f, x, T)
    assert a.shape == x.shape and bool(jnp.isfinite(a).all()), name
  # DeepLIFT (zero baseline): the threshold is one elementwise activation of
  # h, so the rescale rule applies, with its reference value computed from the
  # reference's own comparison: summation-to-delta holds, also where h and its
  # reference fall on different sides of the threshold. The input mask is a
  # constant to the rule, so it holds where x and the baseline give the same
  # mask (examples 1, 2), not for example 0.
  attr, delta = saljax.deeplift(f, x, T, return_delta=True)
  h = X.reshape(3, -1)[1:] @ W1 + B1
  assert bool(((h > 0.5) != (B1 > 0.5)).any())  # some thresholds are crossed
  np.testing.assert_allclose(delta[1:], 0.0, atol=1e-4)
  logit = f(x)[jnp.arange(3), T]
  assert abs(float(delta[0])) > 1e-3 * abs(float(logit[0]))
  # LRP: the threshold passes relevance as a ReLU, the mask is a constant
  # scaling; every example conserves.
  _, d = saljax.lrp(f, x, T, rules="epsilon", return_delta=True)
  np.testing.assert_allclose(d, 0.0, atol=1e-4 * float(jnp.abs(logit).max()))
