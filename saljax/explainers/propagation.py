"""Modified backward rules: guided backprop, deconvnet, DeepLIFT (rescale) and LRP.

These methods change how the backward pass goes through nonlinearities and
layers. Here the model is never edited: `f` (any JAX callable
``x[B, ...] -> logits[B, C]``) is traced once to a jaxpr (`jax.make_jaxpr`),
and a small interpreter re-evaluates it, replacing the relevant equations by
`jax.custom_vjp` functions that implement the selected rule; every other
equation is evaluated with ``eqn.primitive.bind`` and differentiated as usual.
The attribution is then one `jax.vjp` of the re-evaluated model. The
interpreter descends into ``jit``, ``custom_jvp_call``/``custom_vjp_call`` and
``checkpoint`` sub-jaxprs (so Flax modules and ``jax.nn`` functions are seen
through); other higher-order primitives (``scan``, ``while``, ``cond``) are
evaluated as they are, with ordinary gradients inside.

Which equations a rule touches ("tainted" = depends on the input x):

* ReLU: ``jax.nn.relu`` (a ``custom_jvp_call``), ``max(x, 0)`` or
  ``jax.nn.relu6`` (a ``jit`` named ``relu6``; ``jnp.clip`` is not
  recognized). Guided backprop and deconvnet change only these.
* Activations: elementwise equations with one tainted operand that are
  nonlinear in it (ReLU, ``tanh``, ``logistic``, ``exp``, a ``jit`` named
  like a ``jax.nn`` activation such as ``silu``...). DeepLIFT's rescale rule
  applies to these. GELU as Flax writes it (``x * (1 + tanh(...)) / 2``, a
  product of two tainted values) is not one equation: it gets ordinary
  gradients, so summation-to-delta only holds for networks whose
  nonlinearities are single elementwise equations.
* Layers (LRP), canonized as Zennit's canonizers do, by recognizing
  patterns in the jaxpr (the model is never edited): a ``dot_general`` or
  ``conv_general_dilated`` with constant weights, or a sum of >= 2
  ``constant * shifted copy`` terms of one input (saljax.models' "shifts"
  depthwise convolution, so both depthwise formulations get the conv rule
  and give the same maps), is merged with the chain of elementwise affine
  operations with constants that follows it (the bias add; inference batch
  norm ``(z - mean) * scale + shift``, Zennit's MergeBatchNorm) into one
  affine layer ``z = W a + b`` for the rule. A sum of two input-dependent
  values (a residual connection) splits the relevance in proportion to the
  summands, stabilized as Zennit's ``Norm`` (epsilon 1e-6, sign(0) = +1);
  sum / average pooling (``reduce_sum``, ``reduce_window_sum``, ``cumsum``)
  likewise, merged with the constant scaling that follows it (a mean is one
  layer, stabilized on the mean as Zennit's Norm on ``AvgPool``). Elementwise equations with one input-dependent operand (ReLU,
  ReLU6 = ``jax.nn.relu6``, clip / min / max against constants, dtype casts,
  constant scalings not merged into a layer) pass relevance through
  unchanged; structural equations (reshape, transpose, slicing, padding, max
  pooling...) use their ordinary transpose. Anything else (products of two
  input-dependent values, softmax inside attention, normalization by an
  input-dependent statistic) gets its ordinary gradient: conservation then
  fails, and ``return_delta`` shows it.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import typing
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from saljax import _validation as V
from saljax import model as M
from saljax.explainers._registry import REGISTRY, prepare
from saljax.explainers.gradients import completeness_gap, make_baseline

Array = jax.Array

_LAYERS = {"dot_general": "dense", "conv_general_dilated": "conv"}
_LINEAR_ONE = {"reduce_sum", "reduce_window_sum", "cumsum"}
# Elementwise primitives (broadcasting against constants is allowed).
_ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "neg", "abs", "sign", "tanh", "logistic", "exp",
    "exp2", "log", "log1p", "expm1", "erf", "erfc", "erf_inv", "integer_pow", "pow", "sqrt",
    "rsqrt", "cbrt", "square", "sin", "cos", "tan", "atan", "asinh", "acosh", "atanh", "sinh",
    "cosh", "convert_element_type", "copy", "copy_p", "clamp", "round", "floor", "ceil",
    "reduce_precision", "nextafter", "select_n"}
_SUBCALLS = {"jit", "pjit", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
             "checkpoint", "remat", "closed_call", "core_call"}
_ACTIVATION_NAMES = {
    "relu", "relu6", "gelu", "silu", "swish", "sigmoid", "tanh", "elu", "selu", "celu",
    "leaky_relu", "softplus", "soft_sign", "hard_tanh", "hard_sigmoid", "hard_silu",
    "hard_swish", "mish", "log_sigmoid", "sparse_plus", "squareplus"}
# Activations that guided backprop and deconvnet modify.
_RELUS = ("relu", "relu6")
# DeepLIFT falls back to the gradient where |x - x_ref| is below this.
_DEEPLIFT_EPS = 1e-7


# ----------------------------------------------------------------------------
# LRP rules.


@dataclasses.dataclass(frozen=True)
class Rule:
  """An LRP rule for one kind of layer (hashable, so rule sets are static).

  name: ``"zero"`` (LRP-0), ``"epsilon"``, ``"gamma"``, ``"alpha_beta"``,
    ``"zplus"`` (alpha=1, beta=0), ``"zbox"`` (z^B, input layer) or ``"flat"``.
  epsilon: stabilizer added to denominators with their sign (epsilon rule;
    other rules use it as a small guard, default 1e-6 as Zennit).
  gamma: the gamma rule's weight on positive parameters (default 0.25, the
    value of Montavon et al. 2019 and Zennit's composites).
  alpha, beta: alpha-beta weights, ``alpha - beta = 1`` (default 1, 0).
  low, high: z^B bounds of the input (model input space): a float, a tuple of
    per-channel floats (broadcast on the last axis of the first layer's
    input, i.e. NHWC channels), or None for each example's min / max.
  """
  name: str
  epsilon: float = 1e-6
  gamma: float = 0.25
  alpha: float = 1.0
  beta: float = 0.0
  low: Any = None
  high: Any = None

  def __post_init__(self):
    V.check_choice(self.name, "rule", RULE_NAMES)
    if self.name == "alpha_beta" and not np.isclose(self.alpha - self.beta, 1.0):
      raise ValueError(f"rule alpha_beta: expected alpha - beta = 1, got {self.alpha} and {self.beta}")
    if self.epsilon < 0 or self.gamma < 0:
      raise ValueError(f"rule {self.name}: epsilon and gamma must be >= 0, got {self}")


RULE_NAMES = ("zero", "epsilon", "gamma", "alpha_beta", "zplus", "zbox", "flat")

# Composite presets (Montavon et al. 2019, "Layer-Wise Relevance Propagation:
# An Overview"; Kohlbrenner et al. 2020, arXiv:1910.09840; names and defaults
# as Zennit's composites). Keys: "first" (the first layer met in the forward
# pass), "conv", "dense"; a missing key means LRP-epsilon's default.
PRESETS: dict[str, dict[str, Rule]] = {
    "zero": {"conv": Rule("zero"), "dense": Rule("zero")},
    "epsilon": {"conv": Rule("epsilon"), "dense": Rule("epsilon")},
    "epsilon_plus": {"conv": Rule("zplus"), "dense": Rule("epsilon")},
    "epsilon_plus_flat": {"first": Rule("flat"), "conv": Rule("zplus"), "dense": Rule("epsilon")},
    "epsilon_gamma_box": {"first": Rule("zbox"), "conv": Rule("gamma", gamma=0.25),
                          "dense": Rule("epsilon")},
    "epsilon_alpha2_beta1": {"conv": Rule("alpha_beta", alpha=2.0, beta=1.0),
                             "dense": Rule("epsilon")},
    "epsilon_alpha2_beta1_flat": {"first": Rule("flat"),
                                  "conv": Rule("alpha_beta", alpha=2.0, beta=1.0),
                                  "dense": Rule("epsilon")},
}


def _resolve_rules(rules) -> tuple[tuple[str, Rule], ...]:
  if isinstance(rules, str):
    if rules not in PRESETS:
      raise ValueError(f"rules: expected a preset in {sorted(PRESETS)} or a dict, got {rules!r}")
    rules = PRESETS[rules]
  if not isinstance(rules, Mapping):
    raise TypeError(f"rules: expected a preset name or a dict of Rule, got {V.describe(rules)}")
  out = {}
  for k, r in rules.items():
    V.check_choice(k, "rules key", ("first", "conv", "dense"))
    if isinstance(r, str):
      r = Rule(r)
    if not isinstance(r, Rule):
      raise TypeError(f"rules[{k!r}]: expected a Rule or a rule name, got {r!r}")
    out[k] = r
  out.setdefault("conv", Rule("epsilon"))
  out.setdefault("dense", Rule("epsilon"))
  return tuple(sorted(out.items()))


def _stab(z, eps):
  """``z + eps * sign(z)`` with sign(0) = +1 (Zennit's stabilizer)."""
  return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _safe_div(r, zs):
  ok = zs != 0
  return jnp.where(ok, r / jnp.where(ok, zs, 1.0), 0.0)


def _relevance(rule: Rule, lin, pn, ones, a, c, y, r, x_bounds):
  """Relevance of the input `a` of the affine layer ``y = lin(a) + c``.

  `lin` is the layer's linear part, `pn` the pair of linear maps with only its
  positive / only its negative weights (``v -> (W+ v, W- v)``, ``lin = W+ +
  W-``), `ones` the map with every weight set to 1; `r` is the output
  relevance. Returns ``(R_a, absorbed)``: `absorbed` (shaped like the output)
  is the relevance taken by the bias and the stabilizer, ``(z_stab -
  contribution of a) * r / z_stab`` per denominator, so that ``sum(R_a) +
  sum(absorbed) = sum(r)`` wherever the stabilized denominator is non-zero
  (where it is 0, as LRP-0 on a dead unit, ``r`` is dropped and shows up in
  the delta).

  The sign-split rules (gamma, alpha-beta, z+, z^B) need ``W+ v`` and ``W- v``
  for two or three inputs v (a+ and a-, or a, low and high): they are computed
  by one vmapped `pn` and one transpose of it, not one pass per term.
  """
  relu = jax.nn.relu
  name = rule.name

  def split(vs):
    """``(W+ v, W- v)`` for the stacked `vs`, and the pullback of
    ``(cotangents of W+ v, of W- v)`` (lists like `vs`)."""
    (p, n), pull = jax.vjp(jax.vmap(pn), jnp.stack(vs))
    return p, n, lambda cp, cn: pull((jnp.stack(cp), jnp.stack(cn)))[0]

  if name in ("zero", "epsilon"):
    eps = 0.0 if name == "zero" else rule.epsilon
    contrib, pull = jax.vjp(lin, a)
    zs = _stab(contrib + c, eps)
    s = _safe_div(r, zs)
    return a * pull(s)[0], (zs - contrib) * s
  if name == "gamma":
    # Zennit 0.5.1's Gamma (the generalized rule of Andeol et al. 2021, which
    # is Montavon et al.'s for a >= 0): inputs split by sign, and positive and
    # negative outputs explained separately, each by the contributions of its
    # own sign boosted by gamma: for y > 0, z+ = (W + g W+) a+ + (W + g W-) a-
    # + b + g b+; for y < 0, z- = (W + g W-) a+ + (W + g W+) a- + b + g b-.
    # Boosting W+ alone on mixed-sign inputs (the plain rule) lets the
    # denominator cross 0 (an expand conv fed by an un-activated projection).
    g = rule.gamma
    ap, an = relu(a), -relu(-a)
    p, n, pull = split([ap, an])
    contrib_p = (1 + g) * p[0] + n[0] + p[1] + (1 + g) * n[1]
    contrib_n = p[0] + (1 + g) * n[0] + (1 + g) * p[1] + n[1]
    zp = _stab(contrib_p + c + g * relu(c), rule.epsilon)
    zn = _stab(contrib_n + c - g * relu(-c), rule.epsilon)
    sp = _safe_div(jnp.where(y > 0, r, 0.0), zp)
    sn = _safe_div(jnp.where(y < 0, r, 0.0), zn)
    u, v = (1 + g) * sp + sn, sp + (1 + g) * sn  # cotangents of W+ (a+) and W- (a+)
    ga = pull([u, v], [v, u])
    return ap * ga[0] + an * ga[1], (zp - contrib_p) * sp + (zn - contrib_n) * sn
  if name in ("alpha_beta", "zplus"):
    alpha, beta = (1.0, 0.0) if name == "zplus" else (rule.alpha, rule.beta)
    ap, an = relu(a), -relu(-a)
    p, n, pull = split([ap, an])
    contrib_p = p[0] + n[1]
    zp = _stab(contrib_p + relu(c), rule.epsilon)
    sp = _safe_div(r, zp)
    absorbed = alpha * (zp - contrib_p) * sp
    if beta:
      contrib_n = n[0] + p[1]
      zn = _stab(contrib_n - relu(-c), rule.epsilon)
      sn = _safe_div(r, zn)
      absorbed = absorbed - beta * (zn - contrib_n) * sn
    else:
      sn = jnp.zeros_like(sp)
    ga = pull([alpha * sp, -beta * sn], [-beta * sn, alpha * sp])
    return ap * ga[0] + an * ga[1], absorbed
  if name == "zbox":
    low, high = x_bounds
    low = jnp.broadcast_to(low, a.shape).astype(a.dtype)
    high = jnp.broadcast_to(high, a.shape).astype(a.dtype)
    p, n, pull = split([a, low, high])
    contrib = p[0] + n[0] - p[1] - n[2]
    zs = _stab(contrib, rule.epsilon)
    s = _safe_div(r, zs)
    zero = jnp.zeros_like(s)
    ga = pull([s, -s, zero], [s, zero, -s])
    return a * ga[0] + low * ga[1] + high * ga[2], (zs - contrib) * s
  # flat: every input of a unit's receptive field gets an equal share.
  contrib, pull = jax.vjp(ones, jnp.ones_like(a))
  zs = _stab(contrib, rule.epsilon)
  s = _safe_div(r, zs)
  return pull(s)[0], (zs - contrib) * s


# ----------------------------------------------------------------------------
# custom_vjp building blocks. Every array they need is an explicit argument
# (closing over tracers in a custom_vjp is not allowed); the cotangents of
# everything but the propagated operand are zero.


def _zeros(*xs):
  return tuple(jnp.zeros_like(v) for v in xs)


@jax.custom_vjp
def _guided_relu(x, y, slope):
  return y


# slope is the ReLU's (or ReLU6's) own derivative, (x > 0) for a ReLU.
_guided_relu.defvjp(lambda x, y, slope: (y, (x, y, slope)),
                    lambda res, g: ((jax.nn.relu(g) * res[2]).astype(g.dtype),
                                    jnp.zeros_like(res[1]), jnp.zeros_like(res[2])))


@jax.custom_vjp
def _deconv_relu(x, y):
  return y


_deconv_relu.defvjp(lambda x, y: (y, (x, y)),
                    lambda res, g: (jax.nn.relu(g), jnp.zeros_like(res[1])))


@jax.custom_vjp
def _rescale(x, y, x_ref, y_ref, slope):
  return y


def _rescale_bwd(res, g):
  x, y, x_ref, y_ref, slope = res
  dx = x - x_ref
  ok = jnp.abs(dx) > _DEEPLIFT_EPS
  m = jnp.where(ok, (y - y_ref) / jnp.where(ok, dx, 1.0), slope)
  return ((g * m).astype(x.dtype),) + _zeros(y, x_ref, y_ref, slope)


_rescale.defvjp(lambda *a: (a[1], a), _rescale_bwd)


@jax.custom_vjp
def _pass(x, y):
  return y


_pass.defvjp(lambda x, y: (y, (x, y)),
             lambda res, g: (g.astype(res[0].dtype), jnp.zeros_like(res[1])))


def _ct_zero(v):
  """A zero cotangent for `v` (float0 for integer arrays, as custom_vjp requires)."""
  v = jnp.asarray(v)
  if jnp.issubdtype(v.dtype, jnp.inexact):
    return jnp.zeros_like(v)
  return np.zeros(v.shape, jax.dtypes.float0)


def _per_example(t, sink):
  """Per-example sum of `t` as the cotangent of the ``[B]`` sink."""
  b = sink.shape[0]
  if t.ndim and t.shape[0] == b:
    return t.reshape(b, -1).sum(1).astype(sink.dtype)
  return jnp.full((b,), t.sum() / b, sink.dtype)  # no batch axis: spread evenly


# The residual split and sum pooling use Zennit's `Norm` stabilizer.
_NORM_EPS = 1e-6
_NORM_RULE = Rule("epsilon", epsilon=_NORM_EPS)


@jax.custom_vjp
def _split_sum(a, b, sign, y, sink):
  return y


def _split_sum_bwd(res, r):
  a, b, sign, y, sink = res
  bs = sign * b
  z = a + bs
  zs = _stab(z, _NORM_EPS)
  s = _safe_div(r, zs)
  return ((a * s).astype(a.dtype), (bs * s).astype(b.dtype), jnp.zeros_like(sign),
          jnp.zeros_like(y), _per_example((zs - z) * s, sink))


_split_sum.defvjp(lambda a, b, sign, y, sink: (y, (a, b, sign, y, sink)), _split_sum_bwd)


def _linear_rule(lin, eps):
  """A custom_vjp ``(a, sink) -> lin(a)`` for a linear map without weights
  (sum pooling, cumsum): relevance in proportion to the summands."""

  @jax.custom_vjp
  def op(a, sink):
    return lin(a)

  def bwd(res, r):
    a, sink = res
    z = lin(a)
    zs = _stab(z, eps)
    s = _safe_div(r, zs)
    return (a * jax.vjp(lin, a)[1](s)[0]).astype(a.dtype), _per_example((zs - z) * s, sink)

  op.defvjp(lambda a, sink: (lin(a), (a, sink)), bwd)
  return op


# ----------------------------------------------------------------------------
# LRP canonization: layers recognized in the jaxpr.
#
# A "group" is one affine layer for the LRP rules: a chain of equations with
# one input `root` (x-dependent) and one output, linear in root up to
# constants. Two shapes are recognized:
#
# * a weighted layer (dot_general / conv_general_dilated of root with constant
#   weights);
# * a sum of >= 2 terms ``const * structural(root)`` (the "shifts" depthwise
#   convolution: k*k shifted slices of the padded input, each times a
#   per-channel constant, added up), so both depthwise formulations get the
#   conv rule.
#
# Either is extended by the chain of elementwise affine operations with a
# constant that follows it while each intermediate has one use: the bias add
# of a dense layer, and inference batch norm ``(z - mean) * scale + shift``
# (Zennit's MergeBatchNorm canonizer). The group is then evaluated in four
# modes: "full" (the original equations, the forward value), "lin" (the
# constants that are added dropped: the linear part), "pn" (a pair: the maps
# with only the positive / only the negative composite weights) and "ones"
# (every weight 1, for the flat rule). "pn" multiplies signs along each path
# from an input to an output, which is the sign of the composite weight when
# each input reaches each output by one path (true for conv + batch norm and
# for the shifted-copies depthwise).

_STRUCT = {"reshape", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "transpose", "rev",
           "pad", "convert_element_type", "copy", "copy_p"}
_AFFINE = {"add", "sub", "mul", "div", "neg", "convert_element_type"}


@dataclasses.dataclass(eq=False)
class _Group:
  eqns: list          # in jaxpr order
  root: Any           # the input var
  out: Any            # the output var
  kind: str           # "conv" or "dense" (which rule of the rule set), "norm" (pooling)
  consts: list        # non-literal vars read that are not computed in the group


def _struct_jit(eqn) -> bool:
  """A jit whose body is only structural equations (e.g. ``jnp.pad``)."""
  sub = _sub_jaxpr(eqn)
  if sub is None or eqn.primitive.name not in ("jit", "pjit"):
    return False
  return all(e.primitive.name in _STRUCT or _struct_jit(e) for e in sub[0].eqns)


def _find_groups(jaxpr, eqn_taint) -> list[_Group]:
  eqns = jaxpr.eqns
  uses = collections.Counter(v for e in eqns for v in e.invars if not _is_lit(v))
  uses.update(v for v in jaxpr.outvars if not _is_lit(v))
  producer = {e.outvars[0]: i for i, e in enumerate(eqns) if len(e.outvars) == 1}
  consumers = collections.defaultdict(list)
  for i, e in enumerate(eqns):
    for v in e.invars:
      if not _is_lit(v):
        consumers[v].append(i)
  taken: set = set()
  groups = []

  def one_tainted(i):
    return sum(eqn_taint[i]) == 1 and len(eqns[i].outvars) == 1

  def extend(idx, out):
    """Appends the affine chain with constants that follows `out`."""
    while uses[out] == 1 and len(consumers[out]) == 1:
      j = consumers[out][0]
      e = eqns[j]
      if (j in taken or e.primitive.name not in _AFFINE or not one_tainted(j)
          or tuple(e.outvars[0].aval.shape) != tuple(out.aval.shape)
          or (e.primitive.name == "div" and e.invars[0] is not out)):
        break
      idx.append(j)
      out = e.outvars[0]
    return out

  def finish(idx, root, out, kind):
    idx = sorted(idx)
    inside = {v for i in idx for v in eqns[i].outvars}
    consts = []
    for i in idx:
      for v in eqns[i].invars:
        if not _is_lit(v) and v not in inside and v is not root and v not in consts:
          consts.append(v)
    groups.append(_Group([eqns[i] for i in idx], root, out, kind, consts))
    taken.update(idx)

  # Sums of shifted, scaled copies (latest add first: the root of each tree).
  for j in reversed(range(len(eqns))):
    e = eqns[j]
    if j in taken or e.primitive.name != "add" or sum(eqn_taint[j]) != 2:
      continue
    tree, leaves, stack = [j], [], list(e.invars)
    while stack:
      v = stack.pop()
      i = producer.get(v)
      if (i is not None and uses[v] == 1 and eqns[i].primitive.name == "add"
          and sum(eqn_taint[i]) == 2):
        tree.append(i)
        stack.extend(eqns[i].invars)
      else:
        leaves.append(v)
    chains, ok = [], True
    for v in leaves:
      i = producer.get(v)
      if (i is None or uses[v] != 1 or eqns[i].primitive.name != "mul" or not one_tainted(i)
          or tuple(eqns[i].outvars[0].aval.shape) != tuple(v.aval.shape)):
        ok = False
        break
      t = eqns[i].invars[eqn_taint[i].index(True)]
      if tuple(t.aval.shape) != tuple(v.aval.shape):
        ok = False
        break
      chain = [(i, t)]
      while True:
        p = producer.get(chain[-1][1])
        if p is None or not one_tainted(p) or not (
            eqns[p].primitive.name in _STRUCT or _struct_jit(eqns[p])):
          break
        chain.append((p, eqns[p].invars[eqn_taint[p].index(True)]))
      chains.append(chain)
    if not ok or len(leaves) < 2:
      continue
    common = set.intersection(*[{v for _, v in c} for c in chains])
    root = next((v for _, v in chains[0] if v in common), None)
    if root is None:
      continue
    idx = set(tree)
    for c in chains:
      for i, v in c:
        idx.add(i)
        if v is root:
          break
    inside = {v for i in idx for v in eqns[i].outvars}
    out = e.outvars[0]
    if any(k not in idx for v in inside if v is not out for k in consumers[v]) or any(
        v in inside and v is not out for v in jaxpr.outvars if not _is_lit(v)) or idx & taken:
      continue
    idx = sorted(idx)
    out = extend(idx, out)
    finish(idx, root, out, "conv")

  # Weighted layers; sum pooling with the scaling that follows it (a mean, an
  # average pool) as one "norm" layer, so that the stabilizer is added to the
  # pooled output as Zennit's Norm on an AvgPool module does (on the sum it
  # would be N times smaller relative to the mean).
  for i, e in enumerate(eqns):
    name = e.primitive.name
    if i in taken or not one_tainted(i) or not (
        name in _LAYERS or (name in _LINEAR_ONE and len(e.invars) == 1)):
      continue
    idx = [i]
    out = extend(idx, e.outvars[0])
    finish(idx, e.invars[eqn_taint[i].index(True)], out, _LAYERS.get(name, "norm"))
  return groups


def _padd(u, v):
  """Sum of two "pn" halves, either of which may be None (known zero)."""
  return u if v is None else v if u is None else u + v


def _pmul(k, u):
  return None if u is None else k * u


def _lin_eqn(eqn, t, vals, mode):
  """One group equation in mode "lin", "ones" or "pn" (`vals`: the tainted
  operand a value, or a (pos, neg) pair in "pn", where None stands for zeros
  so that no convolution is run on a zero half)."""
  name = eqn.primitive.name
  relu = jax.nn.relu
  pn = mode == "pn"
  i = t.index(True) if sum(t) == 1 else None
  if name in _LAYERS:
    w = vals[1 - i]

    def lin(v, wk):
      if v is None:
        return None
      ops = [None, None]
      ops[i], ops[1 - i] = v, wk
      return _bind(eqn, ops)[0]

    if mode == "lin":
      return lin(vals[i], w)
    if mode == "ones":
      return lin(vals[i], jnp.ones_like(w))
    p, n = vals[i]
    wp, wn = relu(w), -relu(-w)
    return _padd(lin(p, wp), lin(n, wn)), _padd(lin(p, wn), lin(n, wp))
  if name in ("add", "sub") and i is None:  # two group values
    x, y = vals
    if name == "add" or mode == "ones":
      return (_padd(x[0], y[0]), _padd(x[1], y[1])) if pn else x + y
    return (_padd(x[0], _pmul(-1, y[1])), _padd(x[1], _pmul(-1, y[0]))) if pn else x - y
  if name in ("add", "sub"):  # plus a constant: dropped from the linear part
    x = vals[i]
    if name == "sub" and i == 1 and mode != "ones":
      return (_pmul(-1, x[1]), _pmul(-1, x[0])) if pn else -x
    return x
  if name in ("mul", "div"):
    x, k = vals[i], vals[1 - i]
    if mode == "ones":
      return x
    k = k if name == "mul" else 1 / k
    if mode == "lin":
      return x * k
    kp, kn = relu(k), -relu(-k)
    return _padd(_pmul(kp, x[0]), _pmul(kn, x[1])), _padd(_pmul(kp, x[1]), _pmul(kn, x[0]))
  if name == "neg":
    x = vals[i]
    return (_pmul(-1, x[1]), _pmul(-1, x[0])) if pn else (x if mode == "ones" else -x)

  # Structural (and convert, pad): the other operands (a pad value) set to zero.
  def one(v):
    if v is None:
      return None
    ops = [v if tt else jnp.zeros_like(o) for o, tt in zip(vals, t)]
    return _bind(eqn, ops)[0]

  x = vals[i]
  return (one(x[0]), one(x[1])) if pn else one(x)


def _run_group(g: _Group, a, cvals, mode):
  env = dict(zip(g.consts, cvals))
  val = {g.root: (a, None) if mode == "pn" else a}
  for eqn in g.eqns:
    t = [(not _is_lit(v)) and v in val for v in eqn.invars]
    ins = [v.val if _is_lit(v) else (val[v] if v in val else env[v]) for v in eqn.invars]
    val[eqn.outvars[0]] = _bind(eqn, ins)[0] if mode == "full" else _lin_eqn(eqn, t, ins, mode)
  out = val[g.out]
  if mode == "pn":  # a half that stayed None is zero (a group with no negative weight)
    p, n = out
    return (jnp.zeros_like(n) if p is None else p), (jnp.zeros_like(p) if n is None else n)
  return out


def _group_rule(g: _Group, rule: Rule):
  """A custom_vjp ``(a, consts, low, high, sink) -> group(a)`` propagating relevance."""

  @jax.custom_vjp
  def layer(a, cvals, low, high, sink):
    return _run_group(g, a, cvals, "full")

  def fwd(a, cvals, low, high, sink):
    y = layer(a, cvals, low, high, sink)
    return y, (a, cvals, low, high, sink, y)

  def bwd(res, r):
    a, cvals, low, high, sink, y = res
    lin = lambda v: _run_group(g, v, cvals, "lin")  # noqa: E731
    pn = lambda v: _run_group(g, v, cvals, "pn")  # noqa: E731
    ones = lambda v: _run_group(g, v, cvals, "ones")  # noqa: E731
    c = _run_group(g, jnp.zeros_like(a), cvals, "full")  # the bias (shift after merging)
    ra, absorbed = _relevance(rule, lin, pn, ones, a, c, y, r.astype(c.dtype), (low, high))
    return (ra.astype(a.dtype), [_ct_zero(v) for v in cvals], _ct_zero(low), _ct_zero(high),
            _per_example(absorbed, sink))

  layer.defvjp(fwd, bwd)
  return layer


# ----------------------------------------------------------------------------
# The interpreter.


@dataclasses.dataclass
class _Ctx:
  mode: str                      # "guided", "deconvnet", "deeplift", "lrp"
  rules: dict | None = None
  bounds: tuple | None = None    # (low, high) for z^B, shaped to broadcast against x
  seen_layer: bool = False
  sink: Any = None               # [B] zeros whose cotangent collects absorbed relevance


def _is_lit(v) -> bool:
  return isinstance(v, jcore.Literal)


def _bind(eqn, invals):
  # JAX 0.10: get_bind_params returns the params (older versions: subfuns too).
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):
    subfuns, params = params
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  return out if eqn.primitive.multiple_results else [out]


