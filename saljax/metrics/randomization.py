"""Randomization sanity checks: does the map depend on the model and the class?

- `model_parameter_randomization` (Adebayo, Gilmer, Muelly, Goodfellow, Hardt,
  Kim 2018, "Sanity Checks for Saliency Maps", NeurIPS, arXiv:1810.03292):
  re-initialize the model's layers (cascading from the output, or one at a
  time) and compare the new maps with the original one.
- `data_randomization` (the same paper, Sec. 4): the map of the model
  against the map of the same architecture trained on permuted labels.
- `random_logit` (Sixt, Granz, Landgraf 2020, "When Explanations Lie: Why Many
  Modified BP Attributions Fail", ICML, arXiv:1912.09818): the map of the
  target against the map of a random other class.
- `class_sensitivity` (Rebuffi, Fong, Ji, Vedaldi 2020, "There and Back Again:
  Revisiting Backpropagation Saliency Methods", CVPR, arXiv:2004.02866): the
  map of the most likely class against that of the least likely class.

For all four, LOWER similarity means the map is more sensitive to the model
or the class (what a faithful method should be). Explainers are passed in (see
`saljax.metrics.robustness` for the `explainer` / `explainer_options`
convention). Similarities (`saljax.metrics._similarity`): ``"spearman"``
(default), ``"pearson"``, ``"ssim"`` and ``"hog"``, on 2-D maps (NHWC
explanations summed over channels, of ``|e|`` when ``absolute=True``).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.metrics import _common as C
from saljax.metrics import _similarity as S
from saljax.metrics._registry import REGISTRY
from saljax.metrics.robustness import check_explainer, explain

Array = jax.Array

MODES = ("cascading", "independent")


def _explainer_cost(o, f, x) -> int:
  from saljax.explainers._registry import cost_of
  return cost_of(o["explainer"], o["explainer_options"], f, x)


# Metric costs count what the metric adds to a given attribution (passing
# attribution=None adds the explainer's cost once).


def _random_logit_evaluations(o, f, x) -> int:
  """The map of a random class."""
  return _explainer_cost(o, f, x)


def _class_sensitivity_evaluations(o, f, x) -> int:
  """A forward pass for the least likely class and its map."""
  return 1 + _explainer_cost(o, f, x)


def _data_randomization_evaluations(o, f, x) -> int:
  """The random model's map, and its prediction when its target is its own."""
  return _explainer_cost(o, f, x) + (isinstance(o["random_target"], str)
                                     and o["random_target"] == "predicted")


def _parameter_randomization_evaluations(o, f, x) -> int:
  """One map per randomized layer (`f` is the model function, `o["params"]` its parameters)."""
  layers = o["layer"]
  if layers is None:
    layers = layer_names(o["params"])
  n = 1 if isinstance(layers, str) else len(layers)
  return n * _explainer_cost(o, f, x)


def truncated_normal_init(key, leaf: Array, std: float = 0.01) -> Array:
  """Adebayo et al.'s re-initialization (App. B, MNIST CNN): truncated normal
  (at 2 std), mean 0, std 0.01, for every parameter of the layer."""
  return std * jax.random.truncated_normal(key, -2.0, 2.0, leaf.shape, jnp.float32).astype(leaf.dtype)


def _path_name(path) -> str:
  parts = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        parts.append(str(getattr(p, attr)))
        break
    else:
      parts.append(str(p))
  return "/".join(parts)


def layer_names(params) -> tuple[str, ...]:
  """Top-level layer names of a params pytree, input to output as stored
  (Flax keeps definition order). In Flax variables ``{"params": ...,
  "batch_stats": ...}`` only the layers under ``"params"`` are listed, so
  batch-norm running statistics are never re-initialized (as the reference
  code, which leaves moving means and variances alone)."""
  if isinstance(params, dict) and isinstance(params.get("params"), dict):
    return tuple("params/" + str(k) for k in params["params"])
  if isinstance(params, dict):
    return tuple(str(k) for k in params)
  raise TypeError("params: expected a dict pytree of layers (e.g. {'conv1': {...}, ...}); pass"
                  " `layer` explicitly for other pytrees")


