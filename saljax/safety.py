"""Feature-guided black-box safety testing (Wicker, Huang, Kwiatkowska 2018).

Wicker, Huang, Kwiatkowska, "Feature-Guided Black-Box Safety Testing of Deep
Neural Networks", TACAS 2018 (arXiv:1710.07859). The search uses the model's
OUTPUTS only (its predicted class), never its gradients:

1. Features (host side, `sift_saliency`). SIFT keypoints of the image
   (scikit-image's `skimage.feature.SIFT`) become a Gaussian mixture over
   pixel positions: one isotropic Gaussian per keypoint, centred on it, with
   the keypoint's scale as its standard deviation, weighted by its response
   (the scale-normalized Laplacian ``sigma^2 |LoG|`` at the keypoint, the
   quantity SIFT's difference of Gaussians approximates; scikit-image does not
   expose it). Every pixel belongs to the keypoint whose weighted Gaussian is
   largest there: these are the feature regions. Small images (digits are
   8x8) are upscaled bilinearly to at least `min_size` pixels per side first,
   because SIFT finds no keypoints on a handful of pixels; if it still finds
   none (a blank image), a regular grid of pseudo-keypoints weighted by local
   gradient magnitude stands in (``FeatureSaliency.fallback`` says so).
2. The game. Player I picks a feature region, player II picks a pixel of that
   region and applies an atomic manipulation ``+tau`` or ``-tau`` to it (all
   channels, clipped to `bounds`). Player II is cooperative (the paper's
   upper-bound game: both players seek a misclassification with few changed
   pixels). Each pixel is manipulated at most once per path (with the default
   ``tau`` of the full range a second manipulation would only undo or repeat
   the first), and manipulations the bounds would clip to nothing are not
   offered.
3. Monte Carlo tree search over the game (`feature_guided_search`): UCB1
   selection with progressive widening (a node takes new children while it
   has fewer than ``width * ceil(sqrt(visits / width))``; without it the
   ~100 single-pixel moves of a digit would all be tried before any second
   pixel), expansion of `expansions` untried moves of the selected region at
   once (in an order drawn from the saliency distribution, one query each),
   and `playouts` random playouts from each new state that draw further
   manipulations from the saliency distribution (player I by region weight,
   player II by the Gaussian's density within the region; sampled without
   replacement by Gumbel top-k, which renormalizes over the remaining pixels)
   up to `max_pixels` manipulations. A playout queries its prefixes 1, 2, 4,
   ... manipulations past the leaf (about log2 of the queries of every
   prefix), so the example it reports may have up to twice the pixels past
   the leaf that its first misclassifying prefix has. Queries are counted as a sequential tester would spend them:
   up to each playout's first misclassified prefix, none below a leaf that is
   already adversarial. Reward of a new state: ``0.5 * (1 - p_label)`` at the
   state plus ``0.5 * (1 - (L0 - 1) / max_pixels)`` for the best adversarial
   example of its playouts (0 if none). The paper backs up the distance of
   the adversarial example alone; the label-probability term guides the
   search before one is found, which with a budget of a few hundred queries
   is most of the time.
   The best adversarial example (fewest changed pixels, then smallest L2)
   over all leaves and playouts is returned.

All images of a batch are searched in lockstep: each MCTS iteration gathers
every image's new leaves and playouts into one query batch of fixed shape
``[N * expansions * (1 + playouts * J)]`` (J prefixes per playout), which
one compiled function (`query_batch` under `saljax.model.jit`) evaluates. The
trees themselves are host-side Python/numpy. `random_search` is the baseline
at the same query budget: playouts from the clean image with uniformly random
pixels and the same manipulations.

The authors' code (SafeCV, `docs/safety.md` compares it point by point)
differs in four rules that are options here: `manipulation="extreme"` (a
pixel goes to the farther bound), `backtrack=True` (undo the manipulations an
example does not need, `backtrack_batch`), `reward="probability"` (the label's
probability drop over the depth) and wider Gaussians over the whole image
(`sift_saliency(scale_factor=2, scale_add=1, mixture=True)`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel

Array = jax.Array
_SHAPING = 0.5  # weight of the leaf's drop in label probability in the reward (the rest: playouts)


# ----------------------------------------------------------------------------
# Features: SIFT keypoints as a Gaussian mixture over pixels.


@dataclasses.dataclass(frozen=True)
class FeatureSaliency:
  """The feature-guided saliency distribution of one image.

  Attributes:
    saliency: ``[H, W]`` probabilities (sum 1) of choosing each pixel: player
      I's region weight times player II's density within the region.
    regions: ``[H, W]`` int, the keypoint (feature region) each pixel belongs to.
    keypoints: ``[K, 2]`` (row, col) in the image's pixel coordinates.
    scales: ``[K]`` standard deviations of the Gaussians, in pixels.
    weights: ``[K]`` keypoint weights (normalized responses, sum 1).
    fallback: True when SIFT found no keypoint and a grid stood in.
  """
  saliency: np.ndarray
  regions: np.ndarray
  keypoints: np.ndarray
  scales: np.ndarray
  weights: np.ndarray
  fallback: bool


def _gray(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float64)
  if image.ndim == 3:
    image = image.mean(-1)
  if image.ndim != 2:
    raise ValueError(f"image: expected [H, W] or [H, W, C], got shape {image.shape}")
  return image


def _grid_keypoints(gray: np.ndarray, grid: int):
  """Pseudo-keypoints at the centres of a ``grid x grid`` tiling, weighted by
  the mean gradient magnitude of their tile (plus a floor, so a blank image
  still gets a distribution)."""
  h, w = gray.shape
  gr, gc = np.gradient(gray)
  mag = np.hypot(gr, gc)
  rows = (np.arange(grid) + 0.5) * h / grid - 0.5
  cols = (np.arange(grid) + 0.5) * w / grid - 0.5
  kp = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
  resp = np.array([mag[int(r0 * h / grid):int((r0 + 1) * h / grid),
                       int(c0 * w / grid):int((c0 + 1) * w / grid)].mean()
                   for r0 in range(grid) for c0 in range(grid)])
  scales = np.full(len(kp), max(h, w) / (2.0 * grid))
  return kp, scales, resp + 1e-3 * (resp.max() + 1e-12) + 1e-12


def sift_saliency(image: Any, *, min_size: int = 32, max_keypoints: int = 16,
                  grid: int = 3, uniform: float = 0.0, scale_factor: float = 1.0,
                  scale_add: float = 0.0, mixture: bool = False) -> FeatureSaliency:
  """The paper's saliency distribution of one image from its SIFT keypoints.

  Args:
    image: ``[H, W]`` or ``[H, W, C]`` (channels averaged to gray), host array.
    min_size: upscale (bilinear) until the shorter side has at least this
      many pixels before running SIFT; default 32, the smallest size at which
      scikit-image's SIFT found keypoints on every 8x8 digit we tried.
    max_keypoints: keep the strongest keypoints only (default 16), so player I
      has a handful of features to choose from as in the paper.
    grid: side of the fallback grid of pseudo-keypoints (default 3).
    uniform: weight of a uniform distribution mixed into the saliency
      (default 0, the paper's mixture alone). On 8x8 digits the keypoints'
      Gaussians are narrow (about a pixel), so playouts keep to a few pixels;
      `docs/safety.md` measures what a floor changes.
    scale_factor, scale_add: each Gaussian's standard deviation is
      ``scale_factor * sigma + scale_add`` pixels (of the original image),
      ``sigma`` the keypoint's SIFT scale. Default 1 and 0. The authors' code
      (SafeCV) uses OpenCV's keypoint size (about ``2 * sigma``) plus a
      constant 15 pixels of the upscaled image, which on their 15x upscaled
      MNIST is ``scale_factor=2, scale_add=1``.
    mixture: False (default): each pixel belongs to one keypoint's region and
      player II draws within it. True: the authors' sampling, where player II
      draws from the chosen keypoint's Gaussian over the whole image, so the
      saliency is the weighted mixture itself (the regions still group the
      tree's moves).
  Returns:
    a `FeatureSaliency`.
  """
  from scipy import ndimage
  from skimage.feature import SIFT
  from skimage.transform import resize

  gray = _gray(image)
  h, w = gray.shape
  max_keypoints = V.check_positive_int(max_keypoints, "max_keypoints")
  grid = V.check_positive_int(grid, "grid")
  if isinstance(uniform, bool) or not isinstance(uniform, (int, float)) or not 0 <= uniform <= 1:
    raise ValueError(f"uniform: expected a float in [0, 1], got {uniform!r}")
  for name, v in (("scale_factor", scale_factor), ("scale_add", scale_add)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
      raise ValueError(f"{name}: expected a float >= 0, got {v!r}")
  if not scale_factor > 0:
    raise ValueError(f"scale_factor: expected a float > 0, got {scale_factor!r}")
  if not isinstance(mixture, bool):
    raise ValueError(f"mixture: expected a bool, got {mixture!r}")
  factor = max(1, int(math.ceil(min_size / min(h, w))))
  big = resize(gray, (h * factor, w * factor), order=1, anti_aliasing=False)
  span = float(big.max() - big.min())
  kp = None
  if span > 0:
    big = (big - big.min()) / span
    # Fewer octaves on small images: each halves the image, and SIFT needs a
    # few pixels per side at the coarsest one.
    octaves = int(np.clip(np.floor(np.log2(min(big.shape))) - 3, 1, 8))
    sift = SIFT(upsampling=1, n_octaves=octaves)
    try:
      sift.detect(big)
      if len(sift.keypoints):
        pos = np.asarray(sift.positions, np.float64)
        sig = np.asarray(sift.sigmas, np.float64)
        resp = np.array([s * s * abs(ndimage.gaussian_laplace(big, s)[
            int(np.clip(round(p[0]), 0, big.shape[0] - 1)), int(np.clip(round(p[1]), 0, big.shape[1] - 1))])
            for p, s in zip(pos, sig)])
        keep = np.argsort(-resp, kind="stable")[:max_keypoints]
        # Back to the original pixel grid (pixel centres).
        kp = (pos[keep] + 0.5) / factor - 0.5
        scales = np.maximum(sig[keep] / factor, 0.5)
        resp = resp[keep] + 1e-12
    except RuntimeError:  # scikit-image raises when no keypoint survives
      kp = None
  fallback = kp is None
  if fallback:
    kp, scales, resp = _grid_keypoints(gray, grid)
  weights = resp / resp.sum()
  scales = scale_factor * scales + scale_add
  rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  d2 = (rr[None] - kp[:, 0, None, None]) ** 2 + (cc[None] - kp[:, 1, None, None]) ** 2
  dens = np.exp(-d2 / (2 * scales[:, None, None] ** 2)) / (2 * np.pi * scales[:, None, None] ** 2)
  weighted = weights[:, None, None] * dens
  regions = np.argmax(weighted, 0)
  # Player I picks region k with its weight; player II a pixel of region k in
  # proportion to the Gaussian's density there.
  own = np.take_along_axis(dens, regions[None], 0)[0]
  mass = np.zeros(len(kp))
  np.add.at(mass, regions.ravel(), own.ravel())
  if mixture:  # player II samples the chosen keypoint's Gaussian anywhere
    saliency = (weighted / dens.reshape(len(kp), -1).sum(1)[:, None, None]).sum(0)
  else:
    saliency = weights[regions] * own / np.maximum(mass[regions], 1e-300)
  saliency = saliency / saliency.sum()
  saliency = (1.0 - uniform) * saliency + uniform / saliency.size
  return FeatureSaliency(saliency, regions.astype(np.int32), kp, scales, weights, fallback)


# ----------------------------------------------------------------------------
# The compiled query: candidate images from move lists, one model call.


def query_batch(f, x0: Array, image: Array, moves: Array, length: Array, label: Array,
                tau: Array, bounds, batch_size: int | None):
  """Builds the queried images and runs the model on them (pure, traceable).

  Args:
    f: the model.
    x0: ``[N, H, W, C]`` clean images.
    image: ``[Q]`` which clean image each query row starts from.
    moves: ``[Q, K]`` int moves ``2 * pixel + (1 if +tau else 0)``, padded with -1.
    length: ``[Q]`` how many of the row's moves apply (a prefix).
    label: ``[N]`` the clean images' classes.
    tau: the manipulation size.
    bounds: ``(low, high)`` or None.
    batch_size: model evaluations per chunk, or None.
  Returns:
    ``(predicted [Q], probability of the label [Q], L2 distance [Q])``.
  """
  n, h, w, c = x0.shape
  k = moves.shape[1]

  def one(row):
    i, mv, ln = row
    on = (jnp.arange(k) < ln) & (mv >= 0)
    pix = jnp.where(on, mv // 2, 0)
    step = jnp.where(on, jnp.where(mv % 2 == 1, tau, -tau), 0.0).astype(x0.dtype)
    delta = jnp.zeros((h * w,), x0.dtype).at[pix].add(step)
    clean = x0[i]
    x = clean + delta.reshape(h, w, 1)
    if bounds is not None:
      x = jnp.clip(x, bounds[0], bounds[1])
    logits = f(x[None])[0]
    p = jax.nn.softmax(logits)[label[i]]
    return jnp.argmax(logits), p, jnp.sqrt(jnp.sum((x - clean) ** 2))

  return parallel.chunked_map(one, (image, moves, length), batch_size=batch_size)


@M.jit(static_argnames=("bounds", "batch_size"))
def _query(f, x0, image, moves, length, label, tau, bounds, batch_size):
  return query_batch(f, x0, image, moves, length, label, tau, bounds, batch_size)


@M.jit
def _predict(f, x):
  """The clean class and its softmax probability (the authors' reward baseline)."""
  logits = f(x)
  label = jnp.argmax(logits, -1)
  return label, jnp.take_along_axis(jax.nn.softmax(logits), label[:, None], 1)[:, 0]


def backtrack_batch(f, x0: Array, image: Array, moves: Array, label: Array, pred: Array, l2: Array,
                    tau: Array, bounds, batch_size: int | None):
  """Greedy removal of manipulations from adversarial examples (pure, traceable).

  The authors' backtracking (SafeCV's ``DFMCS``, run on every example it
  finds): go through the manipulations in the order they were made and undo
  each one whose undoing leaves the image misclassified. SafeCV undoes
  clusters of ``backtracking_constant + 1`` (11) pixels per query on 28 px
  and larger images; here one pixel per query, since our examples have at
  most `max_pixels` (16) of them. A `lax.scan` over the move positions, each
  step one `query_batch` of all rows.

  Args:
    f, x0, label, tau, bounds, batch_size: as `query_batch`.
    image: ``[Q]`` which clean image each row's example starts from.
    moves: ``[Q, K]`` the example's moves, -1 padded.
    pred, l2: ``[Q]`` the example's class and L2 distance.
  Returns:
    ``(moves [Q, K] with undone moves set to -1, pred [Q], l2 [Q])``.
  """
  q, k = moves.shape
  full = jnp.full((q,), k, jnp.int32)

  def step(carry, t):
    mv, pr, d = carry
    trial = mv.at[:, t].set(-1)
    p2, _, d2 = query_batch(f, x0, image, trial, full, label, tau, bounds, batch_size)
    keep = (mv[:, t] >= 0) & (p2 != label[image])  # still adversarial without move t
    return (jnp.where(keep[:, None], trial, mv), jnp.where(keep, p2, pr), jnp.where(keep, d2, d)), None

  (moves, pred, l2), _ = jax.lax.scan(step, (moves, pred, l2), jnp.arange(k))
  return moves, pred, l2


@M.jit(static_argnames=("bounds", "batch_size"))
def _backtrack(f, x0, image, moves, label, pred, l2, tau, bounds, batch_size):
  return backtrack_batch(f, x0, image, moves, label, pred, l2, tau, bounds, batch_size)


class _Oracle:
  """Runs query rows through `_query`, sharded over `mesh` when given (rows
  padded to a multiple of the mesh size), and returns host arrays."""

  def __init__(self, f, x0, label, tau, bounds, batch_size, mesh):
    self.f, self.x0, self.label = f, x0, label
    self.tau, self.bounds, self.batch_size, self.mesh = tau, bounds, batch_size, mesh

  def _placed(self, rows):
    """``(rows, q, x0, label)``: the rows sharded over the mesh (padded; q
    real rows) and the clean images and labels replicated, or all as they
    are without a mesh."""
    q = rows[0].shape[0]
    x0, label = self.x0, self.label
    if self.mesh is not None:
      rows, q = parallel.shard_batch(rows, self.mesh)
      everywhere = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      x0, label = jax.device_put(x0, everywhere), jax.device_put(label, everywhere)
    return rows, q, x0, label

  def __call__(self, image, moves, length):
    rows = (jnp.asarray(image, jnp.int32), jnp.asarray(moves, jnp.int32), jnp.asarray(length, jnp.int32))
    rows, q, x0, label = self._placed(rows)
    out = _query(self.f, x0, *rows, label, self.tau, self.bounds, self.batch_size)
    return tuple(np.asarray(a)[:q] for a in out)

  def backtrack(self, best: "_Best", queries: np.ndarray, k: int) -> None:
    """Undoes what manipulations of each image's best example it can (see
    `backtrack_batch`), in place; a query is counted per move of an example
    with two or more (undoing a single pixel gives the clean image back)."""
    n = len(best.moves)
    todo = np.flatnonzero(np.isfinite(best.l0) & (best.l0 >= 2))
    if len(todo) == 0:
      return
    moves = np.full((n, k), -1, np.int64)
    for i in todo:
      moves[i, :len(best.moves[i])] = best.moves[i]
    rows = (jnp.arange(n, dtype=jnp.int32), jnp.asarray(moves, jnp.int32), jnp.asarray(best.pred, jnp.int32),
            jnp.asarray(np.where(np.isfinite(best.l2), best.l2, 0.0), self.x0.dtype))
    (image, mv, pr, d), q, x0, label = self._placed(rows)
    out = _backtrack(self.f, x0, image, mv, label, pr, d, self.tau, self.bounds, self.batch_size)
    mv, pr, d = (np.asarray(a)[:q] for a in out)
    for i in todo:
      queries[i] += len(best.moves[i])
      kept = tuple(int(m) for m in mv[i] if m >= 0)
      best.l0[i], best.l2[i], best.moves[i], best.pred[i] = len(kept), float(d[i]), kept, int(pr[i])


# ----------------------------------------------------------------------------
# Results and checks.


@dataclasses.dataclass(frozen=True)
class SafetyResult:
  """The best adversarial example found for each image.

  Attributes:
    adversarial: ``[N, H, W, C]`` the adversarial images (the clean image where
      none was found).
    success: ``[N]`` whether one was found within the budget.
    l0: ``[N]`` changed pixels (inf where none was found).
    l2: ``[N]`` L2 distance to the clean image (inf where none was found).
    queries: ``[N]`` model queries spent (the clean prediction included).
    label: ``[N]`` the clean images' predicted classes.
    adversarial_label: ``[N]`` the adversarial images' classes (= label where none).
    moves: per image, the manipulations of the best example, as
      ``(row, col, sign)`` tuples.
  """
  adversarial: np.ndarray
  success: np.ndarray
  l0: np.ndarray
  l2: np.ndarray
  queries: np.ndarray
  label: np.ndarray
  adversarial_label: np.ndarray
  moves: tuple


def _check(f, x, key, method, max_queries, tau, bounds, max_pixels, playouts, batch_size):
  if not callable(f):
    raise TypeError(f"f: expected a model x[B, H, W, C] -> logits[B, C], got {V.describe(f)}")
  from saljax.explainers._registry import require_key
  key = require_key(key, method)
  x = V.check_input(x)
  if x.ndim != 4:
    raise ValueError(f"x: expected images [N, H, W, C], got shape {tuple(x.shape)}")
  max_queries = V.check_positive_int(max_queries, "max_queries")
  max_pixels = V.check_positive_int(max_pixels, "max_pixels")
  playouts = V.check_positive_int(playouts, "playouts")
  if max_pixels > x.shape[1] * x.shape[2]:
    raise ValueError(f"max_pixels: expected at most H * W = {x.shape[1] * x.shape[2]}, got {max_pixels}")
  if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not float(tau) > 0:
    raise ValueError(f"tau: expected a float > 0, got {tau!r}")
  if bounds is not None:
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
      raise ValueError(f"bounds: expected (low, high) with low < high or None, got {bounds!r}")
    bounds = (float(bounds[0]), float(bounds[1]))
    if float(jnp.min(x)) < bounds[0] or float(jnp.max(x)) > bounds[1]:
      raise ValueError(f"x: expected values within bounds {bounds}, got [{float(jnp.min(x))}, "
                       f"{float(jnp.max(x))}]")
  batch_size = V.check_batch_size(batch_size)
  f = M.as_model(f)
  M.output_shape(f, x)  # a model that does not map x to logits fails here, before any search
  seed = np.asarray(jax.random.key_data(key), np.uint32).ravel().tolist()
  return f, x, np.random.default_rng(seed), max_queries, float(tau), bounds, max_pixels, playouts, batch_size


def _effective_signs(x0: np.ndarray, tau: float, bounds, manipulation: str = "tau") -> np.ndarray:
  """``[N, H*W, 2]`` bool: the manipulations offered per pixel, ``-`` / ``+``.

  ``"tau"``: each of ``-tau`` / ``+tau`` that changes the pixel at all.
  ``"extreme"`` (the authors' MNIST example, ``max_manip``): only the
  direction towards the farther bound (``+`` when the pixel's channel mean is
  below the midpoint, else ``-``, as their ``p < 255 - p``), which with ``tau``
  the full range sets the pixel to that bound."""
  n, h, w, c = x0.shape
  flat = x0.reshape(n, h * w, c)
  if manipulation == "extreme":
    up = flat.mean(-1) < 0.5 * (bounds[0] + bounds[1])
    return np.stack([~up, up], -1)
  if bounds is None:
    return np.ones((n, h * w, 2), bool)
  return np.stack([(flat > bounds[0]).any(-1), (flat < bounds[1]).any(-1)], -1)


def _sample_playouts(rng, probs, used, signs, count, k):
  """``[count, k]`` moves: pixels drawn without replacement from `probs`
  (Gumbel top-k), excluding `used`, each with a random effective sign; -1 pad
  where pixels run out."""
  hw = probs.shape[0]
  allowed = (probs > 0) & ~used & signs.any(-1)
  logp = np.where(allowed, np.log(np.where(allowed, probs, 1.0)), -np.inf)
  keys = logp[None] + rng.gumbel(size=(count, hw))
  order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
  ok = np.take_along_axis(keys, order, 1) > -np.inf
  both = signs[order].all(-1)
  coin = rng.random((count, k)) < 0.5
  plus = np.where(both, coin, signs[order][..., 1])
  return np.where(ok, 2 * order + plus, -1)


class _Best:
  """Per image: the best adversarial example so far (fewest pixels, then L2)."""

  def __init__(self, n):
    self.l0 = np.full(n, np.inf)
    self.l2 = np.full(n, np.inf)
    self.moves = [()] * n
    self.pred = np.full(n, -1)

  def offer(self, i, moves, l2, pred):
    l0 = len(moves)
    if (l0, l2) < (self.l0[i], self.l2[i]):
      self.l0[i], self.l2[i], self.moves[i], self.pred[i] = l0, l2, tuple(moves), pred


def _first_adversarial(pred, label, valid):
  """Per playout ``[P, R]``: index of the first misclassified valid prefix, or -1."""
  hit = (pred != label) & valid
  first = np.argmax(hit, 1)
  return np.where(hit.any(1), first, -1)


def _result(x0, label, best, queries, tau, bounds) -> SafetyResult:
  n, h, w, c = x0.shape
  adv = x0.copy()
  moves_rc = []
  for i in range(n):  # host-side assembly of the answers, no model calls
    rc = []
    for mv in best.moves[i]:
      p, s = divmod(int(mv), 2)
      r, col = divmod(p, w)
      adv[i, r, col] += tau if s else -tau
      rc.append((r, col, 1 if s else -1))
    moves_rc.append(tuple(rc))
  if bounds is not None:
    adv = np.clip(adv, bounds[0], bounds[1])
  success = np.isfinite(best.l0)
  return SafetyResult(adv, success, best.l0, best.l2, queries, label,
                      np.where(success, best.pred, label), tuple(moves_rc))


# ----------------------------------------------------------------------------
# Monte Carlo tree search.


class _Node:
  """A game state. Player I nodes (``region is None``) choose a region;
  player II nodes choose a move in their region."""
  __slots__ = ("path", "region", "children", "untried", "n", "w", "done")

  def __init__(self, path, region, untried):
    self.path, self.region, self.untried = path, region, list(untried)
    self.children: dict[int, _Node] = {}
    self.n, self.w = 0, 0.0
    self.done = False  # nothing left to search below

  def ucb(self, logn: float, c: float) -> float:
    return self.w / max(self.n, 1) + c * math.sqrt(logn / max(self.n, 1))


class _Tree:
  """One image's search tree; untried actions are ordered by a draw from the
  saliency distribution, so expansion follows the features first."""

  def __init__(self, feat: FeatureSaliency, signs: np.ndarray, max_pixels: int, c: float, rng):
    self.sal = feat.saliency.ravel()
    self.reg = feat.regions.ravel()
    self.w = feat.weights
    self.signs, self.max_pixels, self.c, self.rng = signs, max_pixels, c, rng
    self.root = self._player_one(())

  def _order(self, ids, probs):
    if len(ids) == 0:
      return []
    keys = np.log(np.maximum(probs, 1e-300)) + self.rng.gumbel(size=len(ids))
    return [int(i) for i in np.asarray(ids)[np.argsort(-keys, kind="stable")]]

  def _free(self, path):
    used = np.zeros(self.sal.shape[0], bool)
    used[[m // 2 for m in path]] = True
    return ~used & self.signs.any(-1) & (self.sal > 0)

  def _player_one(self, path):
    if len(path) >= self.max_pixels:
      return _Node(path, None, [])
    regions = np.unique(self.reg[self._free(path)])
    return _Node(path, None, self._order(regions, self.w[regions]))

  def _player_two(self, path, region):
    pix = np.flatnonzero(self._free(path) & (self.reg == region))
    moves = [2 * p + s for p in pix for s in (0, 1) if self.signs[p, s]]
    probs = [self.sal[m // 2] / self.signs[m // 2].sum() for m in moves]
    return _Node(path, region, self._order(moves, np.asarray(probs)))

  def _widen(self, node, width: int, live: list) -> bool:
    """Progressive widening: a node takes new children while it has fewer
    than ``width * ceil(sqrt(visits / width))`` (or no live ones), so
    well-rewarded states get searched deeper instead of every sibling being
    tried first."""
    cap = width * max(1, math.ceil(math.sqrt(node.n / width)))
    return bool(node.untried) and (not live or len(node.children) < cap)

  def _descend(self, width: int):
    node, visited = self.root, [self.root]
    while True:
      live = [ch for ch in node.children.values() if not ch.done]
      if self._widen(node, width if node.region is not None else 1, live):
        if node.region is not None:  # player II: `width` moves at once
          new = [self._player_one(node.path + (a,)) for a in node.untried[:width]]
          node.children.update(zip(node.untried[:width], new))
          del node.untried[:width]
          return visited, new
        a = node.untried.pop(0)
        child = node.children[a] = self._player_two(node.path, a)
      elif live:
        logn = math.log(max(node.n, 1))
        child = max(live, key=lambda ch: ch.ucb(logn, self.c))
      else:  # exhausted: depth reached, adversarial already, or every child exhausted
        node.done = True
        return visited, []
      visited.append(child)
      node = child

  def select(self, width: int):
    """UCB1 descent with progressive widening over the states not yet
    exhausted; a player II node that widens expands up to `width` moves at
    once. Returns ``(visited nodes root first, new player I children)``, or
    no children when the whole tree is exhausted. Each descent that ends at
    an exhausted state marks it, so this terminates."""
    while not self.root.done:
      visited, new = self._descend(width)
      if new:
        return visited, new
    return [], []

  @staticmethod
  def backup(nodes, reward):
    for node in nodes:
      node.n += 1
      node.w += reward


def _offsets(k: int) -> np.ndarray:
  """Playout prefix lengths past the leaf: 1, 2, 4, ... and `k`."""
  o = [1]
  while o[-1] * 2 < k:
    o.append(o[-1] * 2)
  if o[-1] != k:
    o.append(k)
  return np.asarray(o)


_MANIPULATIONS = ("tau", "extreme")


def _reward(kind: str, p_clean: float, p_state: float, depth: int, found: float) -> float:
  """A new state's MCTS reward. ``"shaped"``: ``0.5 * (1 - p_state) + 0.5 *
  found`` (`found`: ``1 - (L0 - 1) / max_pixels`` of the best adversarial
  example of its playouts, 0 if none). ``"probability"`` (the authors' MCTS):
  the drop of the label's probability from the clean image,
  ``(p_clean - p_state) / depth``; it may be negative."""
  if kind == "probability":
    return float(p_clean - p_state) / depth
  return _SHAPING * (1.0 - float(p_state)) + (1.0 - _SHAPING) * found


def _prepare(f, x, key, method, max_queries, tau, bounds, max_pixels, playouts, batch_size, mesh,
             manipulation, backtrack):
  if manipulation not in _MANIPULATIONS:
    raise ValueError(f"manipulation: expected one of {_MANIPULATIONS}, got {manipulation!r}")
  if manipulation == "extreme" and bounds is None:
    raise ValueError("manipulation='extreme': expected bounds (low, high) to move pixels to, got None")
  if not isinstance(backtrack, bool):
    raise ValueError(f"backtrack: expected a bool, got {backtrack!r}")
  f, x, rng, max_queries, tau, bounds, max_pixels, playouts, batch_size = _check(
      f, x, key, method, max_queries, tau, bounds, max_pixels, playouts, batch_size)
  if manipulation == "extreme":
    tau = bounds[1] - bounds[0]  # every offered move then lands on a bound
  if backtrack and max_queries <= max_pixels + 1:
    raise ValueError(f"max_queries: expected more than max_pixels + 1 = {max_pixels + 1} with backtrack=True "
                     f"(that many are kept for backtracking), got {max_queries}")
  label, p_clean = _predict(f, x)
  oracle = _Oracle(f, x, label, jnp.asarray(tau, x.dtype), bounds, batch_size, mesh)
  x0 = np.asarray(x)
  signs = _effective_signs(x0, tau, bounds, manipulation)
  # Backtracking costs at most one query per pixel of the example: keep that
  # many back, so the whole search stays within `max_queries`.
  search_budget = max_queries - (max_pixels if backtrack else 0)
  return (oracle, x0, np.asarray(label), np.asarray(p_clean), signs, rng, search_budget, tau, bounds,
          max_pixels, playouts)


def feature_guided_search(f, x, *, key=None, max_queries: int = 2000, tau: float = 1.0,
                          bounds: Sequence[float] | None = (0.0, 1.0), max_pixels: int = 16,
                          expansions: int = 16, playouts: int = 1, exploration: float = 0.1,
                          saliency: Sequence[FeatureSaliency] | None = None,
                          manipulation: str = "tau", backtrack: bool = False,
                          reward: str = "shaped", batch_size: int | None = None,
                          mesh=None) -> SafetyResult:
  """Feature-guided black-box search for adversarial examples with few changed
  pixels: MCTS over the two-player game of Wicker et al. 2018 (TACAS,
  arXiv:1710.07859); see the module docstring for the game.

  Uses the model's outputs only. Each MCTS iteration evaluates, for all images
  at once, `expansions` new leaf states (player II's moves in the selected
  region, in saliency order) and `playouts` random playouts from each, in one
  compiled call of fixed shape.

  Args:
    f: model ``x[N, H, W, C] -> logits[N, C]`` (only its argmax and softmax are read).
    x: ``[N, H, W, C]`` images within `bounds`.
    key: a `jax.random` key (same key -> same result); seeds the host-side
      sampler of expansions and playouts.
    max_queries: model queries per image (default 2000), the clean
      prediction included; counted up to each playout's first misclassified
      prefix.
    tau: atomic manipulation size (default 1.0: on ``[0, 1]`` images a pixel
      goes to black or white, the most an L0 search can get from one pixel).
    bounds: ``(low, high)`` to clip to (default ``(0, 1)``), or None.
    max_pixels: the most pixels an example may change (default 16, a quarter
      of an 8x8 digit); playouts stop there.
    expansions: moves expanded at once per iteration (default 16): one query
      each, so the pixels of a feature region are tried in few compiled calls.
    playouts: random playouts per new leaf (default 1); a playout queries its
      prefixes 1, 2, 4, ... manipulations past the leaf (about log2 of
      `max_pixels` queries), so the L0 it reports is an upper bound.
    exploration: UCB1's constant (default 0.1; rewards lie in [0, 1] and most
      are small, so sqrt(2) left the search near breadth-first).
    saliency: precomputed `sift_saliency` per image (default: computed here).
    manipulation: ``"tau"`` (default: ``+tau`` or ``-tau``, both offered
      where they change the pixel) or ``"extreme"`` (the authors' MNIST rule:
      the pixel goes to the farther bound, one move per pixel; `tau` unused).
    backtrack: undo, after the search, every manipulation of the best example
      that is not needed for the misclassification (the authors' DFMCS
      backtracking, one pixel per query; `backtrack_batch`). Default False
      (the search as documented before the authors' code was read);
      `max_pixels` queries of the budget are kept back for it.
    reward: ``"shaped"`` (default: the module docstring's mix of the label's
      probability drop and the playouts' distance) or ``"probability"`` (the
      authors' MCTS: the drop of the label's probability from the clean image
      to the new state, divided by the state's depth; no distance term).
    batch_size: model evaluations per chunk (None: automatic).
    mesh: a `jax.sharding.Mesh` to shard the query rows over, or None.
  Returns:
    a `SafetyResult`.
  """
  if reward not in ("shaped", "probability"):
    raise ValueError(f"reward: expected 'shaped' or 'probability', got {reward!r}")
  oracle, x0, label, p_clean, signs, rng, budget, tau, bounds, k, p = _prepare(
      f, x, key, "feature_guided_search", max_queries, tau, bounds, max_pixels, playouts, batch_size,
      mesh, manipulation, backtrack)
  e = V.check_positive_int(expansions, "expansions")
  if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or exploration < 0:
    raise ValueError(f"exploration: expected a float >= 0, got {exploration!r}")
  n = x0.shape[0]
  if saliency is None:
    saliency = [sift_saliency(img) for img in x0]
  if len(saliency) != n or not all(isinstance(s, FeatureSaliency) for s in saliency):
    raise ValueError(f"saliency: expected {n} FeatureSaliency (one per image), got {V.describe(saliency)}")
  trees = [_Tree(saliency[i], signs[i], k, float(exploration), rng) for i in range(n)]
  best = _Best(n)
  queries = np.ones(n, np.int64)  # the clean prediction
  offs = _offsets(k)
  j = len(offs)
  per_leaf = 1 + p * j  # row 0: the leaf; then each playout's prefixes
  rows = e * per_leaf
  active = np.ones(n, bool)
  while active.any():
    moves = np.full((n, e, per_leaf, k), -1, np.int64)
    length = np.full((n, e, per_leaf), -1, np.int64)
    plans = [None] * n
    for i in np.flatnonzero(active):  # host-side tree bookkeeping
      visited, new = trees[i].select(e)
      if not new:
        active[i] = False
        continue
      plans[i] = (visited, new)
      for c, child in enumerate(new):
        d = len(child.path)
        used = np.zeros(signs.shape[1], bool)
        used[[m // 2 for m in child.path]] = True
        moves[i, c, :, :d] = child.path
        length[i, c, 0] = d
        if d < k:
          tail = _sample_playouts(rng, saliency[i].saliency.ravel(), used, signs[i], p, k - d)
          moves[i, c, 1:, d:] = np.repeat(tail, j, axis=0)
          o = np.tile(offs, p)
          got = np.repeat((tail >= 0).sum(1), j)  # pixels the playout found
          length[i, c, 1:] = np.where((o <= k - d) & (o <= got), d + o, -1)
    if not active.any():
      break
    pred, prob, l2 = oracle(np.repeat(np.arange(n), rows), moves.reshape(n * rows, k), length.reshape(-1))
    pred, prob, l2 = (a.reshape(n, e, per_leaf) for a in (pred, prob, l2))
    for i in np.flatnonzero(active):
      visited, new = plans[i]
      valid = length[i, :len(new), 1:].reshape(len(new), p, j) >= 0
      hit = (pred[i, :len(new), 1:].reshape(len(new), p, j) != label[i]) & valid
      first = np.where(hit.any(-1), np.argmax(hit, -1), -1)
      leaf_adv = pred[i, :len(new), 0] != label[i]
      # A tester stops a playout at its first misclassified prefix, and skips
      # the playouts of a leaf that is already adversarial; leaves past the
      # budget are dropped (in order), which ends this image's search.
      cost = 1 + np.where(leaf_adv[:, None], 0, np.where(first >= 0, first + 1, valid.sum(-1))).sum(-1)
      within = queries[i] + np.cumsum(cost) <= budget
      if not within.all():
        active[i] = False
      queries[i] += cost[within].sum()
      for c, child in enumerate(new):  # rewards of the new leaves
        if not within[c]:
          break
        d = len(child.path)
        found = 0.0
        if leaf_adv[c]:
          best.offer(i, child.path, l2[i, c, 0], pred[i, c, 0])
          found = 1.0 - (d - 1) / k
          child.untried, child.done = [], True  # nothing smaller lies below an adversarial state
        else:
          for q in np.flatnonzero(first[c] >= 0):
            r = 1 + q * j + first[c, q]
            best.offer(i, moves[i, c, r, :length[i, c, r]], l2[i, c, r], pred[i, c, r])
            found = max(found, 1.0 - (length[i, c, r] - 1) / k)
        _Tree.backup(visited + [child], _reward(reward, p_clean[i], prob[i, c, 0], d, found))
      if best.l0[i] <= 1:
        active[i] = False
  if backtrack:
    oracle.backtrack(best, queries, k)
  return _result(x0, label, best, queries, tau, bounds)


def random_search(f, x, *, key=None, max_queries: int = 2000, tau: float = 1.0,
                  bounds: Sequence[float] | None = (0.0, 1.0), max_pixels: int = 16,
                  playouts: int = 8, manipulation: str = "tau", backtrack: bool = False,
                  batch_size: int | None = None, mesh=None) -> SafetyResult:
  """The random-search baseline for `feature_guided_search` at the same query
  budget: playouts from the clean image that manipulate uniformly random
  pixels (each at most once, the same ``+-tau`` manipulations), every prefix
  one query, until `max_queries` per image are spent. Same arguments and
  result as `feature_guided_search` (no tree, no features), except
  `playouts`: the playouts per image in one compiled call (default 8, i.e.
  ``8 * max_pixels`` query rows), which sets the batch, not the search;
  `manipulation` and `backtrack` as there, so the comparison is like for like."""
  oracle, x0, label, _, signs, rng, budget, tau, bounds, k, p = _prepare(
      f, x, key, "random_search", max_queries, tau, bounds, max_pixels, playouts, batch_size, mesh,
      manipulation, backtrack)
  n, h, w, _ = x0.shape
  uniform = np.full(h * w, 1.0 / (h * w))
  best = _Best(n)
  queries = np.ones(n, np.int64)
  rows = p * k  # each playout's every prefix
  active = np.ones(n, bool)
  while active.any():
    moves = np.full((n, rows, k), -1, np.int64)
    length = np.full((n, rows), -1, np.int64)
    for i in np.flatnonzero(active):
      tail = _sample_playouts(rng, uniform, np.zeros(h * w, bool), signs[i], p, k)
      moves[i] = np.repeat(tail, k, axis=0)
      length[i] = np.where(tail.reshape(-1) >= 0, 1 + np.tile(np.arange(k), p), -1)
    pred, _, l2 = oracle(np.repeat(np.arange(n), rows), moves.reshape(n * rows, k), length.reshape(-1))
    pred, l2 = pred.reshape(n, rows), l2.reshape(n, rows)
    for i in np.flatnonzero(active):
      valid = length[i].reshape(p, k) >= 0
      first = _first_adversarial(pred[i].reshape(p, k), label[i], valid)
      cost = np.where(first >= 0, first + 1, valid.sum(1))
      within = queries[i] + np.cumsum(cost) <= budget  # playouts past the budget are dropped
      if not within.all():
        active[i] = False
      queries[i] += cost[within].sum()
      for j in np.flatnonzero((first >= 0) & within):
        r = j * k + first[j]
        best.offer(i, moves[i, r, :length[i, r]], l2[i, r], pred[i, r])
      if best.l0[i] <= 1:
        active[i] = False
  if backtrack:
    oracle.backtrack(best, queries, k)
  return _result(x0, label, best, queries, tau, bounds)