def _sub_jaxpr(eqn):
  """``(jaxpr, consts)`` of a call-like equation, or None."""
  if eqn.primitive.name not in _SUBCALLS:
    return None
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    j = eqn.params.get(key)
    if isinstance(j, jcore.ClosedJaxpr):
      return j.jaxpr, j.consts
    if isinstance(j, jcore.Jaxpr):
      return j, ()
  return None


def _is_zero(v) -> bool:
  if _is_lit(v):
    try:
      return bool(np.all(np.asarray(v.val) == 0))
    except Exception:  # noqa: BLE001 - not a concrete literal
      return False
  return False


def _activation_kind(eqn, tainted: list[bool]) -> str | None:
  """``"relu"``, ``"activation"`` or None for an equation with one tainted operand."""
  name = eqn.primitive.name
  if name == "max" and sum(tainted) == 1 and _is_zero(eqn.invars[tainted.index(False)]):
    return "relu"
  if name in ("jit", "pjit") and eqn.params.get("name") in _ACTIVATION_NAMES:
    return "relu" if eqn.params["name"] in _RELUS else "activation"
  if name in ("custom_jvp_call", "custom_vjp_call"):
    sub = _sub_jaxpr(eqn)
    if sub is not None and len(sub[0].eqns) == 1:
      inner = sub[0].eqns[0]
      inner_t = [not _is_lit(v) for v in inner.invars]
      kind = _activation_kind(inner, inner_t)
      if kind is not None:
        return kind
    return "activation"
  if name in _ELEMENTWISE:
    i = tainted.index(True)
    linear = name in ("add", "sub", "neg", "convert_element_type", "copy", "copy_p", "mul",
                      "reduce_precision") or (name == "div" and i == 0)
    return None if linear else "activation"
  return None