def _leaf_layers(params, layers: Sequence[str]) -> tuple[int, ...]:
  """For each leaf, the index in `layers` of the layer it belongs to (-1: none)."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  out = []
  for path, _ in leaves:
    name = _path_name(path)
    idx = [i for i, l in enumerate(layers) if name == l or name.startswith(l + "/")]
    out.append(idx[0] if idx else -1)
  return tuple(out)


def _random_leaves(params, key, init):
  """The re-initialized value of every leaf of `params`, as the randomization
  metrics draw them from their `key` (one draw per leaf, reused by every stage)."""
  leaves = jax.tree_util.tree_leaves(params)
  k_init, _ = jax.random.split(key)
  return [init(k, l) for k, l in zip(jax.random.split(k_init, len(leaves)), leaves)]


def random_parameters(params, key, init: Callable | None = None):
  """The random parameters the randomization metrics (`model_parameter_randomization`,
  `smooth_mprt`, `efficient_mprt`) put in place of `params` for `key`: a
  pytree like `params` (the metric uses, at each stage, the leaves of the
  layers it randomizes). Used to hand the same draws to another library."""
  key = C.check_key(key, "random_parameters")
  init = truncated_normal_init if init is None else init
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                      _random_leaves(params, key, init))


def _noise_key(key):
  # Separate from the re-initialization and explainer keys (split(key) above).
  return jax.random.fold_in(key, 1)


def _smoothed(explainer, model, x, target, key, options, z, noise_magnitude):
  """The explanation averaged over ``len(z) + 1`` inputs: ``x + std * z_n`` and
  `x` itself (Quantus' SmoothMPRT keeps its last sample noise-free), with
  ``std = noise_magnitude * (max x - min x)`` per example. One explainer call
  on all samples stacked along the batch."""
  if z is None:
    return explain(explainer, model, x, target, key, options)
  axes = tuple(range(1, x.ndim))
  std = noise_magnitude * (x.max(axes, keepdims=True) - x.min(axes, keepdims=True))
  xs = jnp.concatenate([x[None] + std[None] * z, x[None]], 0)
  s = xs.shape[0]
  t = jnp.broadcast_to(target, (s,) + target.shape).reshape(-1)
  e = explain(explainer, model, xs.reshape((-1,) + x.shape[1:]), t, key, options)
  return e.reshape((s, -1) + e.shape[1:]).mean(0)


@M.jit(static_argnames=(
    "explainer", "leaf_layers", "n_layers", "mode", "similarity",
    "absolute", "init", "batch_size", "image_rank", "samples"))
def _randomization(model_fn, params, x, target, e0, key, noise_magnitude=0.0, *, explainer,
                   options, leaf_layers, n_layers, mode, similarity, absolute, init, batch_size,
                   image_rank, samples=0):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  _, k_expl = jax.random.split(key)
  random = _random_leaves(params, key, init)
  # smooth_mprt: the same noise for the trained model and every stage, so
  # stages differ by their parameters only.
  z = (jax.random.normal(_noise_key(key), (samples - 1,) + x.shape, x.dtype)
       if samples > 1 else None)
  if e0 is None:
    e0 = _smoothed(explainer, M.bind(model_fn, params), x, target, k_expl, options, z,
                   noise_magnitude)
  m0 = S.to_map(e0, image_rank, absolute=absolute)

  def one(args):
    stage, k = args
    new = []
    for leaf, r, li in zip(leaves, random, leaf_layers):
      if li < 0:
        new.append(leaf)
        continue
      hit = (li <= stage) if mode == "cascading" else (li == stage)
      new.append(jnp.where(hit, r, leaf))
    p = jax.tree_util.tree_unflatten(treedef, new)
    e = _smoothed(explainer, M.bind(model_fn, p), x, target, k, options, z, noise_magnitude)
    if e.shape != e0.shape:  # raised while tracing, before any work
      raise ValueError(f"attribution: expected the explainer's output shape {e.shape}, got"
                       f" {e0.shape}")
    return S.similarity(similarity, m0, S.to_map(e, image_rank, absolute=absolute))

  stages = jnp.arange(n_layers)
  curve = parallel.chunked_map(one, (stages, jax.random.split(k_expl, n_layers)),
                               batch_size=batch_size).T
  return {"score": curve.mean(1), "curve": curve}


def _prepare_randomization(name, model_fn, x, attribution, target, params, key, explainer,
                           explainer_options, layer, init, *, top_down):
  """The checks the parameter randomization tests make before any work.
  Returns ``(x, target, key, explainer, options, layers, leaf_layers, init,
  e0)`` with `layers` defaulting to the top-level layers of `params`, output
  first when `top_down` (else input first), and `e0` the checked
  attribution (None when not given)."""
  if not callable(model_fn):
    raise TypeError(f"model_fn: expected model_fn(params, x) -> logits, got {V.describe(model_fn)}")
  if params is None:
    raise ValueError("params: expected the trained parameters pytree, got None")
  x = V.check_input(x)
  _, x, target = C.prepare_model(M.bind(model_fn, params), x, target)
  key = C.check_key(key, name)
  explainer, options = check_explainer(explainer, explainer_options)
  layers = layer
  if layers is None:
    layers = layer_names(params)
    layers = tuple(reversed(layers)) if top_down else tuple(layers)
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  if not layers:
    raise ValueError("layer: expected at least one layer name, got none")
  leaf_layers = _leaf_layers(params, layers)
  missing = [l for i, l in enumerate(layers) if i not in leaf_layers]
  if missing:
    raise ValueError(f"layer: {missing} match no parameter; the params have layers"
                     f" {list(layer_names(params)) if isinstance(params, dict) else '?'}")
  init = truncated_normal_init if init is None else init
  if not callable(init):
    raise TypeError(f"init: expected init(key, leaf) -> leaf, got {V.describe(init)}")
  e0 = None
  if attribution is not None:
    # Shape (the explainer's, traced abstractly), dtype and finiteness, as
    # every metric that takes an explainer checks them.
    e0 = _checked_attribution(attribution, explainer, M.bind(model_fn, params), x, target, key,
                              options)
  return x, target, key, explainer, options, layers, leaf_layers, init, e0


@REGISTRY.register("model_parameter_randomization",
    jittable=False, vmappable=False, note="its result names the randomized layers (strings, which jit and vmap cannot return); call it outside jit and loop over checkpoints in Python (its work is compiled inside)", family="randomization", returns="curve",
    needs=("key", "explainer", "params"), evaluations=_parameter_randomization_evaluations,
    backward=True, direction="lower")
def model_parameter_randomization(model_fn, x, attribution, target, *, params=None, key=None,
                                  explainer=None, explainer_options=None, mode: str = "cascading",
                                  layer: str | Sequence[str] | None = None,
                                  similarity: str = "spearman", absolute: bool = True,
                                  init: Callable | None = None, batch_size: int | None = None):
  """Model parameter randomization test (Adebayo et al. 2018, arXiv:1810.03292).

  Stage ``s`` re-initializes, in ``mode="cascading"``, layers ``0..s`` of
  `layer` (listed from the OUTPUT down, so the top layer goes first and each
  stage adds the next deeper one; Sec. 3.1), or, in ``"independent"``, only
  layer ``s`` with every other layer trained (Sec. 3.2). At every stage the
  explainer is rerun for the same `target` (the reference code re-takes the
  argmax of the randomized model; here the class stays fixed) and its map is
  compared with the trained model's map. Stages run through
  `saljax.parallel.chunked_map` (``batch_size`` stages at a time), with the
  layer choice as traced selections, so the whole test compiles once.

  Args:
    model_fn: ``model_fn(params, x) -> logits``, the model as a function of
      its parameters (first argument in place of the contract's `f`).
    x: inputs.
    attribution: the trained model's map, or None to compute it.
    target: class indices ``[B]``, an int, or ``"predicted"``.
    params: the trained parameters, a dict pytree of layers.
    key: required (re-initialization and stochastic explainers).
    explainer, explainer_options: the method under test.
    mode: ``"cascading"`` (default) or ``"independent"``.
    layer: a layer name or a sequence of them (top-level keys of `params`, or
      ``"a/b"`` paths) in randomization order; default: the top-level keys of `params` reversed (output first).
    similarity: ``"spearman"`` (default; Adebayo et al.'s rank correlation),
      ``"pearson"``, ``"ssim"`` or ``"hog"``.
    absolute: compare ``sum_c |e|`` maps (default, the paper's absolute
      Spearman) or signed channel sums. PAIR's 99th-percentile clipping used
      for the paper's figures is not applied (it only adds ties at the top).
    init: ``init(key, leaf) -> leaf``; default `truncated_normal_init`
      (truncated normal, std 0.01, the paper's MNIST setting).
    batch_size: stages evaluated together.

  Returns:
    ``{"score": mean over stages [B], "curve": [B, len(layers)],
    "layers": layers}`` with stage ``s`` in column ``s``.
  """
  V.check_choice(mode, "mode", MODES)
  V.check_choice(similarity, "similarity", S.SIMILARITIES)
  batch_size = V.check_batch_size(batch_size)
  x, target, key, explainer, options, layers, leaf_layers, init, e0 = _prepare_randomization(
      "model_parameter_randomization", model_fn, x, attribution, target, params, key, explainer,
      explainer_options, layer, init, top_down=True)
  out = _randomization(model_fn, params, x, target, e0, key, explainer=explainer, options=options,
                       leaf_layers=leaf_layers, n_layers=len(layers), mode=mode,
                       similarity=similarity, absolute=bool(absolute), init=init,
                       batch_size=batch_size, image_rank=x.ndim)
  return dict(out, layers=layers)


def _smooth_evaluations(o, f, x) -> int:
  """`samples` maps per randomized layer."""
  return o["samples"] * _parameter_randomization_evaluations(o, f, x)


@REGISTRY.register("smooth_mprt",
    jittable=False, vmappable=False, note="its result names the randomized layers (strings, which jit and vmap cannot return); call it outside jit (its work is compiled inside)",
    family="randomization", returns="curve", needs=("key", "explainer", "params"),
    evaluations=_smooth_evaluations, backward=True, direction="lower", smoke={"samples": 3})
def smooth_mprt(model_fn, x, attribution, target, *, params=None, key=None, explainer=None,
                explainer_options=None, layer: str | Sequence[str] | None = None,
                samples: int = 50, noise_magnitude: float = 0.1, similarity: str = "spearman",
                absolute: bool = True, init: Callable | None = None,
                batch_size: int | None = None):
  """Smooth model parameter randomization test, sMPRT (Hedstrom, Weber,
  Krakowczyk, Bareeva, Motzkus, Samek, Lapuschkin, Hoehne 2024, "Sanity Checks
  Revisited: An Exploration to Repair the Model Parameter Randomisation
  Test", TMLR, arXiv:2401.06465; Quantus `SmoothMPRT`).

  The MPRT (`model_parameter_randomization`, cascading) with every
  explanation denoised by averaging it over `samples` noisy copies of the
  input, so that shattered-gradient noise does not pass for sensitivity to
  the parameters. Noise is Gaussian with ``std = noise_magnitude * (max x -
  min x)`` per example; as Quantus 0.6 (smooth_mprt.py, `explain_smooth_batch_numpy`),
  the last of the `samples` copies is the clean input. The same noise draws
  serve the trained model and every stage (Quantus redraws per model; the
  parity test feeds it these draws).

  Defaults follow Quantus 0.6 and the paper: bottom-up order (input layer
  randomized first, the paper's recommendation; Quantus ``layer_order=
  "bottom_up"``), 50 samples, noise magnitude 0.1, Spearman rank correlation
  of absolute maps (``abs=True``; its ``normalise=True`` rescales each map
  by a positive number, which a rank correlation ignores). Re-initialization
  as `model_parameter_randomization` (`init`, default truncated normal std
  0.01; Quantus calls torch's ``reset_parameters``).

  Args:
    model_fn: ``model_fn(params, x) -> logits``.
    attribution: the trained model's SMOOTHED map, or None to compute it
      (recommended: a plain map compared with smoothed ones measures the
      smoothing too).
    params, key, explainer, explainer_options, layer, similarity, absolute,
      init, batch_size: as `model_parameter_randomization`; `layer` defaults
      to the top-level layers of `params` in definition order (input first).
    samples: explanations averaged per map (>= 1; 1 means no smoothing).
    noise_magnitude: noise std as a fraction of each input's value range.

  Returns:
    ``{"score": mean over stages [B], "curve": [B, len(layers)], "layers":
    layers}``; ``curve[:, -1]`` is the fully randomized model. Lower is
    better.
  """
  samples = parallel.check_count(samples, "samples")
  if (isinstance(noise_magnitude, bool) or not isinstance(noise_magnitude, (int, float))
      or noise_magnitude < 0):
    raise ValueError(f"noise_magnitude: expected a float >= 0, got {noise_magnitude!r}")
  V.check_choice(similarity, "similarity", S.SIMILARITIES)
  batch_size = V.check_batch_size(batch_size)
  x, target, key, explainer, options, layers, leaf_layers, init, e0 = _prepare_randomization(
      "smooth_mprt", model_fn, x, attribution, target, params, key, explainer, explainer_options,
      layer, init, top_down=False)
  out = _randomization(model_fn, params, x, target, e0, key, jnp.float32(noise_magnitude),
                       explainer=explainer, options=options, leaf_layers=leaf_layers,
                       n_layers=len(layers), mode="cascading", similarity=similarity,
                       absolute=bool(absolute), init=init, batch_size=batch_size,
                       image_rank=x.ndim, samples=samples)
  return dict(out, layers=layers)


def discrete_entropy(m: Array, bins: int) -> Array:
  """Entropy (nats) of the histogram of each map `m[B, ...]` in `bins`
  equal-width bins spanning its own min..max (``scipy.stats.entropy(
  np.histogram(m, bins)[0])``, Quantus' `discrete_entropy`). A constant map
  has entropy 0."""
  b = m.shape[0]
  v = m.reshape(b, -1)
  lo = v.min(1, keepdims=True)
  span = v.max(1, keepdims=True) - lo
  idx = jnp.floor((v - lo) / jnp.where(span > 0, span, 1.0) * bins).astype(jnp.int32)
  idx = jnp.clip(idx, 0, bins - 1)  # the max falls in the last (closed) bin, as numpy
  counts = jax.vmap(lambda i: jnp.zeros((bins,), jnp.float32).at[i].add(1.0))(idx)
  p = counts / v.shape[1]
  return -(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)).sum(1)


@M.jit(static_argnames=("explainer", "leaf_layers", "bins", "absolute", "init", "image_rank"))
def _efficient(model_fn, params, x, target, e0, key, *, explainer, options, leaf_layers, bins,
               absolute, init, image_rank):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  _, k_expl = jax.random.split(key)
  k0, k1 = jax.random.split(k_expl)
  random = _random_leaves(params, key, init)
  if e0 is None:
    e0 = explain(explainer, M.bind(model_fn, params), x, target, k0, options)
  new = [r if li >= 0 else l for l, r, li in zip(leaves, random, leaf_layers)]
  e = explain(explainer, M.bind(model_fn, jax.tree_util.tree_unflatten(treedef, new)), x, target,
              k1, options)
  h0 = discrete_entropy(S.to_map(e0, image_rank, absolute=absolute), bins)
  h1 = discrete_entropy(S.to_map(e, image_rank, absolute=absolute), bins)
  return (h1 - h0) / jnp.where(h0 > 0, h0, 1.0), h0


def _efficient_evaluations(o, f, x) -> int:
  """The fully randomized model's map."""
  return _explainer_cost(o, f, x)


@REGISTRY.register("efficient_mprt", family="randomization", returns="scores",
    needs=("key", "explainer", "params"), evaluations=_efficient_evaluations, backward=True,
    direction="higher")
def efficient_mprt(model_fn, x, attribution, target, *, params=None, key=None, explainer=None,
                   explainer_options=None, layer: str | Sequence[str] | None = None,
                   bins: int = 100, absolute: bool = False, init: Callable | None = None):
  """Efficient model parameter randomization test, eMPRT (Hedstrom et al. 2024,
  "Sanity Checks Revisited: An Exploration to Repair the Model Parameter
  Randomisation Test", TMLR, arXiv:2401.06465; Quantus `EfficientMPRT`).

  The relative rise in explanation complexity once the model is fully
  randomized, ``(H(e_random) - H(e)) / H(e)``, with ``H`` the discrete
  entropy of the map's histogram (`discrete_entropy`, `bins` equal-width bins
  over each map's range). A map that depends on the parameters turns to
  noise (higher entropy) on a random model: higher is better. Only the
  fully randomized model is explained (Quantus ``skip_layers=True``): every
  layer of `layer` (default: all top-level layers) re-initialized at once,
  which is what cascading randomization ends with.

  Quantus 0.6 defaults kept: 100 bins (no bin rule), signed maps
  (``abs=False``, ``normalise=False``; NHWC maps summed over channels here).
  A constant original map has entropy 0: a ValueError (the rise is undefined).

  Args:
    model_fn: ``model_fn(params, x) -> logits``.
    attribution: the trained model's map, or None to compute it.
    params, key, explainer, explainer_options, layer, init: as
      `model_parameter_randomization`.
    bins: histogram bins.
    absolute: histogram of ``sum_c |e|`` instead of signed channel sums.

  Returns:
    ``[B]``.
  """
  bins = V.check_positive_int(bins, "bins", minimum=2)
  x, target, key, explainer, options, layers, leaf_layers, init, e0 = _prepare_randomization(
      "efficient_mprt", model_fn, x, attribution, target, params, key, explainer,
      explainer_options, layer, init, top_down=False)
  score, h0 = _efficient(model_fn, params, x, target, e0, key, explainer=explainer,
                         options=options, leaf_layers=leaf_layers, bins=bins,
                         absolute=bool(absolute), init=init, image_rank=x.ndim)
  if V.is_concrete(h0) and not np.asarray(h0 > 0).all():
    rows = np.flatnonzero(~np.asarray(h0 > 0)).tolist()
    raise ValueError(f"efficient_mprt: the original map is constant for rows {rows[:10]}: its"
                     " entropy is 0, so the relative rise is undefined (Quantus divides by"
                     " zero); explain with a method whose map varies")
  return score


@M.jit(static_argnames=("explainer", "similarity",
                                             "absolute", "image_rank"))
def _compare_classes(model, x, e_a, other, key, *, explainer, options, similarity, absolute,
                     image_rank):
  e_b = explain(explainer, model, x, other, key, options)
  return S.similarity(similarity, S.to_map(e_a, image_rank, absolute=absolute),
                      S.to_map(e_b, image_rank, absolute=absolute))


def _checked_attribution(attribution, explainer, model, x, target, key, options):
  from saljax.metrics.robustness import check_explanation
  return check_explanation(attribution, explainer, model, x, target, key, options)


def _prepare_comparison(name, f, x, target, key, explainer, explainer_options, similarity, *,
                        key_required):
  """The checks every map-against-map test makes before any work: model,
  inputs and target; the key (a fixed one when optional and absent); the
  explainer; the similarity. Returns ``(model as given, plain forward, x,
  target, key, explainer, options)``."""
  model = f
  f, x, target = C.prepare_model(f, x, target)
  key = C.check_key(key, name, required=key_required)
  key = jax.random.key(0) if key is None else key
  explainer, options = check_explainer(explainer, explainer_options)
  V.check_choice(similarity, "similarity", S.SIMILARITIES)
  return model, f, x, target, key, explainer, options


def random_other_class(key, target: Array, n: int) -> Array:
  """The class `random_logit` compares with for `key`: per example, uniform
  over the ``n - 1`` classes other than `target` (int32 ``[B]``)."""
  _, k1, _ = jax.random.split(key, 3)
  shift = jax.random.randint(k1, jnp.shape(target), 1, n)
  return ((jnp.asarray(target) + shift) % n).astype(jnp.int32)


@REGISTRY.register("random_logit", family="randomization", returns="scores",
    needs=("key", "explainer"), evaluations=_random_logit_evaluations, backward=True,
    direction="lower")
def random_logit(f, x, attribution, target, *, key=None, explainer=None, explainer_options=None,
                 similarity: str = "ssim", absolute: bool = False):
  """Random logit test (Sixt, Granz, Landgraf 2020, arXiv:1912.09818; Quantus
  `RandomLogit`): similarity between the map of `target` and the map of a
  class drawn uniformly from the other classes. Default similarity SSIM
  (Quantus), on signed channel sums min-max scaled to [0, 1]. Lower is better.

  Args:
    attribution: the map of `target`, or None to compute it.
    key: required (the random class).

  Returns:
    ``[B]``.
  """
  model, f, x, target, key, explainer, options = _prepare_comparison(
      "random_logit", f, x, target, key, explainer, explainer_options, similarity,
      key_required=True)
  n = C.check_f_output(f, x)
  if n < 2:
    raise ValueError(f"random_logit: expected a model with at least 2 classes, got {n}")
  k0, _, k2 = jax.random.split(key, 3)
  e_a = _checked_attribution(attribution, explainer, model, x, target, k0, options)
  other = random_other_class(key, target, n)
  return _compare_classes(model, x, e_a, other, k2, explainer=explainer, options=options,
                          similarity=similarity, absolute=bool(absolute), image_rank=x.ndim)


@REGISTRY.register("class_sensitivity", family="randomization", returns="scores",
    needs=("explainer",), evaluations=_class_sensitivity_evaluations, backward=True,
    direction="lower")
def class_sensitivity(f, x, attribution=None, target="predicted", *, key=None, explainer=None,
                      explainer_options=None, similarity: str = "spearman",
                      absolute: bool = False):
  """Class sensitivity (Rebuffi, Fong, Ji, Vedaldi 2020, "There and Back Again:
  Revisiting Backpropagation Saliency Methods", CVPR, arXiv:2004.02866):
  rank correlation between the map of the most likely class and the map of
  the least likely class (signed maps, "spearman_no_abs" in the reference
  code). Lower means more class-sensitive. The reference averages over
  images and ignores non-finite correlations; here a constant map gives 0.

  Args:
    attribution: the map of the most likely class, or None to compute it.
    target: ``"predicted"`` (default) or the most likely class per example.
    key: passed to stochastic explainers (optional).

  Returns:
    ``[B]``.
  """
  model, f, x, target, key, explainer, options = _prepare_comparison(
      "class_sensitivity", f, x, target, key, explainer, explainer_options, similarity,
      key_required=False)
  k0, k1 = jax.random.split(key)
  e_a = _checked_attribution(attribution, explainer, model, x, target, k0, options)
  least = _argmin(f, x)
  return _compare_classes(model, x, e_a, least, k1, explainer=explainer, options=options,
                          similarity=similarity, absolute=bool(absolute), image_rank=x.ndim)


@M.jit
def _argmin(f, x):
  return jnp.argmin(f(x), -1).astype(jnp.int32)


@REGISTRY.register("data_randomization", family="randomization", returns="scores",
    needs=("explainer", "random_model"), evaluations=_data_randomization_evaluations, backward=True,
    direction="lower")
def data_randomization(f, x, attribution, target, *, random_model=None,
                       random_target="predicted", key=None, explainer=None,
                       explainer_options=None, similarity: str = "spearman",
                       absolute: bool = True):
  """Data randomization test (Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim
  2018, "Sanity Checks for Saliency Maps", NeurIPS, arXiv:1810.03292, Sec. 4).

  `random_model` is the same architecture trained on a copy of the training
  set whose labels were randomly permuted (train it to high TRAINING
  accuracy, > 95% in the paper; its test accuracy stays at chance:
  ``experiments.train`` with ``train.permute_labels=True``). The explainer is
  run on both models for the same inputs and the maps are compared; a method
  whose map depends on the relation between inputs and labels gives low
  similarity. The paper's finding: gradients and Grad-CAM change, while
  gradient x input and integrated gradients keep the input's structure
  (high absolute rank correlation, strongest on sparse MNIST digits).

  Args:
    f: the model trained on the true labels.
    x: inputs.
    attribution: `f`'s maps for `target`, or None to compute them.
    target: class of `f` to explain: indices ``[B]``, an int, or
      ``"predicted"``.
    random_model: the model trained on permuted labels (required), a
      callable or `Tapped` like `f`.
    random_target: class of `random_model` to explain: ``"predicted"``
      (default, its own top class, as the reference code explains each
      network's prediction), ``"same"`` (the class explained for `f`), or
      indices / an int.
    key: passed to stochastic explainers (optional).
    explainer, explainer_options: the method under test (a callable or a
      registered name).
    similarity: ``"spearman"`` (default), ``"pearson"``, ``"ssim"`` or
      ``"hog"``.
    absolute: compare ``sum_c |e|`` (default, the paper's absolute Spearman)
      or signed channel sums.

  Returns:
    ``[B]`` similarities (lower: more sensitive to the labels).
  """
  if random_model is None:
    raise ValueError("random_model: expected the same architecture trained on permuted labels"
                     " (experiments.train with train.permute_labels=True), got None")
  model, f, x, target, key, explainer, options = _prepare_comparison(
      "data_randomization", f, x, target, key, explainer, explainer_options, similarity,
      key_required=False)
  if isinstance(random_target, str) and random_target == "same":
    random_target = target
  k0, k1 = jax.random.split(key)
  # A given map is checked before the random model's "predicted" forward.
  if attribution is not None:
    attribution = _checked_attribution(attribution, explainer, model, x, target, k0, options)
  rf, _, random_target = C.prepare_model(random_model, x, random_target)
  n, n_random = C.check_f_output(f, x), C.check_f_output(rf, x)
  if n != n_random:
    raise ValueError(f"random_model: expected {n} classes like the model, got {n_random}")
  e_a = _checked_attribution(attribution, explainer, model, x, target, k0, options)
  return _compare_classes(random_model, x, e_a, random_target, k1, explainer=explainer,
                          options=options, similarity=similarity, absolute=bool(absolute),
                          image_rank=x.ndim)
