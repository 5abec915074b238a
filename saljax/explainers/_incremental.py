"""Incremental occlusion: recompute only the cone of activations a window changes.

Nakandala, Kumar, Papakonstantinou 2019, "Incremental and Approximate
Inference for Faster Occlusion-based Deep CNN Explanations" (SIGMOD). When one
window of the input changes, a convolution changes only the outputs whose
receptive field meets it: a box that grows by the kernel's reach at each layer
(and shrinks with its stride). Every activation of the clean image is computed
once and kept; each window then recomputes only its boxes, layer by layer.

Route: a generic interpreter over the model's jaxpr (`jax.make_jaxpr` of `f`
on the input's shape), not per-architecture code, so any JAX model built from
the supported operations works, whatever library wrote it. Every variable of
the jaxpr is either *clean* (its full array, the cache) or *patched*: its
clean array, plus per window the values on a box of a STATIC size at a
per-window offset. The offsets depend only on the window positions, which are
static, so the boxes are computed here in numpy at trace time (the size of a
box is the largest any window needs; a box near a border is shifted inside
the array, recomputing a few unchanged positions). The per-window work runs
vmapped over windows (chunked as the plain kernel), with
`lax.dynamic_slice` / `dynamic_update_slice` at the per-window offsets.

Exact (equal to plain occlusion up to float rounding) for:

* convolutions (`conv_general_dilated`: strides, kernel dilation, explicit,
  SAME or VALID padding, ``feature_group_count`` for depthwise): the clean
  input is padded once, the region a window's output box reads is cut out of
  it, the patch written in, and the convolution run VALID on the region;
* pooling (`reduce_window_max` / `_min` / `_sum`), likewise;
* elementwise operations of any arity, with clean operands (biases, inference
  batch norm, broadcast first by ``broadcast_in_dim``) cut to the box, and two
  patched operands (a residual addition) on the union of their boxes;
* structural operations that keep axes apart: `concatenate`,
  `broadcast_in_dim`, `reshape` (when the patched axes keep their size and
  place), `squeeze`, `transpose`,
  `pad` (non-negative, no interior), `slice` (with strides: the "shifts"
  depthwise convolution of `saljax.models.layers`), and `dot_general` that
  contracts only axes the window does not split (a per-position dense layer);
* global sums (``reduce_sum``, so means): the clean sum corrected by the
  patch, ``clean_sum - sum(clean patch) + sum(new patch)``; other reductions
  over a patched axis (``reduce_max``...) are evaluated on the full array.

Once a box covers its whole array (after global pooling), everything that
follows (the dense head, a softmax) is evaluated per window as is. An
operation that mixes every position of a partially changed array (a
`dot_general` contracting a spatial axis: attention over tokens or a dense
layer on a flattened map; a `reshape` merging spatial axes, as a ViT's patch
embedding does) raises `IncrementalUnsupported` (a ValueError) naming it.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from saljax import model as M
from saljax import parallel
from saljax.explainers.propagation import _ELEMENTWISE, _bind, _is_lit, _sub_jaxpr

Array = jax.Array

# Elementwise primitives: propagation's list plus comparisons and logic.
_POINTWISE = _ELEMENTWISE | {
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "is_finite", "atan2", "rem",
    "logistic", "integer_pow", "square", "erf", "stop_gradient", "real", "imag", "conj",
    "acos", "asin", "tan", "exp2", "log1p", "population_count", "clz", "shift_left",
    "shift_right_logical", "shift_right_arithmetic"}
_REDUCE_WINDOW = {"reduce_window_max": "max", "reduce_window_min": "min",
                  "reduce_window_sum": "sum"}
_REDUCE_DENSE = {"reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                 "reduce_xor", "argmax", "argmin"}


class IncrementalUnsupported(ValueError):
  """The model has an operation that incremental occlusion cannot restrict to a box."""


def _unsupported(eqn, why: str) -> IncrementalUnsupported:
  return IncrementalUnsupported(
      f"incremental occlusion: `{eqn.primitive.name}` {why}, so it cannot be restricted to "
      "the activations a window changes; only plain occlusion (incremental=False, or "
      "incremental='auto', which falls back to it) is exact for this model")


# ----------------------------------------------------------------------------
# Boxes (numpy, at trace time).


@dataclasses.dataclass
class _Patch:
  """A patched variable: its clean array, and per window a box of static size
  `sz` at offsets ``lo[N, ndim]`` (an axis the box covers has offset 0)."""
  key: int
  clean: Array
  lo: np.ndarray
  sz: tuple[int, ...]

  @property
  def full(self) -> bool:
    return tuple(self.sz) == tuple(self.clean.shape)


def _fit(need_lo: np.ndarray, need_hi: np.ndarray, dim: int) -> tuple[np.ndarray, int]:
  """The static-size box covering ``[need_lo, need_hi)`` for every window
  (``[N]`` each), shifted inside ``[0, dim)``: offsets ``[N]`` and the size."""
  need_lo = np.clip(need_lo, 0, dim)
  need_hi = np.clip(need_hi, 0, dim)
  size = int(max(1, (need_hi - need_lo).max(initial=1)))
  return np.maximum(np.minimum(need_lo, dim - size), 0), size


def _union(boxes: Sequence[tuple[np.ndarray, Sequence[int]]], shape) -> tuple[np.ndarray, tuple]:
  """The smallest static-size box holding each of `boxes` (``(lo[N, d], sz)``) per window."""
  lo = np.min([b[0] for b in boxes], axis=0)
  hi = np.max([b[0] + np.asarray(b[1]) for b in boxes], axis=0)
  cols = [_fit(lo[:, a], hi[:, a], d) for a, d in enumerate(shape)]
  return np.stack([c[0] for c in cols], 1), tuple(c[1] for c in cols)


def _same(lo_a, sz_a, lo_b, sz_b) -> bool:
  return tuple(sz_a) == tuple(sz_b) and np.array_equal(lo_a, lo_b)


def _table(lo: np.ndarray) -> Array:
  return jnp.asarray(lo, jnp.int32)


def _reboxer(clean: Array, plo: np.ndarray, psz, nlo: np.ndarray, nsz) -> Callable:
  """A per-window function ``(patch, i) -> values on the box (nlo, nsz)``:
  the clean values there with the patch (box (plo, psz)) written in."""
  if _same(plo, psz, nlo, nsz):
    return lambda p, i: p
  ulo, usz = _union([(plo, psz), (nlo, nsz)], clean.shape)
  tp, tu, tn = _table(plo - ulo), _table(ulo), _table(nlo - ulo)
  whole = tuple(usz) == tuple(nsz)

  def rebox(p, i):
    region = lax.dynamic_slice(clean, tuple(tu[i]), usz)
    region = lax.dynamic_update_slice(region, p.astype(region.dtype), tuple(tp[i]))
    return region if whole else lax.dynamic_slice(region, tuple(tn[i]), nsz)

  return rebox


def _clean_slicer(clean: Array, lo: np.ndarray, sz) -> Callable:
  """A per-window function ``i -> clean values on the box (lo, sz)``."""
  if tuple(sz) == tuple(clean.shape):
    return lambda i: clean
  t = _table(lo)
  return lambda i: lax.dynamic_slice(clean, tuple(t[i]), sz)


def _densifier(p: _Patch) -> Callable:
  """A per-window function ``(patch, i) -> the full array``."""
  if p.full:
    return lambda v, i: v
  t = _table(p.lo)
  return lambda v, i: lax.dynamic_update_slice(p.clean, v.astype(p.clean.dtype), tuple(t[i]))


def _window_axis(plo, psz, k, st, dil, pad_lo, out_dim):
  """Along one axis of a windowed op (kernel k, stride, kernel dilation,
  low padding): the output box a changed input ``[plo, plo + psz)`` reaches
  (offsets, size) and the input region it reads, in padded coordinates
  (offsets, size)."""
  reach = (k - 1) * dil
  need_lo = -(-(plo + pad_lo - reach) // st)
  need_hi = (plo + psz - 1 + pad_lo) // st + 1
  olo, osz = _fit(need_lo, need_hi, out_dim)
  return olo, osz, olo * st, (osz - 1) * st + reach + 1


# ----------------------------------------------------------------------------
# The interpreter: clean values and boxes at trace time, a list of per-window steps.


@dataclasses.dataclass
class _Step:
  ins: list            # per operand: a patch key, or None for a clean operand
  outs: list           # per result: a patch key
  fn: Callable         # (patch values aligned with ins, window index) -> results


class _Interp:
  def __init__(self):
    self.steps: list[_Step] = []
    self._keys = itertools.count()
    self._regions: dict = {}
    self.macs = [0, 0]  # per window: plain, incremental (convolutions and dense layers)

  def new(self, clean, lo, sz) -> _Patch:
    return _Patch(next(self._keys), clean, np.asarray(lo, np.int64), tuple(int(s) for s in sz))

  def region(self, p: _Patch, lo: np.ndarray, sz: tuple) -> _Patch:
    """`p`'s values on another box, as a patched value of its own (one step,
    shared by every equation that asks for the same box)."""
    if _same(p.lo, p.sz, lo, sz):
      return p
    memo = (p.key, lo.tobytes(), tuple(sz))
    if memo not in self._regions:
      r = self.new(p.clean, lo, sz)
      rebox = _reboxer(p.clean, p.lo, p.sz, r.lo, r.sz)
      self.steps.append(_Step([p.key], [r.key], lambda pv, i: [rebox(pv[0], i)]))
      self._regions[memo] = r
    return self._regions[memo]

  def run(self, jaxpr, consts, args) -> list:
    env: dict = {}

    def read(v):
      return v.val if _is_lit(v) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = c
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      outs = self.eqn(eqn, [read(v) for v in eqn.invars])
      for v, o in zip(eqn.outvars, outs):
        env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins) -> list:
    patched = [isinstance(a, _Patch) for a in ins]
    if not any(patched):
      return _bind(eqn, ins)
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      jaxpr, consts = sub
      n_c = len(ins) - len(jaxpr.invars)
      return self.run(jaxpr, consts, ins[n_c:] if n_c > 0 else ins)
    clean_outs = _bind(eqn, [a.clean if p else a for a, p in zip(ins, patched)])
    boxes, fn, *read = self.rule(eqn, ins, patched, clean_outs)
    if read:  # the rule reads other patched values (a shared region of its input)
      ins = read[0]
      patched = [isinstance(a, _Patch) for a in ins]
    outs = [self.new(c, lo, sz) for c, (lo, sz) in zip(clean_outs, boxes)]
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      # Multiply-adds per output element, times the outputs plain occlusion
      # and this route compute per window.
      if eqn.primitive.name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        per = int(np.prod(rhs)) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      else:
        lhs = eqn.invars[0].aval.shape
        per = int(np.prod([lhs[a] for a in eqn.params["dimension_numbers"][0][0]]))
      self.macs[0] += per * int(np.prod(clean_outs[0].shape))
      self.macs[1] += per * int(np.prod(boxes[0][1]))
    self.steps.append(_Step([a.key if p else None for a, p in zip(ins, patched)],
                            [o.key for o in outs], fn))
    return outs

  def rule(self, eqn, ins, patched, clean_outs):
    name = eqn.primitive.name
    n = next(a for a in ins if isinstance(a, _Patch)).lo.shape[0]
    if all(a.full for a, p in zip(ins, patched) if p):
      # Whole arrays change (after global pooling): evaluate as is.
      def whole(pv, i):
        return _bind(eqn, [v if p else a for v, a, p in zip(pv, ins, patched)])
      return [(np.zeros((n, c.ndim), np.int64), c.shape) for c in clean_outs], whole
    if name in _POINTWISE:
      return _pointwise(eqn, ins, patched, clean_outs)
    if name == "slice":
      return _slice_rule(self, eqn, ins, patched, clean_outs)
    handler = _RULES.get(name)
    if handler is None and name in _REDUCE_DENSE:
      handler = _dense_rule
    if handler is None:
      raise _unsupported(eqn, "has no incremental rule")
    return handler(eqn, ins, patched, clean_outs)


def _operand_box(shape, lo, sz):
  """The box of an operand broadcast (size-1 axes) against an output box."""
  lo = lo.copy()
  sz = list(sz)
  for a, d in enumerate(shape):
    if d != sz[a] and d == 1:
      lo[:, a], sz[a] = 0, 1
  return lo, tuple(sz)


def _pointwise(eqn, ins, patched, clean_outs):
  shape = tuple(clean_outs[0].shape)
  boxes = []
  for a, p in zip(ins, patched):
    if p:  # an axis the operand broadcasts (size 1) changes the whole output axis
      lo = a.lo.copy()
      sz = list(a.sz)
      for ax, d in enumerate(a.clean.shape):
        if d != shape[ax]:
          lo[:, ax], sz[ax] = 0, shape[ax]
      boxes.append((lo, sz))
  lo, sz = _union(boxes, shape)
  prep = []
  for a, p in zip(ins, patched):
    ashape = tuple(np.shape(a.clean if p else a))
    if len(ashape) == 0:
      prep.append(lambda v, i, a=a: a)
      continue
    if len(ashape) != len(shape) or any(d not in (1, o) for d, o in zip(ashape, shape)):
      raise _unsupported(eqn, f"has an operand of shape {ashape} beside the output {shape}")
    blo, bsz = _operand_box(ashape, lo, sz)
    if p:
      prep.append(_reboxer(a.clean, a.lo, a.sz, blo, bsz))
    else:
      cut = _clean_slicer(a, blo, bsz)
      prep.append(lambda v, i, cut=cut: cut(i))

  def fn(pv, i):
    return _bind(eqn, [g(v, i) for g, v in zip(prep, pv)])

  return [(lo, sz)] * len(clean_outs), fn


def _windowed(eqn, p: _Patch, axes_geom, out_shape, pad_value, pads, bind_params):
  """Shared by convolutions and pooling. `axes_geom` per input axis:
  ``("keep", out_axis)`` (the box passes through, as the batch axis),
  ``("full",)`` (contracted: the whole axis is read) or
  ``("win", k, stride, dilation, pad_lo, pad_hi, out_axis)``. Returns the
  output box, a reboxer giving the padded input region the box reads, and the
  equation with `bind_params` (padding 0: the region is padded already)."""
  n = p.lo.shape[0]
  out_lo = np.zeros((n, len(out_shape)), np.int64)
  out_sz = list(out_shape)
  rlo = np.zeros_like(p.lo)
  rsz = list(p.clean.shape)
  plo_pad = p.lo.copy()
  for a, g in enumerate(axes_geom):
    if g is None:
      continue
    kind = g[0]
    if kind == "keep":  # batch-like axis: the box passes through
      out_lo[:, g[1]], out_sz[g[1]] = p.lo[:, a], p.sz[a]
      rlo[:, a], rsz[a] = p.lo[:, a], p.sz[a]
      continue
    if kind == "full":  # an axis the op contracts (features): needs the whole of it
      if p.sz[a] != p.clean.shape[a]:
        raise _unsupported(eqn, f"contracts input axis {a}, which the window changes only in part")
      continue
    _, k, st, dil, pl, ph, oax = g
    olo, osz, r0, rs = _window_axis(p.lo[:, a], p.sz[a], k, st, dil, pl, out_shape[oax])
    out_lo[:, oax], out_sz[oax] = olo, osz
    rlo[:, a], rsz[a] = r0, rs
    plo_pad[:, a] += pl
  padded = lax.pad(p.clean, jnp.asarray(pad_value, p.clean.dtype), pads) if any(
      lo or hi for lo, hi, _ in pads) else p.clean
  rebox = _reboxer(padded, plo_pad, p.sz, rlo, tuple(rsz))
  sub = eqn.replace(params={**eqn.params, **bind_params})
  return [(out_lo, tuple(out_sz))], rebox, sub


def _conv_rule(eqn, ins, patched, clean_outs):
  lhs, rhs = ins
  if patched[1]:
    raise _unsupported(eqn, "has a kernel that depends on the input")
  prm = eqn.params
  if any(d != 1 for d in prm["lhs_dilation"]):
    raise _unsupported(eqn, "has input dilation (a transposed convolution)")
  if any(lo < 0 or hi < 0 for lo, hi in prm["padding"]):
    raise _unsupported(eqn, "has negative padding")
  dn = prm["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  geom: list = [None] * lhs.clean.ndim
  geom[lhs_spec[0]] = ("keep", out_spec[0]) if prm["batch_group_count"] == 1 else ("full",)
  geom[lhs_spec[1]] = ("full",)
  pads = [(0, 0, 0)] * lhs.clean.ndim
  for d, ax in enumerate(lhs_spec[2:]):
    k = rhs.shape[rhs_spec[2 + d]]
    pl, ph = prm["padding"][d]
    geom[ax] = ("win", k, prm["window_strides"][d], prm["rhs_dilation"][d], pl, ph, out_spec[2 + d])
    pads[ax] = (pl, ph, 0)
  boxes, rebox, sub = _windowed(eqn, lhs, geom, clean_outs[0].shape, 0, pads,
                                {"padding": tuple((0, 0) for _ in prm["padding"])})

  def fn(pv, i):
    return _bind(sub, [rebox(pv[0], i), rhs])

  return boxes, fn


def _reduce_window_rule(eqn, ins, patched, clean_outs):
  (x,) = ins
  prm = eqn.params
  if any(d != 1 for d in prm["base_dilation"]):
    raise _unsupported(eqn, "has base dilation")
  if any(lo < 0 or hi < 0 for lo, hi in prm["padding"]):
    raise _unsupported(eqn, "has negative padding")
  kind = _REDUCE_WINDOW[eqn.primitive.name]
  dt = x.clean.dtype
  if kind == "sum":
    init = 0
  elif jnp.issubdtype(dt, jnp.floating):
    init = -jnp.inf if kind == "max" else jnp.inf
  else:
    init = jnp.iinfo(dt).min if kind == "max" else jnp.iinfo(dt).max
  geom, pads = [], []
  for a in range(x.clean.ndim):
    pl, ph = prm["padding"][a]
    geom.append(("win", prm["window_dimensions"][a], prm["window_strides"][a],
                 prm["window_dilation"][a], pl, ph, a))
    pads.append((pl, ph, 0))
  boxes, rebox, sub = _windowed(eqn, x, geom, clean_outs[0].shape, init, pads,
                                {"padding": tuple((0, 0) for _ in prm["padding"])})

  def fn(pv, i):
    return _bind(sub, [rebox(pv[0], i)])

  return boxes, fn


def _reduce_sum_rule(eqn, ins, patched, clean_outs):
  (x,) = ins
  axes = tuple(eqn.params["axes"])
  keep = [a for a in range(x.clean.ndim) if a not in axes]
  lo, sz = x.lo[:, keep], tuple(x.sz[a] for a in keep)
  if all(x.sz[a] == x.clean.shape[a] for a in axes):
    return [(lo, sz)], lambda pv, i: _bind(eqn, [pv[0]])
  # A sum over a partly changed axis: correct the clean sum by the patch.
  cut_in = _clean_slicer(x.clean, x.lo, x.sz)
  cut_out = _clean_slicer(clean_outs[0], lo, sz)

  def fn(pv, i):
    # The change summed first (zero where the patch equals the clean values),
    # then added once: one rounding of the clean sum, as plain occlusion has.
    delta = _bind(eqn, [pv[0].astype(x.clean.dtype) - cut_in(i)])[0]
    return [cut_out(i) + delta]

  return [(lo, sz)], fn


def _dense_rule(eqn, ins, patched, clean_outs):
  """The full array per window, then the op as is (reductions like max)."""
  dens = [_densifier(a) if p else None for a, p in zip(ins, patched)]
  n = next(a for a in ins if isinstance(a, _Patch)).lo.shape[0]

  def fn(pv, i):
    return _bind(eqn, [d(v, i) if d is not None else a for d, v, a in zip(dens, pv, ins)])

  return [(np.zeros((n, c.ndim), np.int64), c.shape) for c in clean_outs], fn


def _broadcast_rule(eqn, ins, patched, clean_outs):
  x = ins[0]
  if len(ins) > 1:
    raise _unsupported(eqn, "has a dynamic shape")
  out_shape = clean_outs[0].shape
  dims = eqn.params["broadcast_dimensions"]
  n = x.lo.shape[0]
  lo = np.zeros((n, len(out_shape)), np.int64)
  sz = list(out_shape)
  for a, d in enumerate(dims):
    if x.clean.shape[a] == out_shape[d]:
      lo[:, d], sz[d] = x.lo[:, a], x.sz[a]
  sz = tuple(sz)
  sub = eqn.replace(params={**eqn.params, "shape": sz, "sharding": None})
  return [(lo, sz)], lambda pv, i: _bind(sub, [pv[0]])


def _reshape_rule(eqn, ins, patched, clean_outs):
  x = ins[0]
  if len(ins) > 1 or eqn.params.get("dimensions") is not None:
    raise _unsupported(eqn, "has a dynamic shape or a transposition")
  old, new = tuple(x.clean.shape), tuple(clean_outs[0].shape)
  n = x.lo.shape[0]
  lo = np.zeros((n, len(new)), np.int64)
  sz = list(new)
  before_old = np.cumprod((1,) + old)
  before_new = np.cumprod((1,) + new)
  for a, d in enumerate(old):
    if x.sz[a] == d:
      continue
    # A partly changed axis must survive as one axis of the same size, with
    # the same number of elements before it (no merging or splitting).
    match = [j for j in range(len(new)) if new[j] == d and before_new[j] == before_old[a]]
    if not match:
      raise _unsupported(eqn, f"merges or splits axis {a} of {old} into {new}, mixing "
                              "positions the window changes only in part (a token sequence)")
    lo[:, match[0]], sz[match[0]] = x.lo[:, a], x.sz[a]
  sz = tuple(sz)
  sub = eqn.replace(params={**eqn.params, "new_sizes": sz, "sharding": None})
  return [(lo, sz)], lambda pv, i: _bind(sub, [pv[0]])


def _squeeze_rule(eqn, ins, patched, clean_outs):
  x = ins[0]
  keep = [a for a in range(x.clean.ndim) if a not in eqn.params["dimensions"]]
  return [(x.lo[:, keep], tuple(x.sz[a] for a in keep))], lambda pv, i: _bind(eqn, [pv[0]])


def _transpose_rule(eqn, ins, patched, clean_outs):
  x = ins[0]
  perm = eqn.params["permutation"]
  return [(x.lo[:, perm], tuple(x.sz[a] for a in perm))], lambda pv, i: _bind(eqn, [pv[0]])


def _pad_rule(eqn, ins, patched, clean_outs):
  x, value = ins
  if patched[1]:
    raise _unsupported(eqn, "pads with an input-dependent value")
  cfg = eqn.params["padding_config"]
  lo = x.lo.copy()
  new_cfg = []
  for a, (pl, ph, interior) in enumerate(cfg):
    if x.sz[a] == x.clean.shape[a]:
      new_cfg.append((pl, ph, interior))
      continue
    if pl < 0 or ph < 0 or interior:
      raise _unsupported(eqn, "has negative or interior padding on a partly changed axis")
    lo[:, a] += pl
    new_cfg.append((0, 0, 0))
  out_shape = clean_outs[0].shape
  sz = tuple(out_shape[a] if x.sz[a] == x.clean.shape[a] else x.sz[a] for a in range(len(cfg)))
  sub = eqn.replace(params={**eqn.params, "padding_config": tuple(new_cfg)})
  return [(lo, sz)], lambda pv, i: _bind(sub, [pv[0], value])


# A slice whose start can move by at most this much inside its input (a
# convolution tap, as in the "shifts" depthwise convolution) gets a box that
# does not depend on its start: all taps of one padded input then share one
# box (their sum needs no re-boxing) and one region read from the patch.
TAP_SLACK = 16


def _slice_rule(interp, eqn, ins, patched, clean_outs):
  x = ins[0]
  prm = eqn.params
  strides = prm["strides"] or (1,) * x.clean.ndim
  out_shape = clean_outs[0].shape
  n = x.lo.shape[0]
  lo = np.zeros((n, x.clean.ndim), np.int64)
  sz = list(out_shape)
  rlo = np.zeros_like(lo)
  rsz = list(x.clean.shape)
  starts, limits = list(prm["start_indices"]), list(prm["limit_indices"])
  for a in range(x.clean.ndim):
    if x.sz[a] == x.clean.shape[a]:
      continue  # the whole axis is sliced as before
    st, s0, o = strides[a], prm["start_indices"][a], out_shape[a]
    slack = x.clean.shape[a] - ((o - 1) * st + 1)
    if slack <= TAP_SLACK:  # any start in [0, slack]: the outputs a tap may change
      need_lo = -(-(x.lo[:, a] - slack) // st)
      need_hi = (x.lo[:, a] + x.sz[a] - 1) // st + 1
      lo[:, a], sz[a] = _fit(need_lo, need_hi, o)
      rlo[:, a], rsz[a] = lo[:, a] * st, (sz[a] - 1) * st + 1 + slack
      starts[a] = s0
    else:
      need_lo = -(-(x.lo[:, a] - s0) // st)
      need_hi = (x.lo[:, a] + x.sz[a] - 1 - s0) // st + 1
      lo[:, a], sz[a] = _fit(need_lo, need_hi, o)
      rlo[:, a], rsz[a] = s0 + lo[:, a] * st, (sz[a] - 1) * st + 1
      starts[a] = 0
    limits[a] = starts[a] + (sz[a] - 1) * st + 1
  region = interp.region(x, rlo, tuple(rsz))
  sub = eqn.replace(params={**prm, "start_indices": tuple(starts), "limit_indices": tuple(limits)})
  return [(lo, tuple(sz))], lambda pv, i: _bind(sub, [pv[0]]), [region]


def _dot_general_rule(eqn, ins, patched, clean_outs):
  if all(patched):
    raise _unsupported(eqn, "multiplies two input-dependent arrays (attention)")
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  side = 0 if patched[0] else 1
  p, other = ins[side], ins[1 - side]
  contract, batch = (lc, lb) if side == 0 else (rc, rb)
  obatch = rb if side == 0 else lb
  for a in contract:
    if p.sz[a] != p.clean.shape[a]:
      raise _unsupported(eqn, f"contracts axis {a} of shape {p.clean.shape}, which the window "
                              "changes only in part (a dense layer on a flattened map, "
                              "or attention)")
  n = p.lo.shape[0]
  out_shape = clean_outs[0].shape
  lo = np.zeros((n, len(out_shape)), np.int64)
  sz = list(out_shape)
  free = [a for a in range(p.clean.ndim) if a not in contract and a not in batch]
  other_free = other.ndim - len(batch) - len(contract)
  for j, a in enumerate(batch):
    lo[:, j], sz[j] = p.lo[:, a], p.sz[a]
  start = len(batch) + (0 if side == 0 else other_free)
  for j, a in enumerate(free):
    lo[:, start + j], sz[start + j] = p.lo[:, a], p.sz[a]
  # The clean operand is cut along the batch axes to the patch's box.
  olo = np.zeros((n, other.ndim), np.int64)
  osz = list(other.shape)
  for a, b in zip(batch, obatch):
    olo[:, b], osz[b] = p.lo[:, a], p.sz[a]
  cut = _clean_slicer(other, olo, tuple(osz))

  def fn(pv, i):
    args = [pv[0], cut(i)] if side == 0 else [cut(i), pv[1]]
    return _bind(eqn, args)

  return [(lo, tuple(sz))], fn


def _concatenate_rule(eqn, ins, patched, clean_outs):
  """Concatenation along an axis (channels, say): the union box elsewhere,
  the whole of the concatenated axis."""
  d = eqn.params["dimension"]
  shape = clean_outs[0].shape
  boxes = []
  for a, p in zip(ins, patched):
    if p:
      lo, sz = a.lo.copy(), list(a.sz)
      lo[:, d], sz[d] = 0, shape[d]
      boxes.append((lo, sz))
  lo, sz = _union(boxes, shape)
  prep = []
  for a, p in zip(ins, patched):
    alo, asz = lo.copy(), list(sz)
    alo[:, d], asz[d] = 0, (a.clean if p else a).shape[d]
    if p:
      prep.append(_reboxer(a.clean, a.lo, a.sz, alo, tuple(asz)))
    else:
      cut = _clean_slicer(a, alo, tuple(asz))
      prep.append(lambda v, i, cut=cut: cut(i))

  def fn(pv, i):
    return _bind(eqn, [g(v, i) for g, v in zip(prep, pv)])

  return [(lo, sz)], fn


_RULES = {
    "conv_general_dilated": _conv_rule,
    "reduce_sum": _reduce_sum_rule,
    "broadcast_in_dim": _broadcast_rule,
    "reshape": _reshape_rule,
    "squeeze": _squeeze_rule,
    "transpose": _transpose_rule,
    "pad": _pad_rule,
    "dot_general": _dot_general_rule,
    "concatenate": _concatenate_rule,
    **{k: _reduce_window_rule for k in _REDUCE_WINDOW},
}


# ----------------------------------------------------------------------------
# Occlusion.


def input_boxes(shape: Sequence[int], starts: np.ndarray, window: tuple[int, int]) -> np.ndarray:
  """Offsets ``[N, 4]`` of each window's box in NHWC input of `shape`: the
  window, shifted inside the image when it passes the border (the box then
  also holds unchanged pixels, which are recomputed as they were)."""
  _, h, w, _ = shape
  lo = np.zeros((len(starts), 4), np.int64)
  lo[:, 1] = np.minimum(starts[:, 0], h - window[0])
  lo[:, 2] = np.minimum(starts[:, 1], w - window[1])
  return lo


def _trace(f, x: Array, starts: np.ndarray, window: tuple[int, int]):
  """The interpreter run on `f`: ``(interp, input patch, logits state)``."""
  closed = jax.make_jaxpr(f)(jax.ShapeDtypeStruct(x.shape, x.dtype))
  interp = _Interp()
  b, _, _, c = x.shape
  xin = interp.new(x, input_boxes(x.shape, starts, window), (b, window[0], window[1], c))
  outs = interp.run(closed.jaxpr, closed.consts, [xin])
  if len(outs) != 1:
    raise ValueError(f"the model must return one logits array, got {len(outs)} outputs")
  return interp, xin, outs[0]


@M.jit(static_argnames=("starts", "window", "score", "batch_size"))
def _incremental(f, x, target, fill, starts, window, score, batch_size):
  starts_np = np.asarray(starts, np.int64).reshape(-1, 2)
  wh, ww = window
  interp, xin, out = _trace(f, x, starts_np, window)
  clean_logits = out.clean if isinstance(out, _Patch) else out
  base = M.target_score(lambda _: clean_logits, None, target, score)
  to_logits = _densifier(out) if isinstance(out, _Patch) else (lambda v, i: clean_logits)
  fill = jnp.broadcast_to(fill, x.shape).astype(x.dtype)
  tin, tstart = _table(xin.lo), _table(starts_np)
  h, w = x.shape[1:3]
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]

  def one(i):
    lo, s = tin[i], tstart[i]
    xb = lax.dynamic_slice(x, tuple(lo), xin.sz)
    fb = lax.dynamic_slice(fill, tuple(lo), xin.sz)
    r = lo[1] + jnp.arange(wh)
    q = lo[2] + jnp.arange(ww)
    mb = ((r >= s[0]) & (r < s[0] + wh))[:, None] & ((q >= s[1]) & (q < s[1] + ww))[None, :]
    env = {xin.key: jnp.where(mb[None, :, :, None], fb, xb)}
    for step in interp.steps:
      res = step.fn([env[k] if k is not None else None for k in step.ins], i)
      env.update(zip(step.outs, res))
    logits = to_logits(env[out.key], i) if isinstance(out, _Patch) else clean_logits
    d = base - M.target_score(lambda _: logits, None, target, score)
    m = (rows >= s[0]) & (rows < s[0] + wh) & (cols >= s[1]) & (cols < s[1] + ww)
    mf = m.astype(x.dtype)
    return d[:, None, None] * mf, mf[None]  # leading 1: one model batch per item

  total, count = parallel.chunked_sum(one, jnp.arange(len(starts_np)), batch_size=batch_size)
  out_map = total / jnp.maximum(count[0], 1)
  return jnp.broadcast_to(out_map[..., None], x.shape).astype(x.dtype)


MODES = (False, True, "auto")


def check_mode(mode: Any) -> bool:
  """Whether `mode` (occlusion's `incremental`: False, True or "auto") asks
  for the incremental route; anything else is a ValueError."""
  if not any(mode is m or (isinstance(mode, str) and mode == m) for m in MODES):
    raise ValueError(f"incremental: expected False, True or 'auto', got {mode!r}")
  return mode is not False


def occlusion(f, x: Array, target: Array, fill: Array, starts: np.ndarray,
              window: tuple[int, int], score: str, batch_size: int | None, *,
              mode: bool | str = True, plain: Callable | None = None) -> Array:
  """Occlusion maps equal to `saljax.explainers.occlusion`'s (up to float
  rounding), each window recomputing only the activations it changes.

  `f`, `x`, `target` come prepared (``_registry.prepare``), `fill` is shaped
  like `x` (or broadcasts to it), `starts` the ``[N, 2]`` window corners.
  With ``mode=True`` a model with an operation that mixes the positions of a
  partly changed activation (a ViT's token reshape or attention, a dense
  layer on a flattened map) raises `IncrementalUnsupported` (a ValueError)
  naming it; with ``mode="auto"`` the plain kernel `plain` (perturbation's
  ``_occlusion``) runs instead.
  """
  starts_t = tuple(map(tuple, np.asarray(starts, np.int64).tolist()))
  if mode == "auto":
    try:
      check_incremental(f, x, starts, window)
    except IncrementalUnsupported:
      return plain(f, x, target, fill, jnp.asarray(starts), tuple(window), score, batch_size)
  return _incremental(f, x, target, fill, starts_t, tuple(window), score, batch_size)


def mac_ratio(f, x: Array, starts: np.ndarray, window: tuple[int, int]) -> float:
  """Multiply-adds of convolutions and dense layers per window, plain over
  incremental: the speedup this route can reach where those dominate. Only
  the equations the window reaches count on both sides (those of the clean
  pass are shared)."""
  box = {}

  def probe(x_):
    interp = _trace(f, x_, np.asarray(starts, np.int64), tuple(window))[0]
    box["macs"] = interp.macs
    return jnp.zeros(())

  jax.eval_shape(probe, jax.ShapeDtypeStruct(x.shape, x.dtype))
  plain, inc = box["macs"]
  return plain / max(inc, 1)


def check_incremental(f, x: Array, starts: np.ndarray, window: tuple[int, int]) -> None:
  """Raises `IncrementalUnsupported` when `f` has an operation the incremental
  route cannot restrict to a box (traced abstractly: nothing is computed)."""

  def probe(x_):
    _trace(f, x_, np.asarray(starts, np.int64), tuple(window))
    return jnp.zeros(())

  jax.eval_shape(probe, jax.ShapeDtypeStruct(x.shape, x.dtype))
