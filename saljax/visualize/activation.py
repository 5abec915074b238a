"""Activation maximization, MaCo and multifaceted feature visualization.

Every optimizer here is batched over *objectives*: K classes, channels,
neurons or directions are optimized in one compiled call (`jax.vmap` over the
objectives, `lax.scan` over the steps), each under its own key, so that
objective k's image does not depend on which other objectives share the call
(``maximize(..., objective)[k] == maximize(..., objective[k])`` with the same
per-objective keys).

- `maximize`: Olah et al. 2017 (Distill, "Feature Visualization"): Fourier
  parameterization with decorrelated colour, transformation robustness
  (random jitter, scale, rotation per step), Adam.
- `maco`: Fel et al. 2023 (arXiv:2306.06805): phase-only optimization with a
  fixed natural-image magnitude, random crops and noise (Xplique's recipe).
- `multifaceted`: Nguyen, Yosinski, Clune 2016 (arXiv:1602.03616): cluster the
  real images that most activate the unit, start one facet from each
  cluster's mean image, optimize in pixel space with the center-biased
  regularization.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saljax import _validation as V
from saljax import model as M
from saljax import parallel
from saljax.visualize import _image as I

Array = jax.Array
KINDS = ("class", "channel", "neuron", "direction")
CLASS_SCORES = ("logit", "log_softmax", "probability")
PARAMETERIZATIONS = ("fourier", "pixel", "raw", "maco")


# ----------------------------------------------------------------------------
# Objectives.


@jax.tree_util.register_pytree_node_class
class Objective:
  """K objectives of one kind: ``targets[k]`` is objective k's class/channel index or direction.

  Build with `classes`, `channels`, `neurons` or `directions`; index with
  ``objective[k]`` or ``objective[a:b]`` to take a sub-batch.
  """

  def __init__(self, kind: str, targets: Any, layer: str | None = None, score: str = "logit"):
    V.check_choice(kind, "kind", KINDS)
    if kind == "class":
      V.check_choice(score, "score", CLASS_SCORES)
      if layer is not None:
        raise ValueError(f"a class objective reads the logits; expected layer=None, got {layer!r}")
    elif not isinstance(layer, str):
      raise TypeError(f"a {kind} objective needs a layer name (str), got {V.describe(layer)}")
    self.kind, self.layer, self.score = kind, layer, score
    self.targets = targets

  @property
  def size(self) -> int:
    return int(np.shape(self.targets)[0])

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, i) -> "Objective":
    t = self.targets[i]
    if np.ndim(t) == np.ndim(self.targets) - 1:
      t = t[None]
    return Objective(self.kind, t, self.layer, self.score)

  def tree_flatten(self):
    return (self.targets,), (self.kind, self.layer, self.score)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.kind, obj.layer, obj.score = aux
    obj.targets = children[0]
    return obj

  def __repr__(self):
    return f"Objective({self.kind}, {self.size} targets, layer={self.layer!r})"


def _indices(idx: Any, what: str) -> Array:
  a = np.asarray(idx)
  if a.ndim == 0:
    a = a[None]
  if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer) or (a < 0).any():
    raise ValueError(f"{what}: expected a non-empty 1-D list of int indices >= 0, got {idx!r}")
  if isinstance(idx, jax.Array) and idx.ndim == 1:
    return idx.astype(jnp.int32)  # keeps its placement (sharded objectives)
  return jnp.asarray(a, jnp.int32)


def classes(indices: Any, *, score: str = "logit") -> Objective:
  """Class objectives: the logit (default, as Simonyan et al. 2014 and lucid), log-softmax or
  softmax probability of each class in `indices`."""
  return Objective("class", _indices(indices, "classes"), None, score)


def channels(layer: str, indices: Any) -> Objective:
  """Channel objectives: the spatial mean of channel ``indices[k]`` of `layer`."""
  return Objective("channel", _indices(indices, "channels"), layer)


def neurons(layer: str, indices: Any) -> Objective:
  """Neuron objectives: channel ``indices[k]`` of `layer` at the central position (lucid's
  ``neuron``); for a flat ``[B, C]`` layer, unit ``indices[k]``."""
  return Objective("neuron", _indices(indices, "neurons"), layer)


def directions(layer: str, vectors: Any) -> Objective:
  """Direction objectives: the spatial mean of `layer`'s activations dotted with the unit
  vector ``vectors[k] / ||vectors[k]||`` (``vectors``: ``[K, C]``)."""
  v = jnp.asarray(vectors, jnp.float32)
  if v.ndim == 1:
    v = v[None]
  if v.ndim != 2 or v.shape[0] == 0:
    raise ValueError(f"directions: expected vectors [K, C], got shape {tuple(v.shape)}")
  return Objective("direction", v / (jnp.linalg.norm(v, axis=1, keepdims=True) + 1e-12), layer)


def _objective_values(fwd, x: Array, target: Array, kind: str, layer: str | None,
                      score: str) -> Array:
  """Objective values ``[n]`` of one objective on a batch ``x[n, ...]``."""
  if kind == "class":
    logits = fwd(x)
    if score == "log_softmax":
      logits = jax.nn.log_softmax(logits, -1)
    elif score == "probability":
      logits = jax.nn.softmax(logits, -1)
    return logits[:, target]
  _, acts = fwd(x)
  a = acts[layer]
  if kind == "neuron":
    if a.ndim == 4:
      return a[:, a.shape[1] // 2, a.shape[2] // 2, target]
    return a.reshape(a.shape[0], -1)[:, target]
  a = a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)  # spatial mean: [n, C]
  if kind == "channel":
    return a[:, target]
  return a @ target


def _forward_for(model: Any, objective: Objective):
  """The model as data: the plain logits model for class objectives, else the tapped forward."""
  if not callable(model):
    raise TypeError(f"model: expected a model x[B, ...] -> logits[B, C] (or a tapped model for"
                    f" layer objectives), got {V.describe(model)}")
  if objective.layer is None:
    return M.as_model(model)
  tapped = model if isinstance(model, M.Tapped) else getattr(model, "tapped", model)
  M.check_layers(tapped, (objective.layer,))
  return tapped


# ----------------------------------------------------------------------------
# Configuration (static: one compiled program per configuration and shape).


@dataclasses.dataclass(frozen=True)
class Transforms:
  """Random transformations applied at every step (lucid's ``standard_transforms``, scaled to
  the image size): a shift up to ``jitter`` of the side (lucid: 8 + 4 px at 224 px, about
  0.04), a scale uniform in ``scale`` (lucid draws from 0.9 to 1.1 in steps of 0.02) and a
  rotation up to ``degrees`` (lucid: 10). Pixels from outside the image are ``fill`` (lucid
  pads with 0.5)."""
  jitter: float = 0.04
  scale: tuple[float, float] = (0.9, 1.1)
  degrees: float = 10.0
  fill: float = 0.5

  def __post_init__(self):
    if not 0 <= float(self.jitter) < 0.5:
      raise ValueError(f"jitter: expected a fraction of the side in [0, 0.5), got {self.jitter!r}")
    if len(self.scale) != 2 or not 0 < float(self.scale[0]) <= float(self.scale[1]):
      raise ValueError(f"scale: expected (low, high) with 0 < low <= high, got {self.scale!r}")
    object.__setattr__(self, "scale", (float(self.scale[0]), float(self.scale[1])))


@dataclasses.dataclass(frozen=True)
class _Cfg:
  kind: str
  layer: str | None
  score: str
  param: str
  size: tuple[int, int]
  channels: int
  steps: int
  learning_rate: float
  optimizer: str
  n_augment: int
  transforms: Transforms | None
  value_range: tuple[float, float]
  decay_power: float = 1.0
  decorrelated: bool = True
  batch_size: int | None = None
  # raw pixels (multifaceted): L2 decay per step, blur sigma from [0] to [1], center bias.
  l2: float = 0.0
  blur: tuple[float, float] = (0.0, 0.0)
  center_bias: tuple[float, ...] = ()
  # MaCo: crop box size from [0] to [1], noise std.
  box: tuple[float, float] = (1.0, 1.0)
  noise: float = 0.0


class Result(NamedTuple):
  """Optimized images ``[K, H, W, C]`` in [0, 1] and the objective (mean over the step's
  transformed copies) at every step ``[K, steps]``."""
  images: Array
  values: Array


def _to_image(p: Array, cfg: _Cfg, magnitude: Array) -> Array:
  if cfg.param == "fourier":
    return I.fourier_to_image(p, cfg.size, decay_power=cfg.decay_power,
                              decorrelated=cfg.decorrelated)
  if cfg.param == "pixel":
    return I.pixel_to_image(p)
  if cfg.param == "maco":
    return I.maco_to_image(p, magnitude)
  return p


def _center_mask(cfg: _Cfg, t: Array) -> Array:
  """The region the step may change: the whole image, then central squares of the sides in
  ``cfg.center_bias``, one phase per equal share of the steps."""
  fracs = jnp.asarray((1.0,) + tuple(cfg.center_bias), jnp.float32)
  phase = jnp.minimum(t * fracs.shape[0] // cfg.steps, fracs.shape[0] - 1)
  frac = fracs[phase]
  h, w = cfg.size
  yy = jnp.abs(jnp.arange(h) - (h - 1) / 2.0)[:, None]
  xx = jnp.abs(jnp.arange(w) - (w - 1) / 2.0)[None, :]
  return ((yy <= frac * h / 2.0) & (xx <= frac * w / 2.0)).astype(jnp.float32)[..., None]


def _augment(img: Array, key: Array, t: Array, cfg: _Cfg) -> Array:
  if cfg.param == "maco":
    # Xplique's crops: centers ~ 0.5 + N(0, 0.15), square side ~ N(box_t, 0.05) clipped to
    # [0.05, 1], resized to the input; plus Gaussian and uniform noise.
    n = cfg.n_augment
    k1, k2, k3, k4 = jax.random.split(key, 4)
    box_t = cfg.box[0] + (cfg.box[1] - cfg.box[0]) * t / max(cfg.steps - 1, 1)
    center = 0.15 * jax.random.normal(k1, (n, 2))
    side = jnp.clip(box_t + 0.05 * jax.random.normal(k2, (n,)), 0.05, 1.0)
    size = jnp.asarray(cfg.size, jnp.float32)
    shift = -center * size / side[:, None]
    crops = jax.vmap(lambda sh, s: I.warp(img, sh, 1.0 / s, jnp.zeros(()), fill=0.5))(shift, side)
    crops = crops + cfg.noise * jax.random.normal(k3, crops.shape)
    return crops + jax.random.uniform(k4, crops.shape, minval=-cfg.noise / 2, maxval=cfg.noise / 2)
  if cfg.transforms is None:
    return img[None]
  tr = cfg.transforms
  return I.random_transform(img, key, cfg.n_augment, jitter=tr.jitter, scale=tr.scale,
                            degrees=tr.degrees, fill=tr.fill)


def _optimizer(cfg: _Cfg):
  if cfg.optimizer == "nadam":
    return optax.nadam(cfg.learning_rate)
  return optax.adam(cfg.learning_rate)


def _run_one(fwd, magnitude, cfg: _Cfg, target: Array, key: Array, p0: Array):
  """One objective: `cfg.steps` ascent steps in a `lax.scan`; returns (image, values[steps])."""
  lo, hi = cfg.value_range
  opt = _optimizer(cfg)

  def loss(p, k, t):
    img = _to_image(p, cfg, magnitude)
    x = lo + (hi - lo) * _augment(img, k, t, cfg)
    v = _objective_values(fwd, x, target, cfg.kind, cfg.layer, cfg.score).mean()
    return -v, v

  def step(carry, inp):
    p, state = carry
    t, k = inp
    (_, v), g = jax.value_and_grad(loss, has_aux=True)(p, k, t)
    if cfg.param == "raw" and cfg.center_bias:
      g = g * _center_mask(cfg, t)
    updates, state = opt.update(g, state, p)
    p = optax.apply_updates(p, updates)
    if cfg.param == "raw":
      # Nguyen et al. 2016's regularizers: L2 decay and Gaussian blur (its sigma from
      # blur[0] to blur[1]), inside the region the center bias lets this step change.
      sigma = cfg.blur[0] + (cfg.blur[1] - cfg.blur[0]) * t / max(cfg.steps - 1, 1)
      q = p * (1.0 - cfg.l2)
      q = jnp.where(sigma > 0, I.gaussian_blur(q, sigma), q)
      mask = _center_mask(cfg, t) if cfg.center_bias else 1.0
      p = jnp.clip(mask * q + (1 - mask) * p, 0.0, 1.0)
    return (p, state), v

  keys = jax.random.split(key, cfg.steps)
  (p, _), values = jax.lax.scan(step, (p0, opt.init(p0)), (jnp.arange(cfg.steps), keys))
  return _to_image(p, cfg, magnitude), values


@M.jit(static_argnames=("cfg",))
def _optimize(fwd, targets, keys, init, magnitude, cfg: _Cfg):
  one = lambda a: _run_one(fwd, magnitude, cfg, *a)
  return parallel.chunked_map(one, (targets, keys, init),
                              batch_size=cfg.batch_size or targets.shape[0])


def _initial(cfg: _Cfg, keys: Array, init: Array | None) -> Array:
  """Initial parameters per objective: lucid's N(0, 0.01) spectrum, N(0, 1) phases (MaCo), the
  given images, or (pixel/raw without images) uniform noise in [0.25, 0.75]."""
  k = keys.shape[0]
  h, w = cfg.size
  c = cfg.channels
  if init is not None:
    if cfg.param == "fourier":
      return I.image_to_fourier(init, decay_power=cfg.decay_power, decorrelated=cfg.decorrelated)
    if cfg.param == "pixel":
      return I.image_to_pixel(init)
    return init
  if cfg.param == "fourier":
    return jax.vmap(lambda kk: 0.01 * jax.random.normal(kk, I.fourier_shape(cfg.size, c)))(keys)
  if cfg.param == "maco":
    return jax.vmap(lambda kk: jax.random.normal(kk, (c, h, w // 2 + 1)))(keys)
  noise = jax.vmap(lambda kk: jax.random.uniform(kk, (h, w, c), minval=0.25, maxval=0.75))(keys)
  return I.image_to_pixel(noise) if cfg.param == "pixel" else noise


def _size(size: Any) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = (int(size), int(size))
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or not all(isinstance(s, (int, np.integer)) and s >= 4 for s in size)):
    raise ValueError(f"size: expected an int >= 4 or (height, width), got {size!r}")
  return int(size[0]), int(size[1])


def _range(value_range: Any) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in value_range)
  except Exception:
    raise ValueError(f"value_range: expected (low, high) floats, got {value_range!r}") from None
  if not lo < hi:
    raise ValueError(f"value_range: expected low < high, got {value_range!r}")
  return lo, hi


def objective_keys(key: Any, k: int, method: str) -> Array:
  """`key` split into one key per objective, or `key` itself when it is already ``[k]`` keys.

  Passing ``keys[i:i+1]`` for objective ``i`` alone reproduces its image from a batched call.
  """
  from saljax.explainers._registry import require_key
  if key is not None and hasattr(key, "shape") and jax.dtypes.issubdtype(key.dtype,
                                                                          jax.dtypes.prng_key):
    if key.ndim == 1:
      if key.shape[0] != k:
        raise ValueError(f"{method}: expected one key or {k} keys (one per objective), got"
                         f" {key.shape[0]} keys")
      return key
  key = require_key(key, method)
  return jax.random.split(key, k)


def _run(method: str, model, objective: Objective, key, cfg_kw: dict, init=None,
         magnitude=None) -> Result:
  if not isinstance(objective, Objective):
    raise TypeError(f"{method}: expected a saljax.visualize Objective (classes, channels, neurons,"
                    f" directions), got {V.describe(objective)}")
  fwd = _forward_for(model, objective)
  cfg = _Cfg(kind=objective.kind, layer=objective.layer, score=objective.score, **cfg_kw)
  parallel.check_count(cfg.steps, "steps")
  if cfg.batch_size is not None:
    V.check_positive_int(cfg.batch_size, "batch_size")
  k = objective.size
  keys = objective_keys(key, k, method)
  if init is not None:
    init = jnp.asarray(init, jnp.float32)
    want = (k,) + cfg.size + (cfg.channels,)
    if init.shape != want:
      raise ValueError(f"init: expected images {want} in [0, 1], got shape {tuple(init.shape)}")
  # Fail before any work when the model cannot take the input.
  x = jax.ShapeDtypeStruct((1,) + cfg.size + (cfg.channels,), jnp.float32)
  try:
    jax.eval_shape(lambda f, x: _objective_values(f, x, objective.targets[0], cfg.kind,
                                                  cfg.layer, cfg.score), fwd, x)
  except Exception as e:
    raise ValueError(f"{method}: the objective could not be evaluated on inputs"
                     f" {(1,) + cfg.size + (cfg.channels,)}: {type(e).__name__}: {e}") from e
  p0 = _initial(cfg, keys, init)
  step_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(keys)
  mag = jnp.zeros(()) if magnitude is None else jnp.asarray(magnitude, jnp.float32)
  images, values = _optimize(fwd, objective.targets, step_keys, p0, mag, cfg)
  return Result(images, values)


def maximize(model: Any, objective: Objective, *, key: Any, size: Any, steps: int = 256,
             learning_rate: float = 0.05, parameterization: str = "fourier",
             transforms: Transforms | None = Transforms(), n_augment: int = 4,
             value_range: Sequence[float] = (0.0, 1.0), channels: int = 3,
             decay_power: float = 1.0, decorrelated: bool = True, init: Any = None,
             batch_size: int | None = None) -> Result:
  """Activation maximization of K objectives in one compiled call (Olah et al. 2017).

  Each objective's image is parameterized (``"fourier"``: lucid's 1/f-scaled
  spectrum with decorrelated colour, the default; ``"pixel"``: sigmoid of free
  logits) and optimized by Adam for `steps` steps; at each step the objective
  is averaged over `n_augment` random transformations of the image
  (`Transforms`; None: none), the robustness that makes the images readable.

  Args:
    model: a model ``x -> logits`` for class objectives; a tapped model (or a
      `saljax.models.Classifier`, whose ``tapped`` is used) for layer objectives.
    objective: `classes`, `channels`, `neurons` or `directions`.
    key: a `jax.random` key (split into one per objective) or ``[K]`` keys.
    size: image side or ``(H, W)``.
    steps: ascent steps (default 256; lucid's ``render_vis`` runs 512. Lite0's class images
      passed the 0.9 criterion at 96 steps with a log-softmax objective: docs/visualize.md).
    learning_rate: Adam's (default 0.05, lucid's).
    value_range: the model's input range that [0, 1] images map to linearly.
    channels: image channels (3; 1 for grey models, where colour decorrelation is skipped).
    decay_power: the spectrum's 1/f exponent (1, lucid's).
    init: optional start images ``[K, H, W, C]`` in [0, 1].
    batch_size: objectives optimized at once (memory bound); None: all K.
  Returns:
    `Result` (images ``[K, H, W, C]`` in [0, 1], values ``[K, steps]``).
  """
  V.check_choice(parameterization, "parameterization", ("fourier", "pixel"))
  n_augment = V.check_positive_int(n_augment, "n_augment")
  cfg = dict(param=parameterization, size=_size(size), channels=V.check_positive_int(channels,
             "channels"), steps=steps, learning_rate=float(learning_rate), optimizer="adam",
             n_augment=n_augment, transforms=transforms, value_range=_range(value_range),
             decay_power=float(decay_power), decorrelated=bool(decorrelated),
             batch_size=batch_size)
  return _run("maximize", model, objective, key, cfg, init=init)


def maco(model: Any, objective: Objective, *, key: Any, size: Any, magnitude: Any,
         steps: int = 256, learning_rate: float = 1.0, n_crops: int = 32,
         box: Sequence[float] = (0.9, 0.5), noise: float = 0.08,
         value_range: Sequence[float] = (0.0, 1.0), batch_size: int | None = None) -> Result:
  """MaCo (Fel et al. 2023): optimize the Fourier phase only, the magnitude fixed.

  As Xplique's ``maco``: the image is `_image.maco_to_image` of the phase and
  `magnitude` (``[3, H, W//2+1]``, an average natural-image spectrum:
  `_image.natural_spectrum`); each step averages the objective over `n_crops`
  random crops (centers ``0.5 + N(0, 0.15)``, sides ``N(box_t, 0.05)`` where
  ``box_t`` goes linearly from ``box[0]`` to ``box[1]``) with noise of std
  `noise` (0.08, Xplique's); NAdam at `learning_rate` (1.0, Xplique's).
  Xplique's crop sides go from 0.5 to 0.05 of a 512 px buffer for a 224 px
  model; here the buffer is the model's input size, so the crops stay larger
  (default 0.9 to 0.5). Batched over objectives like `maximize` (Xplique
  optimizes one at a time).
  """
  size = _size(size)
  mag = jnp.asarray(magnitude, jnp.float32)
  if mag.shape != (3, size[0], size[1] // 2 + 1):
    raise ValueError(f"magnitude: expected [3, H, W//2+1] = {(3, size[0], size[1] // 2 + 1)},"
                     f" got {tuple(mag.shape)}")
  box = tuple(float(b) for b in box)
  if len(box) != 2 or not all(0.05 <= b <= 1.0 for b in box):
    raise ValueError(f"box: expected (start, end) crop sides in [0.05, 1], got {box!r}")
  cfg = dict(param="maco", size=size, channels=3, steps=steps, learning_rate=float(learning_rate),
             optimizer="nadam", n_augment=V.check_positive_int(n_crops, "n_crops"),
             transforms=None, value_range=_range(value_range), batch_size=batch_size, box=box,
             noise=float(noise))
  return _run("maco", model, objective, key, cfg, magnitude=mag)


# ----------------------------------------------------------------------------
# Evaluation.


@M.jit(static_argnames=("kind", "layer", "score", "n", "transforms", "value_range", "batch_size"))
def _transformed(fwd, images, targets, keys, kind, layer, score, n, transforms, value_range,
                 batch_size):
  lo, hi = value_range

  def one(img, target, k):
    x = img[None] if transforms is None else I.random_transform(
        img, k, n, jitter=transforms.jitter, scale=transforms.scale, degrees=transforms.degrees,
        fill=transforms.fill)
    return _objective_values(fwd, lo + (hi - lo) * x, target, kind, layer, score)

  return parallel.chunked_map(lambda a: one(*a), (images, targets, keys),
                              batch_size=batch_size or images.shape[0])


def transformed_scores(model: Any, images: Any, objective: Objective, *, key: Any, n: int = 32,
                       transforms: Transforms | None = Transforms(),
                       value_range: Sequence[float] = (0.0, 1.0),
                       batch_size: int | None = None) -> Array:
  """Objective k on `n` random transformations of image k: ``[K, n]`` (``[K, 1]`` untransformed
  when `transforms` is None). With ``classes(..., score="probability")`` these are the softmax
  probabilities the done-when criteria of docs/visualize.md read."""
  fwd = _forward_for(model, objective)
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[0] != objective.size:
    raise ValueError(f"images: expected [K={objective.size}, H, W, C], got {tuple(images.shape)}")
  keys = objective_keys(key, objective.size, "transformed_scores")
  return _transformed(fwd, images, objective.targets, keys, objective.kind, objective.layer,
                      objective.score, V.check_positive_int(n, "n"), transforms,
                      _range(value_range),
                      None if batch_size is None else V.check_positive_int(batch_size, "batch_size"))


@M.jit(static_argnames=("layer", "value_range"))
def _embed(tapped, images, layer, value_range):
  lo, hi = value_range
  a = tapped(lo + (hi - lo) * images)[1][layer]
  return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)


def embed(model: Any, images: Any, layer: str, *, value_range: Sequence[float] = (0.0, 1.0),
          batch_size: int | None = 64) -> Array:
  """Spatially averaged activations ``[N, C]`` of `layer` for images in [0, 1], in chunks."""
  tapped = model if isinstance(model, M.Tapped) else getattr(model, "tapped", model)
  M.check_layers(tapped, (layer,))
  images = jnp.asarray(images, jnp.float32)
  vr = _range(value_range)
  n = images.shape[0]
  bs = n if batch_size is None else min(V.check_positive_int(batch_size, "batch_size"), n)
  parts = [_embed(tapped, images[i:i + bs], layer, vr) for i in range(0, n, bs)]
  return jnp.concatenate(parts, 0)


def pairwise_distance(features: Any) -> float:
  """Mean Euclidean distance over the distinct pairs of rows of ``features [N, D]``."""
  f = jnp.asarray(features, jnp.float32)
  n = f.shape[0]
  if n < 2:
    raise ValueError(f"pairwise_distance: expected at least 2 rows, got {n}")
  d = jnp.sqrt(jnp.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0.0))
  return float(d.sum() / (n * (n - 1)))


# ----------------------------------------------------------------------------
# Multifaceted feature visualization.


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(x: Array, key: Array, k: int, iters: int = 50) -> tuple[Array, Array]:
  """Lloyd's k-means on rows of ``x [N, D]``: ``(centers [k, D], labels [N])``.

  Starts from k-means++ seeds (Arthur & Vassilvitskii 2007: each next seed a
  row drawn with probability proportional to its squared distance to the
  nearest seed so far) drawn under `key`; an empty cluster keeps its center.
  `iters` Lloyd steps in a `lax.fori_loop`.
  """
  keys = jax.random.split(key, k)
  first = x[jax.random.randint(keys[0], (), 0, x.shape[0])]
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)

  def seed(i, c):
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    d2 = jnp.where(jnp.arange(k)[None] < i, d2, jnp.inf).min(1)
    j = jax.random.choice(keys[i], x.shape[0], p=d2 / jnp.maximum(d2.sum(), 1e-12))
    return c.at[i].set(x[j])

  centers = jax.lax.fori_loop(1, k, seed, centers)

  def assign(c):
    return jnp.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)

  def body(_, c):
    onehot = jax.nn.one_hot(assign(c), k, dtype=x.dtype)
    count = onehot.sum(0)
    new = (onehot.T @ x) / jnp.maximum(count, 1.0)[:, None]
    return jnp.where(count[:, None] > 0, new, c)

  centers = jax.lax.fori_loop(0, iters, body, centers)
  return centers, assign(centers)


class Facets(NamedTuple):
  """`multifaceted`'s result: facet images ``[F, H, W, C]``, their start images (cluster means),
  the objective per step ``[F, steps]``, the indices of the top candidates and their cluster."""
  images: Array
  starts: Array
  values: Array
  top: Array
  labels: Array


def multifaceted(model: Any, objective: Objective, candidates: Any, *, key: Any, embed_layer: str,
                 n_facets: int = 4, n_top: int | None = None, steps: int = 256,
                 learning_rate: float = 0.02, l2: float = 0.0, blur: Sequence[float] = (1.0, 0.3),
                 center_bias: Sequence[float] = (0.75, 0.5),
                 transforms: Transforms | None = Transforms(jitter=0.02, degrees=5.0),
                 n_augment: int = 2, value_range: Sequence[float] = (0.0, 1.0),
                 batch_size: int | None = None) -> Facets:
  """Multifaceted feature visualization (Nguyen, Yosinski, Clune 2016) of ONE objective.

  1. Scores every candidate image (``[N, H, W, C]`` in [0, 1], real images) for
     the objective and keeps the `n_top` best (default ``N // 2``; the paper
     keeps the top 10% of the training set).
  2. Clusters their `embed_layer` activations (spatially averaged; the paper
     uses the fc7 code, then t-SNE: here k-means runs on the activations
     directly) into `n_facets` clusters with `kmeans`.
  3. Starts one facet from each cluster's mean image and optimizes it in pixel
     space (Adam), all facets in one compiled call, with the paper's
     regularizers: L2 decay `l2`, Gaussian blur whose sigma goes from
     ``blur[0]`` to ``blur[1]``, and the *center-biased regularization*: the
     first share of the steps may change the whole image, each later share only
     a central square of the side fractions in `center_bias` (default 0.75 then
     0.5), so a facet's object forms in the middle and its border is the mean
     image's context.
  """
  if objective.size != 1:
    raise ValueError(f"multifaceted: expected one objective (objective[k]), got {objective.size}")
  cand = jnp.asarray(candidates, jnp.float32)
  if cand.ndim != 4:
    raise ValueError(f"candidates: expected images [N, H, W, C] in [0, 1], got {cand.shape}")
  n_facets = V.check_positive_int(n_facets, "n_facets")
  n_top = cand.shape[0] // 2 if n_top is None else V.check_positive_int(n_top, "n_top")
  if not n_facets <= n_top <= cand.shape[0]:
    raise ValueError(f"n_top: expected n_facets ({n_facets}) <= n_top <= N ({cand.shape[0]}),"
                     f" got {n_top}")
  from saljax.explainers._registry import require_key
  key = require_key(key, "multifaceted")
  k_cluster, k_opt = jax.random.split(key)
  vr = _range(value_range)
  rep = Objective(objective.kind, jnp.repeat(objective.targets, cand.shape[0], 0),
                  objective.layer, objective.score)
  scores = transformed_scores(model, cand, rep, key=jax.random.key(0), transforms=None,
                              value_range=vr, batch_size=batch_size or 32)[:, 0]
  top = jnp.argsort(-scores)[:n_top]
  feats = embed(model, cand[top], embed_layer, value_range=vr)
  feats = feats / (jnp.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)
  _, labels = kmeans(feats, k_cluster, n_facets)
  onehot = jax.nn.one_hot(labels, n_facets)
  starts = jnp.einsum("nf,nhwc->fhwc", onehot, cand[top]) / jnp.maximum(onehot.sum(0), 1.0)[:, None,
                                                                                              None, None]
  facets = Objective(objective.kind, jnp.repeat(objective.targets, n_facets, 0), objective.layer,
                     objective.score)
  blur = tuple(float(b) for b in blur)
  cfg = dict(param="raw", size=tuple(cand.shape[1:3]), channels=int(cand.shape[3]), steps=steps,
             learning_rate=float(learning_rate), optimizer="adam",
             n_augment=V.check_positive_int(n_augment, "n_augment"), transforms=transforms,
             value_range=vr, batch_size=batch_size, l2=float(l2), blur=blur,
             center_bias=tuple(float(c) for c in center_bias))
  res = _run("multifaceted", model, facets, k_opt, cfg, init=starts)
  return Facets(res.images, starts, res.values, top, labels)
