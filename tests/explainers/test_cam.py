"""CAM family and NormGrad checked against hand-written computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import model as M
from saljax.explainers import cam

from _tiny_models import TinyCNN, tiny_cnn, torch_conv_relu_pool_linear

GRAD_CAMS = ["gradcam", "gradcam_plus_plus", "xgradcam", "layercam", "hirescam"]


@pytest.fixture(scope="module")
def cnn():
  m, v, tapped = tiny_cnn()
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  target = jnp.array([1, 3])
  a = m.apply(v, x, method=TinyCNN.features)
  g = jax.grad(lambda a: jnp.take_along_axis(
      m.apply(v, a, method=TinyCNN.head), target[:, None], 1).sum())(a)
  return tapped, x, target, np.asarray(a, np.float64), np.asarray(g, np.float64)


def _hand(method, a, g):
  """numpy versions of the formulas, per example, [B, h, w] before the ReLU."""
  if method == "gradcam":
    w = g.mean((1, 2))
    return np.einsum("bhwc,bc->bhw", a, w)
  if method == "gradcam_plus_plus":
    den = 2 * g ** 2 + a.sum((1, 2), keepdims=True) * g ** 3
    alpha = np.where(g != 0, g ** 2 / np.where(den != 0, den, 1), 0)
    w = (alpha * np.maximum(g, 0)).sum((1, 2))
    return np.einsum("bhwc,bc->bhw", a, w)
  if method == "xgradcam":
    w = (a * g / (a.sum((1, 2), keepdims=True) + 1e-7)).sum((1, 2))
    return np.einsum("bhwc,bc->bhw", a, w)
  if method == "layercam":
    return (np.maximum(g, 0) * a).sum(-1)
  return (g * a).sum(-1)


@pytest.mark.parametrize("method", GRAD_CAMS)
def test_grad_cams_equal_hand_computation_at_last_conv_layer(cnn, method):
  tapped, x, target, a, g = cnn
  got = saljax.explainers.get(method)(tapped, x, target, layer="block2")
  want = np.maximum(_hand(method, a, g), 0)
  assert got.shape == (2, 4, 4)
  assert np.abs(want).max() > 1e-3  # not a vacuous comparison
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  raw = saljax.explainers.get(method)(tapped, x, target, layer="block2", relu=False)
  np.testing.assert_allclose(raw, _hand(method, a, g), rtol=2e-4, atol=1e-6)


def test_default_layer_is_last_spatial_layer_in_call_order(cnn):
  tapped, x, target, _, _ = cnn
  np.testing.assert_array_equal(saljax.gradcam(tapped, x, target),
                                saljax.gradcam(tapped, x, target, layer="block2"))


def test_gradcam_equals_hirescam_and_cam_for_gap_linear_head(cnn):
  # With global average pooling and a linear head, dS/dA is constant over
  # positions, so Grad-CAM = HiResCAM = CAM (Zhou et al.): sum_k W_kc A_k / hw.
  tapped, x, target, a, _ = cnn
  gc = saljax.gradcam(tapped, x, target, layer="block2", relu=False)
  hr = saljax.hirescam(tapped, x, target, layer="block2", relu=False)
  np.testing.assert_allclose(gc, hr, rtol=1e-4, atol=1e-6)


def test_several_layers_from_one_call_equal_single_calls(cnn):
  tapped, x, target, _, _ = cnn
  both = saljax.layercam(tapped, x, target, layer=["block1", "block2"])
  assert set(both) == {"block1", "block2"}
  assert both["block1"].shape == (2, 8, 8) and both["block2"].shape == (2, 4, 4)
  for k in both:
    np.testing.assert_allclose(both[k], saljax.layercam(tapped, x, target, layer=k), rtol=1e-5)


def test_one_forward_and_one_backward_for_several_layers():
  calls = []
  m, v, _ = tiny_cnn()
  base = M.from_linen(m, v, example=jnp.zeros((2, 8, 8, 3)))

  def forward(x, taps=None):
    calls.append(1)
    return base(x, taps)

  tapped = M.Tapped(forward, base.layer_names)
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
  saljax.gradcam(tapped, x, 0, layer=["block1", "block2"])
  n_first = len(calls)
  calls.clear()
  cam._grad_cam.__wrapped__(tapped, x, jnp.array([0, 0]), ("block1", "block2"),
                            ((8, 8, 0), (4, 4, 0)), "gradcam", True)
  # Layer shapes come from a cached abstract trace (made by the first call);
  # the work itself is one forward, differentiated once, for both layers.
  assert len(calls) == 1, len(calls)
  assert n_first >= 1


def test_one_compile_per_shape(cnn):
  tapped, x, _, _, _ = cnn
  x = jnp.concatenate([x, x[:1] * 0.5])  # a batch shape no other test uses
  target = jnp.array([1, 3, 0])
  size0 = cam._grad_cam._cache_size()
  saljax.gradcam(tapped, x, target, layer="block2")
  assert cam._grad_cam._cache_size() == size0 + 1
  saljax.gradcam(tapped, x + 1.0, jnp.array([0, 4, 2]), layer="block2")
  saljax.gradcam(tapped, x, 2, layer="block2")
  assert cam._grad_cam._cache_size() == size0 + 1
  s0 = cam._scorecam._cache_size()
  saljax.scorecam(tapped, x, target, layer="block2", batch_size=3)
  saljax.scorecam(tapped, x * 2, target, layer="block2", batch_size=3)
  assert cam._scorecam._cache_size() == s0 + 1


def test_errors_before_work(cnn):
  tapped, x, target, _, _ = cnn
  with pytest.raises(ValueError, match="unknown layer.*block1"):
    saljax.gradcam(tapped, x, target, layer="nope")
  with pytest.raises(ValueError, match=r"spatial activation \[B, h, w, C\]"):
    saljax.gradcam(tapped, x, target, layer="dense")
  with pytest.raises(TypeError, match="tapped model"):
    saljax.gradcam(tapped.logits, x, target, layer="block2")
  with pytest.raises(ValueError, match="target"):
    saljax.gradcam(tapped, x, jnp.array([0, 9]), layer="block2")
  with pytest.raises(TypeError, match="layer"):
    saljax.gradcam(tapped, x, target, layer=3)
  with pytest.raises(ValueError, match="one layer"):
    saljax.scorecam(tapped, x, target, layer=["block1", "block2"])
  with pytest.raises(ValueError, match="score"):
    saljax.scorecam(tapped, x, target, layer="block2", score="bad")


def test_token_grid_rules():
  assert cam.token_grid((2, 17, 8), "t") == (4, 4, 1)
  assert cam.token_grid((2, 16, 8), "t") == (4, 4, 0)
  assert cam.token_grid((2, 18, 8), "t", num_prefix_tokens=2) == (4, 4, 2)
  with pytest.raises(ValueError, match="square patch grid"):
    cam.token_grid((2, 7, 8), "t")
  with pytest.raises(ValueError, match="spatial activation"):
    cam.token_grid((2, 8), "t")


# ----------------------------------------------------------------------------
# Score-CAM.


def _const_channel_model():
  """features(x): channel 0 constant, channels 1-2 read the image; linear head."""
  w = jax.random.normal(jax.random.key(5), (3, 4))

  def features(x):
    b = x.shape[0]
    small = jax.image.resize(x[..., :2], (b, 4, 4, 2), "linear")
    return jnp.concatenate([jnp.ones((b, 4, 4, 1)), jnp.tanh(small)], -1)

  def head(a):
    return a.mean((1, 2)) @ w

  return M.from_features_head(features, head), features, head


def _scorecam_hand(features, head, x, target):
  a = np.asarray(features(x), np.float64)
  out = np.zeros(a.shape[:3])
  for k in range(a.shape[-1]):  # a loop is fine in a reference implementation
    up = np.asarray(jax.image.resize(jnp.asarray(a[..., k], jnp.float32), (x.shape[0], 8, 8),
                                     "bilinear"), np.float64)
    lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    mask = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
    p = np.asarray(jax.nn.softmax(head(features(x * jnp.asarray(mask[..., None], jnp.float32)))))
    s = p[np.arange(x.shape[0]), target]
    out += s[:, None, None] * a[..., k]
  return np.maximum(out, 0)


def test_scorecam_finite_on_constant_map_and_matches_hand_computation():
  tapped, features, head = _const_channel_model()
  x = jax.random.normal(jax.random.key(6), (3, 8, 8, 3))
  target = jnp.array([0, 1, 3])
  got = saljax.scorecam(tapped, x, target, layer="features")
  assert bool(jnp.isfinite(got).all())
  np.testing.assert_allclose(got, _scorecam_hand(features, head, x, target), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, None])
def test_scorecam_chunked_equals_unchunked(cnn, batch_size):
  tapped, x, target, _, _ = cnn
  ref = saljax.scorecam(tapped, x, target, layer="block2", batch_size=8)
  got = saljax.scorecam(tapped, x, target, layer="block2", batch_size=batch_size)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_scorecam_variants(cnn):
  tapped, x, target, _, _ = cnn
  plain = saljax.scorecam(tapped, x, target, layer="block2", relu=False)
  base = saljax.scorecam(tapped, x, target, layer="block2", baseline=jnp.zeros_like(x), relu=False)
  a = tapped(x)[1]["block2"]
  p0 = jax.nn.softmax(tapped.logits(jnp.zeros_like(x)), -1)[jnp.arange(2), target]
  np.testing.assert_allclose(base, plain - p0[:, None, None] * a.sum(-1), rtol=1e-4, atol=1e-5)
  soft = saljax.scorecam(tapped, x, target, layer="block2", score="logit_softmax")
  assert soft.shape == (2, 4, 4) and bool(jnp.isfinite(soft).all())


# ----------------------------------------------------------------------------
# Eigen-CAM, upsampling, combination.


def test_eigencam_on_rank_one_activations():
  u = jax.random.normal(jax.random.key(7), (2, 4, 4))
  v = jnp.abs(jax.random.normal(jax.random.key(8), (2, 5))) + 0.1
  tapped = M.from_features_head(lambda x: x[..., :1] * 0 + u[..., None] * v[:, None, None, :],
                                lambda a: a.mean((1, 2)))
  x = jnp.ones((2, 4, 4, 1))
  got = saljax.eigencam(tapped, x, None, layer="features", relu=False)
  centred = u - u.mean((1, 2), keepdims=True)
  ratio = got / centred
  np.testing.assert_allclose(ratio, jnp.linalg.norm(v, axis=1)[:, None, None]
                             * jnp.ones_like(ratio), rtol=1e-3)


def test_upsample_and_minmax():
  m = jax.random.uniform(jax.random.key(9), (2, 3, 3))
  up = cam.upsample(m, (12, 9))
  assert up.shape == (2, 12, 9)
  np.testing.assert_allclose(cam.upsample(jnp.full((1, 2, 2), 3.0), 8), 3.0, rtol=1e-6)
  n = cam.minmax_normalize(jnp.stack([m[0], jnp.full((3, 3), 2.0)]))
  assert float(n[0].min()) == 0.0 and float(n[0].max()) == 1.0
  np.testing.assert_array_equal(n[1], 0.0)
  with pytest.raises(ValueError, match="size"):
    cam.upsample(m, (0, 3))


# ----------------------------------------------------------------------------
# NormGrad.


def test_normgrad_identity_is_frobenius_norm_of_outer_product(cnn):
  tapped, x, target, a, g = cnn
  got = saljax.normgrad(tapped, x, target, layer="block2")
  outer = np.einsum("bhwc,bhwd->bhwcd", a, g)
  np.testing.assert_allclose(got, np.sqrt((outer ** 2).sum((-1, -2))), rtol=1e-4, atol=1e-7)


def _im2col_norm(a, k, stride, pad):
  b, h, w, c = a.shape
  ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh = (h + 2 * pad - k) // stride + 1
  ow = (w + 2 * pad - k) // stride + 1
  out = np.zeros((b, oh, ow))
  for i in range(oh):
    for j in range(ow):
      patch = ap[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] = np.sqrt((patch ** 2).sum((1, 2, 3)))
  return out


def test_normgrad_3x3_virtual_identity_with_zero_padding(cnn):
  tapped, x, target, a, g = cnn
  got = saljax.normgrad(tapped, x, target, layer="block2", variant="identity3x3")
  want = _im2col_norm(a, 3, 1, 1) * np.linalg.norm(g, axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_normgrad_real_conv_layer_with_stride_two(cnn):
  tapped, x, target, _, _ = cnn
  # block2/conv is a 3x3 stride-2 SAME conv on block1's output (8x8 -> 4x4).
  got = saljax.normgrad(tapped, x, target, layer="block2/conv", variant="conv",
                        input_layer="block1", kernel_size=3, strides=2, padding="SAME")
  acts = tapped(x)[1]
  gout = jax.grad(lambda t: tapped(x, {"block2/conv": t})[0][jnp.arange(2), target].sum())(
      jnp.zeros((2, 4, 4, 8)))
  # SAME with stride 2 on 8 pads 0 before and 1 after: check against explicit patches.
  a_in = np.pad(np.asarray(acts["block1"], np.float64), ((0, 0), (0, 1), (0, 1), (0, 0)))
  want = _im2col_norm(a_in, 3, 2, 0)[:, :4, :4] * np.linalg.norm(np.asarray(gout), axis=-1)
  assert got.shape == (2, 4, 4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="grid"):
    saljax.normgrad(tapped, x, target, layer="block2/conv", variant="conv",
                    input_layer="block1", strides=1)


def test_selective_normgrad(cnn):
  tapped, x, target, a, g = cnn
  got = saljax.normgrad(tapped, x, target, layer="block2", variant="selective")
  want = np.sqrt((np.maximum(a * g, 0) ** 2).sum(-1))
  assert float(got.min()) >= 0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  assert bool((got[np.all(a * g <= 0, -1)] == 0).all())


def test_normgrad_combined(cnn):
  tapped, x, target, _, _ = cnn
  maps = saljax.normgrad(tapped, x, target, layer=["block1", "block2"])
  comb = saljax.normgrad_combined(tapped, x, target, layer=["block1", "block2"])
  assert comb.shape == (2, 8, 8)
  assert float(comb.min()) >= 0 and float(comb.max()) <= 1 + 1e-6
  n1 = cam.minmax_normalize(cam.upsample(maps["block1"], 8))
  n2 = cam.minmax_normalize(cam.upsample(maps["block2"], 8))
  np.testing.assert_allclose(comb, jnp.sqrt(n1 * n2), rtol=1e-4, atol=1e-6)
  s = saljax.normgrad_combined(tapped, x, target, layer=["block1", "block2"], mode="sum",
                               weights=[1, 3])
  np.testing.assert_allclose(s, 0.25 * n1 + 0.75 * n2, rtol=1e-4, atol=1e-6)
  const = cam.combine_maps({"a": jnp.ones((1, 2, 2)), "b": jnp.ones((1, 2, 2))}, 4)
  assert bool(jnp.isfinite(const).all())


def test_eight_devices_equal_one():
  import json
  import os
  import subprocess
  import sys
  script = os.path.join(os.path.dirname(__file__), "_sharded_layer.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert len(diffs) == 4, diffs
  for name, d in diffs.items():
    assert d < 1e-5, (name, d)


@pytest.mark.parametrize("shape", [(2, 3, 3, 16), (2, 4, 4, 3)])  # hw <= C and hw > C
def test_eigencam_equals_svd_projection(shape):
  a = jax.random.normal(jax.random.key(11), shape) + 0.5
  tapped = M.from_features_head(lambda x: x, lambda a: a.mean((1, 2)))
  got = np.asarray(saljax.eigencam(tapped, a, None, layer="features", relu=False))
  flat = np.asarray(a, np.float64).reshape(2, -1, shape[-1])
  for b in range(2):  # reference per example with numpy's SVD
    c = flat[b] - flat[b].mean(0)
    proj = c @ np.linalg.svd(c, full_matrices=False)[2][0]
    proj *= np.sign((proj * (flat[b].sum(-1) - flat[b].sum(-1).mean())).sum())
    np.testing.assert_allclose(got[b].ravel(), proj, rtol=1e-3, atol=1e-4)


def test_gradcam_parity_with_captum_layergradcam():
  import captum.attr as ca  # torch and captum are in the test extra
  import torch

  k = jax.random.normal(jax.random.key(12), (3, 3, 3, 4))        # HWIO
  bias = 0.1 * jax.random.normal(jax.random.key(13), (4,))
  w = jax.random.normal(jax.random.key(14), (4, 5))

  def features(x):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + bias)

  tapped = M.from_features_head(features, lambda a: a.mean((1, 2)) @ w)
  x = jax.random.normal(jax.random.key(15), (2, 6, 6, 3))
  target = jnp.array([2, 4])
  net = torch_conv_relu_pool_linear(k, bias, w)
  xt = torch.from_numpy(np.array(x, np.float64).transpose(0, 3, 1, 2).copy())
  theirs = ca.LayerGradCam(net, net[1]).attribute(
      xt, target=torch.from_numpy(np.array(target)).long(), relu_attributions=True)
  theirs = theirs.detach().numpy()[:, 0]
  assert theirs.max() > 1e-3
  np.testing.assert_allclose(saljax.gradcam(tapped, x, target, layer="features"), theirs,
                             rtol=1e-4, atol=1e-6)
