"""Figures: colormap choice by sign, exact colors, upsampling, PNG written atomically."""
import matplotlib.image
import numpy as np
import pytest
from matplotlib import colormaps

from saljax import viz


def test_signed_map_is_diverging_and_centred_on_zero():
  m = np.array([[-2.0, 0.0], [1.0, 2.0]])
  rgba, info = viz.heatmap_rgba(m, percentile=100)
  assert info["signed"] and info["cmap"] == viz.SIGNED_CMAP and info["vmin"] == -info["vmax"] == -2
  cm = colormaps[viz.SIGNED_CMAP]
  np.testing.assert_allclose(rgba[0, 1], cm(0.5))  # zero sits at the centre
  np.testing.assert_allclose(rgba[0, 0], cm(0.0))
  np.testing.assert_allclose(rgba[1, 1], cm(1.0))


def test_unsigned_map_is_sequential_from_zero():
  m = np.array([[0.0, 1.0], [2.0, 4.0]])
  rgba, info = viz.heatmap_rgba(m, percentile=100)
  assert not info["signed"] and info["cmap"] == viz.UNSIGNED_CMAP
  np.testing.assert_allclose(rgba[1, 0], colormaps[viz.UNSIGNED_CMAP](0.5))
  _, forced = viz.heatmap_rgba(m, signed=True)
  assert forced["signed"] and forced["cmap"] == viz.SIGNED_CMAP


def test_reductions_and_nonfinite_maps():
  a = np.zeros((4, 4, 3))
  a[0, 0] = [1, -3, 1]
  assert viz.to_heatmap(a, "sum")[0, 0] == -1
  assert viz.to_heatmap(a, "abs_sum")[0, 0] == 5
  assert viz.to_heatmap(a, "max_abs")[0, 0] == 3
  with pytest.raises(ValueError, match="reduce"):
    viz.to_heatmap(a, "mean")
  rgba, _ = viz.heatmap_rgba(np.array([[np.nan, 1.0]]))
  assert np.isfinite(rgba).all()
  assert not viz.is_signed(np.zeros((3, 3)))


def test_overlay_upsamples_a_layer_map():
  img = np.full((32, 48, 3), 128, np.uint8)
  layer_map = np.zeros((2, 3))
  layer_map[0, 0] = 1.0
  out = viz.overlay(img, layer_map)
  assert out.shape == (32, 48, 3) and out.min() >= 0 and out.max() <= 1
  assert not np.allclose(out[0, 0], out[-1, -1])  # the hot corner differs from the cold one


def test_grid_writes_a_png_of_the_right_layout(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
  maps = {"signed": rng.normal(size=(3, 32, 32, 3)), "layer": rng.random((3, 4, 4)), "failed": None}
  path = tmp_path / "sub" / "grid.png"
  fig = viz.grid(images, maps, path, titles=["a", "b", "c"], cell=1.0, dpi=50)
  assert path.is_file() and not list(path.parent.glob(".*tmp*"))
  png = matplotlib.image.imread(path)
  assert png.ndim == 3 and png.shape[0] > png.shape[1] * 0.9  # 4 rows x 3 columns
  assert len(fig.axes) == 12


def test_bad_inputs():
  with pytest.raises(ValueError, match="H x W x 3"):
    viz.overlay(np.zeros((4, 4, 2)), np.zeros((4, 4)))
  with pytest.raises(ValueError, match="titles"):
    viz.grid([np.zeros((4, 4, 3))], {}, titles=["a", "b"])
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    viz.to_heatmap(np.zeros((1, 2, 3, 4)))


def test_signed_overlay_shows_the_photo_where_the_map_is_zero():
  img = np.full((4, 4, 3), 100, np.uint8)
  m = np.zeros((4, 4))
  m[0, 0], m[3, 3] = 1.0, -1.0
  out = viz.overlay(img, m, percentile=100)
  np.testing.assert_allclose(out[1, 1], 100 / 255)  # zero attribution: the gray photo
  assert out[0, 0, 0] > out[0, 0, 2] and out[3, 3, 2] > out[3, 3, 0]  # red positive, blue negative
