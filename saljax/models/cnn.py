"""A small convolutional network for MNIST/CIFAR-sized inputs.

conv-relu-pool blocks then a dense head: the shape of the MNIST CNN that
Adebayo et al. 2018 ("Sanity Checks for Saliency Maps", arXiv:1810.03292)
randomize layer by layer.

Tappable layers: ``conv_<i>`` (each block's conv + ReLU, before pooling),
``conv_<i>/conv``, ``dense`` (the hidden dense layer after ReLU), ``out``.
Default CAM layer: the last conv block.

Layer masking (Balasubramanian and Feizi, ICCV 2023, "Towards Improved Input
Masking for Convolutional Neural Networks", arXiv:2211.14646):
``CNN(...)(x, keep=mask)`` with a pixel keep-mask ``[B, H, W]`` runs the
network on the kept pixels only. The mask travels with the activations, as
in the authors' code (github.com/SriramB-98/layer_masking, ``sal_layers.py``):
each conv sees its input multiplied by the mask and then neighbour-padded
(`neighbor_pad`: masked positions take the mean of their kept 3x3
neighbours, as many rounds as the kernel is wide), the mask goes through a
max pool of the layer's kernel and stride (a position is kept when its
receptive field holds a kept position), each output is multiplied by its
mask, a max pool takes the largest kept value of its window (`masked_max_pool`;
no padding), and the global average pool averages the kept positions only.
So the logits do not depend on the masked pixels' values at all.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Rounds of neighbour padding when none is given: the authors' code pads as
# many rounds as the conv kernel is wide (its fill routine defaults to 4, but
# every conv passes its kernel width); a k x k conv whose output mask is the
# max-pooled input mask reads at most k - 1 positions beyond the kept ones.
NEIGHBOR_ROUNDS = 4


def neighbor_pad(x: jax.Array, mask: jax.Array, rounds: int = NEIGHBOR_ROUNDS) -> jax.Array:
  """`x` ``[B, H, W, C]`` with masked positions filled from kept neighbours.

  Each round, every position outside the current mask ``[B, H, W, 1]`` with
  at least one kept 3x3 neighbour takes their mean and joins the mask;
  positions still unreached after `rounds` are 0. Kept positions keep their
  value exactly. Only kept values enter, so the result does not depend on
  the masked values of `x`.
  """
  def box3(v):
    # Sum over each 3x3 neighbourhood (zeros beyond the border) as nine
    # shifted adds: a grouped (depthwise) conv does the same ~10x slower on
    # XLA:CPU, which made layer masking of the pretrained Lite0 crawl.
    h, w = v.shape[1:3]
    p = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3))

  def body(_, carry):
    v, m = carry
    sums, counts = box3(v * m), box3(m)
    fill = jnp.where(counts > 0, sums / jnp.maximum(counts, 1), 0)
    return jnp.where(m > 0, v, fill), jnp.maximum(m, (counts > 0).astype(m.dtype))

  v, _ = jax.lax.fori_loop(0, rounds, body, (x * mask, mask))
  return v


def pixel_keep_mask(keep, x: jax.Array, who: str) -> jax.Array:
  """`keep` (a pixel mask ``[B, H, W]``, bool or float read as ``> 0.5``) as a
  ``[B, H, W, 1]`` mask in `x`'s dtype, or a ValueError naming `who`."""
  keep = jnp.asarray(keep)
  if keep.shape != x.shape[:3]:
    raise ValueError(f"{who}: keep must be a pixel mask [B, H, W] = {list(x.shape[:3])}, got"
                     f" shape {tuple(keep.shape)}")
  return ((keep > 0.5) if keep.dtype != jnp.bool_ else keep).astype(x.dtype)[..., None]


def masked_max_pool(x: jax.Array, mask: jax.Array, window: int, stride: int,
                    padding) -> tuple[jax.Array, jax.Array]:
  """Max pool over kept positions only: ``(pooled x, pooled mask)``, pooled
  x zero where the window holds no kept position. The authors' code pools
  the masked (zeroed) post-ReLU activations, which is the same for
  non-negative inputs; taking the max over kept values only makes it hold
  for any sign. Neighbour padding is not used here: a filled value could
  exceed every kept value of the window."""
  low = jnp.finfo(x.dtype).min
  pooled = nn.max_pool(jnp.where(mask > 0, x, low), (window, window), (stride, stride),
                       padding=padding)
  pm = nn.max_pool(mask, (window, window), (stride, stride), padding=padding)
  return jnp.where(pm > 0, pooled, 0), pm


def mask_pool(mask: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
  """The mask after a layer of this kernel and stride: max pool (kept if any input is)."""
  return nn.max_pool(mask, (window, window), (stride, stride), padding=padding)


class ConvReLU(nn.Module):
  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (self.kernel_size,) * 2, padding="SAME", name="conv")(x))


class DenseReLU(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Dense(self.features, name="dense")(x))


class CNN(nn.Module):
  """conv(-pool) blocks -> global average pool -> dense -> logits.

  Attributes:
    num_classes: logits size.
    features: channels of each conv block (default (32, 64)).
    kernel_size: conv kernel (default 3).
    hidden: width of the dense layer (default 128).
  Each block is followed by 2x2 max pooling except the last, so the default
  layer keeps the finest map that still sees the whole network.
  """
  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  hidden: int = 128

  @property
  def default_layer(self) -> str:
    return f"conv_{len(self.features) - 1}"

  @nn.compact
  def __call__(self, x, train: bool = False, keep=None):
    """Logits ``[B, num_classes]``; with `keep` (a pixel keep-mask ``[B, H, W]``,
    bool or float read as ``> 0.5``) the layer-masked forward (module docstring)."""
    n = len(self.features)
    m = None
    if keep is not None:
      m = pixel_keep_mask(keep, x, "CNN")
    for i, c in enumerate(self.features):
      if m is not None:
        x = neighbor_pad(x, m, rounds=self.kernel_size)
      x = ConvReLU(c, self.kernel_size, name=f"conv_{i}")(x)
      if m is not None:
        m = mask_pool(m, self.kernel_size, 1, "SAME")
        x = x * m
      if i < n - 1:
        if m is None:
          x = nn.max_pool(x, (2, 2), (2, 2))
        else:
          x, m = masked_max_pool(x, m, 2, 2, "VALID")
    if m is None:
      x = x.mean(axis=(1, 2))
    else:  # pool over kept positions only; nothing kept gives zeros
      x = (x * m).sum(axis=(1, 2)) / jnp.maximum(m.sum(axis=(1, 2)), 1)
    x = DenseReLU(self.hidden, name="dense")(x)
    return nn.Dense(self.num_classes, name="out")(x)


def cnn(num_classes: int = 10, features: Sequence[int] = (32, 64), hidden: int = 128) -> CNN:
  return CNN(num_classes=num_classes, features=tuple(features), hidden=hidden)
