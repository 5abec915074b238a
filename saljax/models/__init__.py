"""The Flax model zoo and the pretrained registry.

Every zoo model is a linen module; `saljax.models.wrap` (or `Classifier`)
turns a module and its variables into a ready classifier whose ``tapped``
forward and ``layer_names`` serve layer methods, with a documented
``default_layer`` for CAMs. `load_pretrained` gives the pretrained ImageNet
EfficientNet-Lite0.
"""
from saljax.models.efficientnet import EfficientNetLite, efficientnet_lite  # noqa: F401
from saljax.models.imagenet import imagenet_classes  # noqa: F401
from saljax.models.layers import depthwise_impl, set_depthwise_impl  # noqa: F401
from saljax.models.pretrained import Classifier, load_pretrained  # noqa: F401
