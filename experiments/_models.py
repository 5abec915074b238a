"""Models the experiments build by name, from the zoo (`saljax.models`).

Every zoo model is a linen module with ``__call__(x, train=False)``, optional
``batch_stats`` and a documented ``default_layer``; the config's generic
size fields (``model.width``, ``model.depth``, ...) map onto each
constructor here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn

NAMES = ("mlp", "cnn", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_b16",
         "prompt_cam")


@dataclasses.dataclass
class Built:
  """A model built by name: its module, a name for checkpoints, and the layer
  that layer methods (CAMs) use by default."""
  name: str
  module: nn.Module
  default_layer: str | None


def build(cfg: Any, num_classes: int, image_shape: Sequence[int] | None = None) -> Built:
  """The zoo module named by ``cfg.name``, sized by the config.

  - ``mlp``: ``model.depth`` hidden layers of ``model.width``;
  - ``cnn``: convolutions of ``model.width`` and ``2 * model.width`` features;
  - ``resnet18/34/50``: base width ``model.width``; the CIFAR stem (3x3, no
    max-pool) for images of side <= 64;
  - ``vit_*``: the zoo's sizes with ``model.patch_size``, ``model.width``
    (embedding), ``model.depth`` (blocks), ``model.num_heads`` and an MLP of
    ``4 * width``;
  - ``prompt_cam``: class prompts (``model.variant``) on the ViT
    ``model.backbone`` of the sizes above (`saljax.models.prompt_cam`).
  """
  from saljax import models as zoo

  name = cfg.name
  if name == "mlp":
    module = zoo.mlp(num_classes, hidden=(int(cfg.width),) * int(cfg.depth))
  elif name == "cnn":
    module = zoo.cnn(num_classes, features=(int(cfg.width), 2 * int(cfg.width)))
  elif name in ("resnet18", "resnet34", "resnet50"):
    small = image_shape is not None and max(image_shape[:2]) <= 64
    module = getattr(zoo, name)(num_classes, small_inputs=small, width=int(cfg.width))
  elif name in ("vit_tiny", "vit_small", "vit_b16"):
    module = zoo.vit(name, num_classes, patch=int(cfg.patch_size), dim=int(cfg.width),
                     depth=int(cfg.depth), num_heads=int(cfg.num_heads), mlp_dim=4 * int(cfg.width))
  elif name == "prompt_cam":
    from saljax.models import prompt_cam as pc
    if cfg.backbone not in ("vit_tiny", "vit_small", "vit_b16"):
      raise ValueError(f"model.backbone: expected a ViT (vit_tiny, vit_small, vit_b16), got {cfg.backbone!r}")
    module = pc.prompt_cam(cfg.backbone, num_classes, variant=cfg.variant, patch=int(cfg.patch_size),
                           dim=int(cfg.width), depth=int(cfg.depth), num_heads=int(cfg.num_heads),
                           mlp_dim=4 * int(cfg.width))
  else:
    raise ValueError(
        f"model.name: expected one of {list(NAMES)} (or a pretrained name with"
        f" model.pretrained=True), got {name!r}")
  return Built(name, module, module.default_layer)
