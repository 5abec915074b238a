"""Shapley value estimators: coalition samplers, exact enumeration, the
constrained KernelSHAP solve with its standard error, and hierarchical Owen
values (`owen_values`, registered here and re-exported by `perturbation`).

`perturbation.kernel_shap` and `perturbation.shapley_sampling` are the public
entries; this module holds what they share:

- `shapley_kernel_weight`: the Shapley kernel of Lundberg and Lee.
- `exact_coefficients`: ``phi = sum_z c(z) v(z)`` over all ``2^M`` coalitions,
  the Shapley value written as one linear map of the coalition values, so exact
  enumeration accumulates in a chunked sum and needs no regression.
- `paired`: each coalition with its complement (Covert and Lee 2021).
- `leverage_pairs`: Leverage SHAP's sampler (Musco and Witter 2025): coalition
  sizes with probability proportional to their leverage scores (equal total
  mass per size), paired, without replacement, reweighted by the inverse
  inclusion probability.
- `kernel_solve`: the constrained weighted least squares and its sandwich
  (delta-method) standard error.

Every sampled coalition is built inside `jit` from ``fold_in(key, i)`` for
example i, so a map does not depend on the batch it is in.
"""
from __future__ import annotations

import math
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax import removal as R
from saljax.explainers import _masking as MK
from saljax.explainers._registry import REGISTRY, prepare

Array = jax.Array

# Sampling schemes of `perturbation.kernel_shap`.
SAMPLINGS = ("kernel", "paired", "leverage")
# Strata whose coalitions are unranked exactly (float32 holds integers to 2^24;
# a margin keeps every binomial the unranking compares exact). Larger strata
# draw uniform subsets with replacement, where a repeat is improbable.
_RANKED = float(2 ** 22)


def shapley_kernel_weight(size, m):
  """Shapley kernel ``(M - 1) / (C(M, k) k (M - k))`` (Lundberg and Lee, Theorem 2); 0 at k = 0, M."""
  size = jnp.asarray(size, jnp.float32)
  m = jnp.asarray(m, jnp.float32)
  inner = (size > 0) & (size < m)
  k = jnp.where(inner, size, 1.0)
  log_binom = jax.lax.lgamma(m + 1) - jax.lax.lgamma(k + 1) - jax.lax.lgamma(m - k + 1)
  w = (m - 1) / (jnp.exp(log_binom) * k * (m - k))
  return jnp.where(inner, w, 0.0)


def all_coalitions(m: int) -> np.ndarray:
  """Every coalition of `m` players, ``[2^m, m]`` float32 (row k: the bits of k)."""
  idx = np.arange(2 ** m, dtype=np.int64)
  return ((idx[:, None] >> np.arange(m)[None, :]) & 1).astype(np.float32)


def exact_coefficients(z: Array, count: Array) -> Array:
  """Coefficients ``c(z)`` with ``phi_i = sum_z c_i(z) v(z)``, the Shapley value
  of a game on `count` players (columns past it are padding).

  ``c_i(z) = w(|z| - 1)`` when i is in z and ``-w(|z|)`` when it is not, with
  ``w(s) = s! (M - s - 1)! / M!``: each term ``v(S + i) - v(S)`` of the
  Shapley sum, regrouped by coalition. A coalition that sets a padded column
  is a duplicate and gets 0. `z` is ``[..., M]``, `count` broadcasts against
  ``z[..., 0]``.
  """
  m = z.shape[-1]
  mb = jnp.asarray(count, jnp.float32)[..., None]
  valid = jnp.arange(m) < mb
  dup = (z * ~valid).sum(-1, keepdims=True) > 0
  k = (z * valid).sum(-1, keepdims=True)

  def w(s):  # s! (M - s - 1)! / M!, for 0 <= s <= M - 1
    s = jnp.clip(s, 0, jnp.maximum(mb - 1, 0))
    return jnp.exp(jax.lax.lgamma(s + 1) + jax.lax.lgamma(mb - s) - jax.lax.lgamma(mb + 1))

  c = jnp.where(z > 0, w(k - 1), -w(k))
  return jnp.where(valid & ~dup, c, 0.0)


def paired(z: Array, counts: Array) -> Array:
  """``[2S, B, M]``: the coalitions ``z[S, B, M]`` followed by their complements
  among each example's `counts` groups (Covert and Lee 2021's paired sampling)."""
  valid = (jnp.arange(z.shape[-1])[None, :] < counts[:, None]).astype(z.dtype)
  return jnp.concatenate([z, valid[None] - z], 0)


