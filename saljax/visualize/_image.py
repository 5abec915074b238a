"""Image parameterizations and random transformations for feature visualization.

- Fourier parameterization with decorrelated colour (Olah, Mordvintsev,
  Schubert 2017, "Feature Visualization", Distill; the `lucid` library's
  ``fft_image`` and ``to_valid_rgb``): the image is the inverse real FFT of a
  spectrum scaled by ``1 / max(f, 1/max(H, W)) ** decay_power`` (a 1/f
  spectrum, so gradient steps change low frequencies as much as high ones),
  its channels are mixed by the square root of ImageNet's colour correlation
  (lucid's ``color_correlation_svd_sqrt``) and squashed by a sigmoid.
- MaCo (Fel et al. 2023, "Unlocking Feature Visualization for Deeper Networks
  with MAgnitude Constrained Optimization", arXiv:2306.06805; Xplique's
  ``maco_image_parametrization``): only the phase is optimized; the magnitude
  is a fixed average spectrum of natural images.
- `random_transform`: jitter, scale and rotation in one bilinear warp
  (lucid's ``standard_transforms``: pad, jitter, random scale, random rotate).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# lucid.optvis.param.color: the square root of ImageNet's colour covariance
# (from its SVD), columns normalized so the largest has norm 1.
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                              [0.27, 0.00, -0.05],
                              [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
_COLOR_INV = np.linalg.inv(COLOR_CORRELATION.T).astype(np.float32)
_EPS = 1e-4


def fourier_scale(size: tuple[int, int], decay_power: float = 1.0) -> np.ndarray:
  """lucid's spectrum scale ``[H, W//2+1]``: ``sqrt(H W) / max(f, 1/max(H, W))**decay``."""
  h, w = size
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  freq = np.sqrt(fx ** 2 + fy ** 2)
  scale = 1.0 / np.maximum(freq, 1.0 / max(h, w)) ** decay_power
  return (scale * np.sqrt(h * w)).astype(np.float32)


def recorrelate(img: Array) -> Array:
  """Decorrelated colour space -> RGB (lucid's ``_linear_decorelate_color``)."""
  return img @ jnp.asarray(COLOR_CORRELATION.T)


def decorrelate(img: Array) -> Array:
  """The inverse of `recorrelate`."""
  return img @ jnp.asarray(_COLOR_INV)


