"""Parity of saljax's LRP with Zennit 0.5.1, and of DeepLIFT / guided backprop
with Captum, on a torch twin (same weights) of a small ResNet-style net:
conv-BN-ReLU stem, two residual blocks (identity and projection shortcut),
global average pooling, dense.

Zennit's composites and saljax's presets: EpsilonPlus = ``epsilon_plus``,
EpsilonAlpha2Beta1 = ``epsilon_alpha2_beta1``, EpsilonPlusFlat =
``epsilon_plus_flat``, EpsilonAlpha2Beta1Flat = ``epsilon_alpha2_beta1_flat``,
EpsilonGammaBox = ``epsilon_gamma_box`` (with explicit z^B bounds). Zennit has
no composite for ``epsilon`` (and ``zero``): it is compared with a
LayerMapComposite of Zennit's base map and its Epsilon rule on every conv and
dense layer. Zennit seeds the backward pass with the output gradient it is
given; saljax with the one-hot times the logit, so Zennit gets that seed.
"""
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import saljax
from saljax.explainers import propagation as P

C_IN, C1, C2, N_CLS, HW = 3, 6, 8, 5, 16
LOW, HIGH = -3.0, 3.0


ZENNIT_DIR = os.path.join(sys.prefix, "zennit")


def _import_zennit():
  """Imports zennit from ``<venv>/zennit`` with a stand-in for torchvision.

  ``make test`` installs zennit into that folder, not site-packages: quantus
  imports zennit whenever it is importable, and zennit imports torchvision,
  which is not installed (the PyPI wheel does not load against the pinned CPU
  torch: "operator torchvision::nms does not exist"). zennit only needs
  ``torchvision.models.resnet`` (BasicBlock, Bottleneck) at import time, for
  its torchvision canonizers (not used here). The folder and the stand-in
  modules are on sys.path / in sys.modules only during the import.
  """
  if not os.path.isdir(os.path.join(ZENNIT_DIR, "zennit")):
    raise RuntimeError(
        f"zennit 0.5.1 (the LRP reference) is expected in {ZENNIT_DIR}; run `make test` "
        "(or `make install`), which installs it there with pip --no-deps --target")
  names = ("torchvision", "torchvision.models", "torchvision.models.resnet")
  saved = {n: sys.modules[n] for n in names if n in sys.modules}
  tv, models, resnet = (types.ModuleType(n) for n in names)
  resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
  resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
  tv.models, models.resnet = models, resnet
  sys.modules.update(zip(names, (tv, models, resnet)))
  sys.path.insert(0, ZENNIT_DIR)
  try:
    import zennit.canonizers
    import zennit.composites
    import zennit.layer
    import zennit.rules
    import zennit.types
  finally:
    sys.path.remove(ZENNIT_DIR)
    for n in names:
      sys.modules.pop(n, None)
    sys.modules.update(saved)
  assert zennit.__file__.startswith(ZENNIT_DIR), zennit.__file__
  return zennit


zennit = _import_zennit()


# --- the twin --------------------------------------------------------------


def _params(seed=0):
  rng = np.random.default_rng(seed)

  def conv(cin, cout, k):
    return rng.normal(size=(cout, cin, k, k)) / np.sqrt(cin * k * k)

  def bn(c):  # random, non-trivial inference statistics and affine parameters (mixed sign)
    return dict(mean=0.3 * rng.normal(size=c), var=rng.uniform(0.5, 2.0, c),
                scale=1.0 + 0.5 * rng.normal(size=c), shift=0.3 * rng.normal(size=c))

  return {
      "stem": conv(C_IN, C1, 3), "stem_b": 0.1 * rng.normal(size=C1), "stem_bn": bn(C1),
      "b1c1": conv(C1, C1, 3), "b1bn1": bn(C1), "b1c2": conv(C1, C1, 3), "b1bn2": bn(C1),
      "b2c1": conv(C1, C2, 3), "b2bn1": bn(C2), "b2c2": conv(C2, C2, 3), "b2bn2": bn(C2),
      "b2p": conv(C1, C2, 1), "b2pbn": bn(C2),
      "fc": rng.normal(size=(N_CLS, C2)) / np.sqrt(C2), "fc_b": 0.1 * rng.normal(size=N_CLS),
  }


BN_EPS = 1e-5


