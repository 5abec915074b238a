"""Blind spots: Level Set Traversal (Balasubramanian, Sriramanan, Sadasivan,
Feizi 2023, "Exploring Geometry of Blind Spots in Vision Models", NeurIPS,
arXiv:2310.19889), and the measurements its paper makes of the paths it finds.

Level Set Traversal (LST) walks from a source image towards a target image
of another class while keeping the model's confidence in the source class at
its starting level: each step moves towards the target only within the
hyperplane orthogonal to the gradient of the source-class confidence (to
first order, a move that leaves the confidence unchanged), then a correction
step along the gradient pulls the confidence back to the start level (the
curvature of the level set makes the first step drift off it). It ends at
an input that looks like the target and that the model still gives the
source class at the source's confidence: a "blind spot".

- `level_set_traversal`: many (source, target) pairs in one compiled call
  (`lax.scan` over steps, vmap over pairs, chunks of `batch_size`);
- `ssim`: structural similarity (Wang et al. 2004) in JAX, the distance to
  the target the paper reports;
- `feature_distance`: the LPIPS-style distance the paper also reports, in
  LPIPS's uncalibrated form (unit-normalized channels, uniform layer weights)
  on any tapped network: LPIPS's learned linear weights ship as torch files
  for AlexNet/VGG backbones that cannot be downloaded here, and no well-kept
  JAX LPIPS exists;
- `segment_confidence`: the confidence along the straight segments from the
  source to each found input: the paper's "star-like" level sets (the whole
  segment stays at high confidence).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from saljax import _validation as V
from saljax import model as M
from saljax import parallel

Array = jax.Array
_TINY = 1e-12


def _confidence(f, x: Array, label: Array) -> Array:
  """Softmax probability of `label` for one input ``x[...]``."""
  return jax.nn.softmax(f(x[None])[0])[label]


@M.jit
def _predict(f, x: Array) -> Array:
  # Module level, so the compiled forward pass is reused across calls.
  return f(x)


def _clip(x: Array, bounds) -> Array:
  return x if bounds is None else jnp.clip(x, bounds[0], bounds[1])


def _lst_one(f, source, target, label, step_size, correction, *, steps: int, bounds):
  """One pair: returns ``(x_end, confidence [steps + 1], l2_to_target [steps + 1])``."""
  conf_grad = jax.value_and_grad(lambda z: _confidence(f, z, label))
  level = _confidence(f, source, label)
  dist = lambda z: jnp.sqrt(jnp.sum((target - z) ** 2))

  def step(x, _):
    _, g = conf_grad(x)
    d = target - x
    # The component of the way to the target orthogonal to the confidence's
    # gradient: a first-order level move.
    d_perp = d - jnp.vdot(d, g) / (jnp.vdot(g, g) + _TINY) * g
    move = step_size * d_perp
    x1 = _clip(x + move, bounds)
    # Correction: a Newton step on conf(x) = level along the gradient at x1,
    # no longer than the move itself (far from the level set a Newton step on
    # a saturated softmax can be huge).
    c1, g1 = conf_grad(x1)
    back = correction * (level - c1) / (jnp.vdot(g1, g1) + _TINY) * g1
    cap = jnp.sqrt(jnp.vdot(move, move)) / (jnp.sqrt(jnp.vdot(back, back)) + _TINY)
    x2 = _clip(x1 + back * jnp.minimum(1.0, cap), bounds)
    return x2, (_confidence(f, x2, label), dist(x2))

  x_end, (conf, l2) = jax.lax.scan(step, source, None, length=steps)
  conf = jnp.concatenate([level[None], conf])
  l2 = jnp.concatenate([dist(source)[None], l2])
  return x_end, conf, l2


def _lst_reference_one(f, source, target, label, noise, step_size, pthresh, adv_step_size, *,
                       steps: int, bounds):
  """One pair by the authors' code (SriramB-98/blindspots-geometry,
  ``batch_level_set_traversal``): from a noised source, step along the way to
  the target with its component along the cross-entropy gradient J removed,
  minus an accumulated adversarial term ``clip(sum (a/2) J, -a, a)`` that
  pushes the confidence up; a step is taken only while the confidence has
  fallen less than `pthresh` (absolute) below the clean source's."""
  def nll(z):
    return -jax.nn.log_softmax(f(z[None])[0])[label]

  p0 = _confidence(f, source, label)
  dist = lambda z: jnp.sqrt(jnp.sum((target - z) ** 2))

  def step(carry, _):
    x, adv = carry
    j = jax.grad(nll)(x)
    d = target - x
    null = d - jnp.vdot(j, d) / (jnp.vdot(j, j) + _TINY) * j
    adv = jnp.clip(adv + 0.5 * adv_step_size * j, -adv_step_size, adv_step_size)
    x_new = _clip(x + step_size * null - adv, bounds)
    take = p0 - _confidence(f, x_new, label) < pthresh
    x = jnp.where(take, x_new, x)
    return (x, adv), (_confidence(f, x, label), dist(x))

  x0 = _clip(source + noise, bounds)
  (x_end, _), (conf, l2) = jax.lax.scan(step, (x0, jnp.zeros_like(source)), None, length=steps)
  # Index 0 is the clean source, as for the Newton variant.
  conf = jnp.concatenate([p0[None], conf])
  l2 = jnp.concatenate([dist(source)[None], l2])
  return x_end, conf, l2


