"""Class activation maps on tapped layers: Grad-CAM, Grad-CAM++, XGrad-CAM,
Layer-CAM, HiRes-CAM, Eigen-CAM, Score-CAM, and NormGrad.

Layer methods take a tapped model ``f`` (`saljax.model.Tapped`, built by
``from_linen`` / ``from_nnx`` / ``from_features_head``) and a ``layer`` option:

* one name -> maps ``[B, h, w]`` at the layer's resolution;
* a sequence of names -> ``dict name -> [B, h, w]``, all from ONE forward and
  ONE backward pass (the gradient with respect to zero taps on every layer);
* ``None`` (default) -> the last layer with a spatial grid.

Activations are NHWC ``[B, h, w, C]``. ViT token activations ``[B, T, D]`` are
read as a patch grid: the class token (first token) is dropped when
``T - 1`` is a square, the tokens are used as they are when ``T`` is a square,
and anything else raises a ValueError (see `token_grid`).

The score differentiated is the target logit (pre-softmax), as in Selvaraju
et al. and pytorch-grad-cam's ``ClassifierOutputTarget``. Every CAM applies a
final ReLU by default (``relu=True``), as the papers and pytorch-grad-cam do.
Maps are returned at layer resolution; `upsample` maps them to input size.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.explainers._registry import REGISTRY

Array = jax.Array

# Guard of pytorch-grad-cam's divisions (XGrad-CAM, Grad-CAM++); here divisions
# by zero are masked instead, so this only keeps tiny denominators finite.
_TINY = 1e-7


def _scorecam_evaluations(o, f, x) -> int:
  """One forward pass for the clean score, then one per channel of the layer."""
  layer = o["layer"] or f.default_layer
  return 1 + int(f.activation_shapes(x)[layer].shape[-1])


# ----------------------------------------------------------------------------
# Layer handling shared by every layer method (attention.py uses these too).


def image_hw(x: Any) -> tuple[int, int] | None:
  """``(H, W)`` of an image batch ``[B, H, W, C]``, else None (tokens, tables)."""
  shape = getattr(x, "shape", ())
  return (int(shape[1]), int(shape[2])) if len(shape) == 4 else None


def token_grid(shape: Sequence[int], name: str, num_prefix_tokens: int | None = None,
               image_hw: Sequence[int] | None = None) -> tuple[int, int, int]:
  """``(h, w, prefix)`` of an activation shape, or a ValueError.

  ``[B, h, w, C]`` -> ``(h, w, 0)``. ViT tokens ``[B, T, D]``: with
  ``num_prefix_tokens=None`` the first token is taken as a class token when
  ``T - 1`` is a square, else no prefix when ``T`` is a square; with an int,
  ``T - num_prefix_tokens`` must be a square. Given the input's ``(H, W)``
  (`image_hw`), a non-square grid of square patches is found too: ``h * w``
  tokens with ``h / w = H / W`` (a 56x28 BlockMNIST image in 7 px patches
  is an 8x4 grid).
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) == 4:
    return shape[1], shape[2], 0
  if len(shape) == 3:
    t = shape[1]
    prefixes = (1, 0) if num_prefix_tokens is None else (int(num_prefix_tokens),)
    for p in prefixes:
      n = t - p
      s = math.isqrt(n) if n > 0 else 0
      if n > 0 and s * s == n:
        return s, s, p
    if image_hw is not None:
      hh, ww = (int(v) for v in image_hw)
      for p in prefixes:
        n = t - p
        if n <= 0 or hh <= 0 or ww <= 0:
          continue
        gw = max(1, round(math.sqrt(n * ww / hh)))
        if n % gw == 0 and (n // gw) * ww == gw * hh:
          return n // gw, gw, p
    want = ("T - 1 (class token first) or T" if num_prefix_tokens is None
            else f"T - {num_prefix_tokens}")
    raise ValueError(
        f"layer {name!r}: ViT tokens [B, T, D] need a square patch grid ({want} = h*w)"
        + (f" or one shaped like the {image_hw[0]}x{image_hw[1]} image" if image_hw is not None
           else "") + ","
        f" got T = {t} (activation shape {shape}); tap a transformer block output")
  raise ValueError(
      f"layer {name!r}: expected a spatial activation [B, h, w, C] (NHWC) or ViT tokens"
      f" [B, 1 + h*w, D], got shape {shape}; pick a convolutional or transformer-block layer")


def to_grid(a: Array, h: int, w: int, prefix: int) -> Array:
  """An activation as ``[B, h, w, C]``: NHWC as is, tokens without the prefix, reshaped."""
  if a.ndim == 4:
    return a
  return a[:, prefix:].reshape(a.shape[0], h, w, a.shape[-1])


def _layer_list(layer) -> tuple[tuple[str, ...], bool]:
  if isinstance(layer, str):
    return (layer,), True
  if isinstance(layer, (list, tuple)) and layer and all(isinstance(k, str) for k in layer):
    return tuple(layer), False
  raise TypeError(f"layer: expected a layer name or a non-empty sequence of names, got {layer!r}")


def layer_shapes(f: M.Tapped, x: Array) -> dict[str, jax.ShapeDtypeStruct]:
  """Activation shapes for batch `x`, in the order the forward produces them.

  Nothing runs; `Tapped.activation_shapes` caches the one abstract trace per
  input shape, so validating a second call traces nothing.
  """
  return f.activation_shapes(x)


def resolve_layers(f: M.Tapped, x: Array, layer, *, num_prefix_tokens: int | None = None):
  """Validates `layer` against `f`; returns ``(names, single, grids)``.

  `grids[name]` is ``(h, w, prefix)``. ``layer=None`` picks the last layer with
  a spatial grid. Raises the model's layer list on an unknown name and a clear
  error on a layer without a grid, before any work.
  """
  if not isinstance(f, M.Tapped):
    M.check_layers(f, ())  # raises the TypeError that explains the tapped contract
  shapes = layer_shapes(f, x)
  if layer is None:
    for name in reversed(list(shapes)):
      try:
        token_grid(shapes[name].shape, name, num_prefix_tokens, image_hw(x))
      except ValueError:
        continue
      layer = name
      break
    else:
      raise ValueError(
          f"layer: the model has no layer with a spatial grid to default to; pass layer="
          f" one of {list(f.layer_names)}")
  names, single = _layer_list(layer)
  M.check_layers(f, names)
  missing = [k for k in names if k not in shapes]
  if missing:
    raise ValueError(f"layer: {missing} produced no activation for this input")
  grids = {k: token_grid(shapes[k].shape, k, num_prefix_tokens, image_hw(x)) for k in names}
  return names, single, grids


def _prepare_layer(f, x, target, layer, num_prefix_tokens=None):
  """Checks for layer methods: tapped model, input, target, layers."""
  if not isinstance(f, M.Tapped):
    raise TypeError(
        "layer methods need a tapped model (saljax.model.Tapped, see saljax.model.from_linen"
        f" / from_nnx / from_features_head), got {V.describe(f)}")
  x = V.check_input(x)
  target = M.resolve_target(f, x, target)
  names, single, grids = resolve_layers(f, x, layer, num_prefix_tokens=num_prefix_tokens)
  return x, target, names, single, tuple(grids[k] for k in names)


def activations_and_gradients(f: M.Tapped, x: Array, target: Array, layers: Sequence[str],
                              extra: Sequence[str] = ()):
  """Activations and gradients of the target logit at `layers`, one pass each way.

  Returns ``(logits, acts, grads)``; `acts` (for `layers` and `extra`) and
  `grads` (for `layers`) map name -> array as the layer produced it.
  """
  shapes = layer_shapes(f, x)  # cached abstract trace (Tapped.zero_taps would re-trace)
  taps = {k: jnp.zeros(shapes[k].shape, shapes[k].dtype) for k in layers}
  keep = tuple(dict.fromkeys(tuple(layers) + tuple(extra)))

  def score(taps):
    logits, acts = f(x, taps)
    s = jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1)[:, 0]
    return s.sum(), (logits, {k: acts[k] for k in keep})

  grads, (logits, acts) = jax.grad(score, has_aux=True)(taps)
  return logits, acts, grads


