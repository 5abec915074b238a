"""Data: the bundled real photos, ImageNet preprocessing, tfds pipelines, BlockMNIST,
and the synthetic segmentation, trigger-token and tabular sets (`synthetic`)."""
from saljax.data import blockmnist, bundled_photos, pipelines, preprocessing, synthetic  # noqa: F401
from saljax.data.bundled_photos import NAMES as PHOTO_NAMES  # noqa: F401
from saljax.data.bundled_photos import photos  # noqa: F401  (the module is bundled_photos)
