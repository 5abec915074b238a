"""Extremal perturbation (Fong, Patrick, Vedaldi 2019), following TorchRay's
`extremal_perturbation`: a smooth mask generator, a blur pyramid, the
sorted-vector area constraint, optimized with optax.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saljax import _validation as V
from saljax import model as M
from saljax import ops
from saljax import parallel
from saljax import removal as R
from saljax.explainers import _masking as MK
from saljax.explainers._registry import REGISTRY, prepare

Array = jax.Array
VARIANTS = ("preserve", "delete")


def mask_generator(shape: tuple[int, int], step: int, sigma: float):
  """TorchRay's `MaskGenerator` as gather indices and weights (numpy, static).

  A parameter grid of ``ceil(H / step) x ceil(W / step)`` cells is turned into a
  smooth mask: every output pixel takes a softmax-weighted max (coldness 20)
  over the ``(2r + 1)^2`` nearby parameters, each damped by the kernel
  ``exp(-2 max(d / sigma - 1/2, 0)^2)`` of its distance d. Returns
  ``(shape_in, padding, index [Ho, Wo, K], weight [Ho, Wo, K], margin)``.
  """
  margin = sigma
  padding = 1 + math.ceil((margin + sigma) / step)
  radius = 1 + math.ceil(sigma / step)
  shape_in = [math.ceil(z / step) for z in shape]
  shape_mid = [z + 2 * padding - (2 * radius + 1) + 1 for z in shape_in]
  shape_up = [step * z for z in shape_mid]
  shape_out = [z - step + 1 for z in shape_up]
  k = 2 * radius + 1
  uy, ux = np.meshgrid(np.arange(shape_out[0]), np.arange(shape_out[1]), indexing="ij")
  ky, kx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  ky, kx = ky.ravel(), kx.ravel()
  base_y = np.floor(np.float32(shape_mid[0]) / np.float32(shape_up[0]) * uy)
  base_x = np.floor(np.float32(shape_mid[1]) / np.float32(shape_up[1]) * ux)
  iy = base_y[..., None] + ky - padding  # parameter row (unpadded coordinates)
  ix = base_x[..., None] + kx - padding
  delta = np.sqrt((uy[..., None] - (margin + step * iy)) ** 2 + (ux[..., None] - (margin + step * ix)) ** 2)
  weight = np.exp(-2 * np.maximum(delta / sigma - 0.5, 0) ** 2).astype(np.float32)
  # Index into the parameter grid zero-padded by `padding` on each side (F.unfold's padding).
  wp = shape_in[1] + 2 * padding
  index = ((iy + padding) * wp + (ix + padding)).astype(np.int32)
  return tuple(shape_in), padding, index, weight, int(round(margin))


def _generate(pmask, padding, index, weight, margin, shape):
  pp = jnp.pad(pmask, padding)
  vals = pp.reshape(-1)[index] * weight
  pooled = (vals * jax.nn.softmax(20.0 * vals, axis=-1)).sum(-1)
  full = jnp.clip(pooled, 0.0, 1.0)
  return full[margin:margin + shape[0], margin:margin + shape[1]]


def blur_pyramid(x: Array, levels: int, max_blur: float) -> Array:
  """``[L, B, H, W, C]``: level l blurred with sigma ``(1 - l / (L - 1)) * max_blur``
  (level 0 the most blurred, the last one `x` itself), zero-padded as TorchRay's `imsmooth`."""
  sig = (1.0 - np.linspace(0.0, 1.0, levels)) * max_blur
  return jnp.stack([ops.gaussian_blur(x, float(s), max_sigma=max_blur, mode="constant") for s in sig])


def _apply(pyramid, mask):
  """TorchRay's `Perturbation.apply`: mask 1 keeps the input, 0 is the most blurred level."""
  levels = pyramid.shape[0]
  w = mask * (levels - 1)
  k = jnp.floor(w)
  frac = (w - k)[..., None]
  k = k.astype(jnp.int32)
  idx0 = k[None, ..., None]
  idx1 = jnp.minimum(k + 1, levels - 1)[None, ..., None]
  y0 = jnp.take_along_axis(pyramid, jnp.broadcast_to(idx0, (1,) + pyramid.shape[1:]), 0)[0]
  y1 = jnp.take_along_axis(pyramid, jnp.broadcast_to(idx1, (1,) + pyramid.shape[1:]), 0)[0]
  return (1 - frac) * y0 + frac * y1


@M.jit(static_argnames=(
    "shape_in", "padding", "margin", "iterations", "levels", "max_blur", "variant", "jitter"))
