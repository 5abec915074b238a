"""Performance information curves: SIC and AIC (Kapishnikov, Bolukbasi, Viegas,
Terry 2019, "XRAI: Better Attributions Through Regions", ICCV, arXiv:1906.02825).

An image is "blurred" by keeping a few pixels and interpolating the rest
(linear interpolation over the Delaunay triangulation of the kept pixels, PAIR
saliency's `create_blurred_image`); the most salient fraction ``t`` of the
pixels is then kept too, for increasing thresholds ``t``. Each such image is
placed on the x axis by its information -- the size of its lossless webp
encoding, normalized between the fully blurred image (0) and the original (1)
-- and on the y axis by the model's performance on it, normalized the same way:
the softmax of the target (`sic`, the Softmax Information Curve) or whether the
target is the arg max (`aic`, the Accuracy Information Curve). A good map buys
performance with little information: HIGHER area under the curve is better.

This is PAIR saliency 0.2.1's `saliency.metrics.pic.compute_pic_metric` for a
batch, with the same numbers (tests/metrics/test_pic.py runs both):

- Host step (numpy, scipy, PIL; `_host_images`): the saliency thresholds'
  masks (`np.quantile`, vectorized over examples and thresholds), the
  interpolated images (one Delaunay triangulation per thresholded image, all
  channels interpolated at once, where PAIR triangulates once per channel) and
  their webp sizes (one encoding per image). The ``B * (T + 2)`` independent
  images are spread over a thread pool (it helps as far as scipy and PIL
  release the GIL), with BLAS held to one thread (`_one_blas_thread`).
  Nothing here can be jitted: the triangulation and the encoder are not array
  programs.
- Device step (compiled, `_pic_curves`): the model on every image of the batch
  at once, all ``T + 2`` images per example (chunked by `batch_size`), then the
  normalization, the monotone envelope, the interpolation of the curve on
  PAIR's grid and its trapezoid area, vectorized over the batch.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.metrics import _common as C
from saljax.metrics._registry import REGISTRY

Array = jax.Array

# The thresholds of PAIR's pic_metrics notebook (fractions of the most salient pixels kept).
DEFAULT_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5,
                      0.75)

_NOTE = ("the information axis is the webp-compressed size of each thresholded image, computed"
         " on the host (scipy's Delaunay interpolation and PIL's encoder); call it outside"
         " jit/vmap/grad (the model evaluations are compiled inside)")


def random_mask(key: Any, shape: Sequence[int], fraction: float = 0.01) -> Array:
  """Random seed pixels of the fully blurred image: ``[B, H, W]`` bool with
  ``int(H * W * fraction)`` pixels set per example, drawn without replacement
  (PAIR's `generate_random_mask`, default fraction 0.01 as PAIR's, drawn with
  `jax.random` instead of `np.random`). The same key gives the same masks, so
  maps of several methods are compared on the same blurred images, as PAIR
  asks."""
  key = C.check_key(key, "random_mask")
  if len(shape) != 3:
    raise ValueError(f"random_mask: expected a shape (B, H, W), got {tuple(shape)}")
  b, h, w = (V.check_positive_int(int(s), "shape") for s in shape)
  fraction = C.check_fraction(fraction, "fraction")
  n = int(h * w * fraction)

  def one(k):
    keep = jax.random.permutation(k, h * w)[:n]
    return jnp.zeros((h * w,), bool).at[keep].set(True).reshape(h, w)

  return jax.vmap(one)(jax.random.split(key, b))


# ----------------------------------------------------------------------------
# Host step: thresholded masks, interpolated images, webp sizes.


def _webp_size(image: np.ndarray) -> int:
  """Bytes of the lossless webp encoding (PAIR's `estimate_image_entropy`)."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buffer, format="webp", lossless=True, quality=100)
  return buffer.tell()


def _blurred(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """PAIR's `create_blurred_image(image, mask, 'linear')` for a uint8 ``[H, W, C]``
  image: unkept pixels are linearly interpolated from the kept ones (corners
  always kept), outside the hull the image's mean colour, rounded to uint8."""
  from scipy import interpolate
  h, w, _ = image.shape
  mask = mask.copy()
  mask[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
  if mask.all():
    return image
  known, unknown = np.argwhere(mask), np.argwhere(~mask)
  # One triangulation for all channels (PAIR builds one per channel: the same
  # triangulation, so the same weights and values).
  values = interpolate.griddata(known, image[mask].astype(np.float64), unknown,
                                method="linear", fill_value=np.nan)
  mean = image.mean(axis=(0, 1))
  values = np.where(np.isnan(values), mean, values)
  # PAIR's arithmetic: a float32 canvas, rounded, back to uint8.
  out = image * mask[..., None].astype(np.float32)
  out[~mask] = values
  return np.round(out).astype(np.uint8)


def _one_blas_thread():
  try:
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def _host_images(images: np.ndarray, maps: np.ndarray, seeds: np.ndarray,
                 thresholds: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
  """The ``T + 2`` images of each example and their webp sizes.

  Returns ``(uint8 [B, T + 2, H, W, C], int [B, T + 2])``, ordered: the fully
  blurred image, one per threshold (ascending), the original.
  """
  b = images.shape[0]
  # PAIR: pixels at or above the (1 - t) quantile of the map, plus the seeds.
  q = np.quantile(maps.reshape(b, -1), [1 - t for t in thresholds], axis=1)  # [T, B]
  masks = maps[None] >= q.reshape(q.shape + (1, 1))
  masks = np.concatenate([np.zeros_like(masks[:1]), masks], 0) | seeds[None]  # [T + 1, B, H, W]

  def job(i):
    t, e = divmod(i, b)
    out = _blurred(images[e], masks[t, e])
    return out, _webp_size(out)

  jobs = range(masks.shape[0] * b)
  workers = max(1, min(len(jobs), os.cpu_count() or 1))
  # One BLAS thread per job: Delaunay's barycentric transforms are tiny LAPACK
  # calls, and a multi-threaded OpenBLAS made them about 1000x slower on a
  # busy 2-core machine (griddata on 16x16: 3.3 s against 1.7 ms).
  with _one_blas_thread(), concurrent.futures.ThreadPoolExecutor(workers) as pool:
    done = list(pool.map(job, jobs))
  blurred = np.stack([d[0] for d in done]).reshape((masks.shape[0], b) + images.shape[1:])
  sizes = np.asarray([d[1] for d in done], np.int64).reshape(masks.shape[0], b)
  originals = [_webp_size(im) for im in images]
  stack = np.concatenate([blurred.swapaxes(0, 1), images[:, None]], 1)
  sizes = np.concatenate([sizes.T, np.asarray(originals, np.int64)[:, None]], 1)
  return stack, sizes


# ----------------------------------------------------------------------------
# Device step: the model on every image, then the curves.


@M.jit(static_argnames=("kind", "score", "keep_monotonous", "num_data_points", "batch_size"))
def _pic_curves(f, images, sizes, low, high, target, min_pred_value, kind, score, keep_monotonous,
                num_data_points, batch_size):
  b, k = images.shape[:2]
  low, high = low.astype(jnp.float32), high.astype(jnp.float32)

  def perf(batch):  # [B, H, W, C] uint8 -> [B]
    x = low + batch.astype(jnp.float32) / 255.0 * (high - low)
    if kind == "sic":
      return C.target_score(f, x, target, score)
    return (jnp.argmax(f(x), -1) == target).astype(jnp.float32)

  preds = parallel.chunked_map(perf, images.swapaxes(0, 1), batch_size=batch_size).T  # [B, K]
  sizes = sizes.astype(jnp.float32)
  p0, p1 = preds[:, :1], preds[:, -1:]
  e0, e1 = sizes[:, :1], sizes[:, -1:]
  # PAIR raises ComputePicMetricError for such images (and its aggregate skips
  # them); here they are flagged and their numbers are finite but meaningless.
  valid = (p1[:, 0] >= min_pred_value) & (e0[:, 0] < e1[:, 0]) & (p0[:, 0] < p1[:, 0])
  info = jnp.clip((sizes[:, 1:-1] - e0) / jnp.where(e1 > e0, e1 - e0, 1.0), 0.0, 1.0)
  perf_n = jnp.clip((preds[:, 1:-1] - p0) / jnp.where(p1 > p0, p1 - p0, 1.0), 0.0, 1.0)
  ys = jax.lax.cummax(perf_n, axis=1) if keep_monotonous else perf_n
  # PAIR appends (0, 0) and (1, 1) and interpolates with scipy's interp1d,
  # which sorts x stably and (for float64 data) calls np.interp: at x values
  # shared by several points the last of them counts (right-continuous).
  xs = jnp.concatenate([info, jnp.zeros((b, 1)), jnp.ones((b, 1))], 1)
  ys = jnp.concatenate([ys, jnp.zeros((b, 1)), jnp.ones((b, 1))], 1)
  order = jnp.argsort(xs, axis=1, stable=True)
  xs, ys = jnp.take_along_axis(xs, order, 1), jnp.take_along_axis(ys, order, 1)
  grid = jnp.asarray(np.linspace(0.0, 1.0, num_data_points, endpoint=False), jnp.float32)
  n = xs.shape[1]
  # np.interp: j = the last point with x_j <= g; every g < 1 = the last x, so
  # x_j <= g < x_{j+1} and the segment is never degenerate.
  j = jax.vmap(lambda row: jnp.searchsorted(row, grid, side="right"))(xs) - 1
  j = jnp.clip(j, 0, n - 2)
  x_lo, x_hi = jnp.take_along_axis(xs, j, 1), jnp.take_along_axis(xs, j + 1, 1)
  y_lo, y_hi = jnp.take_along_axis(ys, j, 1), jnp.take_along_axis(ys, j + 1, 1)
  gap = x_hi - x_lo
  y = y_lo + (y_hi - y_lo) / jnp.where(gap > 0, gap, 1.0) * (grid - x_lo)
  curve = jnp.concatenate([y, jnp.ones((b, 1))], 1)
  return {"score": C.trapezoid_auc(curve), "curve": curve, "valid": valid, "information": info,
          "performance": perf_n}


def _check_range(pixel_range, x) -> tuple[Array, Array]:
  try:
    low, high = pixel_range
  except (TypeError, ValueError) as e:
    raise TypeError(f"pixel_range: expected (low, high), scalars or per-channel arrays [C], got"
                    f" {pixel_range!r}") from e
  low = np.broadcast_to(np.asarray(low, np.float32), (x.shape[-1],))
  high = np.broadcast_to(np.asarray(high, np.float32), (x.shape[-1],))
  if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
    raise ValueError(f"pixel_range: expected finite low < high, got low={low}, high={high}")
  return low, high


def _pic(kind, f, x, attribution, target, key, *, thresholds, random_mask_, fraction,
         pixel_range, min_pred_value, keep_monotonous, num_data_points, score, batch_size):
  shape = tuple(np.shape(x))
  if len(shape) != 4 or shape[-1] not in (1, 3):
    hint = ("; it looks channel-first (NCHW): transpose to NHWC"
            if len(shape) == 4 and shape[1] in (1, 3) else "")
    raise ValueError(f"{kind}: expected NHWC images [B, H, W, C] (channels last) with C = 1 or 3"
                     f" (webp encodes grey or RGB), got x of shape {shape}{hint}")
  f, x, target = C.prepare_model(f, x, target)
  attribution = C.check_attribution(attribution, x)
  thresholds = C.check_fractions(thresholds, "thresholds")
  if list(thresholds) != sorted(thresholds):
    raise ValueError(f"thresholds: expected ascending fractions (PAIR's order), got {thresholds}")
  low, high = _check_range(pixel_range, x)
  min_pred_value = float(min_pred_value)
  num_data_points = V.check_positive_int(num_data_points, "num_data_points")
  batch_size = V.check_batch_size(batch_size)
  if score is not None:
    C.check_score(score)
  if random_mask_ is None:
    key = C.check_key(key, kind, required=True)
    seeds = np.asarray(random_mask(key, x.shape[:3], fraction))
  else:
    seeds = np.asarray(random_mask_)
    if seeds.shape not in (tuple(x.shape[:3]), tuple(x.shape[1:3])) or seeds.dtype != bool:
      raise ValueError(f"random_mask: expected bool [B, H, W] or [H, W] matching x's"
                       f" {tuple(x.shape[:3])}, got {seeds.dtype} {seeds.shape}")
    seeds = np.broadcast_to(seeds, x.shape[:3])
  # The model's input space -> uint8 pixels (PAIR works on uint8 images).
  u8 = np.asarray(jnp.clip(jnp.round((x - low) / (high - low) * 255.0), 0, 255).astype(jnp.uint8))
  maps = np.asarray(C.feature_map(attribution, x))
  images, sizes = _host_images(u8, maps, seeds, thresholds)
  return _pic_curves(f, jnp.asarray(images), jnp.asarray(sizes), jnp.asarray(low),
                     jnp.asarray(high), target, jnp.float32(min_pred_value), kind,
                     score or "probability", bool(keep_monotonous), num_data_points, batch_size)


def _evaluations(o, f, x) -> int:
  """The fully blurred image, one image per threshold, the original."""
  t = o["thresholds"]
  return (1 if isinstance(t, (int, float)) else len(t)) + 2


_DOC = """
  Args:
    f: model ``x[B, H, W, C] -> logits[B, classes]``.
    x: NHWC images with 1 or 3 channels, in the model's input space;
      `pixel_range` maps it to uint8 pixels (PAIR's images are uint8), and the
      model sees every image, the original included, back in its own space
      from those uint8 pixels.
    attribution: shaped like `x` (ranked by its signed channel sum) or
      ``[B, H, W]``; higher = more important. PAIR leaves the sign to the
      caller: pass ``abs`` of a signed map to rank by magnitude.
    target: class indices ``[B]``, an int or ``"predicted"``.
    key: draws the seed pixels of the fully blurred image (`random_mask`);
      not needed with `random_mask`.
    thresholds: ascending fractions of the most salient pixels to keep;
      default: PAIR's notebook's 13 thresholds, 0.005 to 0.75.
    random_mask: bool ``[B, H, W]`` (or ``[H, W]``) seed pixels, instead of
      drawing them with `key` (e.g. PAIR's own masks).
    fraction: fraction of seed pixels drawn with `key` (PAIR's default, 0.01).
    pixel_range: ``(low, high)`` values of a black and a white pixel in the
      model's space, scalars or per channel ``[C]`` (e.g. ``((0 - mean) / std,
      (1 - mean) / std)`` for standardized inputs). Default ``(0, 1)``.
    min_pred_value: images on which the model's performance on the original is
      below this are flagged invalid (PAIR's default 0.8).
    keep_monotonous: the curve is the running maximum of the normalized
      performance (True, as in the paper and PAIR's default).
    num_data_points: grid points of the curve before the final x = 1 (PAIR's
      default 1000).
    batch_size: images per example evaluated together (None: all ``T + 2``).

  Returns:
    ``{"score": AUC [B], "curve": [B, num_data_points + 1], "valid": bool [B],
    "information": [B, T], "performance": [B, T]}``: the curve on PAIR's grid
    ``linspace(0, 1, num_data_points, endpoint=False)`` plus 1.0 and its
    trapezoid area; `information` and `performance` are each threshold's
    normalized webp size and normalized performance (before the running
    maximum). `valid` is False where PAIR raises `ComputePicMetricError` and
    skips the image: the model's performance on the original is below
    `min_pred_value`, or not above the fully blurred image's, or the fully
    blurred image is not smaller than the original; such rows' numbers are
    finite but meaningless: aggregate with `aggregate_pic`, which drops them.

  Points at the same information (e.g. a thresholded image exactly as large
  as the fully blurred one, at x = 0) are resolved as PAIR's interp1d does
  (np.interp on the stably sorted points): the last one counts.
"""


@REGISTRY.register("sic", family="information", returns="curve", needs=("key",),
    evaluations=_evaluations, backward=False, smoke={"thresholds": (0.05, 0.2, 0.5),
    "min_pred_value": 0.0}, direction="higher", jittable=False, vmappable=False,
    differentiable=False, note=_NOTE, model_output="forward")
def sic(f, x, attribution, target, *, key=None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS, random_mask=None,
        fraction: float = 0.01, pixel_range: Any = (0.0, 1.0), min_pred_value: float = 0.8,
        keep_monotonous: bool = True, num_data_points: int = 1000, score: str = "probability",
        batch_size: int | None = None):
  """Softmax Information Curve (Kapishnikov et al. 2019, "XRAI: Better
  Attributions Through Regions", ICCV, arXiv:1906.02825; PAIR saliency's
  `compute_pic_metric` with a softmax `pred_func`): the target's softmax
  probability against the information kept; HIGHER area is better.

  `score`: ``"probability"`` (default, the paper's softmax) or ``"logit"``
  (for a callable target such as `saljax.targets.class_probability`).
  """
  return _pic("sic", f, x, attribution, target, key, thresholds=thresholds,
              random_mask_=random_mask, fraction=fraction, pixel_range=pixel_range,
              min_pred_value=min_pred_value, keep_monotonous=keep_monotonous,
              num_data_points=num_data_points, score=score, batch_size=batch_size)


@REGISTRY.register("aic", family="information", returns="curve", needs=("key",),
    evaluations=_evaluations, backward=False, smoke={"thresholds": (0.05, 0.2, 0.5),
    "min_pred_value": 0.0}, direction="higher", jittable=False, vmappable=False,
    differentiable=False, note=_NOTE, model_output="forward")
def aic(f, x, attribution, target, *, key=None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS, random_mask=None,
        fraction: float = 0.01, pixel_range: Any = (0.0, 1.0), min_pred_value: float = 0.8,
        keep_monotonous: bool = True, num_data_points: int = 1000,
        batch_size: int | None = None):
  """Accuracy Information Curve (Kapishnikov et al. 2019, "XRAI: Better
  Attributions Through Regions", ICCV, arXiv:1906.02825; PAIR saliency's
  `compute_pic_metric` with a `pred_func` returning 1.0 when the target is the
  arg max, 0.0 otherwise): accuracy against the information kept; HIGHER area
  is better. With the default ``min_pred_value=0.8`` only correctly
  classified originals are valid (PAIR's).
  """
  return _pic("aic", f, x, attribution, target, key, thresholds=thresholds,
              random_mask_=random_mask, fraction=fraction, pixel_range=pixel_range,
              min_pred_value=min_pred_value, keep_monotonous=keep_monotonous,
              num_data_points=num_data_points, score=None, batch_size=batch_size)


sic.__doc__ += _DOC
aic.__doc__ += _DOC


def aggregate_pic(result: dict, method: str = "median") -> dict:
  """The aggregate curve of the valid rows of a `sic`/`aic` result and its
  trapezoid area (PAIR's `aggregate_individual_pic_results`: the median curve
  by default, or ``"mean"``). Returns ``{"score": float, "curve": [K], "count":
  valid rows}``.

  Raises:
    ValueError: no valid row (PAIR: "at least one element"), or an unknown method.
  """
  V.check_choice(method, "method", ("median", "mean"))
  if not isinstance(result, dict) or not {"curve", "valid"} <= set(result):
    raise TypeError(f"aggregate_pic: expected the dict returned by sic or aic, got"
                    f" {V.describe(result)}")
  curves = np.asarray(result["curve"], np.float64)[np.asarray(result["valid"], bool)]
  if not len(curves):
    raise ValueError("aggregate_pic: no valid row (every image was flagged invalid)")
  curve = np.median(curves, 0) if method == "median" else curves.mean(0)
  n = curve.shape[0] - 1
  return {"score": float((curve.sum() - 0.5 * (curve[0] + curve[-1])) / n), "curve": curve,
          "count": int(len(curves))}