# ----------------------------------------------------------------------------
# Leverage SHAP sampling.


# Columns of the exact binomial table: a stratum of size s is ranked only when
# C(M, s) <= 2^23 with M >= 2 s, and C(2 s, s) passes that beyond s = 13.
_RANKED_SIZES = 13


def _binomials(m: int) -> np.ndarray:
  """``C(n, k)`` for ``0 <= n <= m``, ``0 <= k <= min(m, 14)`` as float32 (Pascal's
  rule in float64, exact below 2^53, capped at 1e30): every binomial a ranked
  stratum's unranking reads, exactly (`_choose` covers larger k)."""
  cols = min(m, _RANKED_SIZES + 1) + 1
  t = np.zeros((m + 1, cols))
  t[:, 0] = 1.0
  for n in range(1, m + 1):  # host setup, one row per n
    t[n, 1:] = np.minimum(t[n - 1, 1:] + t[n - 1, :-1], 1e30)
  return t.astype(np.float32)


def _choose(table: Array, n: Array, k: Array) -> Array:
  """``C(n, k)``: from the exact table while k fits in it, else by lgamma
  (there ``C(n, k) > 2^22`` whenever ``n >= 2 k``: only compared, never ranked)."""
  cols = table.shape[1]
  nf, kf = jnp.asarray(n, jnp.float32), jnp.asarray(k, jnp.float32)
  big = jnp.exp(jax.lax.lgamma(nf + 1) - jax.lax.lgamma(kf + 1)
                - jax.lax.lgamma(jnp.maximum(nf - kf, 0) + 1))
  return jnp.where(k < cols, table[n, jnp.minimum(k, cols - 1)], big)


def _allocate(sizes: Array, pairs: int) -> Array:
  """Pair counts per stratum: ``min(N_s, c)`` with c such that they sum to
  `pairs` (or every stratum whole when they all fit), remainders going one
  each to the first strata still short. The inclusion probability
  ``n_s / N_s`` is then as in Leverage SHAP's ``min(1, c l(z))`` with equal
  leverage per size; the counts are fixed rather than Binomial, so shapes are
  static and the estimate is stratified."""
  t = sizes.shape[0]
  order = jnp.sort(sizes)
  below = jnp.cumsum(order) - order  # sum of the smaller strata
  rest = t - jnp.arange(t)
  fits = below + rest * order >= pairs
  first = jnp.argmax(fits)
  c = jnp.where(fits.any(), (pairs - below[first]) / rest[first], jnp.inf)
  n = jnp.minimum(sizes, jnp.floor(c))
  short = n < sizes
  left = pairs - n.sum()
  n = n + (short & (jnp.cumsum(short) <= left))
  return jnp.minimum(n, sizes)


def _unrank(r: Array, k: Array, m: int, binom: Array) -> Array:
  """The colex rank-`r` subset of size `k` of ``0..m-1``, as a ``[m]`` bool:
  item i (from the top) is in when ``r >= C(i, k_left)``."""

  def step(carry, i):
    r, k = carry
    c = binom[i, jnp.minimum(k, binom.shape[1] - 1)]  # k fits: ranked strata only
    take = (k > 0) & (r >= c)
    return (jnp.where(take, r - c, r), k - take), take

  _, taken = jax.lax.scan(step, (r, k), jnp.arange(m - 1, -1, -1))
  return taken[::-1]


