"""Figures with matplotlib: heat-map overlays, a single map with a colorbar, and
a methods x images grid grouped by family.

How a map is drawn is a `Display`: the channel aggregation (``sum``,
``abs_sum``, ``l2``, ``max_abs``), the sign mode (Captum's
`visualize_image_attr` modes ``all`` / ``positive`` / ``negative`` /
``absolute_value``, and ``range`` for maps on an offset), the percentile at
which the colormap saturates (PAIR saliency's `VisualizeImageGrayscale` clips
at the 99th, Captum's ``outlier_perc=2`` at the 98th) and the colormap. Every
registered explainer has a default (``saljax.explainers.entry(name).display``):
pixel maps of gradient and propagation methods as the channel sum of
``|values|`` clipped at the 99th percentile (PAIR's grayscale convention),
layer and perturbation maps as their positive part or their own values. Every
function here takes overrides (``aggregation=``, ``sign=``, ``percentile=``,
``cmap=``, or a whole ``display=``).

Signed maps (``sign="all"``) use a diverging colormap centred on 0 whose
extremes are saturated blue and red, so they stay visible over dark and light
parts of the photo; magnitudes a sequential one. Both are blended over the
grayed photo with an opacity that grows with the value (``alpha * value /
limit``), so a zero shows the photo, not a veil of color.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot, so nothing depends on (or changes) the user's display backend
and nothing opens a window. PNGs are written atomically.
"""
from __future__ import annotations

import functools
import os
import pathlib
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

from saljax._registry import AGGREGATIONS, SIGNS, Display

__all__ = ["Display", "AGGREGATIONS", "SIGNS", "DIVERGING_CMAP", "SEQUENTIAL_CMAP", "to_heatmap",
           "is_signed", "display_for", "heatmap_rgba", "overlay", "figure", "grid", "save_figure",
           "colormap"]

DIVERGING_CMAP = "saljax_diverging"
SEQUENTIAL_CMAP = "saljax_sequential"
# The names earlier versions exported.
SIGNED_CMAP = DIVERGING_CMAP
UNSIGNED_CMAP = SEQUENTIAL_CMAP
REDUCTIONS = AGGREGATIONS

# Figure grouping: families in the order a reader meets them (the README's),
# with their headers; unregistered names go last, under "Other".
FAMILY_ORDER = ("gradients", "propagation", "cam", "layer", "attention", "perturbation",
                "sensitivity", "regions")
FAMILY_TITLES = {
    "gradients": "Gradients", "propagation": "Propagation (modified backward rules)",
    "cam": "Class activation maps (layer maps, upsampled)",
    "layer": "Layer attribution (summed over channels, upsampled)", "attention": "Attention (ViT)",
    "perturbation": "Perturbation", "sensitivity": "Sensitivity analysis",
    "regions": "Regions", "other": "Other",
}
_SIGN_WORDS = {"all": "signed", "positive": "positive part", "negative": "negative part",
               "absolute_value": "magnitude", "range": "values"}


@functools.lru_cache(maxsize=None)
def colormap(name: str):
  """A matplotlib colormap by name, including this module's two (which are not
  registered with matplotlib, so importing saljax changes no global state)."""
  from matplotlib import colormaps
  from matplotlib.colors import LinearSegmentedColormap, ListedColormap
  if name == DIVERGING_CMAP:
    # Saturated, bright extremes (RdBu's are near-black, invisible over a dark
    # photo at overlay opacity); white at 0, where the overlay is transparent.
    return LinearSegmentedColormap.from_list(name, [
        (0.0, (0.0, 0.25, 1.0)), (0.25, (0.3, 0.6, 1.0)), (0.5, (1.0, 1.0, 1.0)),
        (0.75, (1.0, 0.55, 0.2)), (1.0, (1.0, 0.05, 0.0))])
  if name == SEQUENTIAL_CMAP:
    # The upper part of inferno (purple -> red -> yellow): its black end would
    # darken the photo, and the opacity already carries the low values.
    return ListedColormap(colormaps["inferno"](np.linspace(0.3, 1.0, 256)), name=name)
  if name not in colormaps:
    raise ValueError(f"cmap: expected a matplotlib colormap name, got {name!r}")
  return colormaps[name]