def _output(maps: dict, names, single):
  return maps[names[0]] if single else maps


# ----------------------------------------------------------------------------
# Resizing and normalization.


def upsample(maps, size, method: str = "bilinear"):
  """Resizes maps ``[B, h, w]`` (or a dict of them) to ``size = (H, W)`` (or an int).

  Uses `jax.image.resize` (half-pixel centres, as OpenCV's ``cv2.resize`` used
  by pytorch-grad-cam and torch's ``align_corners=False``).
  """
  if isinstance(maps, Mapping):
    return {k: upsample(v, size, method) for k, v in maps.items()}
  if isinstance(size, (int, np.integer)):
    size = (int(size), int(size))
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"size: expected (H, W) with positive ints, got {size}")
  if not hasattr(maps, "ndim") or maps.ndim != 3:
    raise ValueError(f"maps: expected [B, h, w], got {V.describe(maps)}")
  return jax.image.resize(maps, (maps.shape[0],) + size, method=method)


def minmax_normalize(maps: Array) -> Array:
  """Per-example min-max scaling of ``[B, ...]`` to [0, 1]; a constant map -> zeros."""
  axes = tuple(range(1, maps.ndim))
  lo = maps.min(axes, keepdims=True)
  span = maps.max(axes, keepdims=True) - lo
  ok = span > 0
  return jnp.where(ok, (maps - lo) / jnp.where(ok, span, 1.0), 0.0)


