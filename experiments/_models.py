"""Models the experiments build by name, as linen modules with a
``__call__(x, train: bool = False)`` and optional ``batch_stats``.

The zoo (`saljax.models`) is used where it has the model; the small modules
here cover what the experiments need when it does not (and the tiny models
of the smoke tests).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """ReLU MLP on flattened inputs (Shah et al. 2021 use MLPs on BlockMNIST)."""
  num_classes: int
  width: int = 256
  depth: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for i in range(self.depth):
      x = nn.relu(nn.Dense(self.width, name=f"dense_{i}")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class CNN(nn.Module):
  """conv-pool-conv-pool-dense-dense, Adebayo et al.'s MNIST CNN shape."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(self.width, (5, 5), name="conv1")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(2 * self.width, (5, 5), name="conv2")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(8 * self.width, name="fc1")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class BasicBlock(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
    y = norm("bn2")(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, name="proj")(x)
      x = norm("proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet with basic blocks (He et al. 2016, arXiv:1512.03385), CIFAR stem
  (3x3 conv, no max-pool) for small images."""
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (3, 3), use_bias=False, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = BasicBlock(self.width * 2 ** i, 2 if (i > 0 and j == 0) else 1,
                       name=f"stage{i + 1}_block{j}")(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


class EncoderBlock(nn.Module):
  width: int
  num_heads: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.LayerNorm(name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn")(y, y)
    x = x + y
    y = nn.LayerNorm(name="ln2")(x)
    y = nn.Dense(4 * self.width, name="mlp1")(y)
    y = nn.Dense(self.width, name="mlp2")(nn.gelu(y))
    return x + y


class ViT(nn.Module):
  """A small ViT (Dosovitskiy et al. 2021, arXiv:2010.11929): class token,
  learned position embeddings, pre-norm blocks."""
  num_classes: int
  width: int = 192
  depth: int = 6
  num_heads: int = 3
  patch_size: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), (p, p), name="patch_embed")(x)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)), x], axis=1)
    x = x + self.param("pos_embed", nn.initializers.normal(0.02), (1, h * w + 1, c))
    for i in range(self.depth):
      x = EncoderBlock(self.width, self.num_heads, name=f"block{i}")(x, train)
    x = nn.LayerNorm(name="ln_f")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])


@dataclasses.dataclass
class Built:
  """A model built by name: its module, a name for checkpoints, and the layer
  that layer methods (CAMs) use by default."""
  name: str
  module: nn.Module
  default_layer: str | None


def build(cfg: Any, num_classes: int) -> Built:
  """The linen module named by ``cfg.name`` (mlp, cnn, resnet18, resnet34, vit_tiny)."""
  name = cfg.name
  if name == "mlp":
    return Built(name, MLP(num_classes, cfg.width, cfg.depth), f"dense_{cfg.depth - 1}")
  if name == "cnn":
    return Built(name, CNN(num_classes, cfg.width), "conv2")
  if name in ("resnet18", "resnet34"):
    stages = (2, 2, 2, 2) if name == "resnet18" else (3, 4, 6, 3)
    return Built(name, ResNet(num_classes, stages, cfg.width), "stage4_block1")
  if name == "vit_tiny":
    return Built(name, ViT(num_classes, cfg.width, cfg.depth, cfg.num_heads, cfg.patch_size),
                 f"block{max(cfg.depth - 2, 0)}")
  raise ValueError(
      f"model.name: expected one of ['mlp', 'cnn', 'resnet18', 'resnet34', 'vit_tiny'] (or a"
      f" pretrained name with model.pretrained=True), got {name!r}")