@M.jit(static_argnames=("steps", "bounds", "batch_size"))
def _lst(f, source, target, label, step_size, correction, steps, bounds, batch_size):
  one = functools.partial(_lst_one, f, steps=steps, bounds=bounds)
  return parallel.chunked_map(lambda a: one(*a, step_size, correction), (source, target, label),
                              batch_size=batch_size)


@M.jit(static_argnames=("steps", "bounds", "batch_size"))
def _lst_reference(f, source, target, label, noise, step_size, pthresh, adv_step_size, steps,
                   bounds, batch_size):
  one = functools.partial(_lst_reference_one, f, steps=steps, bounds=bounds)
  return parallel.chunked_map(lambda a: one(*a, step_size, pthresh, adv_step_size),
                              (source, target, label, noise), batch_size=batch_size)


def _check_pairs(f, source, other, name):
  """The checks both public functions make: a model, and one `other` input
  per source of the same shape. Returns ``(model, source, other,
  num_classes)``."""
  if not callable(f):
    raise TypeError(f"f: expected a model x[B, ...] -> logits[B, C], got {V.describe(f)}")
  source = V.check_input(source, name="source")
  other = V.check_input(other, name=name)
  if other.shape != source.shape:
    raise ValueError(f"{name}: expected one per source, shape {tuple(source.shape)},"
                     f" got {tuple(other.shape)}")
  f = M.as_model(f)
  _, num_classes = M.output_shape(f, source)
  return f, source, other, num_classes


METHODS = ("newton", "reference")