def combine_maps(maps: Mapping[str, Array], size, *, mode: str = "product",
                 weights: Sequence[float] | None = None) -> Array:
  """Combines per-layer maps into one ``[B, H, W]`` map (Rebuffi et al. 2020).

  Each map is bilinearly upsampled to `size` and min-max normalized per
  example (a constant map becomes zeros instead of NaN). Weights are rescaled
  to sum to 1 (default uniform); ``mode="product"`` is the weighted geometric
  mean ``prod_l n_l ** w_l`` (with uniform weights, a monotone function of the
  plain product used by the authors' ``combi`` grid scripts), ``mode="sum"``
  is ``sum_l w_l n_l`` (TorchRay-normgrad ``weighted_saliency``).
  """
  V.check_choice(mode, "mode", ("product", "sum"))
  names = list(maps)
  if not names:
    raise ValueError("maps: expected at least one layer map")
  w = np.ones(len(names)) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (len(names),) or (w < 0).any() or w.sum() <= 0:
    raise ValueError(
        f"weights: expected {len(names)} non-negative weights with a positive sum, got {weights!r}")
  w = w / w.sum()
  normed = [minmax_normalize(upsample(maps[k], size)) for k in names]
  if mode == "sum":
    return sum(float(wi) * n for wi, n in zip(w, normed))
  out = jnp.ones_like(normed[0])
  for wi, n in zip(w, normed):
    out = out * jnp.where(wi > 0, n ** float(wi), 1.0)
  return out


# ----------------------------------------------------------------------------
# Gradient CAMs: one forward and one backward pass for every layer.


def _gradcam_map(a, g):
  return jnp.einsum("bhwc,bc->bhw", a, g.mean((1, 2)))


def _gradcam_pp_map(a, g):
  # Eq. 19 of Chattopadhyay et al. with Y = exp(S): the exp(S) factors of the
  # 1st/2nd/3rd derivatives cancel in alpha, leaving g^2 / (2 g^2 + sum A g^3).
  g2, g3 = g * g, g * g * g
  denom = 2.0 * g2 + a.sum((1, 2), keepdims=True) * g3
  ok = (g != 0) & (denom != 0)
  alpha = jnp.where(ok, g2 / jnp.where(ok, denom, 1.0), 0.0)
  weights = (alpha * jax.nn.relu(g)).sum((1, 2))
  return jnp.einsum("bhwc,bc->bhw", a, weights)


def _xgradcam_map(a, g):
  total = a.sum((1, 2), keepdims=True)
  ok = jnp.abs(total) > 0
  weights = (a * g / jnp.where(ok, total + _TINY, 1.0) * ok).sum((1, 2))
  return jnp.einsum("bhwc,bc->bhw", a, weights)


def _layercam_map(a, g):
  return (jax.nn.relu(g) * a).sum(-1)


def _hirescam_map(a, g):
  return (g * a).sum(-1)


