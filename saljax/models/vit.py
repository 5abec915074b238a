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

Token dropping (Jain et al. 2022, "Missingness Bias in Model Debugging",
arXiv:2204.08945): ``ViT(...)(x, keep=mask)`` runs the model as if the
removed patches were not in the image. ``keep`` is a pixel keep-mask
``[B, H, W]`` (or a patch mask ``[B, H/p, W/p]``); a patch token is dropped
when none of its pixels is kept. Dropped tokens are excluded from attention
as keys (their softmax weight is exactly 0), so every mask of one shape runs
in one compiled program; the class token (the only thing the head reads) is
then equal to running the ViT on the kept tokens only, which
``ViT(...)(x, tokens=index)`` does directly (gathers the kept patch tokens
with their position embeddings; a shape per number of kept tokens).
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
  def __call__(self, q, k, key_mask=None):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    if key_mask is not None:
      # -inf, not a large negative: dropped keys then get exactly zero weight,
      # so the kept tokens' outputs equal a run without the dropped ones.
      logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


class SelfAttention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x, key_mask=None):
    b, t, d = x.shape
    hd = d // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, hd), name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    p = AttentionProbs(name="probs")(q, k, key_mask)
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
  def __call__(self, x, key_mask=None):
    x = x + SelfAttention(self.num_heads, name="attn")(nn.LayerNorm(name="norm1")(x), key_mask)
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
  def __call__(self, x, train: bool = False, keep=None, tokens=None):
    """Logits ``[B, num_classes]``.

    Args:
      x: NHWC images whose sides are multiples of `patch`.
      keep: optional keep-mask, pixels ``[B, H, W]`` or patches
        ``[B, H/patch, W/patch]`` (bool, or float read as ``> 0.5``): patch
        tokens with no kept pixel are dropped from attention (token dropping,
        module docstring). ``None``: every token is kept.
      tokens: optional int index ``[B, K]`` of the patch tokens to keep (row-
        major patch order): only these tokens and the class token are run.
    """
    b, h, w, _ = x.shape
    if keep is not None and tokens is not None:
      raise ValueError("ViT: pass keep= (a mask) or tokens= (an index), not both")
    x = embed(self, x, "ViT")
    key_mask = None
    if keep is not None:
      key_mask = self.token_keep(keep, h, w)
    if tokens is not None:
      x = take_tokens(x, tokens)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"blocks_{i}")(x, key_mask)
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])

  def token_keep(self, keep, h: int, w: int):
    """``[B, 1 + h*w/patch^2]`` bool: which tokens a keep-mask keeps (class token always)."""
    keep = jnp.asarray(keep)
    gh, gw = h // self.patch, w // self.patch
    if keep.ndim != 3 or tuple(keep.shape[1:]) not in ((h, w), (gh, gw)):
      raise ValueError(
          f"ViT: keep must be a pixel mask [B, {h}, {w}] or a patch mask [B, {gh}, {gw}], got"
          f" shape {tuple(keep.shape)}")
    kb = keep > 0.5 if keep.dtype != jnp.bool_ else keep
    if keep.shape[1:] == (h, w):  # a patch is kept when any of its pixels is
      kb = kb.reshape(kb.shape[0], gh, self.patch, gw, self.patch).any(axis=(2, 4))
    kb = kb.reshape(kb.shape[0], gh * gw)
    return jnp.concatenate([jnp.ones((kb.shape[0], 1), bool), kb], axis=1)


def embed(module: nn.Module, x, who: str):
  """The ViT embedding ``[B, 1 + N, dim]``: patch tokens (``patch_embed``, a
  strided conv), the class token (``cls_token``) in front, position
  embeddings (``pos_embed``) added. Called inside the compact ``__call__`` of
  `module` (a module with ``patch`` and ``dim``), so its parameters get the
  names of `ViT`'s: `ViT`, `saljax.models.prompt_cam.PromptCAM` and
  `saljax.models.mae.MAE` share checkpoints through it. A side that is not a
  multiple of the patch size is refused, naming `who`."""
  b, h, w, _ = x.shape
  p, d = module.patch, module.dim
  if h % p or w % p:
    raise ValueError(f"{who}: input {h}x{w} is not a multiple of the patch size {p}")
  x = nn.Conv(d, (p, p), (p, p), padding="VALID", name="patch_embed")(x)
  x = x.reshape(b, -1, d)
  cls = module.param("cls_token", nn.initializers.zeros, (1, 1, d))
  x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
  pos = module.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], d))
  return x + pos.astype(x.dtype)


def take_tokens(x, tokens):
  """The class token and the patch tokens at int index ``tokens [B, K]``
  (row-major patch order) of embedded tokens ``x [B, 1 + N, dim]``."""
  idx = jnp.concatenate([jnp.zeros((x.shape[0], 1), jnp.int32),
                         jnp.asarray(tokens, jnp.int32) + 1], 1)
  return jnp.take_along_axis(x, idx[:, :, None], axis=1)


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
