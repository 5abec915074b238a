"""The bundled photos: six uint8 RGB images, read offline, read-only."""
import importlib

import numpy as np
import pytest

import saljax
P = importlib.import_module("saljax.data.bundled_photos")


def test_all_photos_are_uint8_rgb():
  imgs = saljax.data.photos()
  assert list(imgs) == list(P.NAMES) == ["astronaut", "chelsea", "coffee", "rocket", "china", "flower"]
  for name, img in imgs.items():
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3, name
    assert img.shape[0] >= 224 and img.shape[1] >= 224
    assert img.std() > 10  # a real picture, not a blank
  assert imgs["chelsea"].shape == (300, 451, 3)
  assert imgs["china"].shape == (427, 640, 3)


def test_subset_and_read_only():
  sub = P.photos(["coffee", "chelsea"])
  assert list(sub) == ["coffee", "chelsea"]
  with pytest.raises(ValueError, match="read-only"):
    sub["coffee"][0, 0, 0] = 1


def test_unknown_name_lists_the_bundled_ones():
  with pytest.raises(ValueError, match="astronaut"):
    P.photos(["lena"])


def test_boxes_follow_the_crop_of_preprocess():
  # Paint each photo's boxes white on black, crop it as the model's input is
  # cropped, and find the white pixels: the mapped boxes must cover exactly them
  # (to the pixel the resize blurs at the edges).
  from scipy import ndimage

  from saljax.data import preprocessing
  table = P._load_boxes()["photos"]
  for size, resize in ((224, None), (192, 220)):
    mapped = P.boxes(image_size=size, resize_size=resize)
    for name, img in P.photos().items():
      assert list(img.shape[:2]) == table[name]["image_size"]
      canvas = np.zeros(img.shape, np.uint8)
      for y0, x0, y1, x1 in table[name]["boxes"]:
        canvas[y0:y1, x0:x1] = 255
      crop = preprocessing.display_crops([canvas], image_size=size, resize_size=resize)[0][..., 0]
      want = np.zeros((size, size), bool)
      for y0, x0, y1, x1 in mapped[name]["boxes"]:
        assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
        want[y0:y1, x0:x1] = True
      # Two pixels of slack at the edges (rounded outwards, blurred by the resize).
      core = ndimage.binary_erosion(want, iterations=2)
      far = ~ndimage.binary_dilation(want, iterations=2)
      assert (crop[core] > 127).all(), name
      assert (crop[far] < 128).all(), name


def test_boxes_are_for_the_pretrained_top_class_and_reject_unknown_names():
  b = P.boxes(["coffee", "chelsea"])
  assert list(b) == ["coffee", "chelsea"]
  assert b["coffee"]["class"] == 967 and b["chelsea"]["class"] == 285
  assert b["coffee"]["boxes"].dtype == np.int32 and b["coffee"]["boxes"].shape == (1, 4)
  with pytest.raises(ValueError, match="no ground truth"):
    P.boxes(["camera"])
  with pytest.raises(ValueError, match="resize_size"):
    P.boxes(image_size=224, resize_size=200)
