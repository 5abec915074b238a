"""A small convolutional network for MNIST/CIFAR-sized inputs.

conv-relu-pool blocks then a dense head: the shape of the MNIST CNN that
Adebayo et al. 2018 ("Sanity Checks for Saliency Maps", arXiv:1810.03292)
randomize layer by layer.

Tappable layers: ``conv_<i>`` (each block's conv + ReLU, before pooling),
``conv_<i>/conv``, ``dense`` (the hidden dense layer after ReLU), ``out``.
Default CAM layer: the last conv block.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn


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
  def __call__(self, x, train: bool = False):
    n = len(self.features)
    for i, c in enumerate(self.features):
      x = ConvReLU(c, self.kernel_size, name=f"conv_{i}")(x)
      if i < n - 1:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.mean(axis=(1, 2))
    x = DenseReLU(self.hidden, name="dense")(x)
    return nn.Dense(self.num_classes, name="out")(x)


def cnn(num_classes: int = 10, features: Sequence[int] = (32, 64), hidden: int = 128) -> CNN:
  return CNN(num_classes=num_classes, features=tuple(features), hidden=hidden)
