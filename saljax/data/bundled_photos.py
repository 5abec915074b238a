"""The bundled real photos that ship with scikit-image and scikit-learn.

Six RGB photographs, all readable offline:

- scikit-image (``skimage.data``): ``astronaut`` (Eileen Collins, 512x512),
  ``chelsea`` (a cat, 300x451; ImageNet class 285 "Egyptian cat" for
  EfficientNet-Lite0), ``coffee`` (a cup, 400x600; class 967 "espresso"),
  ``rocket`` (a launch, 427x640);
- scikit-learn (``load_sample_images``): ``china`` (a temple, 427x640) and
  ``flower`` (427x640).

Each photo has a hand-drawn ground-truth box of the object of the pretrained
EfficientNet-Lite0's top class (``bundled_boxes.json``, how it was made is in
the file), for localization metrics: `boxes` maps them into the model's crop.

Left out on purpose: the gray images (``camera``, ``coins``, ``moon``,
``page``, ...) which an RGB ImageNet model would see as a colour-less edge
case, and the non-photographs (``colorwheel``, ``logo``, microscopy).
"""
from __future__ import annotations

import functools
import json
import pathlib

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
  names = _check_names(names, all_photos, "unknown photo(s)")
  return {n: all_photos[n] for n in names}


def _check_names(names, known, problem: str) -> tuple[str, ...]:
  """`names` as a tuple (default: all of `NAMES`); unknown ones raise."""
  names = NAMES if names is None else ((names,) if isinstance(names, str) else tuple(names))
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"names: {problem} {unknown}; the bundled photos are {list(NAMES)}")
  return names


BOXES_FILE = pathlib.Path(__file__).with_name("bundled_boxes.json")


@functools.lru_cache(maxsize=1)
def _load_boxes() -> dict:
  return json.loads(BOXES_FILE.read_text())


def boxes(names=None, *, image_size: int = 224, resize_size: int | None = None) -> dict[str, dict]:
  """Ground-truth boxes of the bundled photos, in the pixels of the crop that
  `saljax.data.preprocessing.preprocess` feeds the model.

  The boxes were drawn by hand on the full-size photos around the object of
  the class the pretrained EfficientNet-Lite0 ranks first (``bundled_boxes.json``
  says how); this maps them through the same resize of the shorter side to
  `resize_size` (default `image_size`) and center crop to `image_size`, and
  clips them to the crop (boxes left empty by the crop are dropped).

  Args:
    names: a subset of `NAMES` (default: all six), in that order.
    image_size, resize_size: as `preprocess`.

  Returns:
    name -> ``{"class": int, "class_name": str, "boxes": int array [K, 4]}``
    with rows ``(ymin, xmin, ymax, xmax)``, max side exclusive (the convention
    of `saljax.metrics.pointing_game`).
  """
  table = _load_boxes()["photos"]
  names = _check_names(names, table, "no ground truth for")
  resize_size = image_size if resize_size is None else resize_size
  if resize_size < image_size:
    raise ValueError(f"resize_size: expected >= image_size ({image_size}), got {resize_size}")
  out = {}
  for n in names:
    rec = table[n]
    h, w = rec["image_size"]
    # The geometry of preprocessing.resize_shorter + center_crop.
    s = resize_size / min(h, w)
    rh, rw = max(resize_size, round(h * s)), max(resize_size, round(w * s))
    top, left = (rh - image_size) // 2, (rw - image_size) // 2
    b = np.asarray(rec["boxes"], np.float64)
    y = b[:, 0::2] * rh / h - top
    x = b[:, 1::2] * rw / w - left
    crop = np.stack([np.floor(y[:, 0]), np.floor(x[:, 0]), np.ceil(y[:, 1]), np.ceil(x[:, 1])], 1)
    crop = np.clip(crop, 0, image_size).astype(np.int32)
    crop = crop[(crop[:, 2] > crop[:, 0]) & (crop[:, 3] > crop[:, 1])]
    out[n] = {"class": int(rec["class"]), "class_name": rec["class_name"], "boxes": crop}
  return out
