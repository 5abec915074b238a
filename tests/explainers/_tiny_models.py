"""Tiny linen models for the layer / propagation / attention tests.

`TinyCNN`: two conv+ReLU blocks (taps "block1", "block2"), global average
pooling and a dense head; `features`/`head` methods allow hand computations.
`TinyViT`: patch embedding, a class token, `depth` pre-norm blocks (taps
"blocks_i"), each computing its attention probabilities in a submodule
(`AttentionProbs`, taps "blocks_i/attn/probs", shape [B, heads, T, T]) so that
attention rollout can read them from the tapped forward.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from saljax import model as M


class ConvBlock(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), strides=self.strides, name="conv")(x))


class TinyCNN(nn.Module):
  classes: int = 5

  def setup(self):
    self.block1 = ConvBlock(6)
    self.block2 = ConvBlock(8, strides=2)
    self.dense = nn.Dense(self.classes)

  def features(self, x):
    return self.block2(self.block1(x))

  def head(self, a):
    return self.dense(a.mean((1, 2)))

  def __call__(self, x):
    return self.head(self.features(x))


def tiny_cnn(shape=(2, 8, 8, 3), seed=0):
  m = TinyCNN()
  x = jnp.zeros(shape)
  v = m.init(jax.random.key(seed), x)
  return m, v, M.from_linen(m, v, example=x)


class AttentionProbs(nn.Module):
  """softmax(q k^T / sqrt(d)): [B, heads, T, T]."""

  @nn.compact
  def __call__(self, q, k):
    return jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]), axis=-1)


class Attention(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    qkv = nn.Dense(3 * d, name="qkv")(x).reshape(x.shape[:2] + (3, self.heads, d // self.heads))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    p = AttentionProbs(name="probs")(q, k)
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(x.shape)
    return nn.Dense(d, name="out")(out)


class Block(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x):
    x = x + Attention(self.heads, name="attn")(nn.LayerNorm(name="ln1")(x))
    h = nn.Dense(2 * x.shape[-1], name="fc1")(nn.LayerNorm(name="ln2")(x))
    return x + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(h))


class TinyViT(nn.Module):
  classes: int = 5
  dim: int = 16
  depth: int = 3
  heads: int = 2
  patch: int = 4

  @nn.compact
  def __call__(self, x):
    t = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, name="embed")(x)
    b = t.shape[0]
    t = t.reshape(b, -1, self.dim)
    cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, self.dim))
    t = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)), t], axis=1)
    t = t + self.param("pos", nn.initializers.normal(0.5), (1, t.shape[1], self.dim))
    for i in range(self.depth):
      t = Block(self.heads, name=f"blocks_{i}")(t)
    t = nn.LayerNorm(name="norm")(t)
    return nn.Dense(self.classes, name="head")(t[:, 0])


def tiny_vit(shape=(2, 16, 16, 3), seed=0, **kw):
  m = TinyViT(**kw)
  x = jnp.zeros(shape)
  v = m.init(jax.random.key(seed), x)
  return m, v, M.from_linen(m, v, example=x)


def torch_conv_relu_pool_linear(k, bias, w):
  """The float64 torch twin of ``relu(conv_same(x, k) + bias).mean((1, 2)) @ w``
  (k HWIO 3x3, no bias on the head), for parity tests against Captum."""
  import numpy as np
  import torch  # in the test extra; imported here so the module needs no torch

  c_in, c_out = k.shape[2], k.shape[3]
  conv = torch.nn.Conv2d(c_in, c_out, k.shape[0], padding=k.shape[0] // 2).double()
  conv.weight.data = torch.from_numpy(np.asarray(k, np.float64).transpose(3, 2, 0, 1).copy())
  conv.bias.data = torch.from_numpy(np.array(bias, np.float64))
  lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=False).double()
  lin.weight.data = torch.from_numpy(np.array(w, np.float64).T.copy())
  return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                             torch.nn.Flatten(), lin).eval()
