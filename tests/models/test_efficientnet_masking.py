"""Layer masking on EfficientNet-Lite (issue 18, part 4): the mask-aware
forward ``EfficientNetLite(...)(x, keep=mask)`` is blind to the masked pixels,
keeps the plain forward unchanged, and serves ``Removal("layer_mask")`` on the
pretrained Lite0 through `saljax.removal`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import removal as R
from saljax.models import efficientnet as E
from saljax.models import layers
from saljax.models import pretrained as P


def _jitter(tree, key, scale):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
      [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tiny():
  """The 3-block test net (3x3 and 5x5 depthwise, a stride-2 block, a
  residual block) on 16x16 images, with batch norm statistics and affine
  parameters moved away from their init, so its shifts are not zero at masked
  positions (what the mask multiplies must remove)."""
  module = E.tiny_efficientnet(num_classes=5)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  # The "rbg" generator compiles faster than threefry (tests/models/conftest.py).
  v = jax.jit(module.init)(jax.random.key(1, impl="rbg"), x)
  stats = _jitter(v["batch_stats"], jax.random.key(2), 0.2)
  stats = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.abs(a) + 0.5 if "var" in jax.tree_util.keystr(p) else a, stats)
  params = dict(v["params"])
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: a + 0.2 if "'bn'" in jax.tree_util.keystr(p) else a, params)
  variables = {"params": params, "batch_stats": stats}
  keep = np.ones((2, 16, 16), bool)
  keep[0, 3:9, 2:12] = False
  keep[1, :, 10:] = False
  return module, variables, x, keep


@pytest.fixture(scope="module")
def forwards(tiny):
  """The tiny net's masked and plain forwards, jitted once for the module
  (eager flax runs op by op and compiles each op: slower here)."""
  module = tiny[0]
  return jax.jit(lambda v, x, k: module.apply(v, x, keep=k)), jax.jit(module.apply)


def test_layer_mask_is_blind_to_masked_pixels(tiny, forwards):
  module, variables, x, keep = tiny
  f, plain = forwards
  noise = 100.0 * jax.random.normal(jax.random.key(5), x.shape)
  noisy = jnp.where(keep[..., None], x, noise)
  a = f(variables, x, keep)
  np.testing.assert_allclose(a, f(variables, noisy, keep), atol=1e-5)
  # The plain forward does see those pixels, and masking changes the logits.
  assert np.abs(plain(variables, noisy) - plain(variables, x)).max() > 1e-2
  assert np.abs(a - plain(variables, x)).max() > 1e-3
  # Keeping everything is the plain forward, bit for bit (same program shape).
  np.testing.assert_array_equal(f(variables, x, np.ones((2, 16, 16), bool)), plain(variables, x))
  # Keeping nothing: the head's pool is empty, the logits are fc's bias.
  np.testing.assert_array_equal(f(variables, x, np.zeros((2, 16, 16), bool)),
                                np.broadcast_to(variables["params"]["fc"]["bias"], (2, 5)))


@pytest.mark.parametrize("size,kernel,stride", [(15, 3, 2), (16, 5, 2), (9, 5, 1)])
def test_mask_follows_each_convs_receptive_field(size, kernel, stride):
  # A position is kept iff its TF-SAME receptive field holds a kept pixel:
  # the depthwise conv of the mask with a kernel of ones is positive there.
  m = (jax.random.uniform(jax.random.key(size), (1, size, size, 1)) > 0.85).astype(jnp.float32)
  want = layers.depthwise_conv_xla(m, jnp.ones((kernel, kernel, 1, 1)), stride) > 0
  got = E._pool_mask(m, kernel, stride)
  np.testing.assert_array_equal(got > 0, want)
  assert 0 < float(got.mean()) < 1


def test_residual_block_masks_do_not_grow():
  # The authors' MBConv: a residual block's mask is its input's (conv path
  # intersected with the shortcut); a strided block's is its depthwise conv's.
  m = np.zeros((1, 16, 16, 1), np.float32)
  m[0, 6, 6] = 1.0
  residual = E.MBConv(E.BlockArgs(1, 5, 1, 6, 8, 8))
  np.testing.assert_array_equal(residual.out_mask(m), m)
  strided = E.MBConv(E.BlockArgs(1, 5, 2, 6, 8, 16))
  np.testing.assert_array_equal(strided.out_mask(m), E._pool_mask(m, 5, 2))
  # TF-SAME, 16 px, 5x5/2: output i reads inputs 2i-1..2i+3, so pixel 6 reaches i = 2, 3.
  assert float(strided.out_mask(m).sum()) == 4.0


def _classifier(module, variables, size):
  # layer_names given: no trace of the module to list them.
  return P.Classifier(module, variables, input_shape=(size, size, 3), default_layer=E.DEFAULT_LAYER,
                      layer_names=(E.DEFAULT_LAYER,))


def test_removed_logits_layer_mask_compiles_once(tiny, forwards):
  module, variables, x, keep = tiny
  clf = _classifier(module, variables, 16)
  whole = R.removed_logits(clf, x, keep, "layer_mask")
  np.testing.assert_allclose(whole, forwards[0](variables, x, keep), atol=1e-5)
  before = R._removed_logits._cache_size()
  other = clf.with_params(jax.tree_util.tree_map(lambda a: a * 1.1, variables))
  R.removed_logits(other, x + 1.0, keep[::-1].copy(), "layer_mask")
  assert R._removed_logits._cache_size() == before


def test_occlusion_with_layer_mask_through_switch(tiny, forwards):
  module, variables, x, keep = tiny
  f, plain = forwards
  clf = _classifier(module, variables, 16)
  occ = saljax.explainers.get("occlusion")
  t = jnp.asarray([0, 3])
  a = occ(clf, x, t, removal="layer_mask", window=8, stride=8, fill=0.0)
  assert a.shape == x.shape
  # The fill never reaches the model: layer masking discards the removed pixels.
  np.testing.assert_allclose(a, occ(clf, x, t, removal="layer_mask", window=8, stride=8,
                                    fill=9.0), atol=1e-5)
  # Window (0, 0) removed: f(x) - masked(x, keep without the top-left 8x8).
  k = np.ones((2, 16, 16), bool)
  k[:, :8, :8] = False
  want = (plain(variables, x) - f(variables, x, k))[np.arange(2), t]
  np.testing.assert_allclose(a[:, 0, 0, 0], want, atol=1e-5)


def test_keep_errors(tiny):
  module, variables, x, keep = tiny
  with pytest.raises(ValueError, match=r"EfficientNetLite: keep must be a pixel mask"
                                       r" \[B, H, W\] = \[2, 16, 16\], got shape \(2, 8, 8\)"):
    module.apply(variables, x, keep=np.ones((2, 8, 8)))
  with pytest.raises(ValueError, match="use train=False"):
    module.apply(variables, x, train=True, keep=keep, mutable=["batch_stats"])


def _reference_forward(module, variables, x):
  """The plain Lite forward as it was before layer masking, from its layers."""
  p, s = variables["params"], variables["batch_stats"]
  sub = lambda name: {"params": p[name], "batch_stats": s[name]}
  blocks = E.lite_blocks(module.width, module.depth)
  x = layers.ConvBNAct(blocks[0].in_filters, 3, 2).apply(sub("stem"), x)
  for i, a in enumerate(blocks):
    v = sub(f"blocks_{i}")
    h = x
    if a.expand != 1:
      h = layers.ConvBNAct(a.in_filters * a.expand, 1).apply(
          {"params": v["params"]["expand"], "batch_stats": v["batch_stats"]["expand"]}, h)
    h = layers.ConvBNAct(a.in_filters * a.expand, a.kernel, a.stride, depthwise=True).apply(
        {"params": v["params"]["depthwise"], "batch_stats": v["batch_stats"]["depthwise"]}, h)
    h = layers.ConvBNAct(a.out_filters, 1, act=None).apply(
        {"params": v["params"]["project"], "batch_stats": v["batch_stats"]["project"]}, h)
    x = h + x if a.stride == 1 and a.in_filters == a.out_filters else h
  x = layers.ConvBNAct(module.head_features, 1).apply(sub("head"), x)
  return x.mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"]


def test_pretrained_lite0_plain_forward_unchanged_and_layer_mask_blind():
  # The one pretrained check, at 32 px: the default forward is bit-identical
  # to the layer-by-layer reference, the mask-aware one ignores masked pixels,
  # and Removal("layer_mask") finds it on the Classifier.
  module = E.efficientnet_lite0()
  clf = _classifier(module, P.load_variables("efficientnet_lite0"), 32)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  # One program holding both: XLA compiles the shared graph once; equal bits
  # need the same operations in the same order.
  plain, ref = jax.jit(lambda v, x: (module.apply(v, x), _reference_forward(module, v, x)))(
      clf.params, x)
  np.testing.assert_array_equal(plain, ref)
  np.testing.assert_array_equal(plain, clf(x))
  keep = np.ones((2, 32, 32), bool)
  keep[0, 8:24, 4:20] = False
  keep[1, :, 20:] = False
  assert isinstance(R.mask_forward(clf, "layer_mask"), R.MaskAware)
  noise = 100.0 * jax.random.normal(jax.random.key(5), x.shape)
  both = R.removed_logits(clf, jnp.concatenate([x, jnp.where(keep[..., None], x, noise)]),
                          np.concatenate([keep, keep]), "layer_mask")
  np.testing.assert_allclose(both[:2], both[2:], atol=1e-4)
  assert np.abs(both[:2] - plain).max() > 1e-2