def level_set_traversal(f, source, target_images, *, key=None, label=None, steps: int = 200,
                        step_size: float = 0.02, correction: float = 1.0, bounds=(0.0, 1.0),
                        method: str = "newton", pthresh: float = 0.2,
                        adv_step_size: float = 3e-4, init_noise: float = 4 / 255,
                        batch_size: int | None = None):
  """Level Set Traversal (Balasubramanian, Sriramanan, Sadasivan, Feizi 2023,
  arXiv:2310.19889) from each source towards its target image.

  From ``x = source``, `steps` times: ``d = target - x``, ``g = grad p(x)``
  with p the softmax probability of the source class; ``x1 = x + step_size *
  (d - (d.g / g.g) g)`` (towards the target, orthogonally to g); then ``x =
  x1 + correction * (p0 - p(x1)) / ||g1||^2 * g1`` with ``g1 = grad p(x1)``
  and p0 the source's confidence (a Newton step back to the level set,
  never longer than the move), clipped to `bounds`. The paper's correction
  is a fixed-size gradient-ascent step on the confidence when it has
  dropped; the Newton step aims at the start level instead and also pulls
  down a confidence that rose, which is what "stay on the level set" asks.

  ``method="reference"`` is the update of the authors' code instead
  (github.com/SriramB-98/blindspots-geometry, ``level_set_traversal.py``):
  start from the source plus uniform noise of width `init_noise` (needs
  `key`); each step, with J the gradient of the source class's cross-entropy,
  ``x' = clip(x + step_size * (d - (d.J / J.J) J) - a)`` where
  ``a = clip(a + adv_step_size / 2 * J, -adv_step_size, adv_step_size)``
  accumulates an L-inf bounded push up the confidence, and ``x'`` is kept
  only while ``p0 - p(x') < pthresh`` (absolute; p0 on the clean source),
  else x stays. The defaults `pthresh` 0.2 and `adv_step_size` 3e-4 are the
  authors' ImageNet ResNet-50 run (their README: step 1e-2, 400
  iterations); `correction` is unused. Two differences, both so that a pair's
  result does not depend on the other pairs in its batch: the code takes J
  from the batch-mean loss (so its push per step is 1/batch of the one
  here), and stops every pair once no pair of the batch accepts a step;
  here each pair keeps trying (a rejected pair stays where it is).

  Defaults: 200 steps of 2% of the remaining way (``0.98^200 = 0.018``:
  without the projections the path would end within 2% of the target's
  distance), a full Newton correction; chosen on the tiny CNNs of this
  library's tests and `experiments/level_sets.py` (docs/robustness.md),
  not taken from the paper, whose step sizes are for 224 px ImageNet models.

  Args:
    f: model ``x[B, ...] -> logits[B, C]``.
    source: ``[B, ...]`` the source images.
    target_images: ``[B, ...]`` one target per source (same shape).
    key: a `jax.random` key for the reference method's initial noise
      (unused by "newton", which is deterministic).
    label: ``[B]`` the class whose confidence is held (default: the model's
      prediction on each source).
    steps: traversal steps (static).
    step_size: the fraction of the remaining way taken per step (traced).
    correction: the fraction of the Newton correction taken (traced; 0
      turns the correction off: the bare orthogonal steps).
    bounds: ``(low, high)`` to clip to, or None.
    method: "newton" (default) or "reference" (the authors' update).
    pthresh, adv_step_size, init_noise: the reference method's acceptance
      threshold, adversarial step and initial noise width (traced).
    batch_size: at most this many pairs at once (memory bound).
  Returns:
    ``(x_end, info)``: the found inputs ``[B, ...]`` and ``{"confidence":
    [B, steps + 1], "l2_to_target": [B, steps + 1], "label": [B]}`` along
    the path (index 0: the source).
  """
  f, source, target_images, num_classes = _check_pairs(f, source, target_images, "target_images")
  if label is None:
    label = jnp.argmax(_predict(f, source), -1).astype(jnp.int32)
  label = V.check_target(label, source.shape[0], num_classes)
  steps = parallel.check_count(steps, "steps")
  batch_size = V.check_batch_size(batch_size)
  method = V.check_choice(method, "method", METHODS)
  if method == "reference" and key is None and not (V.is_concrete(init_noise)
                                                    and float(init_noise) == 0.0):
    raise ValueError("key: the reference method starts from the source plus uniform noise;"
                     " expected a jax.random key (or init_noise=0), got None")
  for name, v in (("step_size", step_size), ("correction", correction), ("pthresh", pthresh),
                  ("adv_step_size", adv_step_size), ("init_noise", init_noise)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "dtype"):
      raise TypeError(f"{name}: expected a float, got {V.describe(v)}")
  if V.is_concrete(step_size) and not 0.0 < float(step_size) <= 1.0:
    raise ValueError(f"step_size: expected a fraction in (0, 1], got {float(step_size)}")
  if V.is_concrete(correction) and not 0.0 <= float(correction) <= 1.0:
    raise ValueError(f"correction: expected a fraction in [0, 1], got {float(correction)}")
  for name, v in (("pthresh", pthresh), ("adv_step_size", adv_step_size),
                  ("init_noise", init_noise)):
    if V.is_concrete(v) and not float(v) >= 0.0:
      raise ValueError(f"{name}: expected a non-negative float, got {float(v)}")
  if bounds is not None:
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
      raise ValueError(f"bounds: expected (low, high) with low < high or None, got {bounds!r}")
    bounds = (float(bounds[0]), float(bounds[1]))
  if batch_size is None:
    # Two model evaluations per pair per step: count pairs, not input rows.
    batch_size = min(int(source.shape[0]), parallel.max_evals_per_chunk())
  dt = source.dtype
  if method == "reference":
    if key is None:
      noise = jnp.zeros_like(source)
    else:
      from saljax.metrics._common import check_key
      key = check_key(key, "level_set_traversal")
      half = jnp.asarray(init_noise, dt) / 2
      noise = jax.random.uniform(key, source.shape, dt, -1.0, 1.0) * half
    x_end, conf, l2 = _lst_reference(f, source, target_images.astype(dt), label, noise,
                                     jnp.asarray(step_size, dt), jnp.asarray(pthresh, dt),
                                     jnp.asarray(adv_step_size, dt), steps, bounds, batch_size)
    return x_end, {"confidence": conf, "l2_to_target": l2, "label": label}
  x_end, conf, l2 = _lst(f, source, target_images.astype(dt), label, jnp.asarray(step_size, dt),
                         jnp.asarray(correction, dt), steps, bounds, batch_size)
  return x_end, {"confidence": conf, "l2_to_target": l2, "label": label}