def leverage_pairs(key: Array, pairs: int, counts: Array, m: int):
  """Leverage SHAP's coalitions (Musco and Witter 2025, "Provably Accurate
  Shapley Value Estimation via Leverage Score Sampling", Algorithm 1).

  The leverage score of a coalition of size s in the Shapley kernel's
  constrained regression is ``1 / ((M - 1) C(M, s))``: every size carries the
  same total. Pairs ``(z, 1 - z)`` are drawn without replacement per pair
  stratum ``s = 1..M/2`` (for ``s = M/2``, only the coalitions holding the last
  group, so a pair is never drawn twice), ``n_s = min(N_s, c)`` of the ``N_s``
  pairs of the stratum (`_allocate`), and each row is weighted by the Shapley
  kernel over its inclusion probability ``n_s / N_s``. A stratum that fits is
  enumerated whole; a larger one is sampled systematically in colex rank
  order from a random offset, over a random relabelling of the groups, so
  each pair's inclusion probability is exactly ``n_s / N_s`` and no pair
  repeats (strata past 2^22 pairs draw uniform subsets instead).

  Returns:
    ``(z [2P, B, M], w [2P, B], stratum [P, B], fpc [B, T + 1])``: pairs k and
    ``P + k`` are a coalition and its complement, `stratum` the pair's stratum
    (T for an unused slot, weight 0, when all strata fit in fewer pairs), and
    ``fpc = 1 - n_s / N_s`` the finite-population correction of each.
  """
  if m < 2:
    raise ValueError(f"leverage sampling needs at least 2 groups, got {m}")
  binom = jnp.asarray(_binomials(m))
  t = m // 2
  s = jnp.arange(1, t + 1)

  def one(k, count):
    # One 1-D uniform draw per example, laid out ``[1 + M, P + 1]`` so that
    # entry (i, j) sits at ``i (P + 1) + j`` whatever the padded M: row 0 holds
    # the strata offsets (at each stratum's first slot), row 1 + i group i's
    # uniforms for every slot and, in the last column, for the relabelling.
    # A single 1-D random call compiles far faster than one per slot, or a 2-D one.
    u_all = jax.random.uniform(k, ((m + 1) * (pairs + 1),)).reshape(m + 1, pairs + 1)
    u_slot, u_perm = u_all[1:, :pairs].T, u_all[1:, pairs]
    mb = count
    active = 2 * s <= mb
    middle = 2 * s == mb
    full = _choose(binom, mb, s)
    half = _choose(binom, jnp.maximum(mb - 1, 0), jnp.maximum(s - 1, 0))  # middle: C(M-1, s-1)
    size = jnp.where(active, jnp.where(middle, half, full), 0.0)
    n = _allocate(size, pairs)
    ends = jnp.cumsum(n.astype(jnp.int32))
    j = jnp.arange(pairs)
    st = jnp.searchsorted(ends, j, side="right", method="compare_all")  # t: an unused slot
    used = st < t
    sti = jnp.minimum(st, t - 1)
    within = j - (ends[sti] - n[sti].astype(jnp.int32))  # index inside the stratum
    n_j, size_j, s_j = n[sti], size[sti], s[sti]
    whole = n_j >= size_j
    off = u_all[0, jnp.minimum(j - within, pairs - 1)]  # one offset per stratum
    r = jnp.where(whole, within.astype(jnp.float32),
                  jnp.floor((within + off) * size_j / jnp.maximum(n_j, 1)))
    r = jnp.minimum(r, size_j - 1) + jnp.where(middle[sti], _choose(binom, jnp.maximum(mb - 1, 0),
                                                                     s_j), 0.0)
    ranked = jax.vmap(lambda r_, k_: _unrank(r_, k_, m, binom))(r, s_j)
    # Strata too large to rank exactly: uniform subsets of the stratum's size.
    valid = jnp.arange(m) < mb
    pos = jnp.argsort(jnp.argsort(jnp.where(valid, u_slot, jnp.inf), axis=1), axis=1)
    drawn = pos < s_j[:, None]
    z = jnp.where((size_j <= _RANKED)[:, None], ranked, drawn)
    # A random relabelling of the groups, shared by the example's slots.
    relabel = jnp.argsort(jnp.where(valid, u_perm, 2.0 + jnp.arange(m)))
    z = (z[:, relabel] & used[:, None] & valid).astype(jnp.float32)
    zc = (valid & used[:, None]).astype(jnp.float32) - z
    sf, mf = s_j.astype(jnp.float32), mb.astype(jnp.float32)
    # Shapley kernel over the inclusion probability n/N; for the middle stratum
    # N is half of C(M, s).
    share = jnp.where(middle[sti], 0.5, 1.0)
    w = jnp.where(used, (mf - 1) / (sf * (mf - sf)) * share / jnp.maximum(n_j, 1), 0.0)
    fpc = jnp.concatenate([1.0 - n / jnp.maximum(size, 1), jnp.zeros(1)])
    return z, zc, w, st, fpc

  z, zc, w, st, fpc = jax.vmap(one)(MK.row_keys(key, counts.shape[0]), counts)
  z = jnp.concatenate([z, zc], 1).transpose(1, 0, 2)  # [2P, B, M]
  w = jnp.concatenate([w, w], 1).T
  return z, w, st.T, fpc


# ----------------------------------------------------------------------------
# The constrained regression and its standard error.


