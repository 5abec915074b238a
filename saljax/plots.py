"""Figures of evaluation results: removal curves per method, a metric x method
heat table, and the sanity checks' similarity-vs-randomized-layer curves.

Every function is pure: it takes numpy arrays or dicts of them (what
`saljax.metrics` return, or what `experiments.evaluate` / `experiments.sanity`
store in their JSON) and a path, draws a `matplotlib.figure.Figure` on the Agg
canvas (never through pyplot, so the user's backend is untouched and nothing
opens a window), writes the PNG atomically (a temporary name, then a rename:
`saljax.viz.save_figure`) and returns the path::

    out = saljax.metrics.deletion(f, x, maps["gradient"], y)
    plots.curves({"gradient": out["curve"], ...}, "deletion.png", ylabel="probability")

A method keeps one color in every figure (`method_colors`), so the curves and
the sanity panels of one run read together.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from saljax.viz import save_figure

__all__ = ["method_colors", "curves", "metrics_table", "sanity_curves", "standard_error",
           "BEST_COLOR", "MIDDLE_COLOR", "WORST_COLOR", "NEUTRAL_COLOR", "MISSING_COLOR",
           "SIMILARITY_TITLES"]

# The heat table's colors: light enough that black cell text stays readable at
# both ends (matplotlib's RdYlGn ends are near-black red and green).
BEST_COLOR = (0.30, 0.69, 0.31)      # green: best in its column
MIDDLE_COLOR = (1.00, 0.92, 0.55)    # yellow
WORST_COLOR = (0.94, 0.42, 0.38)     # red: worst in its column
NEUTRAL_COLOR = (0.88, 0.88, 0.88)   # a metric without a direction (nothing is better)
MISSING_COLOR = (1.00, 1.00, 1.00)   # no score (the metric could not run)

# Panel titles of `sanity_curves`, by the similarity names experiments.sanity uses.
SIMILARITY_TITLES = {
    "spearman_abs": "Spearman rank correlation (absolute)",
    "spearman": "Spearman rank correlation (signed)",
    "ssim": "SSIM",
}


def method_colors(methods: Sequence[str]) -> dict[str, tuple[float, float, float]]:
  """One RGB color per method, in order: matplotlib's ``tab10`` (distinct,
  readable on white), ``tab20`` beyond 10 methods, then repeating."""
  from matplotlib import colormaps
  methods = list(methods)
  cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
  return {m: tuple(float(c) for c in cmap(i % cmap.N)[:3]) for i, m in enumerate(methods)}


def standard_error(values: Any, axis: int = 0) -> np.ndarray:
  """The standard error of the mean along `axis`: the sample standard
  deviation (``ddof=1``) over ``sqrt(n)``; zeros when ``n == 1`` (no spread to
  estimate, so no band rather than NaN)."""
  v = np.asarray(values, np.float64)
  n = v.shape[axis]
  if n < 2:
    return np.zeros(np.delete(v.shape, axis))
  return v.std(axis=axis, ddof=1) / np.sqrt(n)


def _mean_and_sem(name: str, value: Any) -> tuple[np.ndarray, np.ndarray | None]:
  """(mean [K], s.e. [K] or None) from per-example curves ``[B, K]``, a mean
  curve ``[K]``, or a mapping with ``mean`` and ``sem`` (or ``std`` and ``n``)."""
  if isinstance(value, Mapping):
    if "mean" not in value:
      raise ValueError(f"curves[{name!r}]: expected a mapping with 'mean' (and 'sem', or 'std' and"
                       f" 'n'), got keys {sorted(value)}")
    mean = np.asarray(value["mean"], np.float64)
    if value.get("sem") is not None:
      sem = np.asarray(value["sem"], np.float64)
    elif value.get("std") is not None and value.get("n") is not None:
      # `std` as numpy computes it by default (ddof=0), as evaluate's tables do.
      n = int(value["n"])
      sem = (np.asarray(value["std"], np.float64) / np.sqrt(n - 1) if n > 1
             else np.zeros_like(mean))
    else:
      sem = None
  else:
    a = np.asarray(value, np.float64)
    if a.ndim == 2:
      mean, sem = a.mean(0), standard_error(a, 0)
    elif a.ndim == 1:
      mean, sem = a, None
    else:
      raise ValueError(f"curves[{name!r}]: expected per-example curves [B, K] or a mean curve [K],"
                       f" got shape {a.shape}")
  if mean.ndim != 1 or mean.size == 0:
    raise ValueError(f"curves[{name!r}]: expected a mean curve of shape [K], got shape {mean.shape}")
  if sem is not None and sem.shape != mean.shape:
    raise ValueError(f"curves[{name!r}]: the standard error has shape {sem.shape}, the mean"
                     f" {mean.shape}")
  return mean, sem


def _new_figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str | os.PathLike, dpi: int) -> pathlib.Path:
  if path is None:
    raise ValueError("path: expected where to write the PNG, got None")
  return save_figure(fig, path, dpi=dpi)


def _tie_key(x: float) -> float:
  """`x` to 6 significant digits: values that differ only beyond float32's
  precision (about 7 digits; 14/168 averaged in float32 and in float64) tie."""
  return float(f"{x:.6g}")


def _distinct_digits(values: Any, minimum: int, maximum: int = 6) -> int:
  """The fewest decimals (at least `minimum`) that print different finite
  `values` differently, so a ranking is never drawn between equal-looking
  numbers; at most `maximum`."""
  v = [x for x in np.ravel(np.asarray(values, np.float64)) if np.isfinite(x)]
  distinct = len({_tie_key(x) for x in v})
  for d in range(minimum, maximum + 1):
    if len({f"{x:.{d}f}" for x in v}) == distinct:
      return d
  return maximum


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
  return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2) if len(y) > 1 else float(y[0])


def curves(curves: Mapping[str, Any], path: str | os.PathLike, *, x: Any = None,
           scores: Mapping[str, float] | None = None, score_label: str = "AUC",
           title: str | None = None, xlabel: str = "fraction of features removed",
           ylabel: str = "score", colors: Mapping[str, Any] | None = None,
           log_x: bool = False, dpi: int = 100) -> pathlib.Path:
  """Score vs fraction removed (or inserted): one line per method, the mean
  over examples with a light band of +-1 standard error, the method's score
  in the legend (deletion / insertion curves, Petsiuk et al. 2018, RISE; pixel
  flipping, ROAD).

  Args:
    curves: method -> per-example curves ``[B, K]`` (a curve metric's
      ``"curve"``; mean and standard error taken here), a mean curve ``[K]``
      (no band), or a mapping ``{"mean": [K], "sem": [K]}`` (or ``"std"``
      with ddof 0 and ``"n"``, as experiments.evaluate's ``results.json``
      stores them). Methods are drawn in this order.
    path: where to write the PNG.
    x: the K positions; default ``linspace(0, 1, K)``, the uniform grid of
      deletion / insertion / pixel flipping (step i has changed i/steps of the
      features).
    scores: method -> the number shown in the legend (e.g. the metric's mean
      score); default the trapezoid area under the mean curve over `x`, which
      for the default grid is the deletion / insertion AUC.
    score_label: what the legend calls that number ("AUC"; "mean" for ROAD).
    title, xlabel, ylabel: text of the axes.
    colors: method -> a matplotlib color; default `method_colors`.
    log_x: a logarithmic x axis (sensitivity-n's subset sizes).
    dpi: resolution of the PNG.
  Returns:
    `path` as a `pathlib.Path`.
  """
  if not curves:
    raise ValueError("curves: expected at least one method, got none")
  stats = {m: _mean_and_sem(m, v) for m, v in curves.items()}
  k = {m: len(mean) for m, (mean, _) in stats.items()}
  if len(set(k.values())) != 1:
    raise ValueError(f"curves: expected one curve length for every method, got {k}")
  k = next(iter(k.values()))
  xs = np.linspace(0.0, 1.0, k) if x is None else np.asarray(x, np.float64).reshape(-1)
  if xs.shape != (k,):
    raise ValueError(f"x: expected {k} positions (one per curve point), got shape {xs.shape}")
  colors = dict(method_colors(list(curves)), **(colors or {}))
  values = {m: _trapezoid(mean, xs) if scores is None or scores.get(m) is None else float(scores[m])
            for m, (mean, _) in stats.items()}
  digits = _distinct_digits(list(values.values()), 3)
  # Lighter bands when many overlap (their blend turns muddy).
  alpha = 0.18 if len(stats) <= 3 else 0.1
  fig = _new_figure(5.6, 3.8)
  ax = fig.add_subplot(1, 1, 1)
  for m, (mean, sem) in stats.items():
    if sem is not None and np.any(sem > 0):
      ax.fill_between(xs, mean - sem, mean + sem, color=colors[m], alpha=alpha, lw=0)
    ax.plot(xs, mean, color=colors[m], lw=1.8, marker="o" if k <= 12 else None, ms=3,
            label=f"{m}  ({score_label} {values[m]:.{digits}f})")
  if log_x:
    ax.set_xscale("log")
  else:
    ax.set_xlim(xs.min(), xs.max())
  ax.set_xlabel(xlabel, fontsize=9)
  ax.set_ylabel(ylabel, fontsize=9)
  ax.tick_params(labelsize=8)
  ax.grid(True, color="0.9", lw=0.6)
  ax.set_axisbelow(True)
  if title:  # from the axes' left edge: a long title runs over the legend's side, not off the figure
    ax.set_title(title, fontsize=10, loc="left")
  # Outside the axes: a legend inside would hide the curves it names.
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
            title="mean, band: ±1 s.e.", title_fontsize=7)
  fig.tight_layout()
  return _save(fig, path, dpi)


def _column_rank_colors(values: np.ndarray, direction: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Per cell of one column: RGB, and the goodness in [0, 1] (1 = best; NaN
  where not ranked). Ties share their average rank."""
  from matplotlib.colors import LinearSegmentedColormap
  from scipy.stats import rankdata
  cmap = LinearSegmentedColormap.from_list("rank", [WORST_COLOR, MIDDLE_COLOR, BEST_COLOR])
  rgb = np.empty((len(values), 3))
  good = np.full(len(values), np.nan)
  ok = np.isfinite(values)
  rgb[~ok] = MISSING_COLOR
  if direction is None or ok.sum() < 2:
    # Nothing to rank: no direction, or a single score.
    rgb[ok] = NEUTRAL_COLOR
    return rgb, good
  v = np.array([_tie_key(x) for x in values[ok]])
  r = rankdata(v if direction == "higher" else -v, method="average")  # 1 = worst
  g = (r - 1) / (ok.sum() - 1)
  good[ok] = g
  rgb[ok] = cmap(g)[:, :3]
  return rgb, good


def metrics_table(mean: Any, path: str | os.PathLike, *, methods: Sequence[str],
                  metrics: Sequence[str], sem: Any = None,
                  directions: Mapping[str, str | None] | Sequence[str | None] | None = None,
                  title: str | None = None, digits: int = 3, dpi: int = 100) -> pathlib.Path:
  """A method x metric heat table: each cell shows the mean (+- standard
  error) and is colored by the method's rank within its column, green best,
  red worst, where each metric's direction decides which end is best. Means
  equal to 6 significant digits tie (float32 scores averaged two ways differ
  in the 8th) and share their average rank's color.

  Args:
    mean: ``[M, K]`` means, rows = `methods`, columns = `metrics`; NaN (or
      None) for a metric that could not run (drawn white, "n/a").
    path: where to write the PNG.
    methods, metrics: the row and column names.
    sem: ``[M, K]`` standard errors shown after the mean (None: means only).
    directions: per metric ``"higher"`` (higher is better), ``"lower"`` or
      None (no better end: the column is grey), as a mapping by metric name
      or a sequence in column order; default ``saljax.metrics.entry(name).
      better()`` for registered metrics with their default options (pass
      directions when options change them, e.g. pixel flipping's
      ``order="lerf"``). Headers get ↑ / ↓.
    title: text above the table.
    digits: decimals of the cell text, at least; a column gets more (up to 6)
      where its means would otherwise print alike.
    dpi: resolution of the PNG.
  Returns:
    `path` as a `pathlib.Path`.
  """
  methods, metrics = list(methods), list(metrics)
  shape = (len(methods), len(metrics))
  if not methods or not metrics:
    raise ValueError(f"metrics_table: expected at least one method and one metric, got {shape}")
  mean = np.array(mean, dtype=np.float64)  # None -> NaN
  if mean.shape != shape:
    raise ValueError(f"mean: expected shape {shape} (methods x metrics), got {mean.shape}")
  if sem is not None:
    sem = np.array(sem, dtype=np.float64)
    if sem.shape != shape:
      raise ValueError(f"sem: expected shape {shape} (methods x metrics), got {sem.shape}")
  dirs = _directions(directions, metrics)
  colors = np.empty(shape + (3,))
  for j, d in enumerate(dirs):
    colors[:, j], _ = _column_rank_colors(mean[:, j], d)
  # Per column, enough decimals that differently ranked means read differently.
  col_digits = [_distinct_digits(mean[:, j], digits) for j in range(len(metrics))]

  def text(i, j):
    if not np.isfinite(mean[i, j]):
      return "n/a"
    d = col_digits[j]
    s = f"{mean[i, j]:.{d}f}"
    if sem is not None and np.isfinite(sem[i, j]):
      s += f"\n± {sem[i, j]:.{d}f}"
    return s

  arrows = {"higher": " ↑", "lower": " ↓", None: ""}
  headers = [_wrap(m) + arrows[d] for m, d in zip(metrics, dirs)]
  # Fixed inches so cells keep their size whatever the counts.
  cell_w, cell_h = 1.25, 0.5
  label_w = 0.25 + 0.075 * max(len(m) for m in methods)
  header_h = 0.25 + 0.13 * max(h.count("\n") + 1 for h in headers)
  title_h, caption_h = (0.35 if title else 0.0), 0.55
  # At least wide enough for the caption on two lines.
  width = max(label_w + cell_w * len(metrics) + 0.3, 5.5)
  height = caption_h + cell_h * len(methods) + header_h + title_h
  fig = _new_figure(width, height)
  ax = fig.add_axes([label_w / width, caption_h / height, cell_w * len(metrics) / width,
                     cell_h * len(methods) / height])
  ax.imshow(colors, aspect="auto", interpolation="nearest")
  for i in range(len(methods)):
    for j in range(len(metrics)):
      ax.text(j, i, text(i, j), ha="center", va="center", fontsize=7,
              color="0.45" if not np.isfinite(mean[i, j]) else "black")
  ax.set_xticks(range(len(metrics)))
  ax.set_xticklabels(headers, fontsize=7.5)
  ax.xaxis.tick_top()
  ax.set_yticks(range(len(methods)))
  ax.set_yticklabels(methods, fontsize=8)
  ax.set_xticks(np.arange(len(metrics) + 1) - 0.5, minor=True)
  ax.set_yticks(np.arange(len(methods) + 1) - 0.5, minor=True)
  ax.grid(which="minor", color="white", lw=2)
  ax.tick_params(which="both", length=0)
  for s in ax.spines.values():
    s.set_visible(False)
  if title:
    fig.text(0.5, 1 - 0.2 / height, title, ha="center", va="center", fontsize=10)
  fig.text(label_w / width, 0.25 / height,
           "cell: mean ± s.e.; color: rank within the column, green = best, red = worst\n"
           "(↑ higher is better, ↓ lower is better; grey: the metric has no direction)",
           ha="left", va="center", fontsize=6.5, color="0.25")
  return _save(fig, path, dpi)


def _wrap(name: str, width: int = 17) -> str:
  """`name` on lines of at most `width` characters, broken after underscores
  (a cell is about 20 characters wide; long metric names would overlap)."""
  lines = [""]
  for part in name.replace("_", "_\x00").split("\x00"):
    if lines[-1] and len(lines[-1]) + len(part) > width:
      lines.append("")
    lines[-1] += part
  return "\n".join(lines)


def _directions(directions, metrics: list[str]) -> list[str | None]:
  if directions is None:
    from saljax import metrics as registry
    known = set(registry.names())
    out = []
    for m in metrics:
      if m not in known:
        raise ValueError(f"directions: metric {m!r} is not registered; pass its direction"
                         " ('higher', 'lower' or None)")
      out.append(registry.entry(m).better())
  elif isinstance(directions, Mapping):
    missing = [m for m in metrics if m not in directions]
    if missing:
      raise ValueError(f"directions: no direction for metrics {missing}")
    out = [directions[m] for m in metrics]
  else:
    out = list(directions)
    if len(out) != len(metrics):
      raise ValueError(f"directions: expected {len(metrics)} (one per metric), got {len(out)}")
  bad = [d for d in out if d not in ("higher", "lower", None)]
  if bad:
    raise ValueError(f"directions: expected 'higher', 'lower' or None, got {bad}")
  return out


def sanity_curves(curves: Mapping[str, Mapping[str, Any]], layers: Sequence[str],
                  path: str | os.PathLike, *, errors: Mapping[str, Mapping[str, Any]] | None = None,
                  mode: str = "cascading", similarities: Sequence[str] | None = None,
                  original: bool = True, colors: Mapping[str, Any] | None = None,
                  title: str | None = None, dpi: int = 100) -> pathlib.Path:
  """The model parameter randomization test as in Adebayo et al. 2018
  ("Sanity Checks for Saliency Maps", NeurIPS, Fig. 2): similarity of each
  method's map to its trained-model map vs the layers randomized, one panel
  per similarity (absolute and signed Spearman, SSIM), one line per method.

  Args:
    curves: method -> similarity name -> mean over examples ``[L]``, stage s
      having randomized `layers` ``[: s + 1]`` (cascading, from the logits
      down) or only ``layers[s]`` (independent): ``sanity.json``'s
      ``"curves"``.
    layers: the L layer names, in the order randomized (output first).
    path: where to write the PNG.
    errors: the same structure with standard errors, drawn as light bands
      (None: no bands).
    mode: ``"cascading"`` or ``"independent"``, for the x label.
    similarities: the panels, in order; default those of the first method,
      ordered as `SIMILARITY_TITLES`.
    original: start each line at the tick "original" with similarity 1 (the
      trained map compared with itself), as the paper's figure does.
    colors: method -> a matplotlib color; default `method_colors`.
    title: text above the panels.
    dpi: resolution of the PNG.
  Returns:
    `path` as a `pathlib.Path`.
  """
  if not curves:
    raise ValueError("curves: expected at least one method, got none")
  if mode not in ("cascading", "independent"):
    raise ValueError(f"mode: expected 'cascading' or 'independent', got {mode!r}")
  layers = [str(l) for l in layers]
  if not layers:
    raise ValueError("layers: expected at least one layer name, got none")
  if similarities is None:
    first = list(next(iter(curves.values())))
    similarities = ([s for s in SIMILARITY_TITLES if s in first]
                    + [s for s in first if s not in SIMILARITY_TITLES])
  similarities = list(similarities)
  for m, per in curves.items():
    missing = [s for s in similarities if s not in per]
    if missing:
      raise ValueError(f"curves[{m!r}]: no curve for similarities {missing}; has {sorted(per)}")
    for s in similarities:
      if np.shape(per[s]) != (len(layers),):
        raise ValueError(f"curves[{m!r}][{s!r}]: expected {len(layers)} values (one per layer),"
                         f" got shape {np.shape(per[s])}")
  colors = dict(method_colors(list(curves)), **(colors or {}))
  ticks = (["original"] if original else []) + layers
  xs = np.arange(len(ticks))
  n = len(similarities)
  fig = _new_figure(max(3.2, 0.42 * len(ticks) + 1.6) * n + 1.6, 3.6)
  axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
  for ax, s in zip(axes, similarities):
    lo = 0.0
    for m, per in curves.items():
      y = np.asarray(per[s], np.float64)
      e = None
      if errors is not None and m in errors and s in errors[m]:
        e = np.asarray(errors[m][s], np.float64)
      if original:
        y = np.concatenate([[1.0], y])
        e = None if e is None else np.concatenate([[0.0], e])
      if e is not None:
        ax.fill_between(xs, y - e, y + e, color=colors[m], alpha=0.18, lw=0)
      ax.plot(xs, y, color=colors[m], marker="o", ms=3.5, lw=1.6, label=m)
      lo = min(lo, float(np.nanmin(y - (0 if e is None else e))))
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_ylim(min(-0.05, lo - 0.05) if s != "spearman" else -1.05, 1.05)
    ax.set_xticks(xs)
    ax.set_xticklabels(ticks, rotation=60, ha="right", fontsize=7)
    ax.set_title(SIMILARITY_TITLES.get(s, s), fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("layers randomized " + ("cumulatively from the output"
                                          if mode == "cascading" else "one at a time"), fontsize=8)
  axes[0].set_ylabel("similarity to the trained model's map", fontsize=8)
  handles, labels = axes[-1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0 - 1.5 / fig.get_figwidth(), 0.9),
             fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 0.93 if title else 1.0))
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path, dpi)