def fourier_shape(size: tuple[int, int], channels: int = 3) -> tuple[int, ...]:
  """Shape of one image's Fourier parameters: ``[C, H, W//2+1, 2]`` (real, imaginary)."""
  return (channels, size[0], size[1] // 2 + 1, 2)


def fourier_to_image(params: Array, size: tuple[int, int], *, decay_power: float = 1.0,
                     decorrelated: bool = True) -> Array:
  """Fourier parameters ``[..., C, H, W//2+1, 2]`` -> images ``[..., H, W, C]`` in (0, 1).

  lucid's ``fft_image`` (scaled spectrum, inverse real FFT, divided by 4) then
  ``to_valid_rgb`` (colour recorrelation when `decorrelated` and C == 3, sigmoid).
  """
  scale = jnp.asarray(fourier_scale(size, decay_power))
  spectrum = jax.lax.complex(params[..., 0], params[..., 1]) * scale
  img = jnp.fft.irfft2(spectrum, s=size, axes=(-2, -1)) / 4.0
  img = jnp.moveaxis(img, -3, -1)
  if decorrelated and img.shape[-1] == 3:
    img = recorrelate(img)
  return jax.nn.sigmoid(img)


def image_to_fourier(images: Array, *, decay_power: float = 1.0,
                     decorrelated: bool = True) -> Array:
  """The inverse of `fourier_to_image` for images ``[..., H, W, C]`` in (0, 1).

  Values are clipped to ``[1e-4, 1 - 1e-4]`` first (the sigmoid never reaches
  0 or 1). Used to start an optimization from a given image.
  """
  size = images.shape[-3:-1]
  img = jax.scipy.special.logit(jnp.clip(images, _EPS, 1 - _EPS))
  if decorrelated and img.shape[-1] == 3:
    img = decorrelate(img)
  img = jnp.moveaxis(img * 4.0, -1, -3)
  spectrum = jnp.fft.rfft2(img, axes=(-2, -1)) / jnp.asarray(fourier_scale(size, decay_power))
  return jnp.stack([spectrum.real, spectrum.imag], -1)


def pixel_to_image(params: Array) -> Array:
  """Pixel parameterization: ``sigmoid(params)``, images in (0, 1)."""
  return jax.nn.sigmoid(params)


def image_to_pixel(images: Array) -> Array:
  """The inverse of `pixel_to_image`."""
  return jax.scipy.special.logit(jnp.clip(images, _EPS, 1 - _EPS))


def maco_to_image(phase: Array, magnitude: Array) -> Array:
  """MaCo: phase ``[..., C, H, W//2+1]`` and fixed magnitude -> images in (0, 1).

  As Xplique's ``maco_image_parametrization``: the phase is standardized, the
  image is the inverse FFT of ``magnitude * exp(i phase)``, standardized,
  recorrelated and squashed by a sigmoid.
  """
  size = (phase.shape[-2], 2 * (phase.shape[-1] - 1))
  axes = tuple(range(-3, 0))
  phase = (phase - phase.mean(axes, keepdims=True)) / (phase.std(axes, keepdims=True) + 1e-5)
  spectrum = jax.lax.complex(jnp.cos(phase) * magnitude, jnp.sin(phase) * magnitude)
  img = jnp.moveaxis(jnp.fft.irfft2(spectrum, s=size, axes=(-2, -1)), -3, -1)
  img = (img - img.mean(axes, keepdims=True)) / (img.std(axes, keepdims=True) + 1e-5)
  if img.shape[-1] == 3:
    img = recorrelate(img)
  return jax.nn.sigmoid(img)


def natural_spectrum(images: np.ndarray, size: int, *, crops: int = 64, seed: int = 0) -> np.ndarray:
  """Mean magnitude spectrum ``[3, size, size//2+1]`` of random crops of `images`.

  MaCo's magnitude is ImageNet's average spectrum in the decorrelated colour
  space (Xplique downloads it); with no ImageNet on disk we average random
  square crops (a third of the shorter side to all of it) of the given photos,
  resized to `size`, in the same decorrelated space. ``images``: a list of
  uint8 or [0, 1] float HWC RGB arrays.
  """
  rng = np.random.default_rng(seed)
  acc = np.zeros((3, size, size // 2 + 1), np.float64)
  for i in range(crops):
    img = np.asarray(images[i % len(images)])
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = jax.image.resize(jnp.asarray(img[y:y + side, x:x + side]), (size, size, 3), "linear")
    z = decorrelate(crop)
    acc += np.abs(np.fft.rfft2(np.moveaxis(np.asarray(z), -1, 0), axes=(-2, -1)))
  return (acc / crops).astype(np.float32)


def _affine_coords(size: tuple[int, int], shift: Array, scale: Array, angle: Array) -> Array:
  """Source coordinates ``[2, H, W]`` of a warp: rotate by `angle`, scale, shift (pixels)."""
  h, w = size
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  y = (yy - cy - shift[0]) / scale
  x = (xx - cx - shift[1]) / scale
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.stack([c * y - s * x + cy, s * y + c * x + cx])


def warp(img: Array, shift: Array, scale: Array, angle: Array, *, fill: float = 0.5) -> Array:
  """One image ``[H, W, C]`` warped bilinearly; outside pixels are `fill` (lucid pads with 0.5)."""
  coords = _affine_coords(img.shape[:2], shift, scale, angle)
  one = lambda ch: jax.scipy.ndimage.map_coordinates(ch, list(coords), order=1, mode="constant",
                                                     cval=fill)
  return jax.vmap(one, in_axes=-1, out_axes=-1)(img)


def random_transform(img: Array, key: Array, n: int, *, jitter: float, scale: Sequence[float],
                     degrees: float, fill: float = 0.5) -> Array:
  """`n` random warps ``[n, H, W, C]`` of one image ``[H, W, C]``.

  Per warp, independently under `key`: a shift uniform in ``+-jitter * size``
  pixels, a scale uniform in ``scale = (low, high)`` and a rotation uniform
  in ``+-degrees``.
  """
  size = jnp.asarray(img.shape[:2], jnp.float32)
  k1, k2, k3 = jax.random.split(key, 3)
  shift = jax.random.uniform(k1, (n, 2), minval=-1.0, maxval=1.0) * jitter * size
  s = jax.random.uniform(k2, (n,), minval=scale[0], maxval=scale[1])
  a = jax.random.uniform(k3, (n,), minval=-1.0, maxval=1.0) * np.deg2rad(degrees)
  return jax.vmap(lambda sh, sc, an: warp(img, sh, sc, an, fill=fill))(shift, s, a)


def gaussian_blur(img: Array, sigma: Array, radius: int = 2) -> Array:
  """Separable Gaussian blur of ``[H, W, C]`` with a traced `sigma` (> 0), edge-padded."""
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (t / jnp.maximum(sigma, 1e-3)) ** 2)
  k = k / k.sum()
  p = jnp.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
  h, w = img.shape[:2]
  rows = sum(k[i] * p[i:i + h] for i in range(2 * radius + 1))
  return sum(k[i] * rows[:, i:i + w] for i in range(2 * radius + 1))
