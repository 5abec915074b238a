"""saljax.plots: each figure drawn from known data and read back as pixels."""
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from saljax import plots


def _read(path):
  return mpimg.imread(os.fspath(path))[..., :3]


def _mask(img, rgb, tol=0.02):
  return np.abs(img - np.asarray(rgb)).max(-1) < tol


def test_standard_error_known_values():
  v = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
  np.testing.assert_allclose(plots.standard_error(v), [2.0 / np.sqrt(3), 0.0])
  np.testing.assert_array_equal(plots.standard_error(np.ones((1, 4))), np.zeros(4))


def test_curves_draw_each_method_in_its_color_at_its_height(tmp_path):
  rng = np.random.default_rng(0)
  k = 6
  high = 0.8 + 0.01 * rng.normal(size=(20, k))  # per-example curves [B, K]
  low = np.full(k, 0.2)                          # a mean curve [K]: no band
  stored = {"mean": np.linspace(0.7, 0.3, k), "std": np.full(k, 0.05), "n": 5}  # results.json
  path = plots.curves({"high": high, "low": low, "stored": stored}, tmp_path / "c.png",
                      ylabel="probability")
  assert path == tmp_path / "c.png"
  assert os.listdir(tmp_path) == ["c.png"]  # no temporary left
  img = _read(path)
  colors = plots.method_colors(["high", "low", "stored"])
  rows = {}
  for m, rgb in colors.items():
    hit = _mask(img, rgb)
    assert hit.sum() > 100, m
    rows[m] = np.nonzero(hit)[0]
  # The legend sits right of the axes; in the axes, 0.8 is drawn above 0.2.
  plot_cols = slice(0, int(img.shape[1] * 0.55))
  high_rows = np.nonzero(_mask(img[:, plot_cols], colors["high"]))[0]
  low_rows = np.nonzero(_mask(img[:, plot_cols], colors["low"]))[0]
  assert np.median(high_rows) < np.median(low_rows) - 50
  # A band (a light tint of the color) around the curves with a standard error only.
  def tinted(rgb):
    tint = 1 - 0.18 * (1 - np.asarray(rgb))
    return _mask(img[:, plot_cols], tint, tol=0.03).sum()
  assert tinted(colors["stored"]) > 200
  assert tinted(colors["low"]) < 20


def test_curves_bad_input(tmp_path):
  with pytest.raises(ValueError, match="one curve length"):
    plots.curves({"a": np.zeros(3), "b": np.zeros(4)}, tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"x: expected 3 positions"):
    plots.curves({"a": np.zeros(3)}, tmp_path / "x.png", x=[0, 1])
  with pytest.raises(ValueError, match=r"curves\['a'\]: expected a mapping with 'mean'"):
    plots.curves({"a": {"std": [1.0]}}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="at least one method"):
    plots.curves({}, tmp_path / "x.png")
  assert not os.listdir(tmp_path)


def _cell_rows(img, n_rows):
  """Row index (0 = top) of each ranked-color pixel's cell, from the table's extent."""
  # Whole rows of cells (anti-aliased text has stray pixels of any grey or tint).
  ranked = (_mask(img, plots.BEST_COLOR) | _mask(img, plots.WORST_COLOR)
            | _mask(img, plots.MIDDLE_COLOR))
  r = np.nonzero(ranked.sum(1) > 40)[0]
  return r.min(), (r.max() - r.min() + 1) / n_rows


