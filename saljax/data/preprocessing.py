"""Image preprocessing (resize, crop, normalize) for the pretrained models.

Runs in numpy with scikit-image, outside `jit`: it prepares inputs once, and
photos come in different sizes. `preprocess` is what
``saljax.models.load_pretrained(...).preprocess`` calls.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

# ImageNet statistics in 0..255 units (torchvision's), for models trained with them.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# TF EfficientNet-Lite normalization (efficientnet_lite_builder.py).
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


def _describe(img: Any) -> str:
  if hasattr(img, "shape") and hasattr(img, "dtype"):
    return f"{type(img).__name__} of shape {tuple(img.shape)} and dtype {img.dtype}"
  return f"{type(img).__name__}"


def check_image(img: Any, *, name: str = "image") -> np.ndarray:
  """Returns `img` as a float64 HxWx3 array in 0..255, or raises.

  Accepts uint8 (0..255) or floating point (0..1, scikit-image's convention)
  RGB images ``[H, W, 3]``.

  Raises:
    TypeError: not an array, or a dtype other than uint8/float.
    ValueError: not H x W x 3, empty, non-finite, or floats outside [0, 1].
  """
  if not hasattr(img, "shape") or not hasattr(img, "dtype"):
    raise TypeError(f"{name}: expected an H x W x 3 uint8 or float array, got {_describe(img)}")
  img = np.asarray(img)
  if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
    raise ValueError(
        f"{name}: expected an RGB image H x W x 3 (convert gray images with"
        f" skimage.color.gray2rgb, drop alpha with img[..., :3]), got shape {img.shape}")
  if img.dtype == np.uint8:
    return img.astype(np.float64)
  if np.issubdtype(img.dtype, np.floating):
    if not np.isfinite(img).all():
      raise ValueError(f"{name}: expected finite values, got NaN or inf")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
      raise ValueError(
          f"{name}: float images must lie in [0, 1] (uint8 for 0..255), got values in [{lo:g}, {hi:g}]")
    return img.astype(np.float64) * 255.0
  raise TypeError(f"{name}: expected dtype uint8 or float, got {_describe(img)}")


def as_image_list(images: Any) -> list[np.ndarray]:
  """A list of checked HWC images from one HWC image, an NHWC batch, or a sequence."""
  if isinstance(images, (list, tuple)):
    if not images:
      raise ValueError("images: expected at least one image, got an empty sequence")
    return [check_image(im, name=f"images[{i}]") for i, im in enumerate(images)]
  if hasattr(images, "ndim") and images.ndim == 4:
    return [check_image(im, name=f"images[{i}]") for i, im in enumerate(np.asarray(images))]
  return [check_image(images, name="images")]


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
  """Resizes so the shorter side is `size` (bicubic, antialiased when shrinking)."""
  from skimage.transform import resize
  h, w = img.shape[:2]
  s = size / min(h, w)
  shape = (max(size, round(h * s)), max(size, round(w * s)))
  if shape == (h, w):
    return img
  return resize(img, shape, order=3, mode="edge", anti_aliasing=s < 1, preserve_range=True)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """The central `size` x `size` window (offsets rounded down, as torchvision)."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {size}")
  top, left = (h - size) // 2, (w - size) // 2
  return img[top:top + size, left:left + size]


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """``(x - mean) / std`` per channel, with x in 0..255 units."""
  return (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)


def preprocess(images: Any, *, image_size: int = 224, resize_size: int | None = None,
               mean: Sequence[float] = LITE_MEAN, std: Sequence[float] = LITE_STD):
  """uint8/float RGB images -> a float32 NHWC batch for an ImageNet model.

  Each image is resized so its shorter side is `resize_size` (default
  `image_size`), center-cropped to `image_size`, and normalized with
  `mean`/`std` (0..255 units; defaults: EfficientNet-Lite's 127/128).

  Args:
    images: one HWC image, an NHWC batch, or a sequence of HWC images of any sizes.
  Returns:
    ``jax.Array [N, image_size, image_size, 3]`` float32.
  """
  resize_size = image_size if resize_size is None else resize_size
  if resize_size < image_size:
    raise ValueError(f"resize_size: expected >= image_size ({image_size}), got {resize_size}")
  out = [normalize(center_crop(resize_shorter(im, resize_size), image_size), mean, std)
         for im in as_image_list(images)]
  return jnp.asarray(np.stack(out).astype(np.float32))


def display_crops(images: Any, *, image_size: int = 224, resize_size: int | None = None) -> list[np.ndarray]:
  """The resized, center-cropped uint8 images that `preprocess` feeds the model,
  for overlays that line up pixel for pixel with the attributions."""
  resize_size = image_size if resize_size is None else resize_size
  return [np.clip(np.round(center_crop(resize_shorter(im, resize_size), image_size)), 0, 255).astype(np.uint8)
          for im in as_image_list(images)]
