"""The bundled real photos that ship with scikit-image and scikit-learn.

Six RGB photographs, all readable offline:

- scikit-image (``skimage.data``): ``astronaut`` (Eileen Collins, 512x512),
  ``chelsea`` (a cat, 300x451; ImageNet class 285 "Egyptian cat" for
  EfficientNet-Lite0), ``coffee`` (a cup, 400x600; class 967 "espresso"),
  ``rocket`` (a launch, 427x640);
- scikit-learn (``load_sample_images``): ``china`` (a temple, 427x640) and
  ``flower`` (427x640).

Left out on purpose: the gray images (``camera``, ``coins``, ``moon``,
``page``, ...) which an RGB ImageNet model would see as a colour-less edge
case, and the non-photographs (``colorwheel``, ``logo``, microscopy).
"""
from __future__ import annotations

import functools

import numpy as np

SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket")
SKLEARN = ("china", "flower")
NAMES = SKIMAGE + SKLEARN


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, np.ndarray]:
  import skimage.data
  from sklearn.datasets import load_sample_images
  out = {name: np.asarray(getattr(skimage.data, name)()) for name in SKIMAGE}
  sample = load_sample_images()
  for fname, img in zip(sample.filenames, sample.images):
    stem = fname.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]
    if stem in SKLEARN:
      out[stem] = np.asarray(img)
  missing = [n for n in NAMES if n not in out]
  if missing:
    raise RuntimeError(f"photos: could not find {missing} in scikit-image / scikit-learn")
  for name, img in out.items():
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
      raise RuntimeError(f"photos: {name} is {img.shape} {img.dtype}, expected H x W x 3 uint8")
    img.setflags(write=False)
  return out


def photos(names=None) -> dict[str, np.ndarray]:
  """The bundled photos: name -> uint8 RGB array ``[H, W, 3]`` (read-only).

  Args:
    names: a subset of `NAMES` to return, in that order (default: all six).
  """
  all_photos = _load()
  if names is None:
    names = NAMES
  if isinstance(names, str):
    names = (names,)
  unknown = [n for n in names if n not in all_photos]
  if unknown:
    raise ValueError(f"names: unknown photo(s) {unknown}; the bundled photos are {list(NAMES)}")
  return {n: all_photos[n] for n in names}
