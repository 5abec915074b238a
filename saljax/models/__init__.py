"""The Flax model zoo and the pretrained registry.

Every zoo model is a linen module with ``__call__(x, train=False)`` and a
documented ``default_layer`` (the CAM layer). `wrap` turns a module and its
variables into a `Classifier`, whose ``tapped`` forward and ``layer_names``
serve layer methods; `load_pretrained` gives the pretrained ImageNet
EfficientNet-Lite0 as one.

Constructors: `mlp`, `cnn`, `resnet18`, `resnet34`, `resnet50`, `vit_tiny`,
`vit_small`, `vit_b16` (`vit` for custom sizes), `efficientnet_lite0` ..
`efficientnet_lite4`, `tiny_efficientnet`; beyond image classification,
`unet` (per-pixel logits; `pooled` for ``[B, K]``) and `text_classifier`
(int32 tokens; `token_attribution`). `saljax.models.quick` trains these and a
tabular `mlp` in seconds on the data of `saljax.data.synthetic`
(`train_segmentation`, `train_text`, `train_tabular`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from saljax.models.cnn import CNN, cnn  # noqa: F401
from saljax.models.efficientnet import (  # noqa: F401
    EfficientNetLite, efficientnet_lite, efficientnet_lite0, efficientnet_lite1,
    efficientnet_lite2, efficientnet_lite3, efficientnet_lite4, tiny_efficientnet)
from saljax.models.imagenet import imagenet_classes  # noqa: F401
from saljax.models.layers import depthwise_impl, set_depthwise_impl  # noqa: F401
from saljax.models.mlp import MLP, mlp  # noqa: F401
from saljax.models.pretrained import Classifier, load_pretrained  # noqa: F401
# The class only: the function `prompt_cam` would hide the module `saljax.models.prompt_cam`.
from saljax.models.prompt_cam import PromptCAM  # noqa: F401
from saljax.models.resnet import ResNet, resnet18, resnet34, resnet50  # noqa: F401
from saljax.models.text import TextClassifier, text_classifier, token_attribution  # noqa: F401
from saljax.models.unet import UNet, pooled, unet  # noqa: F401
from saljax.models.vit import ViT, vit, vit_b16, vit_small, vit_tiny  # noqa: F401


def init(module, input_shape: Sequence[int], *, seed: int = 0, input_dtype=jnp.float32):
  """Random variables of `module` for inputs ``[1, *input_shape]``, compiled once.

  Uses the ``"rbg"`` generator: XLA:CPU compiles threefry slowly, one
  initializer at a time (tens of seconds for a ResNet on a busy CPU).
  `input_dtype` is float32 for images and features, an integer type for
  token ids (`text_classifier`).
  """
  x = jnp.zeros((1, *input_shape), input_dtype)
  return jax.jit(lambda k: module.init(k, x))(jax.random.key(seed, impl="rbg"))


def wrap(module, variables=None, *, input_shape: Sequence[int], class_names=None,
         name: str | None = None, seed: int = 0, input_dtype=None) -> Classifier:
  """A `Classifier` of a zoo module (random variables from `init` when None).

  `input_dtype` defaults to the module's own ``input_dtype`` attribute when it
  has one (int32 for `text_classifier`), else float32.
  """
  if input_dtype is None:
    input_dtype = getattr(module, "input_dtype", jnp.float32)
  if variables is None:
    variables = init(module, input_shape, seed=seed, input_dtype=input_dtype)
  return Classifier(module, variables, input_shape=input_shape, default_layer=module.default_layer,
                    class_names=class_names, name=name, input_dtype=input_dtype)


# Last: quick's trainers call `wrap` above.
from saljax.models import quick  # noqa: E402,F401
from saljax.models.quick import (  # noqa: E402,F401
    Trained, train_segmentation, train_tabular, train_text)
