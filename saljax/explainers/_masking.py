"""Shared pieces of the perturbation and region explainers.

Feature groups (superpixels, grid cells, single elements) are stored as one
int label map per example, shaped like ``x`` (``[B, *x.shape[1:]]``), with
labels ``0..M_b-1`` and ``M = max_b M_b`` columns; a spatial label map
``[B, H, W]`` is broadcast over the channels. Segmentation runs with
scikit-image on host numpy arrays, outside any compiled code; everything
after it (masking, model calls, regressions) is compiled.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import ops

Array = jax.Array

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb", "grid", "elements")


# How a perturbation method whose default masks are an image grid is run on
# other inputs: named in the error a non-image input gets (`groups_or_default`).
SEGMENTS_FIX = (
    "for other inputs ([B, D] tables, [B, T, C] series, ...) pass segments=: segments='elements'"
    " (every scalar of x its own feature) or an int label array shaped like x or x[0] (e.g. for"
    " [B, T, C], np.repeat(np.arange(T)[:, None], C, 1) makes each time step one feature)")


def check_images(x: Array, method: str, *, needed_by: str = "", fix: str = "") -> Array:
  """`x` if it is NHWC images ``[B, H, W, C]``; else a ValueError naming the
  shape that came, what needs images (`needed_by`) and the way out (`fix`)."""
  if x.ndim != 4:
    why = f" ({needed_by} needs them)" if needed_by else ""
    hint = f"; {fix}" if fix else ""
    raise ValueError(
        f"{method}: expected NHWC images [B, H, W, C]{why}, got shape {tuple(x.shape)}{hint}")
  return x


def check_probability(p: Any, name: str, *, open_low: bool = True, open_high: bool = True) -> float:
  if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
    raise TypeError(f"{name}: expected a float, got {p!r}")
  p = float(p)
  lo_ok = p > 0 if open_low else p >= 0
  hi_ok = p < 1 if open_high else p <= 1
  if not (lo_ok and hi_ok):
    raise ValueError(
        f"{name}: expected a float in {'(' if open_low else '['}0, 1{')' if open_high else ']'},"
        f" got {p}")
  return p


# ----------------------------------------------------------------------------
# Fill values (what a removed feature is replaced with).


def fill_values(x: Array, fill: Any, *, labels: Array | None = None, num_labels: int | None = None,
                blur_sigma: float = 10.0) -> Array:
  """The replacement input shaped like `x`.

  Args:
    fill: a float (a constant in the model's input space), an array shaped like
      `x` or ``x[0]``, ``"blur"`` (`x` blurred with `blur_sigma` pixels over
      H and W, scipy's Gaussian with reflect borders), or ``"mean"`` (the mean
      of each feature group per channel, LIME's ``hide_color=None``; needs
      `labels`).
  """
  if isinstance(fill, str):
    if fill == "blur":
      check_images(x, "fill='blur'")
      if not blur_sigma > 0:
        raise ValueError(f"blur_sigma: expected a positive float, got {blur_sigma!r}")
      return ops.gaussian_blur(x, float(blur_sigma), max_sigma=float(blur_sigma), mode="reflect")
    if fill == "mean":
      if labels is None:
        raise ValueError("fill='mean' needs feature groups (segments)")
      return _group_mean(x, labels, num_labels)
    raise ValueError(f"fill: expected a float, an array, 'blur' or 'mean', got {fill!r}")
  if isinstance(fill, (int, float, np.floating, np.integer)) and not isinstance(fill, bool):
    if not np.isfinite(fill):
      raise ValueError(f"fill: expected a finite value, got {fill!r}")
    return jnp.full_like(x, float(fill))
  if fill is None:
    raise TypeError("fill: expected a float, an array, 'blur' or 'mean', got None")
  return V.check_same_shape(fill, x, name="fill")


@jax.jit
def _group_mean_core(x, labels, size_dummy):
  # One group per (segment, channel) for images, so each channel is averaged
  # over the segment as LIME does. segment_sum keeps memory at the input's size.
  m = size_dummy.shape[0]
  b = x.shape[0]
  if x.ndim == 4:
    c = x.shape[-1]
    labels = labels * c + jnp.arange(c, dtype=labels.dtype)
    m = m * c
  ids = (labels.reshape(b, -1) + (jnp.arange(b, dtype=labels.dtype) * m)[:, None]).ravel()
  vals = x.reshape(-1)
  sums = jax.ops.segment_sum(vals, ids, num_segments=b * m)
  counts = jax.ops.segment_sum(jnp.ones_like(vals), ids, num_segments=b * m)
  return (sums / jnp.maximum(counts, 1))[ids].reshape(x.shape)


def _group_mean(x, labels, num_labels):
  return _group_mean_core(x, labels, jnp.zeros((num_labels,), jnp.int8))


# ----------------------------------------------------------------------------
# Feature groups.


def segment_images(x: Array, method: str, options: dict | None = None) -> np.ndarray:
  """Label maps ``[B, H, W]`` from scikit-image (host side, one image at a time).

  Images are min-max scaled to [0, 1] per example first, since segmenters
  expect that range and `x` is in the model's (normalized) input space.
  Defaults: slic ``n_segments=50, compactness=10, start_label=0``; quickshift
  LIME's ``kernel_size=4, max_dist=200, ratio=0.2``; felzenszwalb skimage's
  ``scale=1, sigma=0.8, min_size=20``; grid ``cells=8`` (an 8 x 8 grid).
  """
  import skimage.segmentation as seg

  check_images(x, f"segments={method!r}")
  options = dict(options or {})
  xs = np.asarray(x, np.float64)
  b, h, w, c = xs.shape
  if method == "grid":
    cells = options.pop("cells", 8)
    ch, cw = (cells, cells) if isinstance(cells, int) else tuple(cells)
    if options:
      raise ValueError(f"segmentation_options: unknown options for 'grid': {sorted(options)}")
    if ch < 1 or cw < 1 or ch > h or cw > w:
      raise ValueError(f"segmentation_options: cells must be in [1, {h}] x [1, {w}], got {cells!r}")
    rows = np.minimum(np.arange(h) * ch // h, ch - 1)
    cols = np.minimum(np.arange(w) * cw // w, cw - 1)
    return np.broadcast_to(rows[:, None] * cw + cols[None, :], (b, h, w)).astype(np.int32)
  lo = xs.min(axis=(1, 2, 3), keepdims=True)
  hi = xs.max(axis=(1, 2, 3), keepdims=True)
  xs = (xs - lo) / np.where(hi > lo, hi - lo, 1.0)
  if c == 1:
    xs = np.repeat(xs, 3, axis=-1)
  elif c != 3:
    xs = xs[..., :3] if c > 3 else np.concatenate([xs, xs[..., -1:]], -1)
  if method == "slic":
    kw = dict(n_segments=50, compactness=10.0, start_label=0)
    kw.update(options)
    fn = lambda im: seg.slic(im, channel_axis=-1, **kw)
  elif method == "quickshift":
    kw = dict(kernel_size=4, max_dist=200, ratio=0.2)
    kw.update(options)
    fn = lambda im: seg.quickshift(im, channel_axis=-1, **kw)
  elif method == "felzenszwalb":
    kw = dict(scale=1.0, sigma=0.8, min_size=20)
    kw.update(options)
    fn = lambda im: seg.felzenszwalb(im, channel_axis=-1, **kw)
  else:
    raise ValueError(f"segments: expected one of {list(SEGMENTATIONS)} or a label array, got {method!r}")
  # skimage works on one image at a time; this host-side loop is the segmentation itself.
  return np.stack([np.asarray(fn(im), np.int64) for im in xs]).astype(np.int32)


def feature_groups(x: Array, segments: Any, options: dict | None = None):
  """Label maps shaped like `x` with labels ``0..M_b-1`` per example.

  Args:
    segments: a segmentation name (``"slic"``, ``"quickshift"``,
      ``"felzenszwalb"``, ``"grid"``, or ``"elements"``: every scalar of `x` is
      its own feature), or an int label array shaped ``[H, W]``/``[B, H, W]``
      (spatial, broadcast over channels) or like `x`/``x[0]``. Every element
      must carry a label >= 0: a label map that leaves pixels uncovered is an
      error, never a silently zero map. Labels need not be consecutive.

  Returns:
    ``(labels int32 [B, *x.shape[1:]], counts int [B] (numpy), M)``. For the
    data-dependent segmenters (slic, quickshift, felzenszwalb) M is rounded up
    to a multiple of 8 (padded groups are empty and ignored), so new images
    with a few more or fewer segments reuse the compiled method.
  """
  b = x.shape[0]
  if isinstance(segments, str):
    if segments == "elements":
      n = int(np.prod(x.shape[1:]))
      lab = np.broadcast_to(np.arange(n, dtype=np.int32).reshape(x.shape[1:]), x.shape)
      return jnp.asarray(lab), np.full(b, n), n
    lab = segment_images(x, segments, options)
  else:
    if options:
      raise ValueError("segmentation_options: only used with a segmentation name, not a label array")
    if not hasattr(segments, "shape") or not hasattr(segments, "dtype"):
      raise TypeError(
          f"segments: expected a segmentation name or an int label array, got {V.describe(segments)}")
    if not (np.issubdtype(segments.dtype, np.integer)):
      raise TypeError(f"segments: expected an integer label array, got {V.describe(segments)}")
    lab = np.asarray(segments)
    shapes = {tuple(x.shape), tuple(x.shape[1:])}
    if x.ndim == 4:
      shapes |= {tuple(x.shape[:3]), tuple(x.shape[1:3])}
    if tuple(lab.shape) not in shapes:
      want = " or ".join(str(s) for s in sorted(shapes, key=len))
      raise ValueError(f"segments: expected a label array of shape {want}, got {tuple(lab.shape)}")
    if lab.size and lab.min() < 0:
      raise ValueError(
          f"segments: every element must belong to a segment (labels >= 0); {int((lab < 0).sum())}"
          " elements have a negative label, so the segments do not cover the input")
  if tuple(lab.shape) == tuple(x.shape) or (x.ndim == 4 and tuple(lab.shape) == tuple(x.shape[:3])):
    pass
  else:  # one label map for the whole batch
    lab = lab[None]
  lab = np.broadcast_to(lab, (b,) + lab.shape[1:])
  if x.ndim == 4 and lab.ndim == 3:
    lab = np.broadcast_to(lab[..., None], x.shape)
  lab = np.asarray(lab, np.int64)
  # Consecutive labels per example, without a loop over examples: offset each
  # example's labels, unique once, subtract each example's first rank.
  span = int(lab.max()) + 1
  flat = lab.reshape(b, -1) + (np.arange(b) * span)[:, None]
  uniq, inv = np.unique(flat, return_inverse=True)
  owner = uniq // span
  starts = np.searchsorted(owner, np.arange(b))
  counts = np.bincount(owner, minlength=b)
  relabeled = inv.reshape(b, -1) - starts[:, None]
  m = int(counts.max())
  if isinstance(segments, str) and segments in ("slic", "quickshift", "felzenszwalb"):
    m = -(-m // 8) * 8
  return jnp.asarray(relabeled.reshape(x.shape), jnp.int32), counts, m


class Groups(NamedTuple):
  """Feature groups as `feature_groups` makes them, counts as a device array."""
  labels: Array  # int32, shaped like x, labels 0..counts[b]-1
  counts: Array  # int32 [B]
  m: int  # columns: the most groups of any example


def groups_or_default(x: Array, segments: Any, fill: Any, method: str, *,
                      image_default: str | None = None,
                      blur_sigma: float = 10.0) -> tuple[Groups | None, Array]:
  """The feature groups a perturbation method masks, and its fill values.

  ``segments=None`` keeps the method's own masks (occlusion's windows, RISE's
  and the sensitivity methods' grid): groups ``None``. Where that default is an
  image grid (`image_default` names it), a non-image `x` is refused with the
  ``segments=`` fix (`SEGMENTS_FIX`) rather than read as if it had H and W.
  Otherwise `segments` is anything `feature_groups` takes (``"elements"``, a
  label array like `x` or ``x[0]``, a segmentation name for images), and the
  fill may then also be ``"mean"`` (each group's mean).
  """
  if segments is None:
    if image_default is not None:
      check_images(x, method, needed_by=image_default, fix=SEGMENTS_FIX)
    return None, fill_values(x, fill, blur_sigma=blur_sigma)
  labels, counts, m = feature_groups(x, segments)
  fillv = fill_values(x, fill, labels=labels, num_labels=m, blur_sigma=blur_sigma)
  return Groups(labels, jnp.asarray(counts, jnp.int32), m), fillv


def paint(values: Array, labels: Array, dtype) -> Array:
  """One value per group ``[M]`` (shared by the batch) painted onto `labels`: shaped like `labels`."""
  return values.astype(dtype)[labels]


def expand_map(values: Array, labels: Array) -> Array:
  """Per-group values ``[B, M]`` painted onto the label map: shaped like `labels`."""
  flat = labels.reshape(labels.shape[0], -1)
  return jnp.take_along_axis(values, flat, axis=1).reshape(labels.shape)


def apply_coalition(x: Array, fill: Array, labels: Array, z: Array) -> Array:
  """Keeps the groups with ``z[b, m] = 1`` and replaces the others by `fill`."""
  keep = expand_map(z, labels)
  return jnp.where(keep > 0, x, fill)


# ----------------------------------------------------------------------------
# Randomness and cost limits.


def row_keys(key: Array, batch: int) -> Array:
  """One key per example, ``fold_in(key, i)`` for the example's index i.

  Each example's draws then depend on the key and its own index only, never
  on the batch size, so padding or splitting a batch leaves its maps unchanged.
  """
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


def max_evaluations() -> int:
  """Model evaluations per example a method may cost (``SALJAX_MAX_EVALUATIONS``, 10**7)."""
  import os
  return int(os.environ.get("SALJAX_MAX_EVALUATIONS", str(10**7)))


def check_evaluations(evaluations: int, option: str, value: Any, method: str) -> None:
  """Refuses, before any work, a setting whose cost per example cannot finish.

  Memory is bounded by ``batch_size`` whatever the count, but time is not: more
  than `max_evaluations()` model evaluations per example is a typo (``10**9``)
  rather than a budget.
  """
  limit = max_evaluations()
  if evaluations > limit:
    raise ValueError(
        f"{method}: {option}={value} needs {evaluations} model evaluations per example, more than"
        f" the limit of {limit} (it would not finish); lower {option}, or set the"
        " SALJAX_MAX_EVALUATIONS environment variable to allow more")


def max_design_entries() -> int:
  """Entries of a regression's ``[samples, groups]`` design matrix per example (10**8)."""
  import os
  return int(os.environ.get("SALJAX_MAX_DESIGN_ENTRIES", str(10**8)))


def check_design(samples: int, groups: int, method: str) -> None:
  """LIME and KernelSHAP regress on all `samples` coalitions at once, so their
  ``[samples, groups]`` design matrix (4 bytes an entry, per example) must fit."""
  limit = max_design_entries()
  if samples * groups > limit:
    raise ValueError(
        f"{method}: samples={samples} over {groups} feature groups is a design matrix of"
        f" {samples * groups} entries per example, more than the limit of {limit} (the regression"
        " holds it in memory); lower samples or use fewer segments, or set the"
        " SALJAX_MAX_DESIGN_ENTRIES environment variable")