def _elementwise_one(eqn, tainted, invals) -> bool:
  """One tainted operand whose shape is the (single) output's shape."""
  if sum(tainted) != 1 or len(eqn.outvars) != 1:
    return False
  a = invals[tainted.index(True)]
  out = eqn.outvars[0].aval
  return tuple(a.shape) == tuple(out.shape)


def _inexact(v) -> bool:
  return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _eval(ctx: _Ctx, jaxpr, consts, args, dep, refs=None):
  """Evaluates `jaxpr` with the rules of `ctx`; returns ``(outs, ref_outs)``.

  `dep[i]` says whether input i depends on x; `refs` (DeepLIFT) holds the
  reference input's value for every such input, evaluated in lockstep.
  Only float values computed from float values that depend on x are
  "tainted" (seen by the rules, carry cotangents): a comparison's boolean (an
  index, a mask made from it) depends on x but has no derivative, so it is a
  constant for the rules, though it is still evaluated after x (and, for
  DeepLIFT, on the reference too).
  """
  env: dict = {}
  ref_env: dict = {}
  dep_vars: set = set()
  tainted_vars: set = set()

  def read(v):
    return v.val if _is_lit(v) else env[v]

  def read_ref(v):
    return v.val if _is_lit(v) else ref_env.get(v, env.get(v))

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for i, (v, a) in enumerate(zip(jaxpr.invars, args)):
    env[v] = a
    if dep[i]:
      dep_vars.add(v)
      if _inexact(v):
        tainted_vars.add(v)
      if refs is not None:
        ref_env[v] = refs[i]

  eqn_taint, eqn_dep = [], []
  for eqn in jaxpr.eqns:
    t = [(not _is_lit(v)) and v in tainted_vars for v in eqn.invars]
    d = [(not _is_lit(v)) and v in dep_vars for v in eqn.invars]
    eqn_taint.append(t)
    eqn_dep.append(d)
    if any(d):
      dep_vars.update(eqn.outvars)
    if any(t):
      tainted_vars.update(v for v in eqn.outvars if _inexact(v))

  # LRP: layers (with their bias / batch norm merged) evaluated as groups.
  groups: dict[int, _Group] = {}
  skip: set = set()
  if ctx.mode == "lrp":
    index = {id(e): i for i, e in enumerate(jaxpr.eqns)}
    for g in _find_groups(jaxpr, eqn_taint):
      ids = [index[id(e)] for e in g.eqns]
      groups[max(ids)] = g
      skip.update(ids)

  # Constants first (they may be needed by a fused layer before their turn).
  for eqn, d in zip(jaxpr.eqns, eqn_dep):
    if not any(d):
      for v, o in zip(eqn.outvars, _bind(eqn, [read(v) for v in eqn.invars])):
        env[v] = o

  for k, (eqn, t, d) in enumerate(zip(jaxpr.eqns, eqn_taint, eqn_dep)):
    if k in groups:
      g = groups[k]
      env[g.out] = _lrp_group(ctx, g, read(g.root), [read(v) for v in g.consts])
      continue
    if not any(d) or k in skip:
      continue
    invals = [read(v) for v in eqn.invars]
    ref_in = [read_ref(v) for v in eqn.invars] if refs is not None else None
    if any(t):
      outs, ref_outs = _eval_eqn(ctx, eqn, t, d, invals, ref_in)
    else:  # depends on x through non-float values only: no rule, no cotangent
      outs = _bind(eqn, invals)
      ref_outs = _bind(eqn, ref_in) if ref_in is not None else None
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
    if ref_outs is not None:
      for v, o in zip(eqn.outvars, ref_outs):
        ref_env[v] = o

  outs = [read(v) for v in jaxpr.outvars]
  ref_outs = [read_ref(v) for v in jaxpr.outvars] if refs is not None else None
  return outs, ref_outs


