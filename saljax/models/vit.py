"""Vision Transformer with a class token, tiny to B/16 by config.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale", arXiv:2010.11929: patch embedding (a strided
conv), a learned class token and position embedding, pre-LayerNorm encoder
blocks (multi-head self-attention, GELU MLP), the class token's final
LayerNorm output through a linear head.

Tappable layers, as `saljax.explainers.attention` expects:
``blocks_<i>`` token activations ``[B, 1 + h*w, D]`` (class token first),
``blocks_<i>/attn/probs`` attention probabilities ``[B, heads, T, T]`` (rows
sum to 1), plus ``patch_embed``, ``blocks_<i>/attn``, ``blocks_<i>/mlp``,
``norm`` and ``head``. Default CAM layer: the block before the last
(``blocks_<depth-2>``): the last block's tokens barely mix, so Grad-CAM there
is uninformative (DESIGN.md; pytorch-grad-cam's ViT example).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# name: (patch, dim, depth, heads, mlp_dim); tiny/small/base from DeiT / ViT.
CONFIGS = {
    "vit_tiny": (16, 192, 12, 3, 768),
    "vit_small": (16, 384, 12, 6, 1536),
    "vit_b16": (16, 768, 12, 12, 3072),
}


class AttentionProbs(nn.Module):
  """softmax(q k^T / sqrt(d)) as a module, so its output can be tapped."""

  @nn.compact
  def __call__(self, q, k):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    return jax.nn.softmax(logits, axis=-1)


class SelfAttention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    hd = d // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, hd), name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    p = AttentionProbs(name="probs")(q, k)
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v)
    return nn.DenseGeneral(d, axis=(-2, -1), name="out")(out)


class MlpBlock(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    return nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(self.hidden, name="fc1")(x)))


class EncoderBlock(nn.Module):
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    x = x + SelfAttention(self.num_heads, name="attn")(nn.LayerNorm(name="norm1")(x))
    return x + MlpBlock(self.mlp_dim, name="mlp")(nn.LayerNorm(name="norm2")(x))


class ViT(nn.Module):
  """ViT classifier on NHWC inputs whose sides are multiples of `patch`.

  Attributes:
    num_classes, patch, dim, depth, num_heads, mlp_dim: the usual ViT sizes
      (`CONFIGS` has tiny, small and B/16).
  """
  num_classes: int = 1000
  patch: int = 16
  dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_dim: int = 768

  num_prefix_tokens = 1

  @property
  def default_layer(self) -> str:
    return f"blocks_{max(self.depth - 2, 0)}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, _ = x.shape
    if h % self.patch or w % self.patch:
      raise ValueError(f"ViT: input {h}x{w} is not a multiple of the patch size {self.patch}")
    x = nn.Conv(self.dim, (self.patch,) * 2, (self.patch,) * 2, padding="VALID", name="patch_embed")(x)
    x = x.reshape(b, -1, self.dim)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    x = x + pos.astype(x.dtype)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])


def vit(name: str = "vit_tiny", num_classes: int = 1000, **overrides) -> ViT:
  """A ViT from `CONFIGS` (``vit_tiny``, ``vit_small``, ``vit_b16``), with overrides."""
  if name not in CONFIGS:
    raise ValueError(f"name: expected one of {sorted(CONFIGS)}, got {name!r}")
  patch, dim, depth, heads, mlp = CONFIGS[name]
  cfg = dict(patch=patch, dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp)
  cfg.update(overrides)
  return ViT(num_classes=num_classes, **cfg)


def vit_tiny(num_classes: int = 1000, **overrides) -> ViT:
  return vit("vit_tiny", num_classes, **overrides)


def vit_small(num_classes: int = 1000, **overrides) -> ViT:
  return vit("vit_small", num_classes, **overrides)


def vit_b16(num_classes: int = 1000, **overrides) -> ViT:
  return vit("vit_b16", num_classes, **overrides)