@M.jit(static_argnames=("points", "batch_size"))
def _segments(f, source, ends, label, points, batch_size):
  t = jnp.linspace(0.0, 1.0, points, dtype=source.dtype)

  def one(a):
    s, e, y = a
    xs = s[None] + t.reshape((points,) + (1,) * s.ndim) * (e - s)[None]
    return jax.nn.softmax(f(xs), -1)[:, y]

  return parallel.chunked_map(one, (source, ends, label), batch_size=batch_size)


def segment_confidence(f, source, ends, label, *, points: int = 21,
                       batch_size: int | None = None) -> Array:
  """Confidence in `label` along the straight segment from each source to its
  end (``source + t (end - source)``, `points` values of t from 0 to 1):
  ``[B, points]``. High all along: the level set is star-shaped about the
  source in that direction (Balasubramanian et al. 2023, Sec. 4).

  Default 21 points (t in steps of 0.05), one model call of `points` inputs
  per pair; `batch_size` pairs at once.
  """
  f, source, ends, num_classes = _check_pairs(f, source, ends, "ends")
  label = V.check_target(label, source.shape[0], num_classes)
  points = parallel.check_count(points, "points", minimum=2)
  return _segments(f, source, ends.astype(source.dtype), label, points,
                   V.check_batch_size(batch_size))


def ssim(a, b, *, data_range: float = 1.0, win_size: int = 7) -> Array:
  """Mean structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) of each
  pair of images ``[B, H, W, C]``, ``[B]``.

  The conventions of `skimage.metrics.structural_similarity` with its
  defaults and ``channel_axis=-1``: a uniform `win_size` x `win_size` window,
  K1 = 0.01, K2 = 0.03, sample (N - 1) variances, the map averaged over the
  windows that fit inside the image, then over channels. `data_range`:
  high - low of the pixel values (default 1.0 for [0, 1] images).
  """
  a = V.check_input(a, name="a", min_rank=4)
  b = V.check_input(b, name="b", min_rank=4)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"b: expected the shape of a, {tuple(a.shape)} ([B, H, W, C]), got"
                     f" {tuple(b.shape)}")
  win_size = V.check_positive_int(win_size, "win_size", minimum=3)
  if win_size % 2 == 0 or win_size > min(a.shape[1:3]):
    raise ValueError(f"win_size: expected an odd int at most the image side"
                     f" {min(a.shape[1:3])}, got {win_size}")
  return _ssim(a, b.astype(a.dtype), jnp.asarray(data_range, a.dtype), win_size)