def _eval_eqn(ctx: _Ctx, eqn, tainted, dep, invals, ref_in):
  """One equation with at least one tainted operand: ``(outs, ref_outs)``
  (`dep`: which operands depend on x, tainted or not)."""
  mode = ctx.mode
  name = eqn.primitive.name
  ref_outs = _bind(eqn, ref_in) if ref_in is not None else None
  if not any(_inexact(v) for v in eqn.outvars):  # a comparison, argmax...: no derivative
    return _bind(eqn, invals), ref_outs

  # Activations (including whole sub-calls such as jax.nn.relu).
  if _elementwise_one(eqn, tainted, invals):
    kind = _activation_kind(eqn, tainted)
    i = tainted.index(True)
    if kind is not None or mode == "lrp":
      y = _bind(eqn, invals)[0]
      xi = invals[i]
      if mode == "lrp":
        return [_pass(xi, y)], ref_outs
      def fn(z):
        vals = list(invals)
        vals[i] = z
        return _bind(eqn, vals)[0]

      if mode == "deconvnet" and kind == "relu":
        return [_deconv_relu(xi, y)], ref_outs
      if mode == "guided" and kind == "relu":
        slope = jax.jvp(fn, (xi,), (jnp.ones_like(xi),))[1]
        return [_guided_relu(xi, y, jax.lax.stop_gradient(slope))], ref_outs
      if mode == "deeplift" and kind is not None:
        slope = jax.jvp(fn, (xi,), (jnp.ones_like(xi),))[1]
        x_ref, y_ref = ref_in[i], ref_outs[0]
        return [_rescale(xi, y, x_ref, y_ref, jax.lax.stop_gradient(slope))], ref_outs

  # Sub-jaxprs: interpret inside.
  sub = _sub_jaxpr(eqn)
  if sub is not None:
    jaxpr, consts = sub
    n_c = len(eqn.invars) - len(jaxpr.invars)
    args = invals[n_c:] if n_c > 0 else invals
    sub_dep = dep[n_c:] if n_c > 0 else dep
    refs = ref_in[n_c:] if (ref_in is not None and n_c > 0) else ref_in
    outs, sub_refs = _eval(ctx, jaxpr, consts, args, sub_dep, refs)
    return outs, sub_refs if ref_in is not None else None

  if mode == "lrp":
    if name in _LINEAR_ONE and sum(tainted) == 1 and len(invals) == 1:
      return [_linear_rule(lambda a: _bind(eqn, [a])[0], _NORM_EPS)(invals[0], ctx.sink)], None
    if name in ("add", "sub") and sum(tainted) == 2:
      a, b = invals
      out_shape = tuple(eqn.outvars[0].aval.shape)
      if tuple(a.shape) == out_shape and tuple(b.shape) == out_shape:
        y = _bind(eqn, invals)[0]
        sign = jnp.asarray(1.0 if name == "add" else -1.0, y.dtype)
        return [_split_sum(a, b, sign, y, ctx.sink)], None
  return _bind(eqn, invals), ref_outs


