"""A small U-Net for per-pixel classification (segmentation).

Ronneberger, Fischer, Brox 2015, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", arXiv:1505.04597, scaled down: two
downsampling levels (2x2 max pooling), a bottleneck, two upsampling levels
(2x2 transposed convolutions) whose outputs are concatenated with the encoder
map of the same resolution (the skip connections), and a 1x1 convolution to
``K`` class logits per pixel. Convolutions are "SAME"-padded, so the output
keeps the input's size (the paper's unpadded convolutions crop instead).

Output: ``[B, H, W, K]`` per-pixel logits (H and W multiples of 4). Explainers
take ``[B, C]`` logits; ``pooled=True`` (or `pooled`) gives the same network
with the logits averaged over the pixels, ``[B, K]``: the Seg-Grad-CAM score of
Vinogradova, Dibrov, Myers 2020 ("Towards Interpretable Semantic
Segmentation via Gradient-weighted Class Activation Mapping",
arXiv:2002.11434) with the whole image as the region, so every classifier
explainer applies to it.

Tappable layers: ``enc_0`` (full resolution), ``enc_1`` (1/2), ``bottleneck``
(1/4), ``up_1`` and ``dec_1`` (1/2), ``up_0`` and ``dec_0`` (full
resolution), ``out`` (the logits); each conv block's convolutions as
``<block>/conv_0`` and ``<block>/conv_1``. Default layer: ``bottleneck``, the
layer Seg-Grad-CAM explains (the coarsest map, which every output pixel
sees); ``dec_0`` gives full-resolution maps.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import flax.linen as nn
import jax.numpy as jnp

if TYPE_CHECKING:
  from saljax.models.pretrained import Classifier


class ConvBlock(nn.Module):
  """Two 3x3 conv + ReLU layers, one tappable output (after the second ReLU)."""
  features: int

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name=f"conv_{i}")(x))
    return x


class UNet(nn.Module):
  """U-Net with two down and two up levels.

  Attributes:
    num_classes: classes per pixel, ``K`` (default 3: background and two
      shape classes, as `saljax.data.synthetic.segmentation`).
    features: channels at full, 1/2 and 1/4 resolution (default (8, 16, 32):
      small enough to train in seconds on a CPU, enough for planted shapes).
    pooled: False (default) returns ``[B, H, W, K]``; True returns the mean
      over pixels, ``[B, K]`` (see the module docstring).
  """
  num_classes: int = 3
  features: Sequence[int] = (8, 16, 32)
  pooled: bool = False

  @property
  def default_layer(self) -> str:
    return "bottleneck"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f"UNet: expected NHWC images with sides that are multiples of 4,"
                       f" got shape {tuple(x.shape)}")
    if len(self.features) != 3:
      raise ValueError(f"UNet: features: expected 3 widths (full, 1/2, 1/4 resolution),"
                       f" got {tuple(self.features)}")
    f0, f1, f2 = self.features
    e0 = ConvBlock(f0, name="enc_0")(x)
    e1 = ConvBlock(f1, name="enc_1")(nn.max_pool(e0, (2, 2), (2, 2)))
    b = ConvBlock(f2, name="bottleneck")(nn.max_pool(e1, (2, 2), (2, 2)))
    u1 = nn.ConvTranspose(f1, (2, 2), (2, 2), name="up_1")(b)
    d1 = ConvBlock(f1, name="dec_1")(jnp.concatenate([u1, e1], axis=-1))
    u0 = nn.ConvTranspose(f0, (2, 2), (2, 2), name="up_0")(d1)
    d0 = ConvBlock(f0, name="dec_0")(jnp.concatenate([u0, e0], axis=-1))
    logits = nn.Conv(self.num_classes, (1, 1), name="out")(d0)
    return logits.mean(axis=(1, 2)) if self.pooled else logits


def unet(num_classes: int = 3, features: Sequence[int] = (8, 16, 32), pooled: bool = False) -> UNet:
  """A `UNet` (per-pixel logits ``[B, H, W, K]``; ``pooled=True``: ``[B, K]``)."""
  return UNet(num_classes=num_classes, features=tuple(features), pooled=pooled)


def pooled(clf: "Classifier") -> "Classifier":
  """The `Classifier` `clf` of a `UNet` with its logits averaged over pixels,
  ``[B, K]``, sharing its variables and layer names (so classifier explainers
  and layer methods apply; see the module docstring)."""
  from saljax.models.pretrained import Classifier
  if not isinstance(getattr(clf, "module", None), UNet):
    raise TypeError(f"pooled: expected a Classifier of a UNet, got {type(clf).__name__}"
                    f" of {type(getattr(clf, 'module', None)).__name__}")
  return Classifier(clf.module.clone(pooled=True), clf.params, input_shape=clf.input_shape,
                    default_layer=clf.default_layer, class_names=clf.class_names,
                    name=f"{clf.name}_pooled", layer_names=clf.layer_names,
                    input_dtype=clf.input_dtype)
