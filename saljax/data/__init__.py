"""Data: the bundled real photos, ImageNet preprocessing, tfds pipelines, BlockMNIST."""
from saljax.data import blockmnist, bundled_photos, pipelines, preprocessing  # noqa: F401
from saljax.data.bundled_photos import NAMES as PHOTO_NAMES  # noqa: F401
from saljax.data.bundled_photos import photos  # noqa: F401  (the module is bundled_photos)