def _lrp_group(ctx: _Ctx, g: _Group, a, cvals):
  if g.kind == "norm":  # pooling: Zennit's Norm, whatever the rule set
    return _group_rule(g, _NORM_RULE)(a, list(cvals), *(jnp.zeros((), a.dtype),) * 2, ctx.sink)
  key = g.kind
  if not ctx.seen_layer:
    ctx.seen_layer = True
    if "first" in ctx.rules:
      key = "first"
  rule = ctx.rules[key]
  if rule.name == "zbox":
    low, high = ctx.bounds
    if low.ndim > 1:  # per-example bounds [B, 1, ...]: match the layer input's rank
      low = low.reshape((low.shape[0],) + (1,) * (a.ndim - 1))
      high = high.reshape((high.shape[0],) + (1,) * (a.ndim - 1))
  else:
    low = high = jnp.zeros((), a.dtype)
  return _group_rule(g, rule)(a, list(cvals), low, high, ctx.sink)


def _modified_vjp(f, x, target, mode, rules=None, bounds=None, reference=None):
  """Cotangent at x of the re-evaluated model, seeded with the target one-hot
  (times the target logit for LRP)."""
  closed = jax.make_jaxpr(f)(jax.ShapeDtypeStruct(x.shape, x.dtype))
  ctx_rules = dict(rules) if rules is not None else None

  def run(x_, sink):
    ctx = _Ctx(mode, ctx_rules, bounds, sink=sink)
    refs = [reference] if reference is not None else None
    outs, _ = _eval(ctx, closed.jaxpr, closed.consts, [x_], [True], refs)
    if len(outs) != 1:
      raise ValueError(f"the model must return one logits array, got {len(outs)} outputs")
    return outs[0]

  sink = jnp.zeros((x.shape[0],), jnp.float32 if x.dtype == jnp.float16 else x.dtype)
  logits, pull = jax.vjp(run, x, sink)
  onehot = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
  if mode != "lrp":
    return pull(onehot)[0]
  seed = onehot * logits
  rel, absorbed = pull(seed)
  return rel, absorbed, seed.sum(-1)