_GRAD_CAMS = {
    "gradcam": _gradcam_map,
    "gradcam_plus_plus": _gradcam_pp_map,
    "xgradcam": _xgradcam_map,
    "layercam": _layercam_map,
    "hirescam": _hirescam_map,
}


@M.jit(static_argnames=("names", "grids", "method", "relu"))
def _grad_cam(f, x, target, names, grids, method, relu):
  _, acts, grads = activations_and_gradients(f, x, target, names)
  out = {}
  for name, (h, w, p) in zip(names, grids):
    a = to_grid(acts[name], h, w, p)
    g = to_grid(grads[name], h, w, p)
    m = _GRAD_CAMS[method](a, g)
    out[name] = jax.nn.relu(m) if relu else m
  return out


def _run_grad_cam(method, f, x, target, layer, relu, num_prefix_tokens=None):
  x, target, names, single, grids = _prepare_layer(f, x, target, layer, num_prefix_tokens)
  return _output(_grad_cam(f, x, target, names, grids, method, bool(relu)), names, single)


_LAYER_ARGS = """
  Args:
    f: a tapped model (`saljax.model.Tapped`).
    x: input batch ``[B, H, W, C]``.
    target: class indices ``[B]``, an int, or ``"predicted"``.
    key: unused (deterministic).
    layer: a layer name (-> ``[B, h, w]``), a sequence of names (-> dict of
      maps, one forward and one backward pass for all), or None (default: the
      last layer with a spatial grid). ViT tokens are read as a patch grid.
    relu: apply the final ReLU (default True, as the paper and pytorch-grad-cam).
"""


@REGISTRY.register("gradcam", family="cam", returns="layer", needs=("tapped",), evaluations=1,
    backward=True)
def gradcam(f, x, target, *, key=None, layer=None, relu: bool = True):
  return _run_grad_cam("gradcam", f, x, target, layer, relu)


gradcam.__doc__ = """Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from
  Deep Networks via Gradient-based Localization", arXiv:1610.02391).

  ``ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij dS/dA_kij`` (eq. 1-2), S the
  target logit.
""" + _LAYER_ARGS


@REGISTRY.register("gradcam_plus_plus", family="cam", returns="layer", needs=("tapped",),
    evaluations=1, backward=True)
def gradcam_plus_plus(f, x, target, *, key=None, layer=None, relu: bool = True):
  return _run_grad_cam("gradcam_plus_plus", f, x, target, layer, relu)


gradcam_plus_plus.__doc__ = """Grad-CAM++ (Chattopadhyay et al. 2018, "Grad-CAM++: Improved Visual
  Explanations for Deep Convolutional Networks", arXiv:1710.11063).

  The closed form of eq. 19: with the class score passed through an
  exponential, ``Y = exp(S)``, and S piecewise linear in A (ReLU network), the
  higher derivatives are ``exp(S) g^n`` with ``g = dS/dA``, the ``exp(S)``
  factors cancel and ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)``;
  ``w_k = sum_ij alpha_kij ReLU(dY/dA_kij)``. The remaining factor ``exp(S)``
  is one positive constant per example, so it is dropped (it overflows
  float32 for logits above ~88 and does not change the map's shape); this is
  the same form as pytorch-grad-cam's ``GradCAMPlusPlus``. Where ``g = 0`` or
  the denominator vanishes, alpha is 0 (pytorch-grad-cam adds 1e-7 instead).
""" + _LAYER_ARGS


@REGISTRY.register("xgradcam", family="cam", returns="layer", needs=("tapped",), evaluations=1,
    backward=True)
def xgradcam(f, x, target, *, key=None, layer=None, relu: bool = True):
  return _run_grad_cam("xgradcam", f, x, target, layer, relu)


xgradcam.__doc__ = """XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM: Towards Accurate
  Visualization and Explanation of CNNs", arXiv:2008.02312).

  ``w_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij``; a channel whose
  activations sum to 0 gets weight 0.
""" + _LAYER_ARGS


@REGISTRY.register("layercam", family="cam", returns="layer", needs=("tapped",), evaluations=1,
    backward=True)
def layercam(f, x, target, *, key=None, layer=None, relu: bool = True):
  return _run_grad_cam("layercam", f, x, target, layer, relu)