def kernel_solve(z: Array, y: Array, w: Array, valid: Array, last: Array, f_x: Array,
                 f_0: Array) -> Array:
  """Weighted least squares for phi with ``sum(phi) = f(x) - f(fill)`` imposed
  exactly, by eliminating the last group (as the `shap` package does):
  ``y - f0 - z_last * delta = sum_{j != last} phi_j (z_j - z_last)``.
  One example: ``z [S, M], y [S], w [S], valid [M]``."""
  m = z.shape[1]
  delta = f_x - f_0
  z_last = jnp.take(z, last, axis=0 if z.ndim == 1 else 1)
  free = valid & (jnp.arange(m) != last)
  a = (z - z_last[:, None]) * free
  rhs = y - f_0 - z_last * delta
  sw = jnp.sqrt(w)
  # lstsq gives the minimum-norm solution, so padded (all-zero) columns get 0.
  sol = jnp.linalg.lstsq(a * sw[:, None], rhs * sw, rcond=None)[0] * free
  return sol.at[last].set(delta - sol.sum())


def kernel_stderr(z: Array, y: Array, w: Array, valid: Array, f_0: Array, phi: Array,
                  unit: Array, stratum: Array, fpc: Array) -> Array:
  """Standard error ``[M]`` of the constrained solve, by the delta method.

  The solve is ``phi = A^-1 (b - lambda 1)`` with ``A = sum w z z^T``,
  ``b = sum w z (y - f0)`` and lambda fixing ``sum(phi)``; to first order
  ``phi - phi* = C (b - A phi*)`` with ``C = A^-1 - A^-1 1 1^T A^-1 / (1^T A^-1 1)``,
  a sum of one term ``h_u = C sum_{z in u} w z r(z)`` per sampling unit u
  (a coalition, or a pair), r the residual. The variance is the stratified
  sample variance of the h_u: ``sum_t fpc_t n_t var_t(h)``, over the strata t
  of `stratum` (one for KernelSHAP's i.i.d. draws, with ``fpc = 1``), times
  the HC1 factor ``U / (U - (M - 1))`` for the fitted parameters.
  ``C 1 = 0``, so the error of ``sum(phi)`` is 0, as the constraint says.
  One example: ``z [S, M], y [S], w [S], unit [S] (ids < U), stratum [U], fpc [T]``.
  """
  vf = valid.astype(z.dtype)
  a = (z * w[:, None]).T @ z
  a = a * vf[:, None] * vf[None, :] + jnp.diag(1.0 - vf)
  a_inv = jnp.linalg.pinv(a) * vf[:, None] * vf[None, :]
  u = a_inv @ vf
  c = a_inv - jnp.outer(u, u) / jnp.maximum(vf @ u, 1e-30)
  r = y - f_0 - z @ phi
  units = stratum.shape[0]
  g = jax.ops.segment_sum((w * r)[:, None] * z, unit, num_segments=units)  # [U, M]
  h = g @ c
  t = fpc.shape[0]
  n = jax.ops.segment_sum(jnp.ones(units, z.dtype), stratum, num_segments=t)
  mean = jax.ops.segment_sum(h, stratum, num_segments=t) / jnp.maximum(n, 1)[:, None]
  ss = jax.ops.segment_sum((h - mean[stratum]) ** 2, stratum, num_segments=t)
  var = jnp.where((n > 1)[:, None], ss / jnp.maximum(n - 1, 1)[:, None], 0.0)
  # Residuals of a fit underestimate the noise by the p = M - 1 fitted
  # parameters: the HC1 correction U / (U - p) over the U random units (capped at 2).
  u_rand = (n * (fpc > 0)).sum()
  hc1 = jnp.where(u_rand > 0, u_rand / jnp.maximum(u_rand - (vf.sum() - 1), u_rand / 2), 1.0)
  return jnp.sqrt(jnp.maximum((fpc * n)[:, None] * var, 0.0).sum(0) * hc1) * vf


# ----------------------------------------------------------------------------
# Owen values over a binary hierarchy of the groups.


def _centroids(labels: np.ndarray, count: int) -> np.ndarray:
  """Mean position ``[count, d]`` of each group of one example's label map
  (the channel axis of an image does not count as a position)."""
  pos = np.indices(labels.shape).reshape(labels.ndim, -1).astype(np.float64)
  if labels.ndim == 3:  # [H, W, C]: rows and columns
    pos = pos[:2]
  flat = labels.reshape(-1)
  n = np.bincount(flat, minlength=count)
  return np.stack([np.bincount(flat, p, minlength=count) / np.maximum(n, 1) for p in pos], 1)


