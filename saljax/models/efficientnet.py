"""EfficientNet-Lite0..4 in Flax linen.

Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", arXiv:1905.11946; the Lite variants are from the TensorFlow
TPU repository (``models/official/efficientnet/lite``): ReLU6 instead of
swish, no squeeze-and-excitation, stem and head not scaled. The architecture
follows the PyTorch port ``efficientnet-lite-pytorch`` 0.1.0 exactly (same
block list, rounding, TF-"SAME" padding, batch norm epsilon 1e-3 and momentum
0.99), so its ImageNet weights convert one to one (`saljax.models.pretrained`).

Tappable layers (`saljax.model.from_linen` names): ``stem``, ``blocks_<i>``
(each MBConv block's output), inside a block ``blocks_<i>/expand``,
``blocks_<i>/depthwise``, ``blocks_<i>/project`` (and their ``/conv`` and
``/bn``), ``head`` (the last conv feature map, 7x7x1280 at 224 px) and ``fc``
(the logits). The default CAM layer is ``head``.

Layer masking (Balasubramanian and Feizi, ICCV 2023, "Towards Improved Input
Masking for Convolutional Neural Networks", arXiv:2211.14646), as in
`saljax.models.cnn` and `saljax.models.resnet`: ``EfficientNetLite(...)(x,
keep=mask)`` with a pixel keep-mask ``[B, H, W]`` runs the network on the kept
pixels only. Every spatial conv (the 3x3/2 stem, each block's k x k depthwise
conv) sees its input multiplied by the current mask and neighbour-padded
(`neighbor_pad`, as many rounds as the kernel is wide); the mask then goes
through a max pool of that conv's kernel, stride and TF-SAME padding (a
position is kept when its receptive field holds a kept position), and the
layer's output is multiplied by it. A residual block's output mask is its
input mask (the intersection of the conv path's and the shortcut's, as the
authors' code), so the mask grows only at the strided, non-residual blocks.
The 1x1 convs (expand, project, head) and batch norm (inference mode: running
averages) act on each position alone, so they need no padding: a masked
position's output depends only on that position's (zeroed or later
re-padded) value, and the next mask multiply or neighbour pad discards it.
The residual adds the block input, zero outside its mask. The global average
pool averages the kept positions only. So the logits do not depend on the
masked pixels' values at all, and an all-ones mask is exactly the plain
forward. The Lite models have no squeeze-and-excitation, so there is no
inner global pool to mask.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from saljax.models.cnn import neighbor_pad, pixel_keep_mask
from saljax.models.layers import ConvBNAct


class BlockArgs(NamedTuple):
  repeats: int
  kernel: int
  stride: int
  expand: int
  in_filters: int
  out_filters: int


# efficientnet_lite_builder.py / efficientnet-lite-pytorch `efficientnet_lite`.
LITE_BLOCKS = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)

# name: (width, depth, resolution, dropout), from efficientnet_lite_builder.py.
LITE_PARAMS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

DEFAULT_LAYER = "head"


def _pool_mask(m, kernel: int, stride: int):
  """The mask after a conv of this kernel and stride with TF-SAME padding: a
  max pool with the same window, stride and padding (lax "SAME" pads as
  `saljax.models.layers.same_pads`, the odd pixel at the end)."""
  return nn.max_pool(m, (kernel, kernel), (stride, stride), padding="SAME")


def _check_masked_train(train: bool, m) -> None:
  if m is not None and train:
    raise ValueError("EfficientNetLite: keep= (layer masking) runs batch norm on running"
                     " averages; use train=False")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channel count scaled by `width`, rounded to a multiple of 8 (TF rule)."""
  if not width:
    return filters
  f = filters * width
  new = max(divisor, int(f + divisor / 2) // divisor * divisor)
  if new < 0.9 * f:  # never round down by more than 10%
    new += divisor
  return int(new)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats)) if depth else repeats


def lite_blocks(width: float, depth: float) -> list[BlockArgs]:
  """The per-block arguments (one entry per MBConv block) of a Lite model.

  The first and last stages keep their repeat count and the first stage's
  input stays 32 channels (``fix_head_stem``), as the reference does.
  """
  out = []
  n = len(LITE_BLOCKS)
  for i, a in enumerate(LITE_BLOCKS):
    fixed = i == 0 or i == n - 1
    reps = a.repeats if fixed else round_repeats(a.repeats, depth)
    cin = 32 if i == 0 else round_filters(a.in_filters, width)
    cout = round_filters(a.out_filters, width)
    for r in range(reps):
      out.append(a._replace(repeats=1, stride=a.stride if r == 0 else 1,
                            in_filters=cin if r == 0 else cout, out_filters=cout))
  return out