layercam.__doc__ = """Layer-CAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class
  Activation Maps for Localization", IEEE TIP 30).

  ``ReLU(sum_k ReLU(dS/dA_kij) A_kij)``: element-wise positive gradients as
  weights, meaningful at shallow layers too.
""" + _LAYER_ARGS


@REGISTRY.register("hirescam", family="cam", returns="layer", needs=("tapped",), evaluations=1,
    backward=True)
def hirescam(f, x, target, *, key=None, layer=None, relu: bool = True):
  return _run_grad_cam("hirescam", f, x, target, layer, relu)


hirescam.__doc__ = """HiResCAM (Draelos and Carin 2020, "Use HiResCAM instead of Grad-CAM for
  faithful explanations of convolutional neural networks", arXiv:2011.08891).

  ``sum_k dS/dA_kij * A_kij`` (element-wise gradient times activation, no
  spatial averaging), then the final ReLU.
""" + _LAYER_ARGS


# ----------------------------------------------------------------------------
# Eigen-CAM: forward only.


def _eigencam_map(a):
  b, h, w, c = a.shape
  flat = a.reshape(b, h * w, c)
  centred = flat - flat.mean(1, keepdims=True)
  # Projection on the first right singular vector of the centred [hw, C]
  # matrix, as pytorch-grad-cam, from the eigendecomposition of the smaller
  # Gram matrix (an SVD of [49, 1280] is far slower on CPU than eigh of 49x49).
  hp = jax.lax.Precision.HIGHEST
  if h * w <= c:
    gram = jnp.einsum("bnc,bmc->bnm", centred, centred, precision=hp)
    lam, u = jnp.linalg.eigh(gram)
    proj = u[..., -1] * jnp.sqrt(jnp.maximum(lam[:, -1:], 0.0))
  else:
    cov = jnp.einsum("bnc,bnd->bcd", centred, centred, precision=hp)
    _, v = jnp.linalg.eigh(cov)
    proj = jnp.einsum("bnc,bc->bn", centred, v[..., -1], precision=hp)
  # The SVD's sign is arbitrary: orient the map to correlate positively with
  # the channel-summed activation, so the result is deterministic.
  ref = flat.sum(-1)
  ref = ref - ref.mean(1, keepdims=True)
  sign = jnp.where((proj * ref).sum(1) < 0, -1.0, 1.0)
  return (proj * sign[:, None]).reshape(b, h, w)


@M.jit(static_argnames=("names", "grids", "relu"))
def _eigencam(f, x, names, grids, relu):
  _, acts = f(x)
  out = {}
  for name, (h, w, p) in zip(names, grids):
    m = _eigencam_map(to_grid(acts[name], h, w, p).astype(jnp.float32))
    out[name] = jax.nn.relu(m) if relu else m
  return out


@REGISTRY.register("eigencam",
    differentiable=False, note="the principal direction from eigh is not differentiable where eigenvalues are close; use gradcam under jax.grad", family="cam", returns="layer", needs=("tapped",), evaluations=1,
    backward=False)
def eigencam(f, x, target=None, *, key=None, layer=None, relu: bool = True):
  # Class-agnostic, but a given target is checked like every method's (a bad
  # one is a caller's bug, not to be ignored); None and "predicted" are valid
  # and stand in as class 0, so no forward pass is spent on them.
  trivial = target is None or (isinstance(target, str) and target == M.PREDICTED)
  x, _, names, single, grids = _prepare_layer(f, x, 0 if trivial else target, layer)
  return _output(_eigencam(f, x, names, grids, bool(relu)), names, single)


eigencam.__doc__ = """Eigen-CAM (Muhammad and Yeasin 2020, "Eigen-CAM: Class Activation Map
  using Principal Components", arXiv:2008.00299).

  The projection of the activations ``[hw, C]`` on their first principal
  component; class-agnostic (`target` may be None; a given one is validated,
  then ignored) and needs no backward pass.
  As pytorch-grad-cam, the activations are centred over positions first (the
  paper projects uncentred activations); the sign is chosen to correlate
  positively with the channel-summed activation.
""" + _LAYER_ARGS


# ----------------------------------------------------------------------------
# Score-CAM: one forward per chunk of channels.

SCORECAM_SCORES = ("probability", "logit_softmax", "logit")


