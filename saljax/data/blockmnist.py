"""BlockMNIST (Shah, Jain, Netrapalli 2021, "Do Input Gradients Highlight
Discriminative Features?", NeurIPS 2021, arXiv:2102.12781), built from
scikit-learn's digits so that it needs no download.

Each image stacks two square blocks vertically: a *signal* block holding a
digit (the digit decides the label) and a *null* block holding a fixed
pattern that is the same for every image and class (it carries no label
information). Which block is on top is drawn at random per image
(``placement="random"``); ``placement="top"`` puts the signal always on top
(the paper's BlockMNIST-Top control). The ground-truth location of the signal
block is returned with every image.

What the paper fixes and what saljax chose (the paper's data were never
released and its appendix was not available, see
shared/references/evaluation_protocols.md, sec. 1.4):
- from the paper: two vertically stacked blocks, digit block decides the
  label, null block constant across classes, random vertical order;
- saljax's choices: blocks of ``size x size`` (28, as MNIST) so images are
  ``[2*size, size, 1]``; the 8x8 scikit-learn digit is upsampled bilinearly
  to 20x20 and centred with a 4-pixel margin (MNIST's own layout); the null
  pattern is a hollow square outline (a fixed, digit-like stroke so that the
  null block is not trivially blank); pixels in [0, 1]; all 10 classes; a
  fixed 80/20 train/test split of the 1797 digits; top/bottom with
  probability 1/2.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V

SPLITS = ("train", "test")
PLACEMENTS = ("random", "top")
NUM_CLASSES = 10
_SPLIT_SEED = 20210205  # fixed: the train/test split never depends on the user's seed
_TRAIN_FRACTION = 0.8


@functools.lru_cache(maxsize=4)
def _digit_blocks(size: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as ``[N, size, size]`` float32 blocks in [0, 1], and labels."""
  from skimage.transform import resize
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0
  inner = max(1, round(size * 20 / 28))  # MNIST: a 20x20 digit in a 28x28 frame
  lo = (size - inner) // 2
  up = resize(images, (images.shape[0], inner, inner), order=1, mode="edge",
              anti_aliasing=False, preserve_range=True).astype(np.float32)
  blocks = np.zeros((images.shape[0], size, size), np.float32)
  blocks[:, lo:lo + inner, lo:lo + inner] = np.clip(up, 0.0, 1.0)
  return blocks, digits.target.astype(np.int32)