def to_heatmap(attribution: Any, reduce: str = "sum") -> np.ndarray:
  """A 2-D map ``[H, W]`` from an attribution ``[H, W]`` or ``[H, W, C]``.

  `reduce` folds the channels: ``"sum"`` (keeps the sign), ``"abs_sum"``
  (PAIR saliency's grayscale convention), ``"max_abs"`` (Simonyan et al.
  2014's channel max of ``|grad|``) or ``"l2"``.
  """
  a = np.asarray(attribution, np.float64)
  if reduce not in AGGREGATIONS:
    raise ValueError(f"reduce: expected one of {AGGREGATIONS}, got {reduce!r}")
  if a.ndim == 2:
    return a
  if a.ndim != 3:
    raise ValueError(f"attribution: expected [H, W] or [H, W, C], got shape {a.shape}")
  if reduce == "sum":
    return a.sum(-1)
  if reduce == "abs_sum":
    return np.abs(a).sum(-1)
  if reduce == "max_abs":
    return np.abs(a).max(-1)
  return np.sqrt((a ** 2).sum(-1))


def is_signed(m: np.ndarray, tol: float = 1e-3) -> bool:
  """True when the map has both signs beyond `tol` of its largest magnitude."""
  m = np.asarray(m)
  scale = np.abs(m).max() if m.size else 0.0
  if not np.isfinite(scale) or scale == 0:
    return False
  return bool(m.min() < -tol * scale and m.max() > tol * scale)


def _auto_sign(m: np.ndarray) -> str:
  if is_signed(m):
    return "all"
  return "negative" if m.size and m.max() <= 0 and m.min() < 0 else "positive"


def display_for(method: str | None = None, attribution: Any = None, *,
                display: Display | Mapping[str, Any] | None = None, aggregation: str | None = None,
                sign: str | None = None, percentile: float | None = None,
                cmap: str | None = None) -> Display:
  """The `Display` to draw `attribution` with: `display` if given, else the
  registered default of explainer `method`, else a generic one (pixel maps
  ``[H, W, C]``: the ``abs_sum`` magnitude clipped at the 99th percentile;
  maps without channels: signed when they have both signs, else their positive
  or negative part); then the keyword overrides that are not None."""
  if isinstance(display, Mapping):
    display = Display(**display)
  if display is not None and not isinstance(display, Display):
    raise TypeError(f"display: expected a Display or a dict of its fields, got"
                    f" {type(display).__name__}")
  if display is None and method is not None:
    from saljax import explainers
    if method in explainers.names():
      display = explainers.entry(method).display
  if display is None:
    a = None if attribution is None else np.asarray(attribution)
    if a is not None and a.ndim == 2 and sign is None:
      m = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
      display = Display(aggregation="sum", sign=_auto_sign(m))
    else:
      display = Display()
  return display.replace(aggregation=aggregation, sign=sign, percentile=percentile, cmap=cmap)


def _limit(values: np.ndarray, percentile: float) -> float:
  """The percentile of non-negative `values`, or their max where that is 0
  (a sparse map), or 1 for an all-zero map."""
  lim = float(np.percentile(values, percentile)) if values.size else 0.0
  return lim or float(values.max(initial=0.0)) or 1.0


def _signed_part(m: np.ndarray, sign: str) -> tuple[np.ndarray, float]:
  """``(values, offset)``: what sign mode `sign` shows of a 2-D map, in map
  units minus `offset` (the signed map for ``"all"``; a non-negative part
  otherwise, ``"range"`` measured from the map's minimum, its offset)."""
  if sign == "all":
    return m, 0.0
  if sign == "range":
    lo = float(m.min()) if m.size else 0.0
    return m - lo, lo
  return {"positive": np.maximum(m, 0.0), "negative": np.maximum(-m, 0.0),
          "absolute_value": np.abs(m)}[sign], 0.0


def _normalize(m: np.ndarray, sign: str, percentile: float):
  """``(t, strength, vmin, vmax)``: colormap coordinates in [0, 1], the
  opacity weight in [0, 1] per pixel, and the limits in map units."""
  if sign == "all":
    lim = _limit(np.abs(m), percentile)
    s = np.clip(m / lim, -1.0, 1.0)
    return (s + 1) / 2, np.abs(s), -lim, lim
  v, lo = _signed_part(m, sign)
  lim = _limit(v, percentile)
  s = np.clip(v / lim, 0.0, 1.0)
  return s, s, lo, lo + lim


