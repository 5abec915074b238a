"""Masked autoencoder (MAE) pre-training of a ViT, without labels.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022, arXiv:2111.06377: a random ``mask_ratio`` (0.75) of the patch tokens is
dropped, the ViT encoder runs on the class token and the visible patches only,
a small decoder gets the encoded tokens back at their places with a learned
mask token everywhere else, and predicts every patch's pixels; the loss is the
pixel MSE on the masked patches only.

`MAE`'s encoder has the parameter names of `saljax.models.vit.ViT`
(``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks_<i>``, ``norm``), so
`encoder_params` gives a ViT's parameters (all but its classifier ``head``,
which MAE does not have). That is the backbone Prompt-CAM (Chowdhury et al.
2025) expects: pre-trained on something other than the downstream labels
(the paper uses DINO/DINOv2/CLIP), then frozen (experiments/pretrain_mae.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from saljax.models.vit import EncoderBlock, embed, take_tokens

# Parameters of the decoder; everything else is the ViT encoder.
DECODER = ("mask_token", "decoder_embed", "decoder_pos_embed", "decoder_norm", "decoder_pred")


def patchify(x, patch: int):
  """``[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C]``: the patches in the row-major
  order of the ViT's patch tokens (its strided conv, reshaped)."""
  b, h, w, c = x.shape
  if h % patch or w % patch:
    raise ValueError(f"patchify: input {h}x{w} is not a multiple of the patch size {patch}")
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MAE(nn.Module):
  """ViT encoder (`saljax.models.vit.ViT`'s layers and names) and a light
  decoder: ``(x [B, H, W, C], visible [B, K] int) -> [B, N, p*p*C]``, the
  predicted pixels of all N patches.

  Attributes:
    patch, dim, depth, num_heads, mlp_dim: the encoder ViT's sizes.
    decoder_dim, decoder_depth, decoder_heads: the decoder's (default one
      block of width 64 and 4 heads: the paper finds a shallow, narrow decoder
      enough, and it is thrown away).
  """
  patch: int = 16
  dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_dim: int = 768
  decoder_dim: int = 64
  decoder_depth: int = 1
  decoder_heads: int = 4

  @nn.compact
  def __call__(self, x, visible):
    b, _, _, c = x.shape
    # The encoder: saljax.models.vit.ViT with tokens=visible (same names).
    t = embed(self, x, "MAE")
    n = t.shape[1] - 1
    t = take_tokens(t, visible)                                 # cls + visible patches
    for i in range(self.depth):
      t = EncoderBlock(self.num_heads, self.mlp_dim, name=f"blocks_{i}")(t)
    t = nn.LayerNorm(name="norm")(t)
    # The decoder: encoded tokens at their places, the mask token elsewhere.
    dd = self.decoder_dim
    t = nn.Dense(dd, name="decoder_embed")(t)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, dd))
    full = jnp.broadcast_to(mask_token, (b, n, dd)).astype(t.dtype)
    full = full.at[jnp.arange(b)[:, None], visible].set(t[:, 1:])
    full = jnp.concatenate([t[:, :1], full], axis=1)
    dpos = self.param("decoder_pos_embed", nn.initializers.normal(0.02), (1, n + 1, dd))
    full = full + dpos.astype(full.dtype)
    for i in range(self.decoder_depth):
      full = EncoderBlock(self.decoder_heads, 4 * dd, name=f"decoder_blocks_{i}")(full)
    full = nn.LayerNorm(name="decoder_norm")(full)
    return nn.Dense(self.patch * self.patch * c, name="decoder_pred")(full[:, 1:])


def is_decoder(name: str) -> bool:
  return name in DECODER or name.startswith("decoder_blocks_")


def random_visible(key, batch: int, num_patches: int, mask_ratio: float):
  """``(visible [B, K], masked [B, N] bool)``: per example, a uniformly random
  set of ``K = max(1, round(N * (1 - mask_ratio)))`` visible patches (one
  ``jax.random.permutation`` per example, from `key`)."""
  if not 0.0 <= float(mask_ratio) < 1.0:
    raise ValueError(f"mask_ratio: expected a share in [0, 1), got {mask_ratio!r}")
  k = max(1, int(round(num_patches * (1.0 - float(mask_ratio)))))
  keys = jax.random.split(key, batch)
  perm = jax.vmap(lambda kk: jax.random.permutation(kk, num_patches))(keys)
  visible = jnp.sort(perm[:, :k], axis=1)
  masked = jnp.ones((batch, num_patches), bool).at[jnp.arange(batch)[:, None], visible].set(False)
  return visible, masked


def loss(module: MAE, params, x, key, mask_ratio: float = 0.75):
  """MAE's loss: the mean squared pixel error on the masked patches (the
  paper's loss without its optional per-patch target normalization: many
  BlockMNIST patches are blank, where that normalization divides by ~0)."""
  n = (x.shape[1] // module.patch) * (x.shape[2] // module.patch)
  visible, masked = random_visible(key, x.shape[0], n, mask_ratio)
  pred = module.apply({"params": params}, x, visible)
  err = ((pred - patchify(x, module.patch)) ** 2).mean(-1)      # [B, N]
  return (err * masked).sum() / jnp.maximum(masked.sum(), 1)


def encoder_params(params: Any) -> dict:
  """The ViT parameters in MAE `params` (everything but the decoder)."""
  return {k: v for k, v in dict(params).items() if not is_decoder(k)}
