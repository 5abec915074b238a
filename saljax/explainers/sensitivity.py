"""Global-sensitivity black-box attributions over a coarse grid of patches:
Sobol total-order indices (Fel et al. 2021) and HSIC dependence (Novello et al.
2022), as in Xplique and the authors' code (see
/work/shared/references/lima_submodular.md, parts 3 and 4).

Both perturb the input with grid masks ``M`` upsampled to the image
(nearest neighbour) as ``x * M + fill * (1 - M)`` ("inpainting" with fill 0 in
Xplique), evaluate every masked copy through the compiled model in chunks, and
resize the ``grid x grid`` scores to the image bicubically. With ``segments=``
(any input ``[B, ...]``) the design runs over the M feature groups instead of
the ``grid^2`` cells, each group takes its mask value, and each element gets
its group's score (no resize).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax import removal as R
from saljax.explainers import _masking as MK
from saljax.explainers._registry import REGISTRY, prepare, require_key

Array = jax.Array
DEFAULT_BATCH = None  # automatic: chunks within parallel.max_evals_per_chunk() evaluations
HSIC_MAX_SAMPLES = 2 ** 14  # a 2^14 x 2^14 float32 output kernel is 1 GiB
SOBOL_MAX_DIMS = 21201  # scipy.stats.qmc.Sobol.MAXDIM: the design has 2 d dimensions


def _upsample(mask_flat, grid, size, dtype):
  return jax.image.resize(mask_flat.reshape(grid, grid).astype(dtype), size, "nearest")


def _to_image(scores, x):
  """``[B, g, g]`` scores -> bicubic ``[B, H, W]`` -> broadcast like `x`."""
  b, h, w = x.shape[:3]
  up = jax.image.resize(scores, (b, h, w), "cubic")
  return jnp.broadcast_to(up[..., None], x.shape).astype(x.dtype)


def _paint(mask, x, labels, grid):
  """One design row ``[d]`` as a mask that broadcasts against `x`: grid cells
  upsampled to the image (nearest), or each feature group's value."""
  if labels is None:
    return _upsample(mask, grid, x.shape[1:3], x.dtype)[None, :, :, None]
  return MK.paint(mask, labels, x.dtype)


def _to_map(scores, x, labels, grid):
  """``[B, d]`` scores as a map like `x`: bicubic from the grid, or painted on the groups."""
  if labels is None:
    return _to_image(scores.reshape(-1, grid, grid), x)
  return MK.expand_map(scores, labels).astype(x.dtype)


def _groups(x, segments, fill, method, grid, blur_sigma=10.0):
  """(labels or None, d, fill values): the grid's ``grid^2`` cells (images
  only) or the M feature groups of `segments`."""
  groups, fillv = MK.groups_or_default(x, segments, fill, method,
                                       image_default=f"its default {grid} x {grid} grid of patches",
                                       blur_sigma=blur_sigma)
  if groups is None:
    return None, _check_grid(grid, x) ** 2, fillv
  return groups.labels, groups.m, fillv


def _design_dims(o, x) -> int:
  """d: the ``grid^2`` cells, or the M feature groups of `segments`."""
  if o["segments"] is None:
    return o["grid"] ** 2
  return MK.feature_groups(x, o["segments"])[2]


def _check_grid(grid, x):
  grid = V.check_positive_int(grid, "grid")
  if grid > min(x.shape[1:3]):
    raise ValueError(f"grid: expected at most the image side {min(x.shape[1:3])}, got {grid}")
  return grid


# ----------------------------------------------------------------------------
# Sobol.


def sobol_design(grid: int, designs: int, *, dims: int | None = None) -> np.ndarray:
  """``[designs, 2 d]`` points of scipy's unscrambled Sobol sequence, with
  ``d = grid^2`` cells (or `dims` feature groups)."""
  from scipy.stats import qmc

  d = grid * grid if dims is None else dims
  return qmc.Sobol(d=2 * d, scramble=False).random(designs).astype(np.float32)


@M.jit(static_argnames=("grid", "designs", "score", "batch_size"))
def _sobol(f, x, target, fill, a, bm, labels, grid, designs, score, batch_size):
  d = a.shape[1]

  def one(q):
    block, n = q // designs, q % designs
    i = block - 2
    col = jnp.arange(d)
    mix = jnp.where(col == i, bm[n], a[n])  # C^i: A with column i from B
    m = jnp.where(block == 0, a[n], jnp.where(block == 1, bm[n], mix))
    up = _paint(m, x, labels, grid)
    return M.target_score(f, x * up + fill * (1 - up), target, score)

  y = parallel.chunked_map(one, jnp.arange(designs * (d + 2)), batch_size=batch_size)  # [N(d+2), B]
  f_a = y[:designs]
  f_c = y[2 * designs:].reshape(d, designs, -1)
  var = jnp.var(f_a, axis=0, ddof=1)
  st = ((f_a[None] - f_c) ** 2).sum(1) / (2 * designs)  # [d, B]
  # A model constant under the masks has no variance to explain: 0, not 0/0.
  st = jnp.where(var > 0, st / jnp.where(var > 0, var, 1.0), 0.0)
  return _to_map(st.T, x, labels, grid)