def shown_values(attribution: Any, method: str | None = None, *, shape: tuple[int, int] | None = None,
                 display: Display | Mapping[str, Any] | None = None, **overrides) -> np.ndarray:
  """The per-pixel values a map is drawn with, before percentile clipping:
  what a reader sees, as numbers, for judging maps by what they show (e.g.
  the pointing game of `experiments.demo`).

  Folds the channels with the display's aggregation, resizes a layer map to
  `shape` (bilinear, as the overlays), then applies the sign mode:
  ``"all"`` keeps the signed values, ``"positive"`` / ``"negative"`` keep that
  part as a magnitude, ``"absolute_value"`` takes ``|m|`` and ``"range"``
  subtracts the minimum. The display is `display_for(method, ...)`.

  Args:
    attribution: a batch ``[B, H, W]`` or ``[B, H, W, C]``.
    method: a registered explainer name for its default `Display`.
    shape: ``(H, W)`` to resize to (default: the map's own).
    display, overrides: as `display_for`.
  """
  a = np.asarray(attribution, np.float64)
  if a.ndim not in (3, 4):
    raise ValueError(f"attribution: expected a batch [B, H, W] or [B, H, W, C], got shape {a.shape}")
  d = display_for(method, a[0], display=display, **overrides)
  return np.stack([_signed_part(_folded(m, d, shape), d.sign)[0] for m in a])


def _folded(attribution: Any, d: Display, shape: tuple[int, int] | None) -> np.ndarray:
  """One map's channels folded by the display's aggregation, resized to `shape`."""
  m = to_heatmap(attribution, d.aggregation)
  return m if shape is None else _resize_to(m, tuple(shape))


