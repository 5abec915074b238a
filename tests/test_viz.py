"""Figures: colormaps by sign mode, channel aggregation, percentile clipping,
registry displays and their overrides, and the PNG's pixels (read back from
the file, not only checked for existence)."""
import re

import matplotlib.image
import numpy as np
import pytest

from saljax import explainers, viz

# The base photo of the pixel tests is uniform mid-gray (128); overlays show it
# in gray at half brightness (viz._overlay), so a zero map shows 64 / 255.
GRAY = 0.5 * 128 / 255


def test_signed_map_is_diverging_and_centred_on_zero():
  m = np.array([[-2.0, 0.0], [1.0, 2.0]])
  rgba, info = viz.heatmap_rgba(m, percentile=100)
  assert info["signed"] and info["cmap"] == viz.DIVERGING_CMAP and info["vmin"] == -info["vmax"] == -2
  cm = viz.colormap(viz.DIVERGING_CMAP)
  np.testing.assert_allclose(rgba[0, 1], cm(0.5))  # zero sits at the centre
  np.testing.assert_allclose(rgba[0, 0], cm(0.0))
  np.testing.assert_allclose(rgba[1, 1], cm(1.0))
  # The extremes are saturated (visible at overlay opacity), the centre white.
  lo, mid, hi = cm(0.0), cm(0.5), cm(1.0)
  assert hi[0] > 0.9 and hi[2] < 0.2 and lo[2] > 0.9 and lo[0] < 0.2 and min(mid[:3]) > 0.95


def test_unsigned_map_is_sequential_from_zero():
  m = np.array([[0.0, 1.0], [2.0, 4.0]])
  rgba, info = viz.heatmap_rgba(m, percentile=100)
  assert not info["signed"] and info["cmap"] == viz.SEQUENTIAL_CMAP and info["vmin"] == 0
  np.testing.assert_allclose(rgba[1, 0], viz.colormap(viz.SEQUENTIAL_CMAP)(0.5))
  _, forced = viz.heatmap_rgba(m, signed=True)
  assert forced["signed"] and forced["cmap"] == viz.DIVERGING_CMAP
  # "range" starts at the map's minimum: an offset map (RISE) uses all colors.
  _, rng = viz.heatmap_rgba(m + 10, sign="range", percentile=100)
  assert (rng["vmin"], rng["vmax"]) == (10, 14)
  np.testing.assert_allclose(rng["strength"], m / 4)


def test_reductions_and_nonfinite_maps():
  a = np.zeros((4, 4, 3))
  a[0, 0] = [1, -3, 1]
  assert viz.to_heatmap(a, "sum")[0, 0] == -1
  assert viz.to_heatmap(a, "abs_sum")[0, 0] == 5
  assert viz.to_heatmap(a, "max_abs")[0, 0] == 3
  np.testing.assert_allclose(viz.to_heatmap(a, "l2")[0, 0], np.sqrt(11))
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


def test_signed_overlay_shows_the_photo_where_the_map_is_zero():
  img = np.full((4, 4, 3), 100, np.uint8)
  m = np.zeros((4, 4))
  m[0, 0], m[3, 3] = 1.0, -1.0
  out = viz.overlay(img, m, percentile=100)
  np.testing.assert_allclose(out[1, 1], 0.5 * 100 / 255)  # zero attribution: the dimmed photo
  assert out[0, 0, 0] > out[0, 0, 2] and out[3, 3, 2] > out[3, 3, 0]  # red positive, blue negative


# --- Pixel statistics of rendered PNGs -----------------------------------------

S = 64  # map and image size; quadrants are 32 x 32


def _blob(cy, cx, sigma=5.0):
  yy, xx = np.mgrid[:S, :S]
  return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def _render(maps, tmp_path, **kw):
  """Renders a one-image grid to PNG and returns {name: the cell's pixels [h, w, 3]}
  read back from the file."""
  img = np.full((S, S, 3), 128, np.uint8)
  path = tmp_path / "g.png"
  fig = viz.grid([img], maps, path, cell=1.0, dpi=64, legend=False, **kw)
  png = matplotlib.image.imread(path)[..., :3]
  h, w = png.shape[:2]
  cells = {}
  for ax in fig.axes[1:]:  # after the photo: one axes per row, in drawing order
    label = ax.texts[0].get_text().split(" (")[0]
    p = ax.get_position()
    cells[label] = png[int(round((1 - p.y1) * h)):int(round((1 - p.y0) * h)),
                       int(round(p.x0 * w)):int(round(p.x1 * w))]
  return cells