@M.jit(static_argnames=("layer", "grid", "score", "batch_size", "relu"))
def _scorecam(f, x, target, baseline, layer, grid, score, batch_size, relu):
  h, w, p = grid
  _, acts = f(x)
  a = to_grid(acts[layer], h, w, p)
  big = x.shape[1:3]
  logits_of = M.as_model(f)
  t = target[:, None].astype(jnp.int32)

  def channel_score(a_k):  # a_k: [B, h, w], one channel for every example
    mask = minmax_normalize(upsample(a_k.astype(x.dtype), big))
    out = logits_of(x * mask[..., None])
    if score == "probability":
      out = M.probabilities(out)
    return jnp.take_along_axis(out, t, axis=1)[:, 0]

  scores = parallel.chunked_map(channel_score, jnp.moveaxis(a, -1, 0), batch_size=batch_size)
  if score == "logit_softmax":
    weights = jax.nn.softmax(scores, axis=0)            # [C, B], softmax over channels
  else:
    weights = scores
    if baseline is not None:
      base = logits_of(baseline)
      base = M.probabilities(base) if score == "probability" else base
      weights = weights - jnp.take_along_axis(base, t, axis=1)[:, 0][None]
  m = jnp.einsum("bhwc,cb->bhw", a, weights.astype(a.dtype))
  return jax.nn.relu(m) if relu else m


@REGISTRY.register("scorecam", family="cam", returns="layer", needs=("tapped",),
    evaluations=_scorecam_evaluations, backward=False, smoke={"batch_size": 3})
def scorecam(f, x, target, *, key=None, layer=None, score: str = "probability",
             baseline: Any = None, batch_size: int | None = 32, relu: bool = True):
  """Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations
  for Convolutional Neural Networks", arXiv:1910.01279).

  Each channel's activation map is bilinearly upsampled to the input size and
  min-max normalized per example (a constant map becomes an all-zero mask,
  never NaN); the model scores the masked input ``x * M_k``; the map is
  ``ReLU(sum_k s_k A_k)``.

  Args:
    layer: one layer name, or None for the last layer with a spatial grid.
    score: ``"probability"`` (default, the paper and the authors' code): s_k is
      the softmax probability of the target for ``x * M_k``; ``"logit_softmax"``
      (pytorch-grad-cam): s_k is the masked target logit, softmax-normalized
      over channels; ``"logit"``: s_k is the masked target's score as it is
      (for a callable target, `saljax.targets`, whose one score has no
      softmax: ``target=class_probability(c), score="logit"`` is the default).
    baseline: with ``score="probability"`` or ``"logit"``: an input ``x_b`` (shaped like
      x or x[0], model input space) whose target probability is subtracted,
      ``s_k = p(x * M_k) - p(x_b)``, the "increase of confidence" of eq. 2 of
      the paper. Default None: no subtraction, as the authors' code.
    batch_size: channels scored together per example (default 32; None: all).
      Cost: ``ceil(C / batch_size)`` forward passes of ``B * batch_size`` inputs.
    relu: final ReLU (default True).
  """
  x, target, names, single, grids = _prepare_layer(f, x, target, layer)
  if not single:
    raise ValueError(f"layer: Score-CAM takes one layer name, got {list(names)}")
  V.check_choice(score, "score", SCORECAM_SCORES)
  if baseline is not None:
    if score == "logit_softmax":
      raise ValueError("baseline: only used with score='probability' or 'logit'")
    baseline = V.check_same_shape(baseline, x, name="baseline")
  if x.ndim != 4:
    raise ValueError(f"x: Score-CAM masks NHWC images [B, H, W, C], got shape {tuple(x.shape)}")
  batch_size = V.check_batch_size(batch_size)
  return _scorecam(f, x, target, baseline, names[0], grids[0], score, batch_size, bool(relu))


# ----------------------------------------------------------------------------
# NormGrad (Rebuffi, Fong, Ji, Vedaldi 2020).

NORMGRAD_VARIANTS = ("identity", "identity3x3", "selective", "conv")


