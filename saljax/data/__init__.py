"""Data: the bundled real photos, ImageNet preprocessing, tfds pipelines, BlockMNIST."""
from saljax.data import blockmnist, photos as _photos, pipelines, preprocessing  # noqa: F401


def photos():
  """The bundled real photos (scikit-image, scikit-learn): name -> uint8 HWC array."""
  return _photos.photos()