def _extremal(f, x, target, area, index, weight, learning_rate, shape_in, padding, margin,
              iterations, levels, max_blur, variant, jitter, fill=None):
  b, h, w = x.shape[:3]
  # removal=None: TorchRay's blur pyramid; a pixel strategy: x * m + fill * (1 - m).
  pyramid = blur_pyramid(x, levels, max_blur) if fill is None else None
  gen = jax.vmap(lambda p: _generate(p, padding, index, weight, margin, (h, w)))
  n = h * w
  # Sorted-vector area target: the smallest (1 - area) fraction 0, the rest 1.
  reference = (jnp.arange(n) >= jnp.floor(n * (1 - area))).astype(x.dtype)
  sign = 1.0 if variant == "preserve" else -1.0

  def energy(pm, t):
    mask = gen(pm)
    keep = mask if variant == "preserve" else 1 - mask
    if fill is None:
      xp = _apply(pyramid, keep)
    else:
      xp = x * keep[..., None] + fill * (1 - keep[..., None])
    if jitter:
      xp = jnp.where(t % 2 == 0, jnp.flip(xp, axis=2), xp)
    reward = sign * M.target_score(f, xp, target, "logit")
    regul_weight = 300.0 * 1.0035 ** t.astype(x.dtype)
    regul = -((jnp.sort(mask.reshape(b, -1), axis=1) - reference) ** 2).mean(1) * regul_weight
    return -(reward + regul).sum()

  # torch SGD(momentum=0.9, dampening=0.9): buf = 0.9 buf + 0.1 g, step -lr * buf.
  opt = optax.chain(optax.ema(0.9, debias=False), optax.scale(-learning_rate))
  pm0 = jnp.ones((b,) + shape_in, x.dtype)

  def step(carry, t):
    pm, state = carry
    g = jax.grad(energy)(pm, t)
    upd, state = opt.update(g, state, pm)
    pm = jnp.clip(optax.apply_updates(pm, upd), 0.0, 1.0)
    return (pm, state), None

  (pm, _), _ = jax.lax.scan(step, (pm0, opt.init(pm0)), jnp.arange(iterations))
  mask = gen(pm)
  return jnp.broadcast_to(mask[..., None], x.shape)


@REGISTRY.register("extremal_perturbation", family="perturbation", returns="input",
    evaluations=lambda o, f, x: o["iterations"], backward=True,
    smoke={"iterations": 4, "area": 0.25, "step": 2, "sigma": 3.0, "max_blur": 3.0})
def extremal_perturbation(f, x, target, *, key=None, area: float = 0.1, iterations: int = 800,
                          step: int = 7, sigma: float = 21.0, levels: int = 8,
                          max_blur: float = 20.0, variant: str = "preserve", jitter: bool = True,
                          learning_rate: float = 0.01, removal: Any = None) -> Array:
  """Extremal perturbation (Fong, Patrick, Vedaldi 2019, "Understanding Deep
  Networks via Extremal Perturbations and Smooth Masks", arXiv:1910.08485),
  as TorchRay's `extremal_perturbation`.

  Finds a smooth mask of fraction `area` of the image that maximizes the
  target logit when only the masked region is kept (``variant="preserve"``;
  ``"delete"`` minimizes it when the region is removed). Removed pixels are
  blurred through an ``levels``-level pyramid up to `max_blur`. The area is
  imposed by the ranking loss ``-300 * 1.0035^t * mean((sort(m) - r_a)^2)``
  whose weight grows each iteration, with ``r_a`` the sorted vector of a mask
  of area `a`; masks are optimized by SGD with momentum 0.9 (optax) and
  projected to [0, 1]. Every example of the batch is optimized at once.

  Defaults are TorchRay's: ``area=0.1, iterations=800, step=7, sigma=21,
  levels=8, max_blur=20, jitter=True`` (flip horizontally on even
  iterations), learning rate 0.01. Two deviations: the area constraint
  ranks the mask over the image itself, where TorchRay ranks it over the
  mask with its ``sigma``-pixel margin (so TorchRay's in-image area is only
  roughly `area`; here it is `area`), and the momentum buffer starts at 0
  (optax's ema) where torch starts it at the first gradient.

  Args:
    removal: None (default: TorchRay's blur pyramid, `levels` and
      `max_blur`), or a pixel `saljax.removal.Removal` (or its kind's name):
      ``"constant"``/``"blur"``/``"mean"`` make the perturbed input
      ``x * m + fill * (1 - m)`` with that fill (blur: one level with the
      Removal's ``blur_sigma``, default `max_blur`; mean: each image's mean
      colour). ``"token_drop"``/``"layer_mask"`` are refused: they read the
      mask as kept or removed (``> 0.5``), which has no gradient for the
      mask optimization.

  Returns:
    the mask in [0, 1], shaped like `x` (equal across channels).
  """
  rem = R.as_removal(removal)
  if rem is not None and rem.needs_model:
    raise ValueError(f"extremal_perturbation: removal={rem.kind!r} reads the mask as kept or"
                     " removed, so the mask optimization would get no gradient; use a pixel"
                     " strategy ('constant', 'blur', 'mean') or removal=None (the blur pyramid)")
  f, x, target = prepare(f, x, target)
  MK.check_images(x, "extremal_perturbation")
  area = MK.check_probability(area, "area")
  iterations = parallel.check_count(iterations, "iterations")
  step = V.check_positive_int(step, "step")
  levels = V.check_positive_int(levels, "levels", minimum=2)
  V.check_choice(variant, "variant", VARIANTS)
  if not sigma > 0 or not max_blur > 0 or not learning_rate > 0:
    raise ValueError(
        f"sigma, max_blur, learning_rate: expected positive floats, got {sigma!r}, {max_blur!r},"
        f" {learning_rate!r}")
  fillv = None if rem is None else R.pixel_fill(x, rem, float(max_blur))
  shape_in, padding, index, weight, margin = mask_generator(x.shape[1:3], step, float(sigma))
  return _extremal(f, x, target, jnp.asarray(area, x.dtype), jnp.asarray(index),
                   jnp.asarray(weight, x.dtype), jnp.asarray(learning_rate, x.dtype),
                   shape_in, padding, margin, iterations, levels, float(max_blur), variant,
                   bool(jitter), fillv)
