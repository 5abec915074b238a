"""ViT methods on a tiny ViT with a class token, checked by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.explainers import attention

from saljax import model as M

from _tiny_models import tiny_vit


@pytest.fixture(scope="module")
def vit():
  _, _, tapped = tiny_vit()
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  return tapped, x


def _probs(tapped, x):
  acts = tapped(x)[1]
  return [np.asarray(acts[f"blocks_{i}/attn/probs"], np.float64) for i in range(3)]


def test_layers_found_by_name(vit):
  tapped, x = vit
  assert attention.block_layers(tapped, x) == ["blocks_0", "blocks_1", "blocks_2"]
  assert attention.attention_layers(tapped, x) == [f"blocks_{i}/attn/probs" for i in range(3)]


def test_rollout_equals_hand_computation(vit):
  tapped, x = vit
  t = 17
  roll = np.broadcast_to(np.eye(t), (2, t, t))
  for p in _probs(tapped, x):
    a = 0.5 * p.mean(1) + 0.5 * np.eye(t)
    a = a / a.sum(-1, keepdims=True)
    roll = a @ roll
  want = roll[:, 0, 1:].reshape(2, 4, 4)
  got = saljax.attention_rollout(tapped, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # Rows of the rollout stay stochastic: the class-token row sums to 1.
  np.testing.assert_allclose(roll[:, 0].sum(-1), 1.0, rtol=1e-6)
  mx = saljax.attention_rollout(tapped, x, head_fusion="max", layer=["blocks_2/attn/probs"])
  a = 0.5 * _probs(tapped, x)[2].max(1) + 0.5 * np.eye(t)
  a = a / a.sum(-1, keepdims=True)
  np.testing.assert_allclose(mx, a[:, 0, 1:].reshape(2, 4, 4), rtol=1e-5, atol=1e-7)


def test_rollout_discard_keeps_class_token_column(vit):
  tapped, x = vit
  full = saljax.attention_rollout(tapped, x)
  dropped = saljax.attention_rollout(tapped, x, discard_ratio=0.9)
  assert dropped.shape == (2, 4, 4) and bool(jnp.isfinite(dropped).all())
  assert float(jnp.abs(full - dropped).max()) > 1e-4


def test_vit_gradcam_drops_class_token_and_defaults_to_block_before_last(vit):
  tapped, x = vit
  target = jnp.array([1, 4])
  got = saljax.vit_gradcam(tapped, x, target)
  np.testing.assert_array_equal(got, saljax.vit_gradcam(tapped, x, target, layer="blocks_1"))
  zero = jnp.zeros((2, 17, 16))
  a = tapped(x)[1]["blocks_1"]
  g = jax.grad(lambda t: tapped(x, {"blocks_1": t})[0][jnp.arange(2), target].sum())(zero)
  a = np.asarray(a[:, 1:], np.float64).reshape(2, 4, 4, 16)
  g = np.asarray(g[:, 1:], np.float64).reshape(2, 4, 4, 16)
  want = np.maximum(np.einsum("bhwc,bc->bhw", a, g.mean((1, 2))), 0)
  assert want.max() > 1e-4
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  # The last block's patch tokens do not reach the head (it reads the class
  # token only): their gradient, hence Grad-CAM there, is exactly zero.
  last = saljax.vit_gradcam(tapped, x, target, layer="blocks_2", relu=False)
  np.testing.assert_array_equal(last, 0.0)


def test_vit_path_rejects_layers_without_a_token_grid(vit):
  tapped, x = vit
  with pytest.raises(ValueError, match="token activations"):
    saljax.vit_gradcam(tapped, x, 0, layer="blocks_0/attn/probs")
  with pytest.raises(ValueError, match="token activations"):
    saljax.vit_gradcam(tapped, x, 0, layer="head")
  with pytest.raises(ValueError, match="unknown layer"):
    saljax.vit_gradcam(tapped, x, 0, layer="blocks_9")
  # A 4 x 3 patch grid: 1 + 12 = 13 tokens, neither 13 nor 12 is a square.
  rect = M.from_features_head(lambda x: x.reshape(x.shape[0], 13, -1),
                              lambda a: a[:, 0, :5], name="blocks_0")
  xr = jnp.ones((2, 13, 4, 1))
  with pytest.raises(ValueError, match="square patch grid"):
    saljax.vit_gradcam(rect, xr, 0, layer="blocks_0")
  with pytest.raises(ValueError, match="square patch grid"):
    saljax.gradcam(rect, xr, 0, layer="blocks_0")
  with pytest.raises(ValueError, match="attention-probability"):
    saljax.attention_rollout(rect, xr)
  cnn = M.from_features_head(lambda x: x * 2.0, lambda a: a.mean((1, 2)), name="conv")
  with pytest.raises(ValueError, match="attention-probability"):
    saljax.attention_rollout(cnn, jnp.ones((2, 8, 8, 3)))
  with pytest.raises(ValueError, match="two transformer blocks"):
    saljax.vit_gradcam(cnn, jnp.ones((2, 8, 8, 3)), 0)
  with pytest.raises(TypeError, match="tapped model"):
    saljax.attention_rollout(tapped.logits, x)


def test_class_token_attention_per_head(vit):
  tapped, x = vit
  p = _probs(tapped, x)[2]
  per_head = saljax.class_token_attention(tapped, x, per_head=True)
  np.testing.assert_allclose(per_head, p[:, :, 0, 1:].reshape(2, 2, 4, 4), rtol=1e-6)
  np.testing.assert_allclose(saljax.class_token_attention(tapped, x), per_head.mean(1), rtol=1e-6)
  first = saljax.class_token_attention(tapped, x, layer="blocks_0/attn/probs", query_token=3)
  np.testing.assert_allclose(first, _probs(tapped, x)[0][:, :, 3, 1:].mean(1).reshape(2, 4, 4),
                             rtol=1e-6)


def test_class_token_attention_prompt_per_class(vit):
  tapped, x = vit
  # Read the 17 tokens as 8 prefix "prompts" + a 3 x 3 grid: the query for
  # class c is prompt c (Prompt-CAM's class-specific prompts).
  target = jnp.array([4, 2])
  got = saljax.class_token_attention(tapped, x, target, query_token="target", per_head=True,
                                     num_prefix_tokens=8)
  p = _probs(tapped, x)[2]
  want = np.stack([p[b, :, int(target[b]), 8:] for b in range(2)]).reshape(2, 2, 3, 3)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="prefix tokens"):
    saljax.class_token_attention(tapped, x, target, query_token="target")


def test_one_compile_per_shape(vit):
  tapped, x = vit
  x3 = jnp.concatenate([x, x[:1]])
  n0 = attention._rollout._cache_size()
  saljax.attention_rollout(tapped, x3, discard_ratio=0.1)
  saljax.attention_rollout(tapped, x3 * 2, discard_ratio=0.3)
  assert attention._rollout._cache_size() == n0 + 1


def test_non_square_images_get_a_patch_grid_shaped_like_the_image():
  # 16x8 images in 4 px patches: an 8-token 4x2 grid (BlockMNIST's 2:1 digits
  # pairs are such images); T - 1 = 8 is not a square, so only the image's
  # aspect can say which grid it is. Row-major order is checked by hand.
  _, _, tapped = tiny_vit(shape=(2, 16, 8, 3))
  x = jax.random.normal(jax.random.key(3), (2, 16, 8, 3))
  assert attention.block_layers(tapped, x) == ["blocks_0", "blocks_1", "blocks_2"]
  t = 9
  roll = np.broadcast_to(np.eye(t), (2, t, t))
  for p in _probs(tapped, x):
    a = 0.5 * p.mean(1) + 0.5 * np.eye(t)
    roll = (a / a.sum(-1, keepdims=True)) @ roll
  np.testing.assert_allclose(saljax.attention_rollout(tapped, x), roll[:, 0, 1:].reshape(2, 4, 2),
                             rtol=1e-5, atol=1e-7)
  last = _probs(tapped, x)[2]
  np.testing.assert_allclose(saljax.class_token_attention(tapped, x),
                             last.mean(1)[:, 0, 1:].reshape(2, 4, 2), rtol=1e-5, atol=1e-7)
  g = saljax.vit_gradcam(tapped, x, 0)
  assert g.shape[:3] == (2, 4, 2) or g.shape[1:3] == (16, 8), g.shape
  # A token count that fits neither a square nor the image's aspect is refused.
  from saljax.explainers import cam
  with pytest.raises(ValueError, match="patch grid"):
    cam.token_grid((2, 12, 8), "blocks_0", None, (16, 8))