def owen_tree(centroids: np.ndarray) -> list[tuple[int, list[np.ndarray]]]:
  """A binary hierarchy of the groups: each node splits its groups in two
  halves (sizes ``ceil(n/2)``, ``floor(n/2)``) along the axis where their
  centroids spread most, as shap's image partition splits an image into
  halves. Returns, per leaf, ``(group, siblings)``: the groups of the sibling
  subtree at each level from the root down."""
  out = []
  stack = [(np.arange(len(centroids)), [])]
  while stack:  # host-side recursion over tree nodes (at most 2M)
    ids, path = stack.pop()
    if len(ids) == 1:
      out.append((int(ids[0]), path))
      continue
    c = centroids[ids]
    axis = int(np.argmax(np.ptp(c, axis=0))) if c.shape[1] else 0
    order = ids[np.lexsort((ids, c[:, axis]))] if c.shape[1] else ids
    half = -(-len(order) // 2)
    left, right = order[:half], order[half:]
    stack += [(left, path + [right]), (right, path + [left])]
  return out


def owen_design(centroids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
  """The distinct coalitions ``z [K, m]`` and coefficients ``c [K, m]`` with
  Owen value ``phi_i = sum_k c_ki v(z_k)`` for one example's hierarchy.

  For a binary hierarchy, Owen's value of group i averages, over each
  ancestor's sibling subtree being in or out (probability 1/2 each: the
  Shapley value of a two-player quotient game at every level), the marginal
  contribution ``v(C + i) - v(C)``: ``2^d`` contexts for a leaf at depth d.
  """
  zs, cols, coefs = [], [], []
  for leaf, sib in owen_tree(centroids):
    d = len(sib)
    member = np.zeros((d, m), np.float32)
    for level, groups in enumerate(sib):
      member[level, groups] = 1.0
    bits = all_coalitions(d)  # [2^d, d]
    ctx = np.minimum(bits @ member, 1.0)
    with_i = ctx.copy()
    with_i[:, leaf] = 1.0
    zs += [with_i, ctx]
    cols += [np.full(2 * len(ctx), leaf)]
    coefs += [np.r_[np.full(len(ctx), 0.5 ** d), np.full(len(ctx), -(0.5 ** d))]]
  z = np.concatenate(zs)
  uniq, inv = np.unique(z, axis=0, return_inverse=True)
  c = np.zeros(uniq.shape, np.float64)
  np.add.at(c, (inv.reshape(-1), np.concatenate(cols)), np.concatenate(coefs))
  return uniq.astype(np.float32), c.astype(np.float32)


def _owen_tables(x, labels, counts, m):
  """Per-example designs stacked to ``z, c [K, B, M]`` (rows past an example's
  own K are empty coalitions with coefficient 0)."""
  lab = np.asarray(labels)
  designs = {}
  per = []
  for b in range(lab.shape[0]):  # one hierarchy per example's segmentation (host side)
    cen = _centroids(lab[b], int(counts[b]))
    sig = (cen.tobytes(), int(counts[b]))
    if sig not in designs:
      zb, cb = owen_design(cen, int(counts[b]))
      pad = m - zb.shape[1]
      designs[sig] = (np.pad(zb, ((0, 0), (0, pad))), np.pad(cb, ((0, 0), (0, pad))))
    per.append(designs[sig])
  k = max(zb.shape[0] for zb, _ in per)
  z = np.stack([np.pad(zb, ((0, k - len(zb)), (0, 0))) for zb, _ in per], 1)
  c = np.stack([np.pad(cb, ((0, k - len(cb)), (0, 0))) for _, cb in per], 1)
  return z, c


def _owen_evaluations(o, f, x) -> int:
  """One per distinct coalition of the hierarchy (``(2 M^2 + 4) / 3`` for M a power of 2)."""
  labels, counts, m = MK.feature_groups(x, o["segments"], o["segmentation_options"])
  return _owen_tables(x, labels, counts, m)[0].shape[0]


@M.jit(static_argnames=("score", "batch_size"))
def _linear_in_values(f, x, target, fill, labels, z, c, score, batch_size):
  """``sum_k c_k v(z_k)`` ``[B, M]``, accumulated chunk by chunk."""

  def one(zc):
    zk, ck = zc
    v = M.target_score(f, MK.apply_coalition(x, fill, labels, zk), target, score)
    return ck * v[:, None]

  return parallel.chunked_sum(one, (z, c), batch_size=batch_size)


# One return type per flag value: an array, or (array, stderr) with return_stderr=True.
@typing.overload
def owen_values(f, x, target, *, key=..., segments: Any = ..., segmentation_options: dict | None = ...,
                fill: Any = ..., blur_sigma: float = ..., score: str = ...,
                batch_size: int | None = ..., return_stderr: Literal[False] = ...,
                removal: Any = ...) -> Array: ...
@typing.overload
def owen_values(f, x, target, *, key=..., segments: Any = ..., segmentation_options: dict | None = ...,
                fill: Any = ..., blur_sigma: float = ..., score: str = ...,
                batch_size: int | None = ...,
                return_stderr: Literal[True], removal: Any = ...) -> tuple[Array, Array]: ...

@REGISTRY.register("owen_values", family="perturbation", returns="input", needs=("segments",),
    evaluations=_owen_evaluations, backward=False)
def owen_values(f, x, target, *, key=None, segments: Any = "grid",
                segmentation_options: dict | None = None, fill: Any = 0.0,
                blur_sigma: float = 10.0, score: str = "logit",
                batch_size: int | None = None, return_stderr: bool = False,
                removal: Any = None):
  """Owen values over a binary hierarchy of feature groups (Owen 1977, "Values
  of games with a priori unions"), as the `shap` package's PartitionExplainer
  (Lundberg et al. 2020) computes them for images.

  The groups are split recursively in two halves, along the image axis where
  their centroids spread most (a grid splits into image halves, then
  quarters, ...). At every node the two halves play a two-player Shapley
  game, and each half's share is split among its own halves the same way,
  with the sibling subtree in or out with probability 1/2 each: group i gets
  the mean, over the ``2^d`` in/out choices of its d ancestors' siblings, of
  ``v(C + i) - v(C)``. Every distinct coalition is evaluated once
  (``(2 M^2 + 4) / 3`` evaluations for M a power of 2, chunked through one
  compiled sum), and the values are exact: efficiency
  ``sum(phi) = f(x) - f(fill)`` holds, and for a model without interactions
  beyond pairs (e.g. linear) Owen values equal Shapley values. Unlike shap,
  there is no evaluation budget that stops the recursion early: choose the
  number of groups instead.

  Args:
    key: unused (the values are exact); accepted for a uniform call.
    segments: default ``"grid"`` (8 x 8 cells: 64 groups, 2,732 evaluations;
      ``segmentation_options={"cells": 4}``: 16 groups, 172), or any value
      accepted by `lime`.
    fill: default 0.0 (Captum's baseline), or a float/array/"blur"/"mean".
    score: ``"logit"`` (default, as Captum) or ``"probability"``.
    batch_size: coalitions per model call (default None: automatic, at most
      `saljax.parallel.max_evals_per_chunk()` model evaluations per call).
    return_stderr: also return the standard error per element, all zeros
      (nothing is sampled), shaped like the map.
    removal: None (default: `fill` decides), a `saljax.removal.Removal` or a
      kind's name: ``"constant"``/``"blur"``/``"mean"`` replace `fill` (and
      `blur_sigma`); ``"token_drop"`` (ViT) and ``"layer_mask"`` (CNN) run the
      model's mask-aware forward (`saljax.removal`) on NHWC images, `fill`
      being what partly removed patches still show.

  Returns:
    attributions shaped like `x`, or ``(attributions, stderr)``.
  """
  fill, blur_sigma, keep_model = R.resolve(removal, f, fill, blur_sigma, "owen_values")
  f, x, target = prepare(f, x, target)
  M.check_score(score)
  # The hierarchy is built on the host from the label maps: keep them concrete
  # under a user's jit (they depend on `segments` only, or on x's host-side segmentation).
  with jax.ensure_compile_time_eval():
    labels, counts, m = MK.feature_groups(x, segments, segmentation_options)
  fillv = MK.fill_values(x, fill, labels=labels, num_labels=m, blur_sigma=blur_sigma)
  z, c = _owen_tables(x, labels, counts, m)
  MK.check_evaluations(z.shape[0], "segments", f"<{m} groups>", "owen_values")
  MK.check_design(z.shape[0] * x.shape[0], m, "owen_values")
  f, x, fillv, labels, done = R.switch(keep_model, f, x, fillv, labels, "owen_values")
  phi = _linear_in_values(f, x, target, fillv, labels, jnp.asarray(z), jnp.asarray(c), score,
                          V.check_batch_size(batch_size))
  out = done(MK.expand_map(phi, labels).astype(x.dtype))
  if return_stderr:
    return out, jnp.zeros_like(out)
  return out