def _best_cell(img, n_rows, cols=slice(None)):
  top, h = _cell_rows(img, n_rows)
  rows = np.nonzero(_mask(img[:, cols], plots.BEST_COLOR))[0]
  assert len(rows) > 300
  cells = set(((rows - top) // h).astype(int).tolist())
  assert len(cells) == 1, cells
  return cells.pop()


def test_table_best_cell_follows_the_direction(tmp_path):
  methods = ["a", "b", "c"]
  mean = np.array([[0.5], [0.9], [0.1]])
  up = _read(plots.metrics_table(mean, tmp_path / "up.png", methods=methods, metrics=["m"],
                                 sem=mean * 0.1, directions={"m": "higher"}))
  down = _read(plots.metrics_table(mean, tmp_path / "down.png", methods=methods, metrics=["m"],
                                   directions=["lower"]))
  assert _best_cell(up, 3) == 1 and _best_cell(down, 3) == 2
  # The worst cell is the other end, the middle one yellow.
  assert _mask(up, plots.WORST_COLOR).sum() > 300 and _mask(up, plots.MIDDLE_COLOR).sum() > 300
  # No direction: nothing is best, the column is grey.
  flat = _read(plots.metrics_table(mean, tmp_path / "none.png", methods=methods, metrics=["m"],
                                   directions=[None]))
  assert _mask(flat, plots.BEST_COLOR).sum() == 0 and _mask(flat, plots.NEUTRAL_COLOR).sum() > 1000


def test_table_directions_default_to_the_registry(tmp_path):
  # Same values in both columns: deletion (lower is better) and insertion
  # (higher) put green in different rows.
  mean = np.array([[0.2, 0.2], [0.6, 0.6]])
  img = _read(plots.metrics_table(mean, tmp_path / "t.png", methods=["x", "y"],
                                  metrics=["deletion", "insertion"]))
  green = _mask(img, plots.BEST_COLOR)
  ys, xs = np.nonzero(green)
  mid_x = (xs.min() + xs.max()) / 2
  top, h = _cell_rows(img, 2)
  left_rows = set(((ys[xs < mid_x] - top) // h).astype(int).tolist())
  right_rows = set(((ys[xs > mid_x] - top) // h).astype(int).tolist())
  assert left_rows == {0} and right_rows == {1}


def test_table_missing_value_and_bad_input(tmp_path):
  mean = [[0.3, None], [0.1, 0.4]]
  img = _read(plots.metrics_table(mean, tmp_path / "t.png", methods=["a", "b"], metrics=["p", "q"],
                                  directions=["higher", "higher"]))
  # Column q has one score: nothing to rank it against, so no green or red there.
  assert _mask(img, plots.BEST_COLOR).sum() > 300 and _mask(img, plots.NEUTRAL_COLOR).sum() > 300
  with pytest.raises(ValueError, match=r"mean: expected shape \(2, 2\)"):
    plots.metrics_table(np.zeros((2, 3)), tmp_path / "x.png", methods=["a", "b"],
                        metrics=["p", "q"], directions=[None, None])
  with pytest.raises(ValueError, match="'higher', 'lower' or None"):
    plots.metrics_table(np.zeros((1, 1)), tmp_path / "x.png", methods=["a"], metrics=["p"],
                        directions=["up"])
  with pytest.raises(ValueError, match="not registered"):
    plots.metrics_table(np.zeros((1, 1)), tmp_path / "x.png", methods=["a"], metrics=["mine"])


def test_sanity_curves_one_panel_per_similarity_every_method_in_each(tmp_path):
  layers = ["logits", "dense", "conv"]
  curves = {m: {"spearman_abs": [0.9 - d, 0.5, 0.2], "spearman": [0.5, 0.0, -0.2 + d],
                "ssim": [0.8, 0.4 - d, 0.1]} for m, d in (("gradient", 0.0), ("guided", 0.1))}
  errors = {m: {s: [0.05] * 3 for s in v} for m, v in curves.items()}
  path = plots.sanity_curves(curves, layers, tmp_path / "s.png", errors=errors)
  img = _read(path)
  assert img.shape[1] > 2.5 * img.shape[0]
  colors = plots.method_colors(["gradient", "guided"])
  # Each of the three panels (thirds of the width, less the legend) holds both lines.
  panel_w = img.shape[1] * 0.28
  for m, rgb in colors.items():
    cols = np.nonzero(_mask(img, rgb).any(0))[0]
    for p in range(3):
      assert ((cols > p * panel_w + 20) & (cols < (p + 1) * panel_w)).sum() > 20, (m, p)
  # The "original" tick starts every line at 1: in the first panel both lines
  # reach the same top row; without it their tops are 0.9 and 0.8.
  def tops(path):
    img = _read(path)[:, : int(panel_w)]
    return [np.nonzero(_mask(img, rgb))[0].min() for rgb in colors.values()]
  assert abs(np.subtract(*tops(path))) <= 3
  apart = plots.sanity_curves(curves, layers, tmp_path / "n.png", original=False)
  assert np.subtract(*tops(apart)) < -10  # gradient (0.9) above guided (0.8)
  with pytest.raises(ValueError, match=r"expected 2 values \(one per layer\)"):
    plots.sanity_curves(curves, layers[:2], tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"no curve for similarities \['ssim'\]"):
    plots.sanity_curves({"a": {"spearman": [0, 0, 0]}}, layers, tmp_path / "x.png",
                        similarities=["ssim"])
  with pytest.raises(ValueError, match="mode"):
    plots.sanity_curves(curves, layers, tmp_path / "x.png", mode="sideways")


def test_table_float_noise_is_a_tie(tmp_path):
  # 0.1 + 0.2 != 0.3 in floats; the two rank together (both exactly halfway,
  # the middle color), where ranking the noise would color them 1/3 and 2/3.
  mean = [[0.1], [0.1 + 0.2], [0.3], [0.5]]
  img = _read(plots.metrics_table(mean, tmp_path / "t.png", methods=list("abcd"), metrics=["m"],
                                  directions=["higher"]))
  top, h = _cell_rows(img, 4)
  rows = np.nonzero(_mask(img, plots.MIDDLE_COLOR))[0]
  assert set(((rows - top) // h).astype(int).tolist()) == {1, 2}
  assert _best_cell(img, 4) == 3