@functools.partial(jax.jit, static_argnames=("win_size",))
def _ssim(a, b, data_range, win_size):
  n = win_size * win_size

  def mean(z):  # valid windows only: skimage crops (win_size - 1) / 2 at each border
    return jax.lax.reduce_window(z, 0.0, jax.lax.add, (1, win_size, win_size, 1),
                                 (1, 1, 1, 1), "VALID") / n

  ua, ub = mean(a), mean(b)
  cov = n / (n - 1)
  vaa = cov * (mean(a * a) - ua * ua)
  vbb = cov * (mean(b * b) - ub * ub)
  vab = cov * (mean(a * b) - ua * ub)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
  return s.mean(axis=(1, 2, 3))


@M.jit(static_argnames=("layers", "batch_size"))
def _feature_distance(tapped, a, b, layers, batch_size):
  def unit(z):  # LPIPS's normalization: each position's channel vector to unit length
    return z / (jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True)) + 1e-10)

  def one(pair):
    _, acts = tapped(jnp.stack(pair))
    total = 0.0
    for name in layers:
      z = acts[name].astype(jnp.promote_types(a.dtype, jnp.float32))
      d = jnp.sum((unit(z[0]) - unit(z[1])) ** 2, axis=-1)
      total = total + jnp.mean(d)  # spatial mean, as LPIPS (a dense layer has one position)
    return total

  return parallel.chunked_map(one, (a, b), batch_size=batch_size)


def feature_distance(tapped, a, b, layers, *, batch_size: int | None = None) -> Array:
  """LPIPS-style perceptual distance of each pair ``(a[i], b[i])``, ``[B]``.

  Zhang, Isola, Efros, Shechtman, Wang 2018 ("The Unreasonable Effectiveness
  of Deep Features as a Perceptual Metric", Eq. 1): at each of `layers`, the
  activations' channel vector at every position is scaled to unit length,
  the squared L2 difference is averaged over positions, and the layers are
  summed. LPIPS then weighs channels with weights learned on human
  judgements for AlexNet/VGG/SqueezeNet; this is its uncalibrated variant
  (all weights 1, the paper's "baseline" features), on whatever network is
  given: e.g. the pretrained EfficientNet-Lite0, whose stage outputs play the
  part of AlexNet's conv layers. 0 for identical inputs; at most
  ``2 * len(layers)`` (two opposite unit vectors at every position).

  Args:
    tapped: a `saljax.Tapped` (or a classifier with ``.tapped``, as
      `load_pretrained` returns); `a` and `b` must already be its inputs
      (preprocess them first).
    a, b: ``[B, ...]`` inputs, one pair per row.
    layers: names of tapped layers (a sequence; no default, since the right
      stages depend on the network).
    batch_size: at most this many pairs per forward pass (memory bound).
  """
  tapped = tapped if isinstance(tapped, M.Tapped) else getattr(tapped, "tapped", tapped)
  if not isinstance(tapped, M.Tapped):
    raise TypeError(f"tapped: expected a saljax.Tapped (or a model with .tapped), got"
                    f" {V.describe(tapped)}")
  if isinstance(layers, str) or not layers:
    raise ValueError(f"layers: expected a non-empty sequence of layer names, got {layers!r}")
  layers = M.check_layers(tapped, tuple(layers))
  a = V.check_input(a, name="a")
  b = V.check_input(b, name="b")
  if a.shape != b.shape:
    raise ValueError(f"b: expected the shape of a, {tuple(a.shape)}, got {tuple(b.shape)}")
  return _feature_distance(tapped, a, b.astype(a.dtype), layers, V.check_batch_size(batch_size))