@REGISTRY.register("sobol", family="sensitivity", returns="input",
    evaluations=lambda o, f, x: o["designs"] * (_design_dims(o, x) + 2), backward=False,
    smoke={"grid": 4, "designs": 4})
def sobol(f, x, target, *, key=None, grid: int = 8, designs: int = 32, segments: Any = None,
          fill: Any = 0.0, score: str = "logit",
          batch_size: int | None = DEFAULT_BATCH, removal: Any = None) -> Array:
  """Sobol attribution (Fel, Cadene, Chalvidal, Cord, Vigouroux, Serre 2021,
  "Look at the Variance! Efficient Black-box Explanations with Sobol-based
  Sensitivity Analysis", arXiv:2111.04138).

  Continuous masks in ``[0, 1]^(grid^2)`` from an unscrambled Sobol sequence of
  dimension ``2 grid^2``: A (first half), B (second half) and ``C^i`` (A with
  column i from B), ``designs * (grid^2 + 2)`` evaluations in all. The
  total-order index of patch i is Jansen's estimator
  ``sum_n (f(A_n) - f(C^i_n))^2 / (2 N Var(f(A)))`` (unbiased variance), as in
  Xplique. Deterministic (no key). Defaults are Xplique's: ``grid=8,
  designs=32`` (a power of 2), inpainting with fill 0, target logit.

  Args:
    grid: patches per side; designs: N, a power of two (``designs * (d + 2)``
      evaluations with ``d = grid^2``, at most `_masking.max_evaluations()`,
      10**7, per example).
    segments: None (default: the ``grid x grid`` patches, NHWC images only),
      or feature groups for any input ``[B, ...]``: ``"elements"`` or an int
      label array shaped like `x` or ``x[0]`` (`_masking.feature_groups`);
      then ``d = M`` groups, and `grid` is unused.
    fill: what a masked-out fraction blends to (default 0.0, input space; with
      `segments` also ``"mean"``).
    score: ``"logit"`` (default) or ``"probability"``.
    batch_size: masked copies per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images, `fill` being what
      partly removed patches still show. Sobol's masks are continuous: the
      mask-aware forward keeps the pixels whose mask is above 0.5, which
      also blend toward `fill` by their mask, as in `rise`.
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 10.0, "sobol")
  f, x, target = prepare(f, x, target)
  M.check_score(score)
  labels, d, fillv = _groups(x, segments, fill, "sobol", grid, blur_sigma)
  designs = parallel.check_count(designs, "designs", minimum=2)
  if designs & (designs - 1):
    raise ValueError(f"designs: expected a power of two (Sobol sequence balance), got {designs}")
  MK.check_evaluations(designs * (d + 2), "designs", designs, "sobol")
  if 2 * d > SOBOL_MAX_DIMS:
    raise ValueError(
        f"sobol: {d} feature groups need a Sobol sequence of dimension {2 * d}, more than scipy's"
        f" {SOBOL_MAX_DIMS}; use fewer, larger segments (e.g. one label per time step, not"
        " segments='elements')")
  pts = sobol_design(grid, designs, dims=d)
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "sobol")
  return done(_sobol(f, x, target, fillv, jnp.asarray(pts[:, :d]), jnp.asarray(pts[:, d:]),
                     labels, grid if labels is None else None, designs, score,
                     V.check_batch_size(batch_size)))


# ----------------------------------------------------------------------------
# HSIC.


def latin_hypercube(key: Array, samples: int, dims: int) -> Array:
  """``[samples, dims]`` Latin hypercube points in [0, 1): one point per stratum per dimension."""
  k_perm, k_u = jax.random.split(key)
  perms = jax.vmap(lambda k: jax.random.permutation(k, samples))(jax.random.split(k_perm, dims))
  u = jax.random.uniform(k_u, (samples, dims))
  return (perms.T + u) / samples


def hsic_scores(masks: Array, y: Array) -> Array:
  """HSIC between each binary mask column and the outputs, ``[d]``.

  ``tr(K_i H L H) / (p - 1)^2`` with the Dirac input kernel
  ``K_i[a, b] = 1 - (m_a - m_b)^2`` and the RBF output kernel of width the
  median of `y` (Novello et al.; Xplique and the authors' code use the median
  of the outputs themselves). A median of 0 falls back to the standard
  deviation (then 1), so the kernel is never 0/0.
  """
  p = y.shape[0]
  s = jnp.abs(jnp.median(y))
  s = jnp.where(s > 1e-12, s, jnp.std(y))
  s = jnp.where(s > 1e-12, s, 1.0)
  lk = jnp.exp(-((y[:, None] - y[None, :]) ** 2) / (2 * s ** 2))
  lc = lk - lk.mean(0, keepdims=True)
  lc = lc - lc.mean(1, keepdims=True)  # H L H
  m = masks.astype(y.dtype)
  # For binary masks K_i = m m^T + (1 - m)(1 - m)^T, so tr(K_i Lc) is two quadratic forms.
  on = jnp.einsum("pi,pq,qi->i", m, lc, m)
  off = jnp.einsum("pi,pq,qi->i", 1 - m, lc, 1 - m)
  return (on + off) / (p - 1) ** 2


@M.jit(static_argnames=("grid", "d", "samples", "score", "batch_size"))
def _hsic(f, x, target, key, fill, labels, grid, d, samples, score, batch_size):
  masks = latin_hypercube(key, samples, d) >= 0.5  # rounded LHS

  def one(m):
    up = _paint(m, x, labels, grid)
    return M.target_score(f, x * up + fill * (1 - up), target, score)

  y = parallel.chunked_map(one, masks, batch_size=batch_size)  # [p, B]
  # One example at a time: each holds a [samples, samples] output kernel.
  scores = jax.lax.map(lambda yb: hsic_scores(masks, yb), y.astype(jnp.float32).T)  # [B, d]
  return _to_map(scores, x, labels, grid)


@REGISTRY.register("hsic",
    differentiable=False, note="its derivative disagrees with finite differences (bandwidths from medians of distances); use a gradient method under jax.grad", family="sensitivity", returns="input", needs=("key",),
    evaluations=lambda o, f, x: o["samples"], backward=False, smoke={"grid": 4, "samples": 16})
def hsic(f, x, target, *, key=None, grid: int = 7, samples: int = 1536, segments: Any = None,
         fill: Any = 0.0, score: str = "logit",
         batch_size: int | None = DEFAULT_BATCH, removal: Any = None) -> Array:
  """HSIC attribution (Novello, Fel, Vigouroux 2022, "Making Sense of
  Dependence: Efficient Black-box Explanations Using Dependence Measure",
  arXiv:2206.06219).

  `samples` binary ``grid x grid`` masks from a rounded Latin hypercube,
  inpainting ``x * M + fill * (1 - M)``, and per patch the HSIC between the
  patch's on/off state and the model score (`hsic_scores`). Defaults follow
  the authors' notebook: ``grid=7, samples=1536`` (the paper recommends 7 and
  about 1500 forwards; Xplique's constructor uses 8 and 500); target logit.

  Args:
    key: a `jax.random` key (required): it draws the Latin hypercube, shared
      by every example of the batch (so maps do not depend on the batch size).
    samples: p, default 1536, at most `HSIC_MAX_SAMPLES` (16384): the scores
      hold a ``p x p`` kernel per example.
    segments: None (default: the ``grid x grid`` patches, NHWC images only),
      or feature groups for any input ``[B, ...]``: ``"elements"`` or an int
      label array shaped like `x` or ``x[0]`` (`_masking.feature_groups`);
      the hypercube then has one dimension per group, and `grid` is unused.
    fill: what masked-out patches become (default 0.0; with `segments` also ``"mean"``).
    score: ``"logit"`` (default) or ``"probability"``.
    batch_size: masked copies per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images, `fill` being what
      partly removed patches still show.
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 10.0, "hsic")
  f, x, target = prepare(f, x, target)
  key = require_key(key, "hsic")
  M.check_score(score)
  labels, d, fillv = _groups(x, segments, fill, "hsic", grid, blur_sigma)
  samples = parallel.check_count(samples, "samples", minimum=2)
  if samples > HSIC_MAX_SAMPLES:
    raise ValueError(
        f"hsic: samples={samples} is more than the limit of {HSIC_MAX_SAMPLES}: HSIC compares every"
        f" pair of samples (a {samples} x {samples} kernel per example, and the Latin hypercube"
        " is drawn over all samples at once), so it would not fit in memory; lower samples")
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "hsic")
  return done(_hsic(f, x, target, key, fillv, labels, grid if labels is None else None, d,
                    samples, score, V.check_batch_size(batch_size)))
