"""Figures with matplotlib: heat-map overlays and a methods x images grid.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot, so nothing depends on (or changes) the user's display backend
and nothing opens a window. Signed maps use a diverging colormap centred on
zero (red positive, blue negative, limits +-the 99th percentile of ``|map|``),
blended over the photo in proportion to ``sqrt(|map| / limit)``;
unsigned maps a sequential one from 0 (or the map's minimum) to its 99th
percentile, so a few extreme pixels do not wash out the rest.
"""
from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

SIGNED_CMAP = "RdBu_r"
UNSIGNED_CMAP = "inferno"
REDUCTIONS = ("sum", "abs_sum", "max_abs", "l2")


def to_heatmap(attribution: Any, reduce: str = "sum") -> np.ndarray:
  """A 2-D map ``[H, W]`` from an attribution ``[H, W]`` or ``[H, W, C]``.

  `reduce` folds the channels: ``"sum"`` (keeps the sign), ``"abs_sum"``,
  ``"max_abs"`` (Simonyan et al.'s channel max of ``|grad|``) or ``"l2"``.
  """
  a = np.asarray(attribution, np.float64)
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
  if reduce == "l2":
    return np.sqrt((a ** 2).sum(-1))
  raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")


def is_signed(m: np.ndarray, tol: float = 1e-3) -> bool:
  """True when the map has both signs beyond `tol` of its largest magnitude."""
  m = np.asarray(m)
  scale = np.abs(m).max() if m.size else 0.0
  if not np.isfinite(scale) or scale == 0:
    return False
  return bool(m.min() < -tol * scale and m.max() > tol * scale)


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


def heatmap_rgba(m: Any, *, signed: bool | None = None, percentile: float = 99.0,
                 cmap: str | None = None) -> tuple[np.ndarray, dict]:
  """Colors a 2-D map: returns ``(rgba [H, W, 4], info)``.

  `signed` None decides from the data (`is_signed`). ``info`` holds the
  colormap, the limits ``vmin``/``vmax`` and ``signed``. Non-finite values
  are shown as 0.
  """
  from matplotlib import colormaps
  m = np.nan_to_num(np.asarray(m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  signed = is_signed(m) if signed is None else bool(signed)
  if signed:
    vmax = float(np.percentile(np.abs(m), percentile)) or float(np.abs(m).max()) or 1.0
    vmin = -vmax
    cmap = cmap or SIGNED_CMAP
  else:
    vmin = float(min(m.min(), 0.0)) if m.min() >= 0 else float(m.min())
    vmax = float(np.percentile(m, percentile))
    if vmax <= vmin:
      vmax = vmin + (float(m.max()) - vmin or 1.0)
    cmap = cmap or UNSIGNED_CMAP
  norm = np.clip((m - vmin) / (vmax - vmin), 0.0, 1.0)
  return colormaps[cmap](norm), {"cmap": cmap, "vmin": vmin, "vmax": vmax, "signed": signed}


def overlay(image: Any, attribution: Any, *, alpha: float = 0.55, signed: bool | None = None,
            reduce: str = "sum", percentile: float = 99.0, cmap: str | None = None) -> np.ndarray:
  """The image (grayed) with the attribution's heat map blended on top.

  Args:
    image: ``[H, W, 3]`` uint8, or float (rescaled to [0, 1] for display).
    attribution: ``[H, W, C]`` pixel attribution or ``[h, w]`` layer map
      (bilinearly upsampled to the image size).
    alpha: opacity of the heat map.
    signed: force the diverging (True) or sequential (False) colormap.
    reduce: channel reduction for pixel attributions (`to_heatmap`).
  Returns:
    RGB float array ``[H, W, 3]`` in [0, 1].
  """
  img = _as_display_image(image)
  m = _resize_to(to_heatmap(attribution, reduce), img.shape[:2])
  rgba, info = heatmap_rgba(m, signed=signed, percentile=percentile, cmap=cmap)
  gray = img.mean(-1, keepdims=True) * np.ones(3)
  a = np.full(m.shape + (1,), alpha)
  if info["signed"]:
    # The diverging map is white at 0: blend by magnitude so near-zero pixels
    # show the photo rather than a white veil (sqrt keeps weak evidence visible).
    mag = np.clip(np.abs(np.nan_to_num(m)) / info["vmax"], 0.0, 1.0)
    a = alpha * np.sqrt(mag)[..., None]
  return np.clip((1 - a) * gray + a * rgba[..., :3], 0.0, 1.0)


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


def grid(images: Sequence[Any], maps: Mapping[str, Any], path: str | os.PathLike | None = None, *,
         titles: Sequence[str] | None = None, reduce: str = "sum", alpha: float = 0.55,
         cell: float = 1.8, dpi: int = 100):
  """A methods x images grid: the first row shows the images, then one row per method.

  Args:
    images: N display images ``[H, W, 3]`` (uint8 or float).
    maps: method name -> N attributions (an array ``[N, ...]`` or a list);
      None (or a non-finite map) draws an empty "n/a" cell, e.g. for a method
      that failed.
    path: where to save the PNG (None: only return the figure).
    titles: N column titles (e.g. photo names and predicted classes).
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
  rows = 1 + len(maps)
  fig = Figure(figsize=(cell * n + 1.2, cell * rows), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, n, squeeze=False)
  for j, img in enumerate(images):
    ax = axes[0, j]
    ax.imshow(_as_display_image(img))
    if titles is not None:
      ax.set_title(titles[j], fontsize=7)
  for i, (method, ms) in enumerate(maps.items(), start=1):
    for j in range(n):
      ax = axes[i, j]
      m = None if ms is None else ms[j]
      if m is None or not np.isfinite(np.asarray(m, np.float64)).all():
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8, transform=ax.transAxes)
      else:
        ax.imshow(overlay(images[j], m, alpha=alpha, reduce=reduce))
    axes[i, 0].set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if path is not None:
    save_figure(fig, path, dpi=dpi)
  return fig