def _jax_net(p):
  """The saljax side (NHWC), batch norm written out as the zoo writes it."""

  def conv(h, w, stride=1):
    w = jnp.asarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    pad = "SAME" if w.shape[0] > 1 else "VALID"
    return jax.lax.conv_general_dilated(h, w, (stride, stride), pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def bn(h, s):
    return (h - s["mean"]) * (s["scale"] / jnp.sqrt(s["var"] + BN_EPS)) + s["shift"]

  def f(x):
    h = jax.nn.relu(bn(conv(x, p["stem"]) + p["stem_b"], p["stem_bn"]))
    r = jax.nn.relu(bn(conv(h, p["b1c1"]), p["b1bn1"]))
    h = jax.nn.relu(bn(conv(r, p["b1c2"]), p["b1bn2"]) + h)
    r = jax.nn.relu(bn(conv(h, p["b2c1"]), p["b2bn1"]))
    s = bn(conv(h, p["b2p"]), p["b2pbn"])
    h = jax.nn.relu(bn(conv(r, p["b2c2"]), p["b2bn2"]) + s)
    return h.mean((1, 2)) @ jnp.asarray(p["fc"].T) + p["fc_b"]

  return f


class _Block(torch.nn.Module):
  def __init__(self, p, pre, cin, cout, proj):
    super().__init__()
    # Registered in forward order, each conv right before its batch norm, so
    # that SequentialMergeBatchNorm pairs them.
    self.c1, self.bn1 = _tconv(p[pre + "c1"]), _tbn(p[pre + "bn1"])
    self.relu1 = torch.nn.ReLU()
    self.c2, self.bn2 = _tconv(p[pre + "c2"]), _tbn(p[pre + "bn2"])
    self.proj = torch.nn.Sequential(_tconv(p[pre + "p"]), _tbn(p[pre + "pbn"])) if proj else None
    self.sum = zennit.layer.Sum()  # the residual add, so that Zennit applies its Norm rule
    self.relu2 = torch.nn.ReLU()   # one module per use (Captum's DeepLift needs it)

  def forward(self, h):
    r = self.bn2(self.c2(self.relu1(self.bn1(self.c1(h)))))
    s = h if self.proj is None else self.proj(h)
    return self.relu2(self.sum(torch.stack([r, s], dim=-1)))


def _tconv(w, b=None):
  k = w.shape[-1]
  m = torch.nn.Conv2d(w.shape[1], w.shape[0], k, padding=k // 2, bias=b is not None,
                      dtype=torch.float64)
  with torch.no_grad():
    m.weight.copy_(torch.from_numpy(w))
    if b is not None:
      m.bias.copy_(torch.from_numpy(b))
  return m


def _tbn(s):
  # BN_EPS is folded into the variance (the same function): Zennit 0.5.1's
  # MergeBatchNorm turns the merged batch norm into "identity" by setting its
  # statistics to 0 / 1 but keeps its eps, so it still divides by sqrt(1 + eps)
  # (1 - 5e-6 per batch norm). alpha2-beta1 amplifies that (its positive and
  # negative streams grow ~(alpha + beta) per layer and cancel): Zennit's own
  # maps for eps 1e-5 and for the same net with eps folded differ by 3.9e-3
  # of the map's maximum (epsilon: 9e-5, z+: 1e-5), which was the whole
  # alpha-beta gap; with eps folded, saljax and Zennit agree to ~1e-13.
  m = torch.nn.BatchNorm2d(len(s["mean"]), eps=0.0, dtype=torch.float64)
  with torch.no_grad():
    m.running_mean.copy_(torch.from_numpy(s["mean"]))
    m.running_var.copy_(torch.from_numpy(s["var"] + BN_EPS))
    m.weight.copy_(torch.from_numpy(s["scale"]))
    m.bias.copy_(torch.from_numpy(s["shift"]))
  return m.eval()


class _TorchNet(torch.nn.Module):
  def __init__(self, p):
    super().__init__()
    self.stem, self.stem_bn = _tconv(p["stem"], p["stem_b"]), _tbn(p["stem_bn"])
    self.relu = torch.nn.ReLU()
    self.b1 = _Block(p, "b1", C1, C1, proj=False)
    self.b2 = _Block(p, "b2", C1, C2, proj=True)
    self.pool = torch.nn.AdaptiveAvgPool2d(1)
    self.fc = torch.nn.Linear(C2, N_CLS, dtype=torch.float64)
    with torch.no_grad():
      self.fc.weight.copy_(torch.from_numpy(p["fc"]))
      self.fc.bias.copy_(torch.from_numpy(p["fc_b"]))

  def forward(self, x):
    h = self.b2(self.b1(self.relu(self.stem_bn(self.stem(x)))))
    return self.fc(self.pool(h).flatten(1))


def x64():
  # float64 on both sides (the epsilon rule's 1e-6 stabilizer amplifies float32
  # rounding near z = 0); a context, so 64-bit JAX does not leak to other tests.
  return jax.enable_x64(True)


@pytest.fixture(scope="module")
def twin():
  p = _params()
  x = np.random.default_rng(1).normal(size=(2, HW, HW, C_IN))
  f = _jax_net(p)
  net = _TorchNet(p).eval()
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with x64():
    logits = np.asarray(f(jnp.asarray(x)))
  assert logits.dtype == np.float64
  with torch.no_grad():
    np.testing.assert_allclose(net(xt).numpy(), logits, rtol=1e-10, atol=1e-12)  # same net
  t = np.array([1, 3])
  return f, x, t, net, xt, torch.from_numpy(t), logits


def _to_nhwc(a):
  return a.detach().numpy().transpose(0, 2, 3, 1)


def _zennit_lrp(net, xt, t, composite):
  x = xt.clone().requires_grad_(True)
  with composite.context(net) as modified:
    out = modified(x)
    seed = torch.nn.functional.one_hot(t, N_CLS).to(out.dtype) * out.detach()
    rel, = torch.autograd.grad(out, x, seed)
  return _to_nhwc(rel)


def _epsilon_composite():
  base = zennit.composites.layer_map_base()
  eps = zennit.rules.Epsilon(epsilon=1e-6)
  return zennit.composites.LayerMapComposite(
      layer_map=base + [(zennit.types.Convolution, eps), (torch.nn.Linear, eps)],
      canonizers=[zennit.canonizers.SequentialMergeBatchNorm()])


COMPOSITES = {
    "epsilon": _epsilon_composite,
    "epsilon_plus": zennit.composites.EpsilonPlus,
    "epsilon_alpha2_beta1": zennit.composites.EpsilonAlpha2Beta1,
    "epsilon_plus_flat": zennit.composites.EpsilonPlusFlat,
    "epsilon_alpha2_beta1_flat": zennit.composites.EpsilonAlpha2Beta1Flat,
    "epsilon_gamma_box": lambda **kw: zennit.composites.EpsilonGammaBox(low=LOW, high=HIGH, **kw),
}
SALJAX_RULES = {
    "epsilon_gamma_box": {"first": P.Rule("zbox", low=LOW, high=HIGH),
                          "conv": P.Rule("gamma", gamma=0.25), "dense": P.Rule("epsilon")},
}


@pytest.mark.parametrize("preset", sorted(COMPOSITES))
def test_lrp_equals_zennit_on_a_resnet_twin(twin, preset):
  f, x, t, net, xt, tt, logits = twin
  make = COMPOSITES[preset]
  canon = [zennit.canonizers.SequentialMergeBatchNorm()]
  comp = make() if preset == "epsilon" else make(canonizers=canon)
  want = _zennit_lrp(net, xt, tt, comp)
  with x64():
    got, delta = saljax.lrp(f, jnp.asarray(x), jnp.asarray(t),
                            rules=SALJAX_RULES.get(preset, preset), return_delta=True)
    got, delta = np.asarray(got), np.asarray(delta)
  assert got.dtype == np.float64
  scale = float(np.abs(want).max())
  assert scale > 1e-3, preset
  # Zennit drops the relevance the biases absorb, as saljax does (the input
  # maps are equal); saljax also reports it, so the input relevance plus the
  # absorbed part is the logit. Both sides are float64 and compute the same
  # rules (see _tbn for Zennit's batch-norm eps): equal to float rounding.
  # The global average pool stabilizes the mean as Zennit's Norm on AvgPool
  # (on the sum, the maps differed by ~1e-4 of their maximum).
  tol = 1e-9
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=preset)
  np.testing.assert_allclose(delta, 0.0, atol=1e-4 * float(np.abs(logits).max()), err_msg=preset)
  # The model is left as it was (Zennit's canonizer restores the batch norm).
  with torch.no_grad():
    np.testing.assert_allclose(net(xt).numpy(), logits, rtol=1e-10, atol=1e-12)


def test_deeplift_and_guided_backprop_equal_captum_on_the_twin(twin):
  from captum.attr import DeepLift, GuidedBackprop
  f, x, t, net, xt, tt, logits = twin
  want = _to_nhwc(DeepLift(net).attribute(xt.clone().requires_grad_(True), target=tt,
                                          baselines=torch.zeros_like(xt)))
  with x64():
    got = np.asarray(saljax.deeplift(f, jnp.asarray(x), jnp.asarray(t)))
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
  # The rescale rule's summation to delta, on both sides.
  with torch.no_grad():
    base = net(torch.zeros_like(xt)).numpy()
  delta = logits[[0, 1], [1, 3]] - base[[0, 1], [1, 3]]
  np.testing.assert_allclose(want.reshape(2, -1).sum(1), delta, rtol=1e-8, atol=1e-10)

  want = _to_nhwc(GuidedBackprop(net).attribute(xt.clone().requires_grad_(True), target=tt))
  with x64():
    got = np.asarray(saljax.guided_backprop(f, jnp.asarray(x), jnp.asarray(t)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