# ----------------------------------------------------------------------------
# Public explainers.


@M.jit(static_argnames=("mode",))
def _modified_gradient(f, x, target, mode):
  return _modified_vjp(f, x, target, mode)


@REGISTRY.register("guided_backprop", family="propagation", returns="input", evaluations=1,
    backward=True)
def guided_backprop(f, x, target, *, key=None) -> Array:
  """Guided backpropagation (Springenberg et al. 2015, "Striving for Simplicity:
  The All Convolutional Net", arXiv:1412.6806).

  The gradient of the target logit where every ReLU's backward pass keeps only
  positive gradients at positive inputs: ``g_in = (x > 0) * max(g_out, 0)``
  (ReLU6: ``(0 < x < 6) * max(g_out, 0)``). Other nonlinearities keep their
  ordinary gradient (as Captum's `GuidedBackprop`, which overrides ReLUs only). Returns an array shaped like x.
  A map is non-negative wherever the input reaches the logit through a ReLU
  followed only by non-negative linear maps; in general (signed weights after
  the last ReLU) it is not.
  """
  f, x, target = prepare(f, x, target)
  return _modified_gradient(f, x, target, "guided")


@REGISTRY.register("deconvnet", family="propagation", returns="input", evaluations=1, backward=True)
def deconvnet(f, x, target, *, key=None) -> Array:
  """Deconvnet (Zeiler and Fergus 2014, "Visualizing and Understanding
  Convolutional Networks", arXiv:1311.2901), as a modified gradient: every
  ReLU's backward pass is a ReLU of the incoming gradient,
  ``g_in = max(g_out, 0)``, whatever the forward input (Springenberg et al.'s
  formulation, and Captum's `Deconvolution`). Max pooling keeps its switches
  (the ordinary gradient of the forward pass). Returns an array shaped like x.
  """
  f, x, target = prepare(f, x, target)
  return _modified_gradient(f, x, target, "deconvnet")


