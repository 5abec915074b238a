"""ImageNet preprocessing: shapes, exact normalization, crop position, bad images."""
import numpy as np
import pytest

from saljax.data import preprocessing as P


def test_constant_images_normalize_exactly():
  # (x - 127) / 128: a constant 127 image -> 0, 255 -> 1, 0 -> -127/128.
  for v, want in [(127, 0.0), (255, 1.0), (0, -127 / 128)]:
    x = P.preprocess(np.full((300, 400, 3), v, np.uint8))
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_imagenet_statistics():
  img = np.tile(np.array([123.675, 116.28, 103.53]), (230, 230, 1)).round().astype(np.uint8)
  x = P.preprocess(img, mean=P.IMAGENET_MEAN, std=P.IMAGENET_STD)
  np.testing.assert_allclose(x[0], (img[:224, :224] - np.array(P.IMAGENET_MEAN)) / P.IMAGENET_STD, atol=1e-5)


def test_center_crop_keeps_the_middle():
  # A 224 x 300 image needs no resize; the crop is columns 38..262.
  img = np.zeros((224, 300, 3), np.uint8)
  img[:, :, 0] = np.arange(300)[None, :] % 256
  x = np.asarray(P.preprocess(img, mean=(0, 0, 0), std=(1, 1, 1)))
  np.testing.assert_array_equal(x[0, 0, :, 0], np.arange(38, 262) % 256)


def test_resize_shorter_side_and_float_input():
  img = (np.random.default_rng(0).random((300, 450, 3))).astype(np.float32)
  r = P.resize_shorter(P.check_image(img), 224)
  assert r.shape == (224, 336, 3)
  a = P.preprocess(img)
  b = P.preprocess((img * 255).round().astype(np.uint8))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.02  # float [0,1] is uint8 / 255


def test_batches_and_lists_of_different_sizes():
  imgs = [np.zeros((300, 400, 3), np.uint8), np.zeros((250, 250, 3), np.uint8)]
  assert P.preprocess(imgs).shape == (2, 224, 224, 3)
  assert P.preprocess(np.zeros((3, 230, 240, 3), np.uint8)).shape == (3, 224, 224, 3)
  assert P.preprocess(imgs, image_size=32, resize_size=40).shape == (2, 32, 32, 3)


@pytest.mark.parametrize("img,err,match", [
    (np.zeros((64, 64), np.uint8), ValueError, r"H x W x 3.*\(64, 64\)"),
    (np.zeros((64, 64, 4), np.uint8), ValueError, r"\(64, 64, 4\)"),
    (np.zeros((64, 64, 3), np.int32), TypeError, "uint8 or float.*int32"),
    (np.full((64, 64, 3), 2.0, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((64, 64, 3), np.nan, np.float32), ValueError, "NaN"),
    ("chelsea.png", TypeError, "str"),
    ([], ValueError, "at least one"),
])
def test_bad_images_say_what_came(img, err, match):
  with pytest.raises(err, match=match):
    P.preprocess(img)


def test_resize_smaller_than_crop_is_refused():
  with pytest.raises(ValueError, match="resize_size"):
    P.preprocess(np.zeros((64, 64, 3), np.uint8), image_size=64, resize_size=32)


def test_display_crops_are_what_the_model_sees():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
  (crop,) = P.display_crops(img)
  assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
  x = np.asarray(P.preprocess(img, mean=(0, 0, 0), std=(1, 1, 1)))[0]
  assert np.abs(crop.astype(np.float32) - x).max() <= 0.5 + 1e-4  # only rounding differs
