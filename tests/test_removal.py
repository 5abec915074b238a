"""Removal strategies (saljax.removal): token dropping on the ViT, layer
masking on the CNN, and the ``removal=`` option of the removal-based
explainers and metrics (issue 18, part 4)."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import removal as R
from saljax.models.cnn import cnn, neighbor_pad
from tests._removal_fixtures import tiny_vit


@pytest.fixture(scope="module")
def vit_model():
  """A random ViT on 8x8 images, patch 4 (4 tokens and the class token)."""
  return tiny_vit()


@pytest.fixture(scope="module")
def cnn_model():
  """A random two-block CNN on 8x8 images."""
  module = cnn(3, (4, 8), 8)
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
  variables = module.init(jax.random.key(3), x)
  return module, variables, x


def _patch_keep():
  """Patch masks [3, 2, 2] keeping 4, 2 and 1 of the 4 patches."""
  k = np.zeros((3, 2, 2), bool)
  k[0] = True
  k[1, 0] = True
  k[2, 1, 1] = True
  return k


# ----------------------------------------------------------------------------
# Token dropping.


def test_token_drop_equals_vit_on_kept_tokens_only(vit_model):
  module, variables, x = vit_model
  keep = _patch_keep()
  pixels = np.repeat(np.repeat(keep, 4, 1), 4, 2)
  masked = module.apply(variables, x, keep=pixels)
  assert np.allclose(masked, module.apply(variables, x, keep=keep), atol=1e-6)
  for b in range(3):
    idx = np.flatnonzero(keep[b].ravel())[None]
    # The kept tokens only, with their position embeddings: a sequence of 1 + K tokens.
    alone = module.apply(variables, x[b:b + 1], tokens=idx)
    np.testing.assert_allclose(masked[b], alone[0], atol=1e-5)
  # Keeping every token is the plain forward, and dropping tokens changes the output.
  full = module.apply(variables, x)
  np.testing.assert_array_equal(module.apply(variables, x, keep=np.ones((3, 8, 8))), full)
  assert np.abs(masked[1:] - full[1:]).max() > 1e-3


def test_token_drop_is_blind_to_removed_patches(vit_model):
  module, variables, x = vit_model
  pixels = np.repeat(np.repeat(_patch_keep(), 4, 1), 4, 2)
  other = jnp.where(pixels[..., None], x, 50.0 * jax.random.normal(jax.random.key(9), x.shape))
  ma = R.mask_aware(module, variables)
  a = R.removed_logits(ma, x, pixels, "token_drop")
  np.testing.assert_allclose(a, R.removed_logits(ma, other, pixels, "token_drop"), atol=1e-5)
  # Blacking sees the new values.
  assert np.abs(R.removed_logits(ma, other, pixels, R.Removal("constant", 50.0))
                - R.removed_logits(ma, x, pixels, R.Removal("constant", 50.0))).max() == 0.0


def test_token_keep_mask_errors(vit_model):
  module, variables, x = vit_model
  with pytest.raises(ValueError, match=r"pixel mask \[B, 8, 8\] or a patch mask \[B, 2, 2\]"):
    module.apply(variables, x, keep=np.ones((3, 4, 4)))
  with pytest.raises(ValueError, match="not both"):
    module.apply(variables, x, keep=np.ones((3, 2, 2)), tokens=np.zeros((3, 1), np.int32))


# ----------------------------------------------------------------------------
# Layer masking.


def test_layer_mask_output_independent_of_masked_pixels(cnn_model):
  module, variables, x = cnn_model
  keep = np.ones((3, 8, 8), bool)
  keep[0, 2:6, 1:5] = False
  keep[1, :, :3] = False
  keep[2, 5:, 5:] = False
  noise = 100.0 * jax.random.normal(jax.random.key(5), x.shape)
  a = module.apply(variables, x, keep=keep)
  b = module.apply(variables, jnp.where(keep[..., None], x, noise), keep=keep)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # Blacking the same pixels with these values gives other logits, and keeping
  # everything is the plain forward.
  assert np.abs(module.apply(variables, jnp.where(keep[..., None], x, noise)) - a).max() > 1e-2
  np.testing.assert_array_equal(module.apply(variables, x, keep=np.ones((3, 8, 8))),
                                module.apply(variables, x))


def test_resnet_layer_mask_output_independent_of_masked_pixels():
  from saljax.models.resnet import ResNet
  # Basic blocks, the ImageNet stem (strided conv and pool), a strided projection block.
  module = ResNet((1, 1), False, 3, 4, False)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = module.init(jax.random.key(1), x)
  # Running statistics away from (0, 1), so batch norm's shift is not zero.
  variables = jax.tree_util.tree_map(lambda a: a + 0.3, variables)
  keep = np.ones((2, 16, 16), bool)
  keep[0, 3:9, 2:12] = False
  keep[1, :, 10:] = False
  noise = 100.0 * jax.random.normal(jax.random.key(5), x.shape)
  a = module.apply(variables, x, keep=keep)
  np.testing.assert_allclose(
      a, module.apply(variables, jnp.where(keep[..., None], x, noise), keep=keep), atol=1e-4)
  np.testing.assert_array_equal(module.apply(variables, x, keep=np.ones((2, 16, 16))),
                                module.apply(variables, x))
  assert np.abs(a - module.apply(variables, x)).max() > 1e-3
  with pytest.raises(ValueError, match="use train=False"):
    module.apply(variables, x, train=True, keep=keep, mutable=["batch_stats"])


def test_neighbor_pad_known_values():
  # One channel, 1x5 row kept at both ends: the holes fill from kept neighbours.
  x = jnp.asarray([1.0, 9.0, 9.0, 9.0, 5.0]).reshape(1, 1, 5, 1)
  m = jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0]).reshape(1, 1, 5, 1)
  out = np.asarray(neighbor_pad(x, m, rounds=2)).ravel()
  # Round 1: position 1 takes 1, position 3 takes 5; round 2: position 2 takes (1 + 5) / 2.
  np.testing.assert_allclose(out, [1.0, 1.0, 3.0, 5.0, 5.0])
  # Unreachable within the rounds: 0.
  m2 = jnp.asarray([1.0, 0.0, 0.0, 0.0, 0.0]).reshape(1, 1, 5, 1)
  np.testing.assert_allclose(np.asarray(neighbor_pad(x, m2, rounds=2)).ravel(),
                             [1.0, 1.0, 1.0, 0.0, 0.0])


def test_masked_max_pool_takes_the_largest_kept_value():
  from saljax.models.cnn import masked_max_pool
  x = jnp.asarray([[-3.0, -1.0, 4.0, 8.0], [-2.0, -9.0, 5.0, 6.0]]).reshape(1, 2, 4, 1)
  m = jnp.asarray([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
  out, pm = masked_max_pool(x, m, 2, 2, "VALID")
  # Kept values of window 1 are -3 and -2 (a plain max pool gives -1, one over
  # zeroed inputs 0); window 2 keeps nothing: 0, and its mask is 0.
  np.testing.assert_array_equal(np.asarray(out).ravel(), [-2.0, 0.0])
  np.testing.assert_array_equal(np.asarray(pm).ravel(), [1.0, 0.0])


def test_resnet_block_masks_do_not_grow():
  """A residual block's output mask is its shortcut's (the input mask,
  subsampled by the stride), as in the authors' Bottleneck: one kept
  position stays one kept position through any number of blocks."""
  from saljax.models.resnet import BasicBlock, Bottleneck
  m = np.zeros((1, 16, 16, 1), np.float32)
  m[0, 4, 6] = 1.0
  for block in (BasicBlock, Bottleneck):
    np.testing.assert_array_equal(block(4, 1).out_mask(m), m)
    out = np.asarray(block(4, 2).out_mask(m))
    assert out.shape == (1, 8, 8, 1) and out.sum() == 1.0 and out[0, 2, 3, 0] == 1.0


def test_cnn_keep_shape_error(cnn_model):
  module, variables, x = cnn_model
  with pytest.raises(ValueError, match=r"keep must be a pixel mask \[B, H, W\] = \[3, 8, 8\]"):
    module.apply(variables, x, keep=np.ones((3, 2, 2)))


# ----------------------------------------------------------------------------
# removed_logits.


def test_pixel_strategies_follow_the_formula(cnn_model):
  module, variables, x = cnn_model
  ma = R.mask_aware(module, variables)
  keep = (jax.random.uniform(jax.random.key(7), x.shape[:3]) > 0.4).astype(jnp.float32)
  k = keep[..., None]
  got = R.removed_logits(ma, x, keep, R.Removal("constant", 0.7))
  np.testing.assert_allclose(got, ma(x * k + 0.7 * (1 - k)), atol=1e-5)
  mean = x.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(R.removed_logits(ma, x, keep, "mean"), ma(x * k + mean * (1 - k)),
                             atol=1e-5)
  # A plain model works for pixel strategies too.
  plain = lambda z: module.apply(variables, z)
  np.testing.assert_allclose(R.removed_logits(plain, x, keep, "blur"),
                             R.removed_logits(ma, x, keep, "blur"), atol=1e-5)


def test_removed_logits_chunked_equals_unchunked_and_compiles_once(vit_model):
  module, variables, x = vit_model
  ma = R.mask_aware(module, variables)
  keep = np.repeat(np.repeat(_patch_keep(), 4, 1), 4, 2)
  whole = R.removed_logits(ma, x, keep, "token_drop")
  np.testing.assert_allclose(R.removed_logits(ma, x, keep, "token_drop", batch_size=2), whole,
                             atol=1e-6)
  before = R._removed_logits._cache_size()
  # New values, a new checkpoint of the same architecture: no new program.
  other = jax.tree_util.tree_map(lambda a: a * 1.1, variables)
  R.removed_logits(R.mask_aware(module, other), x + 1.0, keep[::-1].copy(), "token_drop")
  R.removed_logits(ma, x * 2.0, keep, "token_drop")
  assert R._removed_logits._cache_size() == before


def test_removal_errors(vit_model):
  module, variables, x = vit_model
  keep = np.ones((3, 8, 8))
  with pytest.raises(ValueError, match="kind must be one of"):
    R.Removal("grey")
  with pytest.raises(TypeError, match="removal: expected None, a saljax.removal.Removal"):
    R.as_removal(3)
  plain = lambda z: module.apply(variables, z)
  with pytest.raises(TypeError, match=r"needs the model's mask-aware forward masked\(x, keep"):
    R.removed_logits(plain, x, keep, "token_drop")
  with pytest.raises(ValueError, match=r"keep: expected a mask \[B, H, W\] = \[3, 8, 8\]"):
    R.removed_logits(R.mask_aware(module, variables), x, np.ones((3, 8)), "token_drop")
  with pytest.raises(TypeError, match="takes no keep= argument"):
    import flax.linen as nn
    R.mask_aware(nn.Dense(3), {})
  with pytest.raises(TypeError, match="occlusion: removal='layer_mask' needs"):
    saljax.explainers.get("occlusion")(plain, x, 0, removal="layer_mask", window=4)


def test_mask_forward_found_on_tapped_and_classifier(vit_model):
  module, variables, x = vit_model
  keep = np.repeat(np.repeat(_patch_keep(), 4, 1), 4, 2)
  want = R.removed_logits(R.mask_aware(module, variables), x, keep, "token_drop")
  tapped = saljax.model.from_linen(module, variables, example=x)
  np.testing.assert_allclose(R.removed_logits(tapped, x, keep, "token_drop"), want, atol=1e-6)
  clf = saljax.models.wrap(module, variables, input_shape=x.shape[1:], name="vit")
  np.testing.assert_allclose(R.removed_logits(clf, x, keep, "token_drop"), want, atol=1e-6)


# ----------------------------------------------------------------------------
# removal= on the explainers and metrics.

KEY = jax.random.key(11)
GRID = dict(segments="grid", segmentation_options={"cells": 2})
EXPLAINERS = {
    "occlusion": dict(window=4, stride=4),
    "rise": dict(key=KEY, masks=8, cells=2),
    "lime": dict(key=KEY, samples=8, **GRID),
    "kernel_shap": dict(key=KEY, samples=8, **GRID),
}
METRICS = {
    "deletion": dict(steps=4),
    "insertion": dict(steps=4),
    "roar": dict(fraction=0.3),
    "road": dict(key=KEY, percentages=(0.25, 0.5), score="probability"),
}


def _score(r):
  return r["score"] if isinstance(r, dict) else r


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_explainer_removal_option(name, cnn_model):
  fn = saljax.explainers.get(name)
  opts = EXPLAINERS[name]
  module, variables, x = cnn_model
  ma = R.mask_aware(module, variables)
  t = jnp.asarray([0, 1, 2])
  # The constant strategy is today's fill=.
  np.testing.assert_array_equal(fn(ma, x, t, removal=R.Removal("constant", 0.3), **opts),
                                fn(ma, x, t, fill=0.3, **opts))
  # Layer masking never shows the fill to the CNN (RISE's soft masks blend it
  # into the pixels they keep, so there only the removed pixels are unseen).
  lm = fn(ma, x, t, removal="layer_mask", fill=0.0, **opts)
  assert lm.shape == x.shape
  if name != "rise":
    np.testing.assert_allclose(lm, fn(ma, x, t, removal="layer_mask", fill=9.0, **opts),
                               atol=1e-5)
  assert np.abs(lm - fn(ma, x, t, fill=0.0, **opts)).max() > 1e-4


def test_occlusion_token_drop_is_the_kept_tokens_score(vit_model):
  module, variables, x = vit_model
  ma = R.mask_aware(module, variables)
  t = jnp.asarray([0, 1, 2])
  a = saljax.explainers.get("occlusion")(ma, x, t, removal="token_drop", window=4, stride=4)
  full = module.apply(variables, x)[np.arange(3), t]
  # Patch (0, 0) occluded: the ViT on tokens 1, 2, 3 only.
  alone = module.apply(variables, x, tokens=np.tile([[1, 2, 3]], (3, 1)))[np.arange(3), t]
  np.testing.assert_allclose(a[:, 0, 0, 0], full - alone, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_removal_option(name, cnn_model):
  fn = saljax.metrics.get(name)
  opts = METRICS[name]
  module, variables, x = cnn_model
  ma = R.mask_aware(module, variables)
  att = jax.random.normal(jax.random.key(12), x.shape)
  t = jnp.asarray([0, 1, 2])
  if name != "road":  # ROAD's default removal is its imputation, not a fill
    np.testing.assert_array_equal(
        _score(fn(ma, x, att, t, removal=R.Removal("constant", 0.3), **opts)),
        _score(fn(ma, x, att, t, fill=0.3, **opts)))
  lm = _score(fn(ma, x, att, t, removal="layer_mask", **opts))
  assert lm.shape == (3,) and np.isfinite(lm).all()
  if name != "road":
    np.testing.assert_allclose(lm, _score(fn(ma, x, att, t, removal="layer_mask", fill=9.0,
                                             **opts)), atol=1e-5)


def test_road_pixel_removal_replaces_imputation(cnn_model):
  module, variables, x = cnn_model
  ma = R.mask_aware(module, variables)
  att = jax.random.normal(jax.random.key(12), x.shape)
  t = jnp.asarray([0, 1, 2])
  road = saljax.metrics.get("road")
  out = road(ma, x, att, t, key=KEY, percentages=(0.5,), score="probability",
             removal=R.Removal("constant", 0.0))
  # Half the pixels blacked, ranked by the channel sum (ties cannot occur here).
  rel = np.asarray(att.sum(-1)).reshape(3, -1)
  gone = np.argsort(-rel, axis=1)[:, :32]
  xm = np.asarray(x).reshape(3, 64, 3).copy()
  np.put_along_axis(xm, gone[..., None], 0.0, axis=1)
  p = jax.nn.softmax(ma(jnp.asarray(xm.reshape(x.shape))), -1)[np.arange(3), t]
  np.testing.assert_allclose(out["curve"][:, 0], p, atol=1e-5)


def test_explainer_with_token_drop_compiles_once(vit_model):
  module, variables, x = vit_model
  from saljax.explainers import perturbation as P
  occ = saljax.explainers.get("occlusion")
  t = jnp.asarray([0, 1, 2])
  occ(R.mask_aware(module, variables), x, t, removal="token_drop", window=4, stride=4)
  before = P._occlusion._cache_size()
  other = jax.tree_util.tree_map(lambda a: a + 0.01, variables)
  occ(R.mask_aware(module, other), x * 2.0, t, removal="token_drop", window=4, stride=4)
  assert P._occlusion._cache_size() == before


_SHARDED = textwrap.dedent('''
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    import saljax
    from saljax import parallel, removal as R
    from saljax.models.vit import vit
    assert jax.device_count() == 8
    module = vit("vit_tiny", num_classes=3, patch=4, dim=16, depth=1, num_heads=2, mlp_dim=16)
    x = jax.random.normal(jax.random.key(0), (11, 8, 8, 3))  # ragged over 8 devices
    ma = R.mask_aware(module, module.init(jax.random.key(1), x))
    t = jnp.arange(11) % 3
    occ = saljax.explainers.get("occlusion")
    kw = dict(removal="token_drop", window=4, stride=4)
    single = occ(ma, x, t, **kw)
    sharded = parallel.sharded_call(occ, ma, x, t, mesh=parallel.make_mesh(), **kw)
    print(json.dumps({"occlusion": float(jnp.abs(single - sharded).max())}))
''')


def test_eight_devices_equal_one(tmp_path):
  script = tmp_path / "sharded_removal.py"
  script.write_text(_SHARDED)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(saljax.__file__)))]
      + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=600, env=env)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == {"occlusion"}
  assert max(diffs.values()) < 1e-5, diffs