def _quadrant(cell, q, margin=0.2):
  """Quadrant q (0 TL, 1 TR, 2 BL, 3 BR) less `margin` of its size, half on each
  side (resampling, the frame; 0.75: its central quarter, around a blob)."""
  h, w = cell.shape[:2]
  r, c = divmod(q, 2)
  y0, x0 = r * h // 2, c * w // 2
  my, mx = int(margin * h / 4), int(margin * w / 4)
  return cell[y0 + my:y0 + h // 2 - my, x0 + mx:x0 + w // 2 - mx]


def _color(region):
  """Mean distance of a region's pixels from the gray base photo."""
  return float(np.abs(region - GRAY).max(-1).mean())


def test_percentile_clipping_keeps_a_blob_visible_despite_outliers(tmp_path):
  m = _blob(16, 16)[..., None] * np.ones(3)
  m[48:50, 48:50] = 1000.0  # 4 outlier pixels of 4096 (0.1 %), bottom right
  cells = _render({"clipped": [m], "unclipped": [m]}, tmp_path,
                  displays={"unclipped": {"percentile": 100.0}})
  c = cells["clipped"]
  assert _color(_quadrant(c, 0, margin=0.75)) > 0.25  # the blob's centre: strongly colored
  for q in (1, 2):
    assert _color(_quadrant(c, q)) < 0.01  # elsewhere: the photo
  # Without clipping the outliers set the scale and the blob fades into the photo.
  assert _color(_quadrant(cells["unclipped"], 0, margin=0.75)) < 0.05


def test_sign_modes_select_their_part(tmp_path):
  m = _blob(16, 16) - _blob(48, 48)  # positive top left, negative bottom right
  maps = {s: [m] for s in ("all", "positive", "negative", "absolute_value")}
  cells = _render(maps, tmp_path, displays={s: {"sign": s, "aggregation": "sum"} for s in maps})
  tl = {s: _quadrant(cells[s], 0, margin=0.75) for s in maps}
  br = {s: _quadrant(cells[s], 3, margin=0.75) for s in maps}
  assert _color(tl["positive"]) > 0.25 and _color(br["positive"]) < 0.01
  assert _color(br["negative"]) > 0.25 and _color(tl["negative"]) < 0.01
  assert _color(tl["absolute_value"]) > 0.25 and _color(br["absolute_value"]) > 0.25
  red, blue = tl["all"].mean((0, 1)), br["all"].mean((0, 1))
  assert red[0] - red[2] > 0.3 and blue[2] - blue[0] > 0.3  # red positive, blue negative
  for s in maps:
    assert _color(_quadrant(cells[s], 1)) < 0.01  # no map: the photo


def test_abs_sum_shows_channels_that_cancel_in_the_sum(tmp_path):
  m = np.zeros((S, S, 3))
  m[..., 0], m[..., 1] = _blob(16, 16), -_blob(16, 16)  # the channel sum is 0 everywhere
  assert np.abs(viz.to_heatmap(m, "sum")).max() == 0 and viz.to_heatmap(m, "abs_sum").max() > 1.9
  # A registered pixel method defaults to abs_sum; an override to the signed sum wins.
  cells = _render({"gradient": [m], "integrated_gradients": [m]}, tmp_path,
                  displays={"integrated_gradients": {"sign": "all", "aggregation": "sum"}})
  assert _color(_quadrant(cells["gradient"], 0, margin=0.75)) > 0.25
  assert _color(cells["integrated_gradients"][2:-2, 2:-2]) < 0.01


def test_every_explainer_has_a_display_and_its_paper_year():
  for name in explainers.names():
    e = explainers.entry(name)
    assert isinstance(e.display, viz.Display), name
    # The year is the first one the docstring cites.
    assert e.year == int(re.search(r"\b(?:19|20)\d\d\b", e.fn.__doc__).group(0)), name
  # Pixel maps of gradient methods: PAIR's convention; CAMs: their positive part.
  assert explainers.entry("integrated_gradients").display == viz.Display("abs_sum", "absolute_value", 99)
  assert explainers.entry("gradcam").display.sign == "positive"


def test_user_overrides_win_over_the_registry_default():
  d = viz.display_for("gradient", sign="all", percentile=95)
  assert (d.aggregation, d.sign, d.percentile) == ("abs_sum", "all", 95)
  assert viz.display_for("gradient", display={"aggregation": "sum", "sign": "all"}).aggregation == "sum"
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
  a = rng.normal(size=(16, 16, 3))
  default = viz.overlay(img, a, method="gradient")
  signed = viz.overlay(img, a, method="gradient", sign="all", reduce="sum")
  np.testing.assert_allclose(signed, viz.overlay(img, a, display=viz.Display("sum", "all")))
  assert np.abs(default - signed).max() > 0.1


def test_grid_groups_rows_by_family_with_headers_years_and_legend(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)] * 2
  names = ["gradcam", "smoothgrad", "lrp", "gradient", "mine"]  # not in family order
  maps = {n: rng.normal(size=(2, 4, 4) if n == "gradcam" else (2, 16, 16, 3)) for n in names}
  fig = viz.grid(images, maps, tmp_path / "g.png", cell=0.6, dpi=40,
                 displays={"lrp": {"sign": "all", "aggregation": "sum"}})
  rows = [ax for ax in fig.axes if ax.texts]  # the first cell of each method's row
  rows.sort(key=lambda ax: -ax.get_position().y0)
  labels = [ax.texts[0].get_text() for ax in rows]
  assert labels == ["gradient (2014)", "smoothgrad (2017)", "lrp (2015)", "gradcam (2017)", "mine"]
  headers = [t.get_text() for t in fig.texts if t.get_fontweight() == "bold"]
  assert headers == [viz.FAMILY_TITLES[f] for f in ("gradients", "propagation", "cam", "other")]
  legend = [ax.get_title() for ax in fig.axes if ax.get_title().startswith(("signed", "magn"))]
  assert len(legend) == 2  # lrp is drawn signed, the rest as magnitudes
  assert "signed" in rows[2].texts[1].get_text() and "magnitude" in rows[0].texts[1].get_text()


