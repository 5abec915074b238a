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
