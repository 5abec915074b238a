"""Region methods: XRAI and LiMA / submodular subset selection.

Both rank image regions rather than pixels. Regions come from scikit-image
segmentations computed on host numpy arrays, outside any compiled code, and
are passed to the compiled search as per-example int label maps or boolean
masks padded to a common count; the greedy searches themselves run as
`lax.while_loop`/`fori_loop` inside `jit`, and every candidate evaluation of a
greedy step goes through the model in one chunked, compiled call.
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
from saljax.explainers import gradients
from saljax.explainers._registry import REGISTRY, prepare

Array = jax.Array

# ----------------------------------------------------------------------------
# XRAI.

XRAI_SCALES = (50, 100, 150, 250, 500, 1200)


def _xrai_evaluations(o, f, x) -> int:
  """Integrated gradients from a black and a white baseline, unless a map is given."""
  return 0 if o["attribution"] is not None else 2 * o["steps"]


def _lima_evaluations(o, f, x) -> int:
  """Per iteration, the forward candidates and the backward shortlist, each
  scored on the kept and on the removed regions."""
  m = MK.feature_groups(x, o["segments"], o["segmentation_options"])[2]
  pending = m if o["pending"] is None else o["pending"]
  return bidirectional_iterations(m, pending) * (m + min(pending, m)) * 2


def xrai_segments(x: Array, *, scales=XRAI_SCALES, sigma: float = 0.8, min_size: int = 150,
                  dilation: int = 5, resize: tuple[int, int] | None = (224, 224)) -> np.ndarray:
  """XRAI's multi-scale Felzenszwalb masks, ``[B, K, H, W]`` bool (padded with empty masks).

  As PAIR saliency's `_get_segments_felzenszwalb`: each image is scaled to
  [-1, 1], resized to `resize` (cubic; None keeps the size), segmented with
  Felzenszwalb at every scale (``sigma=0.8, min_size=150``), the labels are
  resized back (nearest), every segment becomes a mask, and masks are dilated
  with a disk of radius `dilation`. Runs on the host, one image at a time.
  """
  import scipy.ndimage as ndi
  import skimage.morphology
  import skimage.segmentation
  import skimage.transform

  MK.check_images(x, "xrai")
  xs = np.asarray(x, np.float64)
  b, h, w, c = xs.shape
  lo = xs.min(axis=(1, 2, 3), keepdims=True)
  hi = xs.max(axis=(1, 2, 3), keepdims=True)
  xs = 2 * (xs - lo) / np.where(hi > lo, hi - lo, 1.0) - 1
  footprint = skimage.morphology.disk(dilation) if dilation else None
  per_image = []
  for im in xs:  # skimage segments one image at a time (host side)
    if resize is not None:
      im = skimage.transform.resize(im, resize, order=3, mode="constant", preserve_range=True,
                                    anti_aliasing=True)
    masks = []
    for scale in scales:
      seg = skimage.segmentation.felzenszwalb(im, scale=scale, sigma=sigma, min_size=min_size,
                                              channel_axis=-1)
      if resize is not None:
        seg = skimage.transform.resize(seg, (h, w), order=0, preserve_range=True, mode="constant",
                                       anti_aliasing=False).astype(int)
      labels = np.unique(seg)
      masks.append(seg[None] == labels[:, None, None])
    masks = np.concatenate(masks)
    if footprint is not None:
      masks = ndi.binary_dilation(masks, structure=footprint[None])
    per_image.append(masks)
  k = max(m.shape[0] for m in per_image)
  k = -(-k // 8) * 8  # a multiple of 8: new images rarely change the compiled shape
  out = np.zeros((b, k, h, w), bool)
  for i, m in enumerate(per_image):
    out[i, :m.shape[0]] = m
  return out


@functools.partial(jax.jit, static_argnames=())
def _xrai_greedy(attr, masks, min_pixel_diff, area_threshold):
  """PAIR's `_xrai` ("full" algorithm) for one example: attr ``[H, W]``, masks ``[K, H, W]``."""
  k = masks.shape[0]
  n = attr.size

  def cond(state):
    current, alive, _, it = state
    return (it < k) & alive.any() & (current.mean() <= area_threshold)

  def body(state):
    current, alive, out, it = state
    diff = masks & ~current
    cnt = diff.sum((1, 2))
    # A mask that adds fewer than min_pixel_diff new pixels is dropped for good.
    alive = alive & (cnt >= min_pixel_diff)
    gain = jnp.where(alive, (diff * attr).sum((1, 2)) / jnp.maximum(cnt, 1), -jnp.inf)
    best = jnp.argmax(gain)  # first index on ties, as PAIR's strict ">"
    take = alive.any()
    new = diff[best] & take
    out = jnp.where(new, gain[best], out)
    current = current | new
    alive = alive.at[best].set(False)
    return current, alive, out, it + 1

  init = (jnp.zeros(attr.shape, bool), jnp.ones((k,), bool), jnp.full(attr.shape, -jnp.inf, attr.dtype),
          0)
  current, _, out, _ = jax.lax.while_loop(cond, body, init)
  # Pixels no chosen mask covered get their own mean attribution (PAIR), so sums match IG.
  rest = ~jnp.isfinite(out)
  rest_mean = jnp.where(rest, attr, 0).sum() / jnp.maximum(rest.sum(), 1)
  del n
  return jnp.where(rest, rest_mean, out)