def test_grid_writes_a_png_of_the_right_layout(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
  maps = {"signed": rng.normal(size=(3, 32, 32, 3)), "layer": rng.random((3, 4, 4)), "failed": None}
  path = tmp_path / "sub" / "grid.png"
  fig = viz.grid(images, maps, path, titles=["a", "b", "c"], cell=1.0, dpi=50)
  assert path.is_file() and not list(path.parent.glob(".*tmp*"))
  png = matplotlib.image.imread(path)
  assert png.ndim == 3 and png.shape[0] > png.shape[1] * 0.9  # 4 rows x 3 columns
  assert len(fig.axes) == 1 + 12  # a legend strip, the photos, 3 rows of 3


def test_figure_has_a_colorbar_in_map_units(tmp_path):
  m = np.linspace(0, 2, 64).reshape(8, 8)
  fig = viz.figure(np.full((8, 8, 3), 128, np.uint8), m, tmp_path / "f.png", percentile=100)
  assert (tmp_path / "f.png").is_file() and len(fig.axes) == 2
  assert fig.axes[1].get_ylim() == pytest.approx((0, 2))


def test_bad_inputs():
  with pytest.raises(ValueError, match="H x W x 3"):
    viz.overlay(np.zeros((4, 4, 2)), np.zeros((4, 4)))
  with pytest.raises(ValueError, match="titles"):
    viz.grid([np.zeros((4, 4, 3))], {}, titles=["a", "b"])
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    viz.to_heatmap(np.zeros((1, 2, 3, 4)))
  with pytest.raises(ValueError, match="sign"):
    viz.Display(sign="both")
  with pytest.raises(ValueError, match="aggregation"):
    viz.overlay(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), reduce="mean")
  with pytest.raises(ValueError, match="percentile"):
    viz.Display(percentile=0)
  with pytest.raises(ValueError, match="displays"):
    viz.grid([np.zeros((4, 4, 3))], {"a": None}, displays={"b": {}})
  with pytest.raises(ValueError, match="one per image"):
    viz.grid([np.zeros((4, 4, 3))], {"a": np.zeros((2, 4, 4))})


def test_shown_values_follow_the_display():
  a = np.zeros((2, 4, 4, 3))
  a[0, 1, 1] = [1.0, -3.0, 0.5]   # abs_sum 4.5, sum -1.5
  a[1, 2, 3] = [2.0, 2.0, 2.0]
  m = viz.shown_values(a, "gradient")  # abs_sum magnitude (PAIR)
  assert m.shape == (2, 4, 4) and m[0, 1, 1] == 4.5 and m[1, 2, 3] == 6.0 and m.min() == 0
  s = viz.shown_values(a, "gradient", sign="all", aggregation="sum")
  assert s[0, 1, 1] == -1.5
  p = viz.shown_values(a, "gradient", sign="positive", aggregation="sum")
  assert p[0, 1, 1] == 0.0 and p[1, 2, 3] == 6.0
  r = viz.shown_values(np.full((1, 3, 3), 5.0) + np.eye(3)[None], "rise")  # 'range': minus the min
  np.testing.assert_allclose(r[0], np.eye(3))
  # A 7x7 layer map is upsampled to the photo's grid, its maximum where it was.
  cam = np.zeros((1, 7, 7))
  cam[0, 5, 1] = 1.0
  up = viz.shown_values(cam, "gradcam", shape=(224, 224))
  iy, ix = np.unravel_index(up[0].argmax(), (224, 224))
  assert up.shape == (1, 224, 224) and abs(iy - 5.5 * 32) <= 32 and abs(ix - 1.5 * 32) <= 32
  with pytest.raises(ValueError, match="batch"):
    viz.shown_values(np.zeros((4, 4)), "gradient")