def null_block(size: int = 28) -> np.ndarray:
  """The fixed non-discriminative pattern: a hollow square outline, ``[size, size]``."""
  block = np.zeros((size, size), np.float32)
  lo, hi = size // 4, size - size // 4
  width = max(1, size // 14)
  block[lo:hi, lo:lo + width] = block[lo:hi, hi - width:hi] = 1.0
  block[lo:lo + width, lo:hi] = block[hi - width:hi, lo:hi] = 1.0
  return block


def _split_indices(n: int, split: str) -> np.ndarray:
  order = np.random.default_rng(_SPLIT_SEED).permutation(n)
  cut = int(round(_TRAIN_FRACTION * n))
  return np.sort(order[:cut] if split == "train" else order[cut:])


def load(split: str = "train", *, placement: str = "random", seed: int = 0,
         size: int = 28, classes=None) -> dict[str, np.ndarray]:
  """BlockMNIST examples of one split, as numpy arrays.

  Args:
    split: ``"train"`` (1438 images) or ``"test"`` (359 images).
    placement: ``"random"`` (signal on top or bottom with probability 1/2,
      drawn from `seed`) or ``"top"`` (BlockMNIST-Top: signal always on top).
    seed: seeds the top/bottom draw (per split, reproducible).
    size: block side; images are ``[2*size, size, 1]``.
    classes: optional subset of digits to keep (e.g. ``(0, 1)`` for a binary
      task); labels are re-indexed to ``0..len(classes)-1`` in the given order.
  Returns:
    ``{"image": float32 [N, 2*size, size, 1] in [0, 1], "label": int32 [N],
    "signal_top": bool [N], "signal_mask": bool [N, 2*size, size]}`` where
    `signal_mask` is true on the digit block (the ground truth).
  """
  V.check_choice(split, "split", SPLITS)
  V.check_choice(placement, "placement", PLACEMENTS)
  size = V.check_positive_int(size, "size", minimum=8)
  blocks, labels = _digit_blocks(size)
  idx = _split_indices(len(labels), split)
  blocks, labels = blocks[idx], labels[idx]
  if classes is not None:
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
    if bad or len(set(classes)) != len(classes) or len(classes) < 2:
      raise ValueError(f"classes: expected >= 2 distinct digits in [0, 10), got {classes}")
    keep = np.isin(labels, classes)
    remap = np.full(NUM_CLASSES, -1, np.int32)
    remap[classes] = np.arange(len(classes), dtype=np.int32)
    blocks, labels = blocks[keep], remap[labels[keep]]
  n = len(labels)
  if placement == "top":
    top = np.ones(n, bool)
  else:
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    top = rng.random(n) < 0.5
  null = np.broadcast_to(null_block(size), blocks.shape)
  upper = np.where(top[:, None, None], blocks, null)
  lower = np.where(top[:, None, None], null, blocks)
  image = np.concatenate([upper, lower], axis=1)[..., None].astype(np.float32)
  mask = np.zeros((n, 2 * size, size), bool)
  mask[top, :size] = True
  mask[~top, size:] = True
  return {"image": image, "label": labels.astype(np.int32), "signal_top": top, "signal_mask": mask}


@functools.partial(jax.jit, static_argnames=("k",))
def _null_share(attribution, signal_mask, k):
  b = attribution.shape[0]
  flat = attribution.reshape(b, -1)
  _, top = jax.lax.top_k(flat, k)
  in_null = ~jnp.take_along_axis(signal_mask.reshape(b, -1), top, axis=1)
  return in_null.mean(axis=1)


def null_block_share(attribution, signal_mask, *, fraction: float = 0.1,
                     absolute: bool = True) -> jax.Array:
  """Share of the top-`fraction` attributed pixels that fall in the null block,
  per example ``[B]`` (lower is better).

  The quantifier of Serrurier et al. 2023 ("On the explainable properties of
  1-Lipschitz neural networks: an optimal transport perspective", NeurIPS 2023,
  arXiv:2206.06854), who re-ran the BlockMNIST study of Shah et al.; a uniformly
  random attribution scores 0.5 (equal blocks).

  Args:
    attribution: ``[B, H, W]`` or ``[B, H, W, C]`` (channels are summed after
      the absolute value when `absolute`).
    signal_mask: bool ``[B, H, W]``, true on the signal block.
    fraction: share of pixels counted as "top", in (0, 1]; default 0.1.
    absolute: rank by ``|attribution|`` (default, as for gradient magnitudes).
  """
  a = jnp.asarray(attribution)
  m = jnp.asarray(signal_mask)
  if a.ndim == 4:
    a = (jnp.abs(a) if absolute else a).sum(-1)
  elif a.ndim == 3:
    a = jnp.abs(a) if absolute else a
  else:
    raise ValueError(f"attribution: expected [B, H, W] or [B, H, W, C], got shape {tuple(a.shape)}")
  if m.shape != a.shape:
    raise ValueError(f"signal_mask: expected shape {tuple(a.shape)}, got {tuple(m.shape)}")
  if not 0.0 < float(fraction) <= 1.0:
    raise ValueError(f"fraction: expected a float in (0, 1], got {fraction!r}")
  k = max(1, int(round(float(fraction) * a.shape[1] * a.shape[2])))
  return _null_share(a.astype(jnp.float32), m.astype(bool), k)
