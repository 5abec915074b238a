"""Checks and building blocks shared by the metric families.

Conventions every metric follows (and documents):
- A *feature* is a pixel for NHWC images (all channels together) and a single
  coordinate for any other input rank. An attribution may come shaped like
  `x` (pixel methods; summed over channels to rank pixels) or, for images,
  shaped ``[B, H, W]`` (a map already reduced over channels, or an upsampled
  layer map).
- Rankings are descending; ties are broken by feature index (row-major) when no
  key is given, and uniformly at random when a `jax.random` key is given, so a
  constant map gives a random order instead of a raster scan.
- Metrics with a curve return ``{"score": [B], "curve": [B, K]}``; the others
  return ``[B]``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M

Array = jax.Array

SCORES = M.SCORES
class_scores, target_score, check_score = M.class_scores, M.target_score, M.check_score


prepare_model = M.prepare  # the same checks as every explainer's


def feature_shape(x: Array) -> tuple[int, ...]:
  """``[B, H, W]`` for NHWC images, `x.shape` otherwise."""
  return tuple(x.shape[:3]) if x.ndim == 4 else tuple(x.shape)


def check_attribution(attribution: Any, x: Array, *, name: str = "attribution") -> Array:
  """Returns `attribution` as a float array shaped like `x` or like its feature grid.

  Raises:
    TypeError: not a floating array.
    ValueError: a shape matching neither `x` nor ``x.shape[:3]`` (NHWC images),
      or NaN/inf values (an all-NaN map is called out by name).
  """
  if not hasattr(attribution, "shape") or not hasattr(attribution, "dtype"):
    if isinstance(attribution, (list, tuple)):
      attribution = np.asarray(attribution)
    else:
      raise TypeError(f"{name}: expected a floating array, got {V.describe(attribution)}")
  if not jnp.issubdtype(attribution.dtype, jnp.floating):
    raise TypeError(f"{name}: expected a floating-point array, got {V.describe(attribution)}")
  shape = tuple(attribution.shape)
  allowed = [tuple(x.shape)]
  if x.ndim == 4:
    allowed.append(tuple(x.shape[:3]))
  if shape not in allowed:
    want = " or ".join(str(s) for s in allowed)
    raise ValueError(f"{name}: expected shape {want} to match x of shape {tuple(x.shape)},"
                     f" got {shape}")
  if V.is_concrete(attribution):
    a = np.asarray(attribution)
    nan = np.isnan(a).reshape(a.shape[0], -1)
    if nan.all(1).any():
      rows = np.flatnonzero(nan.all(1)).tolist()
      raise ValueError(f"{name}: got an all-NaN map in batch rows {rows[:10]}; the explainer"
                       " failed on these inputs")
    finite = np.isfinite(a).reshape(a.shape[0], -1).all(1)
    if not finite.all():
      rows = np.flatnonzero(~finite).tolist()
      raise ValueError(f"{name}: expected finite values, got NaN or inf in batch rows {rows[:10]}")
  return jnp.asarray(attribution, jnp.float32)


def feature_map(attribution: Array, x: Array, *, absolute: bool = False) -> Array:
  """Per-feature relevance on the feature grid (`feature_shape(x)`).

  NHWC attributions shaped like `x` are summed over channels (signed, as
  RISE and ROAD rank pixels; ``absolute=True`` sums ``|a|`` instead).
  """
  a = jnp.abs(attribution) if absolute else attribution
  if x.ndim == 4 and a.ndim == 4:
    a = a.sum(-1)
  return a


def expand(mask: Array, x: Array) -> Array:
  """Broadcasts a feature-grid array to the shape of `x` (adds the channel axis)."""
  if x.ndim == 4 and mask.ndim == 3:
    mask = mask[..., None]
  return jnp.broadcast_to(mask, x.shape)


def check_key(key: Any, method: str, *, required: bool = True):
  """A `jax.random` key (new-style or raw uint32[2]), or None when not required."""
  if key is None:
    if required:
      raise ValueError(f"{method}: expected a jax.random key (key=jax.random.key(0)), got None")
    return None
  if not hasattr(key, "dtype"):
    raise TypeError(f"{method}: expected a jax.random key, got {V.describe(key)}")
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise TypeError(f"{method}: expected a single jax.random key, got a batch of shape {key.shape}")
    return key
  if tuple(key.shape) != (2,) or key.dtype.name != "uint32":
    raise TypeError(f"{method}: expected a jax.random key (jax.random.key or PRNGKey), got"
                    f" {V.describe(key)}")
  return jax.random.wrap_key_data(key)


def check_fraction(value: Any, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise TypeError(f"{name}: expected a float in [{low}, {high}], got {value!r}")
  if not low <= float(value) <= high:
    raise ValueError(f"{name}: expected a float in [{low}, {high}], got {value}")
  return float(value)


def check_fractions(values: Any, name: str) -> tuple[float, ...]:
  if isinstance(values, (int, float)):
    values = (values,)
  try:
    values = tuple(float(v) for v in values)
  except TypeError as e:
    raise TypeError(f"{name}: expected a sequence of fractions in [0, 1], got {values!r}") from e
  if not values:
    raise ValueError(f"{name}: expected at least one fraction, got an empty sequence")
  for v in values:
    check_fraction(v, name)
  return values


def ranks(m: Array, key=None, *, descending: bool = True) -> Array:
  """Rank of every feature of `m[B, ...]` (0 = most relevant), int32, shaped like `m`.

  Ties go to the lower flat index without a key and are broken uniformly at
  random with one (one permutation per example).
  """
  b = m.shape[0]
  flat = m.reshape(b, -1)
  n = flat.shape[1]
  v = -flat if descending else flat

  def one(row, perm):
    order = perm[jnp.argsort(row[perm], stable=True)]
    return jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))

  if key is None:
    perms = jnp.broadcast_to(jnp.arange(n), (b, n))
  else:
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, b))
  return jax.vmap(one)(v, perms).reshape(m.shape)


def trapezoid_auc(curve: Array) -> Array:
  """Trapezoid area of `curve[..., K+1]` on a uniform grid over [0, 1] (RISE's `auc`)."""
  n = curve.shape[-1] - 1
  if n == 0:
    return curve[..., 0]
  return (curve.sum(-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / n


def pearson(a: Array, b: Array, axis: int = -1) -> Array:
  """Pearson correlation along `axis`; 0 where either side is constant (no NaN)."""
  ea, eb = (a * a).sum(axis), (b * b).sum(axis)
  a = a - a.mean(axis, keepdims=True)
  b = b - b.mean(axis, keepdims=True)
  num = (a * b).sum(axis)
  va, vb = (a * a).sum(axis), (b * b).sum(axis)
  # Values equal up to rounding (e.g. the same sum computed twice) count as constant.
  ok = (va > 1e-10 * (ea + 1e-30)) & (vb > 1e-10 * (eb + 1e-30))
  den2 = va * vb
  return jnp.where(ok, num / jnp.sqrt(jnp.where(ok, den2, 1.0)), 0.0)


def average_ranks(v: Array) -> Array:
  """Ranks of `v[..., n]` along the last axis, ties sharing their average rank (scipy's
  `rankdata(method="average")` minus one)."""
  def one(row):
    s = jnp.sort(row)
    lo = jnp.searchsorted(s, row, side="left")
    hi = jnp.searchsorted(s, row, side="right")
    return (lo + hi - 1).astype(jnp.float32) / 2
  flat = v.reshape(-1, v.shape[-1])
  return jax.vmap(one)(flat).reshape(v.shape)


def spearman(a: Array, b: Array) -> Array:
  """Spearman rank correlation of `a[B, ...]` and `b[B, ...]` per example, `[B]`.

  Average ranks for ties (as `scipy.stats.spearmanr`); 0 where a map is constant.
  """
  n = a.shape[0]
  return pearson(average_ranks(a.reshape(n, -1)), average_ranks(b.reshape(n, -1)))


def check_f_output(f, x) -> int:
  """Number of classes of `f` on `x`."""
  return M.output_shape(f, x)[1]


FILLS = ("zeros", "mean", "blur")


def make_fill(x: Array, fill: Any, *, blur_sigma: float = 5.0) -> Array:
  """The values removed features are replaced with, shaped like `x`.

  Args:
    fill: ``"zeros"`` (zeros in the model's input space: the mean colour for
      inputs standardized with the dataset mean, RISE's deletion), ``"mean"``
      (each image's own per-channel mean), ``"blur"`` (the image blurred with a
      Gaussian of `blur_sigma` pixels truncated to an 11x11 kernel at the
      default sigma 5, zero padding: RISE's insertion start), a float (a
      constant), or an array shaped like `x` or ``x[0]`` (a given baseline).
  """
  if isinstance(fill, str):
    V.check_choice(fill, "fill", FILLS)
    if fill == "zeros":
      return jnp.zeros_like(x)
    if fill == "mean":
      axes = tuple(range(1, x.ndim - 1)) if x.ndim >= 3 else (1,)
      return jnp.broadcast_to(x.mean(axes, keepdims=True), x.shape)
    if x.ndim != 4:
      raise ValueError(f"fill='blur' needs NHWC images [B, H, W, C], got x of shape"
                       f" {tuple(x.shape)}; pass fill='zeros', 'mean', a float or an array")
    # RISE's `gkern(11, 5)`: radius 5 = int(truncate * sigma + 0.5) with truncate 1.
    return blur(x, blur_sigma)
  if isinstance(fill, (int, float, np.floating, np.integer)) and not isinstance(fill, bool):
    return jnp.full_like(x, float(fill))
  if not hasattr(fill, "shape"):
    raise TypeError(f"fill: expected 'zeros', 'mean', 'blur', a float or an array shaped like x,"
                    f" got {V.describe(fill)}")
  return V.check_same_shape(fill, x, name="fill")


def blur(x: Array, sigma: float) -> Array:
  """Gaussian blur over H and W with an 11x11 kernel (radius 5, as RISE's
  ``gkern(11, sigma)``) and zero padding. RISE builds its kernel by filtering a
  delta with scipy (reflected tails folded back in); here the Gaussian is
  truncated at radius 5 and renormalized, which differs only in the tail
  weights."""
  from saljax import ops
  sigma = float(sigma)
  return ops.gaussian_blur(x, sigma, truncate=5.0 / sigma, mode="constant", max_sigma=sigma)