@M.jit(static_argnames=())
def _deeplift(f, x, target, reference):
  g = _modified_vjp(f, x, target, "deeplift", reference=reference)
  return (x - reference) * g


# One return type per flag value: an array, or (array, delta) with return_delta=True.
@typing.overload
def deeplift(f, x, target, *, key=..., baseline: Any = ...,
             return_delta: Literal[False] = ...) -> Array: ...
@typing.overload
def deeplift(f, x, target, *, key=..., baseline: Any = ...,
             return_delta: Literal[True]) -> tuple[Array, Array]: ...

@REGISTRY.register("deeplift", family="propagation", returns="input", evaluations=2, backward=True)
def deeplift(f, x, target, *, key=None, baseline: Any = None, return_delta: bool = False):
  """DeepLIFT with the rescale rule (Shrikumar, Greenside, Kundaje 2017,
  "Learning Important Features Through Propagating Activation Differences",
  arXiv:1704.02685).

  Multipliers are propagated as gradients, except through activations, where
  the multiplier is ``(y - y_ref) / (x - x_ref)`` (the gradient where
  ``|x - x_ref| <= 1e-7``); attributions are ``(x - x_ref) * multiplier``.
  Linear layers, sums and pooling by averaging are exact; max pooling and
  products of two input-dependent values use ordinary gradients. On a network
  of linear maps and elementwise activations the attributions sum to
  ``f(x)[t] - f(x_ref)[t]`` (summation-to-delta).

  Args:
    baseline: the reference input, default zeros (Captum's default); a float,
      ``"blur"`` or an array as `saljax.make_baseline`, in the model's input space.
    return_delta: also return ``sum(attr) - (f(x)[t] - f(x_ref)[t])`` per
      example, ``[B]`` (Captum's convergence delta).
  """
  f, x, target = prepare(f, x, target)
  ref = make_baseline(x, baseline)
  attr = _deeplift(f, x, target, ref)
  if return_delta:
    return attr, completeness_gap(f, x, attr, target, ref)
  return attr


