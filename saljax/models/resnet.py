"""ResNet-18/34/50 in Flax linen.

He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition",
arXiv:1512.03385: basic blocks (18, 34) or bottlenecks (50), batch norm,
ImageNet stem (7x7/2 conv + 3x3/2 max pool) or, with ``small_inputs=True``,
the CIFAR stem (one 3x3/1 conv, no pool).

Tappable layers: ``stem``, ``stage<s>_block<b>`` (each residual block's output
after its ReLU; s = 1..4), their ``conv<k>``/``bn<k>`` and ``fc``. Default CAM
layer: the last block of stage 4 (Grad-CAM's usual ``layer4`` choice).

Layer masking (Balasubramanian and Feizi, ICCV 2023, arXiv:2211.14646), as in
`saljax.models.cnn`: ``ResNet(...)(x, keep=mask)`` with a pixel keep-mask
``[B, H, W]`` neighbour-pads the input of every conv whose kernel is larger
than 1x1 (as many rounds as the kernel is wide), max-pools the mask with each
layer's kernel, stride and padding, multiplies every (batch-normed) output by
its mask, max-pools over kept positions only, and averages the kept positions
only at the end. A residual block's output mask is the intersection of its
conv path's mask and its shortcut's, which is the shortcut's: the block's
input mask, subsampled by the stride. So the mask does not grow from block to
block; the authors' code (github.com/SriramB-98/layer_masking,
``sal_resnet.py``, its Bottleneck) does this; its BasicBlock has no masked
path, and the same rule is used here. Batch norm is read in inference mode
(running averages), so it is per-position and commutes with the mask: the
logits do not depend on the masked pixels' values.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from saljax.models.cnn import masked_max_pool, neighbor_pad, pixel_keep_mask


def _pool_mask(m, window: int, stride: int, pad: int):
  """The mask after a layer of this kernel, stride and (symmetric) padding."""
  return nn.max_pool(m, (window, window), (stride, stride), padding=[(pad, pad), (pad, pad)])


def _check_masked_train(train: bool, m) -> None:
  if m is not None and train:
    raise ValueError("ResNet: keep= (layer masking) runs batch norm on running averages;"
                     " use train=False")


class StemBlock(nn.Module):
  features: int = 64
  small_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, m=None):
    _check_masked_train(train, m)
    if m is not None:
      x = neighbor_pad(x, m, rounds=3 if self.small_inputs else 7)
    if self.small_inputs:
      x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv")(x)
    else:
      x = nn.Conv(self.features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
    if m is not None:
      m = _pool_mask(m, 3, 1, 1) if self.small_inputs else _pool_mask(m, 7, 2, 3)
      x = x * m
    if not self.small_inputs:
      if m is None:
        x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
      else:
        x, _ = masked_max_pool(x, m, 3, 2, [(1, 1), (1, 1)])
    return x

  def out_mask(self, m):
    """The stem's output mask."""
    if self.small_inputs:
      return _pool_mask(m, 3, 1, 1)
    return _pool_mask(_pool_mask(m, 7, 2, 3), 3, 2, 1)


class BasicBlock(nn.Module):
  """Two 3x3 convs; 1x1 projection shortcut when the shape changes."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False, m=None):
    _check_masked_train(train, m)
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    pad = (lambda v, mm: v) if m is None else (lambda v, mm: neighbor_pad(v, mm, rounds=3))
    times = (lambda v, mm: v) if m is None else (lambda v, mm: v * mm)
    m1 = None if m is None else _pool_mask(m, 3, self.stride, 1)
    h = nn.Conv(self.features, (3, 3), (self.stride,) * 2, padding=[(1, 1), (1, 1)], use_bias=False,
                name="conv1")(pad(x, m))
    h = times(nn.relu(bn("bn1")(h)), m1)
    h = nn.Conv(self.features, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, name="conv2")(
        pad(h, m1))
    h = bn("bn2")(h)
    if x.shape[-1] != self.features or self.stride != 1:
      x = nn.Conv(self.features, (1, 1), (self.stride,) * 2, use_bias=False, name="proj")(x)
      x = bn("proj_bn")(x)
    return times(nn.relu(h + x), None if m is None else self.out_mask(m))

  def out_mask(self, m):
    """The block's output mask for input mask `m`: the conv path's (dilated)
    mask intersected with the shortcut's, i.e. `m` subsampled by the stride."""
    return _pool_mask(m, 1, self.stride, 0)


class Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 (stride here, as torchvision's v1.5) -> 1x1 expand x4."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False, m=None):
    _check_masked_train(train, m)
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    h = nn.relu(bn("bn1")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
    if m is not None:  # 1x1: same positions; pad for the 3x3
      h = neighbor_pad(h * m, m, rounds=3)
    h = nn.Conv(self.features, (3, 3), (self.stride,) * 2, padding=[(1, 1), (1, 1)], use_bias=False,
                name="conv2")(h)
    h = nn.relu(bn("bn2")(h))
    if m is not None:
      h = h * _pool_mask(m, 3, self.stride, 1)
    h = bn("bn3")(nn.Conv(self.features * 4, (1, 1), use_bias=False, name="conv3")(h))
    if x.shape[-1] != self.features * 4 or self.stride != 1:
      x = nn.Conv(self.features * 4, (1, 1), (self.stride,) * 2, use_bias=False, name="proj")(x)
      x = bn("proj_bn")(x)
    out = nn.relu(h + x)
    return out if m is None else out * self.out_mask(m)

  def out_mask(self, m):
    """The block's output mask for input mask `m`: the intersection of the
    conv path's and the shortcut's, i.e. `m` subsampled by the stride (the
    authors' Bottleneck)."""
    return _pool_mask(m, 1, self.stride, 0)


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
  def __call__(self, x, train: bool = False, keep=None):
    """Logits; with `keep` (a pixel keep-mask ``[B, H, W]``, bool or float read
    as ``> 0.5``) the layer-masked forward (module docstring)."""
    m = None
    if keep is not None:
      m = pixel_keep_mask(keep, x, "ResNet")
      x = x * m
    stem = StemBlock(self.width, self.small_inputs, name="stem")
    x = stem(x, train, m) if m is not None else stem(x, train)
    m = None if m is None else stem.out_mask(m)
    block = Bottleneck if self.bottleneck else BasicBlock
    for s, n in enumerate(self.stages):
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        blk = block(self.width * 2 ** s, stride, name=f"stage{s + 1}_block{b}")
        if m is None:
          x = blk(x, train)
        else:
          x, m = blk(x, train, m), blk.out_mask(m)
    if m is None:
      x = jnp.mean(x, axis=(1, 2))
    else:  # pool over kept positions only
      x = (x * m).sum(axis=(1, 2)) / jnp.maximum(m.sum(axis=(1, 2)), 1)
    return nn.Dense(self.num_classes, name="fc")(x)


def resnet18(num_classes: int = 1000, small_inputs: bool = False, width: int = 64) -> ResNet:
  return ResNet((2, 2, 2, 2), False, num_classes, width, small_inputs)


def resnet34(num_classes: int = 1000, small_inputs: bool = False, width: int = 64) -> ResNet:
  return ResNet((3, 4, 6, 3), False, num_classes, width, small_inputs)


def resnet50(num_classes: int = 1000, small_inputs: bool = False, width: int = 64) -> ResNet:
  return ResNet((3, 4, 6, 3), True, num_classes, width, small_inputs)