@REGISTRY.register("xrai", family="regions", returns="input", evaluations=_xrai_evaluations,
    jittable=False, differentiable=False, note="its Felzenszwalb segmentation runs on the host with scikit-image; call xrai outside jax.jit/jax.grad (its model evaluations are compiled inside)",
    backward=True, smoke={"steps": 4, "resize": None, "scales": (50, 100)})
def xrai(f, x, target, *, key=None, attribution: Any = None, segments: Any = None,
         steps: int = 100, batch_size: int | None = None, min_pixel_diff: int = 50,
         area_threshold: float = 1.0, scales=XRAI_SCALES, resize: tuple[int, int] | None = (224, 224),
         dilation: int = 5) -> Array:
  """XRAI (Kapishnikov, Bolukbasi, Viegas, Terry 2019, "XRAI: Better Attributions
  Through Regions", arXiv:1906.02825), following PAIR saliency's `XRAI`
  ("full" algorithm).

  Overlapping multi-scale Felzenszwalb segments (`xrai_segments`) are added
  greedily: at each step the segment whose not-yet-covered pixels have the
  highest mean attribution is added, and those pixels get that mean as their
  value; segments adding fewer than `min_pixel_diff` new pixels are dropped.
  Pixels left uncovered get their own mean attribution. The attribution is
  integrated gradients averaged over a black and a white baseline (the
  per-example min and max of `x`, PAIR's defaults) with the channel max taken,
  unless `attribution` is given.

  Args:
    attribution: an optional attribution shaped like `x` (channel max taken) or
      ``[B, H, W]``; default: IG as above with `steps` (100, PAIR's XRAI
      default; saljax's Gauss-Legendre rule rather than PAIR's Riemann sum).
    segments: optional precomputed masks ``[B, K, H, W]`` bool (or ``[K, H, W]``);
      default `xrai_segments` with `scales`, `resize`, `dilation`.
    min_pixel_diff: 50 (PAIR); area_threshold: stop once this fraction is
      covered, 1.0 (PAIR).

  Returns:
    the XRAI map shaped like `x` (equal across channels).
  """
  f, x, target = prepare(f, x, target)
  MK.check_images(x, "xrai")
  min_pixel_diff = V.check_positive_int(min_pixel_diff, "min_pixel_diff")
  if not 0 < area_threshold <= 1:
    raise ValueError(f"area_threshold: expected a float in (0, 1], got {area_threshold!r}")
  b, h, w = x.shape[:3]
  if attribution is None:
    lo = jnp.min(x, axis=(1, 2, 3), keepdims=True) * jnp.ones_like(x)
    hi = jnp.max(x, axis=(1, 2, 3), keepdims=True) * jnp.ones_like(x)
    kw = dict(steps=steps, batch_size=batch_size)
    attr = (gradients.integrated_gradients(f, x, target, baseline=lo, **kw)
            + gradients.integrated_gradients(f, x, target, baseline=hi, **kw)) / 2
    attr = attr.max(-1)
  else:
    if not hasattr(attribution, "shape"):
      raise TypeError(f"attribution: expected an array, got {V.describe(attribution)}")
    if tuple(attribution.shape) == tuple(x.shape):
      attr = V.check_same_shape(attribution, x, name="attribution", broadcast_batch=False).max(-1)
    elif tuple(attribution.shape) == (b, h, w):
      attr = V.check_input(jnp.asarray(attribution, x.dtype), name="attribution")
    else:
      raise ValueError(
          f"attribution: expected shape {tuple(x.shape)} or {(b, h, w)}, got {tuple(attribution.shape)}")
  if segments is None:
    masks = xrai_segments(x, scales=scales, resize=resize, dilation=dilation)
  else:
    masks = np.asarray(segments)
    if masks.dtype != bool:
      raise TypeError(f"segments: expected boolean masks [B, K, H, W], got dtype {masks.dtype}")
    if masks.ndim == 3:
      masks = np.broadcast_to(masks[None], (b,) + masks.shape)
    if masks.ndim != 4 or masks.shape[0] != b or masks.shape[2:] != (h, w):
      raise ValueError(f"segments: expected masks of shape [{b}, K, {h}, {w}], got {masks.shape}")
  out = jax.vmap(_xrai_greedy, in_axes=(0, 0, None, None))(
      attr, jnp.asarray(masks), jnp.asarray(min_pixel_diff), jnp.asarray(area_threshold, x.dtype))
  return jnp.broadcast_to(out[..., None], x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------
# LiMA / submodular subset selection.


def prior_regions(prior: Any, size: tuple[int, int] | None = None, *, grid: int = 10,
                  cells_per_region: int = 4) -> np.ndarray:
  """Sub-regions from a prior saliency map (Chen et al. 2024, reference Part 1.1).

  The map is resized (bilinear) to ``grid x grid`` cells, the cells are sorted
  by value (descending), and consecutive runs of `cells_per_region` cells form
  one region: region 0 holds the most salient cells. The label map is upsampled
  to `size` by nearest neighbour. When ``grid^2`` is not a multiple of
  `cells_per_region`, the leftover lowest cells join the last region (SMDL
  leaves them out of every region; here every pixel must belong to one).
  Defaults are the SMDL CUB setting (``grid=10, cells_per_region=4``: 25 regions).

  Args:
    prior: saliency ``[B, H, W]`` or ``[B, H, W, C]`` (summed over channels).
    size: output ``(H, W)``; default the prior's.

  Returns:
    int32 labels ``[B, H, W]``, usable as `segments` of `lima`/`lima_search`.
  """
  prior = np.asarray(prior, np.float32)
  if prior.ndim == 4:
    prior = prior.sum(-1)
  if prior.ndim != 3:
    raise ValueError(f"prior: expected a map [B, H, W] or [B, H, W, C], got shape {prior.shape}")
  grid = V.check_positive_int(grid, "grid")
  d = V.check_positive_int(cells_per_region, "cells_per_region")
  if d > grid * grid:
    raise ValueError(f"cells_per_region: expected at most grid^2 = {grid * grid}, got {d}")
  b, h, w = prior.shape
  size = (h, w) if size is None else tuple(size)
  cells = np.asarray(jax.image.resize(jnp.asarray(prior), (b, grid, grid), "linear")).reshape(b, -1)
  order = np.argsort(-cells, axis=1, kind="stable")
  regions = (grid * grid) // d
  cell_label = np.empty_like(order)
  np.put_along_axis(cell_label, order, np.minimum(np.arange(grid * grid) // d, regions - 1)[None], 1)
  rows = np.minimum(np.arange(size[0]) * grid // size[0], grid - 1)
  cols = np.minimum(np.arange(size[1]) * grid // size[1], grid - 1)
  return cell_label.reshape(b, grid, grid)[:, rows][:, :, cols].astype(np.int32)


def region_distances(embeddings: Array) -> Array:
  """``D[i, j] = arccos(cos(phi_i, phi_j)) / pi`` in [0, 1] for embeddings ``[..., M, E]``."""
  e = embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
  cos = jnp.clip(jnp.einsum("...ie,...je->...ij", e, e), -1.0, 1.0)
  return jnp.arccos(cos) / jnp.pi


def effectiveness_score(z: Array, dist: Array) -> Array:
  """``s_eff(S) = sum_{i in S} min_{j in S, j != i} D_ij`` (0 when ``|S| <= 1``), reference 1.2.

  `z` is ``[M]`` (1 = in S), `dist` ``[M, M]``.
  """
  inset = z > 0
  m = dist.shape[-1]
  masked = jnp.where(inset[None, :] & ~jnp.eye(m, dtype=bool), dist, jnp.inf)
  mins = masked.min(1)
  return jnp.where(inset & (inset.sum() > 1), mins, 0.0).sum()


def _subset_scores(f, x, fill, labels, target, valid, z, weights, batch_size):
  """Submodular score of candidate subsets ``z[K, B, M]`` -> ``[K, B]``.

  ``F = l_cons p_y(x_S) + l_colla (1 - p_y(x_{V \\ S})) + l_conf (1 - H(p(x_S)) / log C)``
  (LiMA's single-modal terms, reference Part 2.2).
  """
  w_cons, w_colla, w_conf = weights

  def one(zs):
    xs = MK.apply_coalition(x, fill, labels, zs)
    xc = MK.apply_coalition(x, fill, labels, valid * (1 - zs))
    logits = f(jnp.concatenate([xs, xc], 0)).astype(jnp.float32)
    p = M.probabilities(logits)
    ps, pc = jnp.split(p, 2, 0)
    py_s = jnp.take_along_axis(ps, target[:, None], 1)[:, 0]
    py_c = jnp.take_along_axis(pc, target[:, None], 1)[:, 0]
    ent = -(ps * jnp.log(ps + 1e-7)).sum(-1) / jnp.log(ps.shape[-1])
    return w_cons * py_s + w_colla * (1 - py_c) + w_conf * (1 - ent)

  return parallel.chunked_map(one, z, batch_size=batch_size)


def bidirectional_iterations(m: int, pending: int) -> int:
  """Iterations of LiMA's bidirectional search over `m` regions (two picks while more than `pending` remain)."""
  r, t = m, 0
  while r > 0:
    r -= 2 if r > pending and r >= 2 else 1
    t += 1
  return t


@M.jit(static_argnames=("m", "pending", "iterations", "batch_size"))
def _lima_search(f, x, target, fill, labels, counts, weights, dist, m, pending, iterations,
                 batch_size):
  b = x.shape[0]
  w_eff = weights[3]
  weights = weights[:3]
  valid = (jnp.arange(m)[None, :] < counts[:, None]).astype(jnp.float32)  # [B, M]
  eye = jnp.eye(m, dtype=jnp.float32)
  rows = jnp.arange(b)
  npend = min(pending, m)

  def step(_, state):
    front, back, rank, nf, nb = state
    remaining = (valid > 0) & ~front & ~back
    r = remaining.sum(1)
    # Forward: F(Fw + c) for every c at once, one chunked compiled call.
    zf = front.astype(jnp.float32)[None] + eye[:, None, :]  # [M, B, M]
    base_fwd = _subset_scores(f, x, fill, labels, target, valid, zf, weights, batch_size).T  # [B, M]
    eff = jax.vmap(jax.vmap(effectiveness_score, (0, None)), (1, 0))  # [K, B, M] x [B, M, M] -> [B, K]
    f_fwd = jnp.where(remaining, base_fwd + w_eff * eff(zf, dist), -jnp.inf)
    a_star = jnp.argmax(f_fwd, 1)
    do_front = r >= 1
    # Backward: shortlist the `pending` lowest proxy scores G (the forward terms of
    # F(Fw + c) with s_eff taken on Bw + c, no new model call), drop a*, and score
    # F(Bw + c) exactly.
    zb_all = back.astype(jnp.float32)[None] + eye[:, None, :]  # Bw + c for every c
    g = jnp.where(remaining, base_fwd + w_eff * eff(zb_all, dist), jnp.inf)
    _, short = jax.lax.top_k(-g, npend)  # [B, Np]
    short_ok = jnp.isfinite(jnp.take_along_axis(g, short, 1)) & (short != a_star[:, None])
    zb = back.astype(jnp.float32)[None] + jax.nn.one_hot(short.T, m, dtype=jnp.float32)  # [Np, B, M]
    f_bwd = _subset_scores(f, x, fill, labels, target, valid, zb, weights, batch_size).T  # [B, Np]
    f_bwd = jnp.where(short_ok, f_bwd + w_eff * eff(zb, dist), jnp.inf)
    b_star = jnp.take_along_axis(short, jnp.argmin(f_bwd, 1)[:, None], 1)[:, 0]
    do_back = (r > pending) & short_ok.any(1)
    front = front.at[rows, a_star].set(front[rows, a_star] | do_front)
    rank = rank.at[rows, a_star].set(jnp.where(do_front, nf, rank[rows, a_star]))
    nf = nf + do_front
    back = back.at[rows, b_star].set(back[rows, b_star] | do_back)
    rank = rank.at[rows, b_star].set(jnp.where(do_back, counts - 1 - nb, rank[rows, b_star]))
    nb = nb + do_back
    return front, back, rank, nf, nb

  zeros_b = jnp.zeros((b, m), bool)
  rank0 = jnp.where(valid > 0, -1, m + jnp.arange(m)[None, :]).astype(jnp.int32)
  init = (zeros_b, zeros_b, rank0, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32))
  _, _, rank, _, _ = jax.lax.fori_loop(0, iterations, step, init)
  return rank


@M.jit(static_argnames=("m", "batch_size"))
def _region_curves(f, x, target, fill, labels, counts, order, m, batch_size):
  b = x.shape[0]
  valid = (jnp.arange(m)[None, :] < counts[:, None]).astype(jnp.float32)
  pos = jnp.argsort(order, axis=1)  # position of each region in the order

  def one(t):
    z = (pos < t).astype(jnp.float32) * valid
    ins = MK.apply_coalition(x, fill, labels, z)
    dele = MK.apply_coalition(x, fill, labels, valid * (1 - z))
    p = M.probabilities(f(jnp.concatenate([ins, dele], 0)))
    py = jnp.take_along_axis(p, jnp.concatenate([target, target])[:, None], 1)[:, 0]
    return jnp.stack(jnp.split(py, 2))  # [2, B]

  curves = parallel.chunked_map(one, jnp.arange(m + 1), batch_size=batch_size)  # [M+1, 2, B]
  # Revealed fraction of pixels after each prefix (LiMA's area axis).
  sizes = jax.vmap(lambda l: jnp.bincount(l.reshape(-1), length=m))(labels) / labels[0].size
  cum = jnp.concatenate([jnp.zeros((b, 1)), jnp.cumsum(jnp.take_along_axis(sizes, order, 1), 1)], 1)
  ins, dele = curves[:, 0].T, curves[:, 1].T
  trap = lambda y: (jnp.diff(cum, axis=1) * (y[:, 1:] + y[:, :-1]) / 2).sum(1)
  return {"insertion": ins, "deletion": dele, "area": cum,
          "insertion_auc": trap(ins), "deletion_auc": trap(dele)}


def region_curves(f, x, target, segments, order, *, fill: Any = 0.0,
                  batch_size: int | None = None, removal: Any = None) -> dict:
  """Insertion and deletion curves of a region ordering, LiMA style (reference 2.5).

  ``insertion[b, t]`` is the target's softmax probability with the first `t`
  regions of ``order[b]`` kept and the rest replaced by `fill`; ``deletion``
  removes them instead. ``area[b, t]`` is the fraction of pixels revealed (the
  uneven x-axis), and the AUCs are trapezoids over it (sklearn's `auc`).

  Args:
    segments: an int label array or segmentation name (as in `lime`).
    order: ``[B, M]`` region indices, most important first (padded regions last).
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images, `fill` being what
      partly removed patches still show.

  Returns:
    dict with ``insertion``, ``deletion``, ``area`` (``[B, M + 1]``),
    ``insertion_auc`` and ``deletion_auc`` (``[B]``).
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 10.0, "region_curves")
  f, x, target = prepare(f, x, target)
  labels, counts, m = MK.feature_groups(x, segments)
  fillv = MK.fill_values(x, fill, labels=labels, num_labels=m, blur_sigma=blur_sigma)
  order = jnp.asarray(order, jnp.int32)
  if order.shape != (x.shape[0], m):
    raise ValueError(f"order: expected shape {(x.shape[0], m)}, got {tuple(order.shape)}")
  f, x, fillv, labels, _ = R.switch(keep_model, f, x, fillv, labels, "region_curves")
  return _region_curves(f, x, target, fillv, labels, jnp.asarray(counts, jnp.int32), order, m,
                        V.check_batch_size(batch_size))


@M.jit(static_argnames=("m", "batch_size"))
def _region_distances(embedding, x, fill, labels, m, batch_size):
  b = x.shape[0]

  def one(i):
    z = jnp.broadcast_to(jax.nn.one_hot(i, m, dtype=jnp.float32), (b, m))
    return embedding(MK.apply_coalition(x, fill, labels, z)).astype(jnp.float32)

  e = parallel.chunked_map(one, jnp.arange(m), batch_size=batch_size)  # [M, B, E]
  return region_distances(jnp.moveaxis(e, 0, 1))


def lima_search(f, x, target, *, segments: Any = "slic", segmentation_options: dict | None = None,
                fill: Any = 0.0, pending: int | None = 12, consistency: float = 20.0,
                collaboration: float = 5.0, confidence: float = 0.01, effectiveness: float = 0.0,
                embedding: Any = None, batch_size: int | None = None, curves: bool = True,
                removal: Any = None) -> dict:
  """LiMA's bidirectional greedy region ranking; returns the ordering, the map and the curves.

  See `lima` for the method. Returns a dict with ``order`` ``[B, M]`` (region
  indices, most important first; padded regions of examples with fewer than M
  regions last), ``rank`` ``[B, M]``, ``labels`` (the label map shaped like
  `x`), ``counts`` ``[B]``, ``map`` (shaped like `x`) and, with `curves`, the
  output of `region_curves` (insertion/deletion curves over the revealed area
  and their AUCs).

  Args:
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill`;
      ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the model's
      mask-aware forward (`saljax.removal`) on NHWC images, `fill` being what
      partly removed patches still show (the `embedding`, a function of images, always
      sees the regions with `fill`).
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, 10.0, "lima")
  f, x, target = prepare(f, x, target)
  MK.check_images(x, "lima")
  for name, v in (("consistency", consistency), ("collaboration", collaboration),
                  ("confidence", confidence), ("effectiveness", effectiveness)):
    if not v >= 0:
      raise ValueError(f"{name}: expected a non-negative weight, got {v!r}")
  labels, counts, m = MK.feature_groups(x, segments, segmentation_options)
  pending = m if pending is None else V.check_positive_int(pending, "pending")
  fillv = MK.fill_values(x, fill, labels=labels, num_labels=m, blur_sigma=blur_sigma)
  counts_j = jnp.asarray(counts, jnp.int32)
  batch_size = V.check_batch_size(batch_size)
  if embedding is None:
    if effectiveness > 0:
      raise ValueError("effectiveness > 0 needs `embedding`, a function x[B, ...] -> features [B, E]")
    dist = jnp.zeros((x.shape[0], m, m), jnp.float32)
  else:
    if not callable(embedding):
      raise TypeError(f"embedding: expected a function x[B, ...] -> [B, E], got {V.describe(embedding)}")
    dist = _region_distances(embedding, x, fillv, labels, m, batch_size)
  weights = jnp.asarray([consistency, collaboration, confidence, effectiveness], jnp.float32)
  plain_labels = labels
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "lima")
  rank = _lima_search(f, x, target, fillv, labels, counts_j, weights, dist, m, pending,
                      bidirectional_iterations(m, pending), batch_size)
  order = jnp.argsort(rank, axis=1).astype(jnp.int32)
  # Reference 1.4: the region at rank i gets M_b - i (all regions ranked).
  value = jnp.where(rank < counts_j[:, None], counts_j[:, None] - rank, 0).astype(x.dtype)
  out = {"order": order, "rank": rank, "labels": plain_labels, "counts": counts_j,
         "map": done(MK.expand_map(value, labels))}
  if curves:
    out.update(_region_curves(f, x, target, fillv, labels, counts_j, order, m, batch_size))
  return out


@REGISTRY.register("lima", family="regions", returns="input", needs=("segments",),
    differentiable=False, note="the greedy subset selection is a discrete argmax; its derivative is zero almost everywhere. Differentiate a gradient method instead",
    evaluations=_lima_evaluations, backward=False, smoke={"pending": 4})
def lima(f, x, target, *, key=None, segments: Any = "slic", segmentation_options: dict | None = None,
         fill: Any = 0.0, pending: int | None = 12, consistency: float = 20.0,
         collaboration: float = 5.0, confidence: float = 0.01, effectiveness: float = 0.0,
         embedding: Any = None, batch_size: int | None = None, removal: Any = None) -> Array:
  """LiMA: submodular region ranking by bidirectional greedy search (Chen,
  Liang, Li, Liu, Liu, Zhang, Cao 2025, "Less is More: Efficient Black-box
  Attribution via Minimal Interpretable Subset Selection", arXiv:2504.00470;
  successor of Chen et al., ICLR 2024, "Less is More: Fewer Interpretable
  Region via Submodular Subset Selection", arXiv:2402.09164).

  The image is divided into regions (superpixels). A subset S of regions is
  scored by ``F(S) = consistency * p_y(x_S) + collaboration * (1 - p_y(x_{V\\S}))
  + confidence * (1 - H(p(x_S)) / log C)``, where ``x_S`` keeps the regions of
  S and fills the rest with `fill`, p is the model's softmax and y the target
  (the official code's probability form of the consistency and collaboration
  terms, reference Part 2.2). Each iteration adds the best region to a front
  list (all candidates scored in one compiled, chunked call) and, while more
  than `pending` regions remain, the worst of a `pending`-long shortlist to a
  back list; the ranking is front + reversed back. ``pending=None`` (or
  ``>= M``) gives the plain greedy search of the ICLR 2024 paper, and
  ``segments=prior_regions(prior_map)`` its division of the image by a prior
  saliency map (that paper's EDL confidence network is not part of saljax).

  Defaults: the official single-modal script's weights (consistency 20,
  collaboration 5, confidence 0.01) and ``pending=12``; SLIC superpixels
  (``n_segments=50``; the official code uses OpenCV SLICO with region size 30
  on 224 x 224 images, about 50-60 regions); `fill` 0.0 in the model's input
  space (the official code blacks out regions before normalization: pass that
  value to match). The effectiveness term is off by default (single-modal LiMA
  has none); pass `effectiveness` and an `embedding` function to use it (see
  `lima_search`). ``removal=`` as in `lima_search`.

  Returns:
    the rank map shaped like `x`: the region at rank i (0 = most important)
    gets ``M_b - i``. Use `lima_search` for the ordering and the
    insertion/deletion curves recorded with it.
  """
  return lima_search(f, x, target, segments=segments, segmentation_options=segmentation_options,
                     fill=fill, pending=pending, consistency=consistency,
                     collaboration=collaboration, confidence=confidence,
                     effectiveness=effectiveness, embedding=embedding, batch_size=batch_size,
                     curves=False, removal=removal)["map"]