def heatmap_rgba(m: Any, *, signed: bool | None = None, percentile: float = 99.0,
                 cmap: str | None = None, sign: str | None = None) -> tuple[np.ndarray, dict]:
  """Colors a 2-D map: returns ``(rgba [H, W, 4], info)``.

  `sign` is a sign mode (`SIGNS`); without it, `signed` True means ``"all"``,
  False the positive (or, for a non-positive map, negative) part, and None
  decides from the data (`is_signed`). The colormap saturates at the
  `percentile` of the shown values. ``info`` holds the colormap name, the
  limits ``vmin``/``vmax`` in map units, ``signed``, ``sign`` and
  ``strength`` (``[H, W]`` in [0, 1], how far each pixel is towards its
  limit, the overlay's opacity weight). Non-finite values are shown as 0.
  """
  m = np.nan_to_num(np.asarray(m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  if m.ndim != 2:
    raise ValueError(f"map: expected [H, W], got shape {m.shape}")
  if sign is None:
    sign = _auto_sign(m) if signed is None else ("all" if signed else
                                                 _auto_sign(m).replace("all", "positive"))
  Display(sign=sign, percentile=percentile, cmap=cmap)  # validates
  t, strength, vmin, vmax = _normalize(m, sign, percentile)
  cmap = cmap or (DIVERGING_CMAP if sign == "all" else SEQUENTIAL_CMAP)
  return colormap(cmap)(t), {"cmap": cmap, "vmin": vmin, "vmax": vmax, "signed": sign == "all",
                             "sign": sign, "strength": strength}


def _as_display_image(image: Any) -> np.ndarray:
  img = np.asarray(image)
  if img.ndim == 2:
    img = np.stack([img] * 3, -1)
  if img.ndim != 3 or img.shape[-1] not in (3, 4):
    raise ValueError(f"image: expected H x W x 3 (or H x W), got shape {img.shape}")
  img = img[..., :3]
  if img.dtype == np.uint8:
    return img.astype(np.float64) / 255.0
  img = img.astype(np.float64)
  lo, hi = img.min(), img.max()
  if lo < 0 or hi > 1:  # e.g. a normalized model input: rescale for display
    img = (img - lo) / max(hi - lo, 1e-12)
  return img


def _resize_to(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  if m.shape == shape:
    return m
  from skimage.transform import resize
  return resize(m, shape, order=1, mode="edge", anti_aliasing=False)


def _blend(gray: np.ndarray, rgb: np.ndarray, strength: np.ndarray, alpha: float) -> np.ndarray:
  # Opacity grows linearly with the value, so 0 shows the photo (a sqrt made
  # the many weak pixels of a gradient map a colored veil over the whole photo).
  a = alpha * strength[..., None]
  return np.clip((1 - a) * gray + a * rgb, 0.0, 1.0)


def _overlay(image, attribution, alpha, d: Display):
  if not 0 <= alpha <= 1:
    raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
  img = _as_display_image(image)
  m = _folded(attribution, d, img.shape[:2])
  rgba, info = heatmap_rgba(m, sign=d.sign, percentile=d.percentile, cmap=d.cmap)
  # The photo in gray at half brightness: the colors of sparse pixel maps
  # (gradients) stand out on it, and the photo still reads.
  gray = 0.5 * img.mean(-1, keepdims=True) * np.ones(3)
  return _blend(gray, rgba[..., :3], info["strength"], alpha), info


def overlay(image: Any, attribution: Any, *, alpha: float = 0.7, signed: bool | None = None,
            reduce: str | None = None, percentile: float | None = None, cmap: str | None = None,
            method: str | None = None, sign: str | None = None,
            display: Display | Mapping[str, Any] | None = None) -> np.ndarray:
  """The image (grayed) with the attribution's heat map blended on top.

  Args:
    image: ``[H, W, 3]`` uint8, or float (rescaled to [0, 1] for display).
    attribution: ``[H, W, C]`` pixel attribution or ``[h, w]`` layer map
      (bilinearly upsampled to the image size).
    alpha: opacity of the heat map where it reaches its limit (weaker values
      are more transparent: ``alpha * value / limit``).
    signed: True: ``sign="all"``; False: not the diverging map.
    reduce: channel aggregation (`to_heatmap`), overriding the display's.
    percentile, cmap, sign: override the display's (`Display`).
    method: a registered explainer whose default `Display` to use.
    display: a whole `Display` (or a dict of its fields) instead of the default.
  Returns:
    RGB float array ``[H, W, 3]`` in [0, 1].
  """
  d = display_for(method, attribution, display=display, aggregation=reduce, sign=sign,
                  percentile=percentile, cmap=cmap)
  if signed is not None and sign is None:
    d = d.replace(sign="all" if signed else ("range" if d.sign == "all" else d.sign))
  return _overlay(image, attribution, alpha, d)[0]


def _legend_strip(ax, d_sign: str, cmap: str, alpha: float, ticks: Sequence[str], label: str):
  """A colorbar of what a cell shows: the colormap blended at its opacity over
  mid-gray, with tick labels in words."""
  t = np.linspace(0.0, 1.0, 256)
  strength = np.abs(2 * t - 1) if d_sign == "all" else t
  rgb = _blend(np.full((1, 256, 3), 0.5), colormap(cmap)(t)[None, :, :3], strength[None], alpha)
  ax.imshow(np.repeat(rgb, 8, 0), aspect="auto")
  ax.set_yticks([])
  ax.set_xticks(np.linspace(0, 255, len(ticks)))
  ax.set_xticklabels(ticks, fontsize=6)
  ax.tick_params(length=2, pad=1)
  ax.set_title(label, fontsize=7, pad=2)


def figure(image: Any, attribution: Any, path: str | os.PathLike | None = None, *,
           method: str | None = None, title: str | None = None, colorbar: bool = True,
           alpha: float = 0.7, size: float = 3.0, dpi: int = 100, **overrides):
  """One overlay with a colorbar in map units.

  `overrides`: ``aggregation``, ``sign``, ``percentile``, ``cmap`` or
  ``display`` (as `display_for`). Returns the `matplotlib.figure.Figure`
  (saved to `path` when given).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.cm import ScalarMappable
  from matplotlib.colors import Normalize
  from matplotlib.figure import Figure
  d = display_for(method, attribution, **overrides)
  rgb, info = _overlay(image, attribution, alpha, d)
  fig = Figure(figsize=(size * (1.3 if colorbar else 1.0), size), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.imshow(rgb)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title if title is not None else (method or ""), fontsize=8)
  if colorbar:
    sm = ScalarMappable(Normalize(info["vmin"], info["vmax"]), colormap(info["cmap"]))
    cb = fig.colorbar(sm, ax=ax, fraction=0.05)
    cb.set_label(f"{_SIGN_WORDS[d.sign]} ({d.aggregation}), clipped at p{d.percentile:g}",
                 fontsize=7)
    cb.ax.tick_params(labelsize=6)
  if path is not None:
    save_figure(fig, path, dpi=dpi)
  return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> pathlib.Path:
  """Saves a Figure as PNG through a temporary file and a rename (never half-written)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
    FigureCanvasAgg(fig)
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.png")
  try:
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def _groups(names: Sequence[str], by_family: bool) -> list[tuple[str | None, list[str]]]:
  """``[(family or None, [names])]``: registered explainers by family (in
  `FAMILY_ORDER`, then by paper year), unregistered names last in their order."""
  from saljax import explainers
  registered = set(explainers.names())
  if not by_family or not registered & set(names):
    return [(None, list(names))]
  fams: dict[str, list[str]] = {}
  for n in names:
    fams.setdefault(explainers.entry(n).family if n in registered else "other", []).append(n)
  return [(f, fams[f] if f == "other" else sorted(fams[f], key=lambda n: (explainers.entry(n).year or 0, n)))
          for f in family_order(fams)]


def family_order(families) -> list[str]:
  """`families` in the order figures and pages show them: those of
  `FAMILY_ORDER` in its order, any others alphabetically, "other" last."""
  fams = set(families)
  rest = sorted(fams - set(FAMILY_ORDER) - {"other"})
  return [f for f in FAMILY_ORDER if f in fams] + rest + (["other"] if "other" in fams else [])


def _label(name: str) -> str:
  from saljax import explainers
  year = explainers.entry(name).year if name in explainers.names() else None
  return f"{name} ({year})" if year else name


def grid(images: Sequence[Any], maps: Mapping[str, Any], path: str | os.PathLike | None = None, *,
         titles: Sequence[str] | None = None, reduce: str | None = None, sign: str | None = None,
         percentile: float | None = None, displays: Mapping[str, Any] | None = None,
         alpha: float = 0.7, cell: float = 1.8, dpi: int = 100, by_family: bool = True,
         legend: bool = True, boxes: Sequence[Any] | None = None):
  """A methods x images grid: a legend strip, the images, then one row per
  method, grouped under family headers.

  Args:
    images: N display images ``[H, W, 3]`` (uint8 or float).
    maps: method name -> N attributions (an array ``[N, ...]`` or a list);
      None (or a non-finite map) draws an empty "n/a" cell, e.g. for a method
      that failed. Registered explainers are drawn with their default
      `Display`, grouped by family (in `FAMILY_ORDER`, by paper year within
      one) and labelled with their paper's year; other names go last.
    path: where to save the PNG (None: only return the figure).
    titles: N column titles (e.g. photo names and predicted classes).
    reduce, sign, percentile: override every row's display.
    displays: method name -> a `Display` (or dict of its fields) for that row.
    alpha: the overlays' opacity at the colormap's limit.
    by_family: group rows under family headers.
    legend: draw the strip saying what the signed and magnitude colors mean.
    boxes: N lists of ground-truth boxes ``(ymin, xmin, ymax, xmax)`` (max
      exclusive, image pixels) outlined on the image row.
  Returns:
    The `matplotlib.figure.Figure` (saved to `path` when given).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  n = len(images)
  if n == 0:
    raise ValueError("images: expected at least one image")
  if titles is not None and len(titles) != n:
    raise ValueError(f"titles: expected {n} titles, got {len(titles)}")
  if boxes is not None and len(boxes) != n:
    raise ValueError(f"boxes: expected {n} lists of boxes (one per image), got {len(boxes)}")
  displays = dict(displays or {})
  unknown = sorted(set(displays) - set(maps))
  if unknown:
    raise ValueError(f"displays: names {unknown} are not among the maps {sorted(maps)}")
  for name, ms in maps.items():
    if ms is not None and len(ms) != n:
      raise ValueError(f"maps[{name!r}]: expected {n} maps (one per image), got {len(ms)}")

  def row_display(name):
    ms = maps[name]
    first = None if ms is None else ms[0]
    return display_for(name, first, display=displays.get(name), aggregation=reduce, sign=sign,
                       percentile=percentile)

  groups = _groups(list(maps), by_family)
  shown = {name: row_display(name) for _, names in groups for name in names}

  # Absolute layout in inches (constrained layout is slow with ~200 axes and
  # cannot span a header over a row of cells).
  label_w, gap, header_h, title_h = 1.9, 0.04, 0.3, (0.36 if titles is not None else 0.05)
  legend_h = 0.75 if legend else 0.0
  rows_h = legend_h + title_h + cell + sum(
      (header_h if fam is not None else 0.0) + len(names) * (cell + gap) for fam, names in groups)
  width, height = label_w + n * (cell + gap) + 0.1, rows_h + 0.15
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)

  def axes_at(x_in, y_top_in, w_in, h_in):
    return fig.add_axes([x_in / width, (height - y_top_in - h_in) / height, w_in / width,
                         h_in / height])

  def cell_axes(j, y):
    ax = axes_at(label_w + j * (cell + gap), y, cell, cell)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax

  y = 0.1
  if legend:
    used = {d.sign == "all" for d in shown.values()} or {False}
    strip_w = min(2.6, (width - label_w) / 2 - 0.3)
    x = label_w
    if True in used:
      _legend_strip(axes_at(x, y + 0.22, strip_w, 0.16), "all", DIVERGING_CMAP, alpha,
                    ["-limit", "0", "+limit"], "signed maps: blue negative, red positive")
      x += strip_w + 0.4
    if False in used:
      _legend_strip(axes_at(x, y + 0.22, strip_w, 0.16), "absolute_value", SEQUENTIAL_CMAP, alpha,
                    ["0 (or min)", "limit"], "magnitudes, positive parts, values")
    fig.text(0.1 / width, 1 - (y + 0.3) / height,
             "each cell is scaled to its own\nlimit: the p-th percentile of\nits map (p in the "
             "row label)", fontsize=6, va="center", color="0.25")
    y += legend_h
  for j, img in enumerate(images):
    ax = cell_axes(j, y + title_h)
    ax.imshow(_as_display_image(img))
    if boxes is not None:
      from matplotlib.patches import Rectangle
      for y0, x0, y1, x1 in np.asarray(boxes[j]).reshape(-1, 4):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="#39ff14", linewidth=1.2))
    if titles is not None:
      ax.set_title(titles[j], fontsize=7, pad=2)
  y += title_h + cell + gap
  for fam, names in groups:
    if fam is not None:
      fig.text(0.08 / width, 1 - (y + header_h * 0.55) / height, FAMILY_TITLES.get(fam, fam),
               fontsize=9, fontweight="bold", va="center")
      fig.add_artist(_hline(fig, 0.08 / width, 1 - 0.06 / width, 1 - (y + header_h - 0.03) / height))
      y += header_h
    for name in names:
      d = shown[name]
      ms = maps[name]
      for j in range(n):
        ax = cell_axes(j, y)
        m = None if ms is None else ms[j]
        if m is None or not np.isfinite(np.asarray(m, np.float64)).all():
          ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        else:
          ax.imshow(_overlay(images[j], m, alpha, d)[0])
      ax0 = fig.axes[-n]
      how = f"{_SIGN_WORDS[d.sign]}" + ("" if d.aggregation == "sum" else f", {d.aggregation}")
      ax0.text(-0.05, 0.55, _label(name), transform=ax0.transAxes, ha="right", va="bottom",
               fontsize=7)
      ax0.text(-0.05, 0.5, f"{how}, p{d.percentile:g}", transform=ax0.transAxes, ha="right",
               va="top", fontsize=6, color="0.35")
      y += cell + gap
  if path is not None:
    save_figure(fig, path, dpi=dpi)
  return fig


def _hline(fig, x0: float, x1: float, y: float):
  from matplotlib.lines import Line2D
  return Line2D([x0, x1], [y, y], transform=fig.transFigure, color="0.6", linewidth=0.6)