class MBConv(nn.Module):
  """Mobile inverted bottleneck (Sandler et al. 2018, arXiv:1801.04381) without SE:
  1x1 expand -> k x k depthwise -> 1x1 project, residual when shapes allow."""
  args: BlockArgs
  impl: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False, m=None):
    """The block's output; with a mask `m` ``[B, H, W, 1]`` (`x` zero outside
    it) the layer-masked block, zero outside `out_mask(m)`."""
    a = self.args
    h = x
    mid = a.in_filters * a.expand
    if a.expand != 1:
      # 1x1 conv + batch norm: per position, no padding needed (module docstring).
      h = ConvBNAct(mid, 1, name="expand")(h, train)
    if m is not None:
      # Multiplies by m first (drops the expand's masked outputs), then pads as
      # many rounds as the kernel is wide, as the authors' code.
      h = neighbor_pad(h, m, rounds=a.kernel)
    h = ConvBNAct(mid, a.kernel, a.stride, depthwise=True, impl=self.impl, name="depthwise")(h, train)
    h = ConvBNAct(a.out_filters, 1, act=None, name="project")(h, train)
    if m is not None:  # batch norm's shift is not zero at masked positions
      h = h * self.out_mask(m)
    if self._residual:
      h = h + x  # drop-connect is a training-time regularizer; not applied here
    return h

  @property
  def _residual(self) -> bool:
    return self.args.stride == 1 and self.args.in_filters == self.args.out_filters

  def out_mask(self, m):
    """The block's output mask for input mask `m`: its depthwise conv's
    (dilated) mask, intersected with the input mask when the block is
    residual, as the authors' MBConv (github.com/SriramB-98/layer_masking,
    ``efficientnet.py``) does, so the mask does not grow through residual
    blocks."""
    return m if self._residual else _pool_mask(m, self.args.kernel, self.args.stride)


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite classifier on NHWC inputs.

  Attributes:
    width: width coefficient (1.0 for Lite0/1, 1.1 Lite2, 1.2 Lite3, 1.4 Lite4).
    depth: depth coefficient (1.0, 1.1, 1.2, 1.4, 1.8).
    num_classes: logits size (1000 for ImageNet).
    dropout: dropout rate before the classifier (only with ``train=True``).
    impl: depthwise formulation, ``"xla"``/``"shifts"``, None for the switch
      in `saljax.models.layers`.
    blocks: an explicit per-block list (`BlockArgs`, one per block) replacing
      the scaled Lite list; for small test models.
    head_features: channels of the head conv (1280 in every Lite model).
  """
  width: float = 1.0
  depth: float = 1.0
  num_classes: int = 1000
  dropout: float = 0.2
  impl: str | None = None
  blocks: tuple[BlockArgs, ...] | None = None
  head_features: int = 1280

  default_layer = DEFAULT_LAYER

  @nn.compact
  def __call__(self, x, train: bool = False, keep=None):
    """Logits ``[B, num_classes]``; with `keep` (a pixel keep-mask ``[B, H, W]``,
    bool or float read as ``> 0.5``) the layer-masked forward (module docstring)."""
    blocks = self.blocks if self.blocks is not None else lite_blocks(self.width, self.depth)
    if keep is None:  # the plain forward, unchanged
      x = ConvBNAct(blocks[0].in_filters, 3, 2, name="stem")(x, train)
      for i, a in enumerate(blocks):
        x = MBConv(a, impl=self.impl, name=f"blocks_{i}")(x, train)
      x = ConvBNAct(self.head_features, 1, name="head")(x, train)
      x = jnp.mean(x, axis=(1, 2))
    else:
      m = pixel_keep_mask(keep, x, "EfficientNetLite")
      _check_masked_train(train, m)
      x = ConvBNAct(blocks[0].in_filters, 3, 2, name="stem")(neighbor_pad(x, m, rounds=3), train)
      m = _pool_mask(m, 3, 2)
      x = x * m
      for i, a in enumerate(blocks):
        block = MBConv(a, impl=self.impl, name=f"blocks_{i}")
        x, m = block(x, train, m), block.out_mask(m)
      # 1x1 head: per position; only kept positions enter the pool.
      x = ConvBNAct(self.head_features, 1, name="head")(x, train)
      x = (x * m).sum(axis=(1, 2)) / jnp.maximum(m.sum(axis=(1, 2)), 1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="fc")(x)


def tiny_efficientnet(num_classes: int = 10, impl: str | None = None) -> EfficientNetLite:
  """A 3-block EfficientNet-Lite-shaped net (3x3 and 5x5 depthwise, strides 1
  and 2, a residual block) that compiles in seconds: for tests and examples."""
  blocks = (BlockArgs(1, 3, 1, 1, 8, 8), BlockArgs(1, 5, 2, 3, 8, 12), BlockArgs(1, 3, 1, 3, 12, 12))
  return EfficientNetLite(num_classes=num_classes, impl=impl, blocks=blocks, head_features=32)


def efficientnet_lite(variant: int = 0, *, num_classes: int = 1000, impl: str | None = None
                      ) -> EfficientNetLite:
  """EfficientNet-Lite`variant` (0..4) with the reference coefficients.

  Its native resolution is ``LITE_PARAMS[...][2]`` (224 for Lite0); any input
  size works (global average pooling), padding is TF-SAME for the actual size.
  """
  name = f"efficientnet_lite{variant}"
  if name not in LITE_PARAMS:
    raise ValueError(f"variant: expected 0..4, got {variant!r}")
  w, d, _, p = LITE_PARAMS[name]
  return EfficientNetLite(width=w, depth=d, num_classes=num_classes, dropout=p, impl=impl)


def efficientnet_lite0(num_classes: int = 1000, impl: str | None = None) -> EfficientNetLite:
  return efficientnet_lite(0, num_classes=num_classes, impl=impl)


def efficientnet_lite1(num_classes: int = 1000, impl: str | None = None) -> EfficientNetLite:
  return efficientnet_lite(1, num_classes=num_classes, impl=impl)


def efficientnet_lite2(num_classes: int = 1000, impl: str | None = None) -> EfficientNetLite:
  return efficientnet_lite(2, num_classes=num_classes, impl=impl)


def efficientnet_lite3(num_classes: int = 1000, impl: str | None = None) -> EfficientNetLite:
  return efficientnet_lite(3, num_classes=num_classes, impl=impl)


def efficientnet_lite4(num_classes: int = 1000, impl: str | None = None) -> EfficientNetLite:
  return efficientnet_lite(4, num_classes=num_classes, impl=impl)