def _patch_norm(a: Array, kernel_size, strides, padding, dilation) -> Array:
  """``||im2col(a)_u||_2`` per output position ``u``: ``[B, h', w']``.

  The squared norm of a k x k patch is a k x k box sum of the channel-summed
  squares, so nothing of size ``k*k*C`` per position is built; zero padding
  as the convolution's.
  """
  sq = (a.astype(jnp.float32) ** 2).sum(-1, keepdims=True)
  ones = jnp.ones(tuple(kernel_size) + (1, 1), jnp.float32)
  s = jax.lax.conv_general_dilated(
      sq, ones, window_strides=tuple(strides), padding=padding, rhs_dilation=tuple(dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  return jnp.sqrt(jnp.maximum(s[..., 0], 0.0))


def _normgrad_map(a, g, variant, conv_input, conv):
  gnorm = jnp.sqrt((g.astype(jnp.float32) ** 2).sum(-1))
  if variant == "identity":
    return jnp.sqrt((a.astype(jnp.float32) ** 2).sum(-1)) * gnorm
  if variant == "identity3x3":
    return _patch_norm(a, (3, 3), (1, 1), "SAME", (1, 1)) * gnorm
  if variant == "selective":
    pos = jax.nn.relu((a * g).astype(jnp.float32))
    return jnp.sqrt((pos ** 2).sum(-1))
  kernel_size, strides, padding, dilation = conv
  return _patch_norm(conv_input, kernel_size, strides, padding, dilation) * gnorm


def _pair(v, name):
  if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
    return (int(v), int(v))
  if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, (int, np.integer)) for i in v):
    return tuple(int(i) for i in v)
  raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")


@M.jit(static_argnames=("names", "grids", "variant", "inputs", "conv"))
def _normgrad(f, x, target, names, grids, variant, inputs, conv):
  _, acts, grads = activations_and_gradients(
      f, x, target, names, extra=tuple(k for k in inputs if k is not None))
  out = {}
  for i, (name, (h, w, p)) in enumerate(zip(names, grids)):
    a = to_grid(acts[name], h, w, p)
    g = to_grid(grads[name], h, w, p)
    conv_input = None
    if variant == "conv":
      k = inputs[i]
      conv_input = x if k is None else acts[k]
    out[name] = _normgrad_map(a, g, variant, conv_input, conv)
  return out


def _check_conv_inputs(f, x, names, grids, input_layer, conv):
  """Layer names feeding each conv layer (None: the model input), shape-checked."""
  if isinstance(input_layer, Mapping):
    inputs = tuple(input_layer.get(k, None) for k in names)
  elif input_layer is None or isinstance(input_layer, str):
    if len(names) > 1 and input_layer is not None:
      raise ValueError("input_layer: with several layers pass a dict layer -> input layer")
    inputs = (input_layer,) * len(names)
  else:
    raise TypeError(f"input_layer: expected None, a layer name or a dict, got {input_layer!r}")
  M.check_layers(f, [k for k in inputs if k is not None])
  shapes = layer_shapes(f, x)
  for name, (h, w, _), src in zip(names, grids, inputs):
    src_shape = x.shape if src is None else shapes[src].shape
    if len(src_shape) != 4:
      raise ValueError(
          f"input_layer: the conv input {src or 'x'!r} must be NHWC [B, H, W, C], got {src_shape}")
    out = jax.eval_shape(lambda a: _patch_norm(a, *conv),
                         jax.ShapeDtypeStruct(tuple(src_shape), jnp.float32)).shape
    if tuple(out[1:]) != (h, w):
      raise ValueError(
          f"layer {name!r}: a {conv[0]} conv with strides {conv[1]}, padding {conv[2]!r} and"
          f" dilation {conv[3]} on {src or 'x'!r} {tuple(src_shape)} gives a {out[1:]} grid,"
          f" but the layer is {(h, w)}; check kernel_size/strides/padding/input_layer")
  return inputs


@REGISTRY.register("normgrad",
    differentiable=False, note="its derivative disagrees with finite differences; use gradcam under jax.grad", family="cam", returns="layer", needs=("tapped",), evaluations=1,
    backward=True)