_LRP_NOT_DIFFERENTIABLE = (
    "lrp: does not support jax.grad (nor jax.jvp), with respect to the input or the model's "
    "parameters: the relevance rules are custom backward passes whose own derivative is not "
    "the derivative of the map; differentiate gradient_x_input or integrated_gradients instead")


@jax.custom_jvp
def _no_derivative(rel):
  return rel


@_no_derivative.defjvp
def _no_derivative_jvp(primals, tangents):
  # Reached only when a caller differentiates through the map (the registry
  # guard sees traced inputs; this one also sees parameters closed over by f).
  raise ValueError(_LRP_NOT_DIFFERENTIABLE)


def _bounds(x, rules, low_default=None, high_default=None):
  """z^B bounds: per-example min / max of x unless the rule gives them."""
  zb = dict(rules).get("first")
  if zb is None or zb.name != "zbox":
    return None
  axes = tuple(range(1, x.ndim))
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)

  def one(v, fallback):
    if v is None:
      return fallback(x, axis=axes).reshape(shape)
    return jnp.asarray(v, x.dtype)  # float or per-channel tuple (broadcasts on the last axis)

  return one(zb.low, jnp.min), one(zb.high, jnp.max)


@M.jit(static_argnames=("rules",))
def _lrp(f, x, target, rules):
  """``(relevance, absorbed [B], target logit [B])``; the relevance cannot be differentiated."""
  rel, absorbed, logit = _modified_vjp(f, x, target, "lrp", rules=rules, bounds=_bounds(x, rules))
  return _no_derivative(rel), absorbed, logit


@typing.overload
def lrp(f, x, target, *, key=..., rules: Any = ..., epsilon: float | None = ...,
        return_delta: Literal[False] = ...) -> Array: ...
@typing.overload
def lrp(f, x, target, *, key=..., rules: Any = ..., epsilon: float | None = ...,
        return_delta: Literal[True]) -> tuple[Array, Array]: ...

@REGISTRY.register("lrp",
    differentiable=False, note="the relevance rules are custom backward passes whose own derivative is not the derivative of the map (differentiating through the parameters is refused too); differentiate gradient_x_input or integrated_gradients instead", family="propagation", returns="input", evaluations=1, backward=True)
def lrp(f, x, target, *, key=None, rules: Any = "epsilon_plus", epsilon: float | None = None,
        return_delta: bool = False):
  """Layer-wise relevance propagation (Bach et al. 2015, "On Pixel-Wise
  Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
  Propagation", PLoS ONE; rules as in Montavon et al. 2019, "Layer-Wise
  Relevance Propagation: An Overview").

  The relevance of the output is the target logit (the one-hot seed times the
  logit); each layer ``z = W a + b`` redistributes it to its inputs by its
  rule, with `a` and `R` per unit:

  * ``zero``: ``R_j = a_j sum_k w_jk R_k / z_k``;
  * ``epsilon``: ``R_j = a_j sum_k w_jk R_k / (z_k + eps sign(z_k))``;
  * ``gamma``: ``w -> w + gamma w^+`` (and ``b -> b + gamma b^+``) in both
    numerator and denominator (meant for non-negative inputs, i.e. after ReLU);
  * ``alpha_beta``: ``alpha`` times the share of the positive contributions
    minus ``beta`` times the share of the negative ones (inputs split by sign),
    ``zplus`` = alpha 1, beta 0;
  * ``zbox`` (z^B, Montavon et al. 2017, for the input layer, bias left out):
    ``R_j = sum_k (a_j w_jk - l_j w^+_jk - h_j w^-_jk) / z^B_k R_k`` with the
    input bounds l, h;
  * ``flat``: equal shares over each unit's receptive field.

  Args:
    rules: a preset name (default ``"epsilon_plus"``: z+ for convolutions,
      epsilon for dense layers, the recommended default of Kohlbrenner et al.
      2020 / Zennit's ``EpsilonPlus``) or a dict ``{"first"|"conv"|"dense":
      Rule or name}``; presets: ``zero``, ``epsilon``, ``epsilon_plus``,
      ``epsilon_plus_flat``, ``epsilon_gamma_box``, ``epsilon_alpha2_beta1``,
      ``epsilon_alpha2_beta1_flat``. ``"first"`` is the first layer met in the
      forward pass.
    epsilon: overrides the epsilon of every epsilon rule in the set (default
      None: the rules' own, 1e-6).
    return_delta: also return, per example ``[B]``, the conservation error
      ``sum(R_input) + absorbed - f(x)[t]``, where ``absorbed`` is the
      relevance taken by biases (batch norm shifts included) and stabilizers,
      summed over every layer: ``sum_k (z_k^stab - c_k) R_k / z_k^stab`` with
      ``c_k`` the inputs' contribution to the rule's denominator (for
      alpha-beta, alpha times the positive part minus beta times the negative
      part). Every rule conserves in this sense (zero, epsilon, gamma,
      alpha-beta, z+, z^B, flat, the residual and pooling splits), so the
      delta is ~0 (float rounding) on networks built from the supported
      pieces; it departs from 0 where relevance is dropped (LRP-0 at a unit
      with z = 0) or an unsupported operation got its ordinary gradient.
      The input relevance alone, ``sum(R_input)``, equals the logit only for
      bias-free networks as epsilon -> 0.

  Returns:
    relevance shaped like x (and the delta).

  See the module docstring for the operations supported (batch norm merged
  into the previous conv / dense layer, residual sums split in proportion,
  both depthwise formulations as one conv); unsupported ones get ordinary
  gradients, and conservation then fails (see the delta). Not
  differentiable: ``jax.grad`` / ``jax.jvp`` through the map, with respect
  to the input or to parameters closed over by `f`, raise a ValueError.
  """
  f, x, target = prepare(f, x, target)
  rule_set = _resolve_rules(rules)
  if epsilon is not None:
    if not epsilon >= 0:
      raise ValueError(f"epsilon: expected a float >= 0, got {epsilon!r}")
    rule_set = tuple((k, dataclasses.replace(r, epsilon=float(epsilon)) if r.name == "epsilon"
                      else r) for k, r in rule_set)
  rel, absorbed, logit = _lrp(f, x, target, rule_set)
  if return_delta:
    return rel, rel.reshape(x.shape[0], -1).sum(1) + absorbed - logit
  return rel
