"""ResNet-18/34/50 in Flax linen.

He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition",
arXiv:1512.03385: basic blocks (18, 34) or bottlenecks (50), batch norm,
ImageNet stem (7x7/2 conv + 3x3/2 max pool) or, with ``small_inputs=True``,
the CIFAR stem (one 3x3/1 conv, no pool).

Tappable layers: ``stem``, ``stage<s>_block<b>`` (each residual block's output
after its ReLU; s = 1..4), their ``conv<k>``/``bn<k>`` and ``fc``. Default CAM
layer: the last block of stage 4 (Grad-CAM's usual ``layer4`` choice).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class StemBlock(nn.Module):
  features: int = 64
  small_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.small_inputs:
      x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv")(x)
    else:
      x = nn.Conv(self.features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
    if not self.small_inputs:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    return x


class BasicBlock(nn.Module):
  """Two 3x3 convs; 1x1 projection shortcut when the shape changes."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    h = nn.Conv(self.features, (3, 3), (self.stride,) * 2, padding=[(1, 1), (1, 1)], use_bias=False,
                name="conv1")(x)
    h = nn.relu(bn("bn1")(h))
    h = nn.Conv(self.features, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, name="conv2")(h)
    h = bn("bn2")(h)
    if x.shape[-1] != self.features or self.stride != 1:
      x = nn.Conv(self.features, (1, 1), (self.stride,) * 2, use_bias=False, name="proj")(x)
      x = bn("proj_bn")(x)
    return nn.relu(h + x)


class Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 (stride here, as torchvision's v1.5) -> 1x1 expand x4."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    h = nn.relu(bn("bn1")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
    h = nn.Conv(self.features, (3, 3), (self.stride,) * 2, padding=[(1, 1), (1, 1)], use_bias=False,
                name="conv2")(h)
    h = nn.relu(bn("bn2")(h))
    h = bn("bn3")(nn.Conv(self.features * 4, (1, 1), use_bias=False, name="conv3")(h))
    if x.shape[-1] != self.features * 4 or self.stride != 1:
      x = nn.Conv(self.features * 4, (1, 1), (self.stride,) * 2, use_bias=False, name="proj")(x)
      x = bn("proj_bn")(x)
    return nn.relu(h + x)


class ResNet(nn.Module):
  """ResNet classifier on NHWC inputs.

  Attributes:
    stages: blocks per stage ((2, 2, 2, 2) for 18, (3, 4, 6, 3) for 34/50).
    bottleneck: bottleneck blocks (ResNet-50) instead of basic blocks.
    num_classes: logits size.
    width: channels of the first stage (64), doubled per stage.
    small_inputs: CIFAR stem for 32x32 inputs.
  """
  stages: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  num_classes: int = 1000
  width: int = 64
  small_inputs: bool = False

  @property
  def default_layer(self) -> str:
    return f"stage{len(self.stages)}_block{self.stages[-1] - 1}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = StemBlock(self.width, self.small_inputs, name="stem")(x, train)
    block = Bottleneck if self.bottleneck else BasicBlock
    for s, n in enumerate(self.stages):
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        x = block(self.width * 2 ** s, stride, name=f"stage{s + 1}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc")(x)


def resnet18(num_classes: int = 1000, small_inputs: bool = False, width: int = 64) -> ResNet:
  return ResNet((2, 2, 2, 2), False, num_classes, width, small_inputs)


def resnet34(num_classes: int = 1000, small_inputs: bool = False, width: int = 64) -> ResNet:
  return ResNet((3, 4, 6, 3), False, num_classes, width, small_inputs)


def resnet50(num_classes: int = 1000, small_inputs: bool = False, width: int = 64) -> ResNet:
  return ResNet((3, 4, 6, 3), True, num_classes, width, small_inputs)