def normgrad(f, x, target, *, key=None, layer=None, variant: str = "identity",
             input_layer: Any = None, kernel_size: Any = 3, strides: Any = 1,
             padding: Any = "SAME", dilation: Any = 1):
  """NormGrad (Rebuffi, Fong, Ji, Vedaldi 2020, "There and Back Again:
  Revisiting Backpropagation Saliency Methods", CVPR, arXiv:2004.02866).

  The saliency at a position ``u`` is the norm of the per-position
  contribution to the weight gradient of a layer (formulas from the authors'
  code, TorchRay branch ``normgrad``; `a` the layer's activation, `g` the
  gradient of the target logit with respect to it):

  * ``"identity"`` (default): a virtual 1x1 identity conv inserted at the
    layer; its weight-gradient term is ``a_u g_u^T``, whose Frobenius norm is
    ``||a_u|| * ||g_u||`` (computed in that factorized form).
  * ``"identity3x3"``: a virtual 3x3 identity conv (zero padding 1):
    ``||im2col_3x3(a)_u|| * ||g_u||``.
  * ``"selective"``: ``||max(a_u * g_u, 0)||`` (positive part of the
    per-channel products, then the channel L2 norm).
  * ``"conv"``: the real conv layer ``layer`` (its output), whose input is
    the activation ``input_layer`` (None: the model input x), with the given
    ``kernel_size``, ``strides``, ``padding`` and ``dilation``:
    ``||im2col(input)_u|| * ||g_u||`` at the conv's output resolution.

  Maps are non-negative, at the layer's resolution, not normalized; combine
  several layers with `normgrad_combined`.

  Args:
    layer: a name, a sequence of names (dict result, one forward and one
      backward pass) or None (last layer with a spatial grid).
    variant: one of ``"identity"``, ``"identity3x3"``, ``"selective"``, ``"conv"``.
    input_layer: for ``variant="conv"``: the name of the layer feeding the conv,
      None for the input x, or a dict layer -> name with several layers.
    kernel_size, strides, padding, dilation: the conv's geometry
      (``variant="conv"`` only); padding "SAME", "VALID" or explicit pairs.
  """
  x, target, names, single, grids = _prepare_layer(f, x, target, layer)
  V.check_choice(variant, "variant", NORMGRAD_VARIANTS)
  inputs = (None,) * len(names)
  conv = None
  if variant == "conv":
    if isinstance(padding, str):
      padding = padding.upper()
      V.check_choice(padding, "padding", ("SAME", "VALID"))
    else:
      padding = tuple(_pair(p, "padding") for p in padding)
    conv = (_pair(kernel_size, "kernel_size"), _pair(strides, "strides"), padding,
            _pair(dilation, "dilation"))
    inputs = _check_conv_inputs(f, x, names, grids, input_layer, conv)
  return _output(_normgrad(f, x, target, names, grids, variant, inputs, conv), names, single)


@REGISTRY.register("normgrad_combined",
    differentiable=False, note="its derivative disagrees with finite differences; use gradcam under jax.grad", family="cam", returns="image", needs=("tapped", "layers"),
    evaluations=1, backward=True)
def normgrad_combined(f, x, target, *, key=None, layer=None, variant: str = "identity",
                      mode: str = "product", weights: Sequence[float] | None = None):
  """NormGrad maps of several layers combined into one ``[B, H, W]`` map at the
  input size (Rebuffi et al. 2020, arXiv:2004.02866, Sec. on combining layers).

  The per-layer maps come from one forward and one backward pass; each is
  upsampled, min-max normalized and combined by `combine_maps`: default
  ``mode="product"`` with uniform weights (the authors' ``combi``: a product
  of normalized maps, here as the weighted geometric mean), or ``"sum"``.

  Args:
    layer: a sequence of layer names (default None: every layer with a
      spatial grid would be too many, so None means the last one only).
    variant: a `normgrad` variant other than ``"conv"``.
    mode, weights: see `combine_maps`.
  """
  if variant == "conv":
    raise ValueError("variant: normgrad_combined takes 'identity', 'identity3x3' or 'selective'")
  V.check_choice(mode, "mode", ("product", "sum"))
  maps = normgrad(f, x, target, layer=layer if layer is None or not isinstance(layer, str)
                  else [layer], variant=variant)
  if not isinstance(maps, Mapping):
    maps = {"_": maps}
  return combine_maps(maps, x.shape[1:3], mode=mode, weights=weights)
