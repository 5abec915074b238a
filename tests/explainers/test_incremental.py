"""Incremental occlusion (saljax.explainers._incremental) against plain occlusion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from saljax import models
from saljax.explainers import _incremental as I
from saljax.explainers import perturbation as P


def _with_batch_stats(variables, seed=0):
  """Random running statistics, so inference batch norm is not the identity."""
  key = jax.random.key(seed)

  def perturb(path, a):
    k = jax.random.fold_in(key, hash(jax.tree_util.keystr(path)) % (2 ** 31))
    name = jax.tree_util.keystr(path)
    if "'mean'" in name:
      return a + 0.2 * jax.random.normal(k, a.shape)
    if "'var'" in name:
      return a * jax.random.uniform(k, a.shape, minval=0.5, maxval=1.5)
    return a

  return jax.tree_util.tree_map_with_path(perturb, variables)


def _zoo(module, size):
  variables = _with_batch_stats(models.init(module, (size, size, 3)))
  return models.wrap(module, variables, input_shape=(size, size, 3))


def _assert_same(f, x, t, **kw):
  plain = np.asarray(P.occlusion(f, x, t, **kw))
  inc = np.asarray(P.occlusion(f, x, t, incremental=True, **kw))
  # Float rounding of the logits: a few ulps of their size.
  scale = float(jnp.abs(f(x)).max())
  np.testing.assert_allclose(inc, plain, rtol=1e-5, atol=1e-6 * max(scale, 1.0))
  assert np.abs(plain).max() > 1e-4  # a map worth comparing


X32 = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
T = jnp.array([1, 3])


# Each model with windows cropped at the border (stride 5: the last starts at 25).
@pytest.mark.parametrize("name,options", [
    ("cnn", {"fill": "blur", "blur_sigma": 2.0}),
    ("resnet18_small", {"score": "probability"}),
    ("tiny_efficientnet_shifts", {}),
    ("tiny_efficientnet_xla", {})])
def test_incremental_equals_plain_on_zoo_models(name, options):
  module = {"cnn": models.cnn(features=(16, 32), hidden=32),
            "resnet18_small": models.resnet18(10, small_inputs=True, width=8),
            "tiny_efficientnet_shifts": models.tiny_efficientnet(impl="shifts"),
            "tiny_efficientnet_xla": models.tiny_efficientnet(impl="xla")}[name]
  f = _zoo(module, 32)
  _assert_same(f, X32, T, window=8, stride=5, **options)


def test_incremental_equals_plain_on_resnet18_imagenet_stem():
  # 7x7/2 conv padded 3, 3x3/2 max pool padded 1, strided projections.
  f = _zoo(models.resnet18(10, width=8), 64)
  x = jax.random.normal(jax.random.key(2), (1, 64, 64, 3))
  _assert_same(f, x, jnp.array([4]), window=8, stride=4)


def _hand_model():
  """Every rule at once: strided VALID conv, dilated conv, depthwise conv,
  padded max pool, average pool, a residual addition of two different boxes,
  a channel concatenation, a per-position dense layer, a transpose, and
  global max and mean pooling."""
  ks = jax.random.split(jax.random.key(7), 6)
  w1 = jax.random.normal(ks[0], (3, 3, 3, 6)) / 3
  w2 = jax.random.normal(ks[1], (3, 3, 6, 6)) / 6
  wd = jax.random.normal(ks[2], (5, 5, 1, 6)) / 5
  wp = jax.random.normal(ks[3], (12, 6)) / 3
  wo = jax.random.normal(ks[4], (12, 4))
  dn = ("NHWC", "HWIO", "NHWC")

  def f(x):
    h = lax.conv_general_dilated(x, w1, (2, 2), "VALID", dimension_numbers=dn)  # 23 -> 11
    h = jnp.tanh(h + 0.1)
    g = lax.conv_general_dilated(h, w2, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dn)
    d = lax.conv_general_dilated(h, wd, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=6)
    h = jax.nn.relu(g + d) + h                                   # three boxes, one sum
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))      # 11 -> 6
    h = lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID") / 4  # 6 -> 5
    h = jnp.concatenate([h, jnp.sin(h)], -1)                      # channels
    h = jnp.transpose(h @ wp, (0, 2, 1, 3))                       # per-position dense
    pooled = jnp.concatenate([h.max(axis=(1, 2)), h.mean(axis=(1, 2))], -1)
    return pooled @ wo

  return f


def test_incremental_equals_plain_on_every_rule():
  x = jax.random.normal(jax.random.key(3), (2, 23, 23, 3))
  f = _hand_model()
  # Rows: windows cropped at the border (the last starts at 20); columns overlap.
  _assert_same(f, x, jnp.array([0, 2]), window=(6, 3), stride=(5, 2))


def test_incremental_refuses_a_vit_with_the_op_named():
  f = models.wrap(models.vit_tiny(num_classes=10), input_shape=(64, 64, 3))
  x = jax.random.normal(jax.random.key(4), (1, 64, 64, 3))
  with pytest.raises(ValueError, match=r"`reshape` merges .* \(1, 4, 4, 192\) into \(1, 16, 192\)"):
    P.occlusion(f, x, jnp.array([1]), window=8, stride=8, incremental=True)


def test_incremental_refuses_layers_that_mix_positions():
  w = jax.random.normal(jax.random.key(5), (8, 8, 3, 4))
  dense_on_map = lambda x: jnp.einsum("bhwc,hwck->bk", x, w)
  flattened = lambda x: x.reshape(x.shape[0], -1) @ w.reshape(-1, 4)
  x = jnp.ones((1, 8, 8, 3))
  with pytest.raises(ValueError, match="`dot_general` contracts axis 1"):
    P.occlusion(dense_on_map, x, jnp.array([0]), window=2, stride=2, incremental=True)
  with pytest.raises(ValueError, match="`reshape` merges"):
    P.occlusion(flattened, x, jnp.array([0]), window=2, stride=2, incremental=True)
  # "auto" falls back to plain occlusion.
  a = P.occlusion(flattened, x, jnp.array([0]), window=2, stride=2, incremental="auto")
  b = P.occlusion(flattened, x, jnp.array([0]), window=2, stride=2)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(b)).max() > 0
  with pytest.raises(ValueError, match="incremental: expected False, True or 'auto', got 'yes'"):
    P.occlusion(flattened, x, jnp.array([0]), window=2, stride=2, incremental="yes")


def test_incremental_compiles_once_per_shape():
  f = _zoo(models.cnn(features=(8, 8), hidden=16), 16)
  kernel = I._incremental
  before = kernel._cache_size()
  for seed in range(3):
    x = jax.random.normal(jax.random.key(seed), (1, 16, 16, 3))
    P.occlusion(f, x, jnp.array([seed]), window=4, stride=2, incremental=True).block_until_ready()
  assert kernel._cache_size() - before == 1


def test_input_boxes_shift_cropped_windows_inside_the_image():
  starts, win = P._occlusion_starts((1, 10, 10, 1), 4, 3)  # starts 0, 3, 6, 9
  lo = I.input_boxes((1, 10, 10, 1), starts, win)
  assert sorted(set(lo[:, 1].tolist())) == [0, 3, 6]  # 9 -> 6: rows 6..9 hold rows 9
  assert (lo[:, [0, 3]] == 0).all()
