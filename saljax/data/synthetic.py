"""Small data sets built here, each with a known right answer for explanations.

Beyond image classification: per-pixel segmentation of planted shapes
(`segmentation`), token sequences whose label is decided by "trigger" tokens
(`trigger_tokens`: a correct token attribution points at the triggers), and a
scikit-learn tabular data set, split and standardized (`tabular`). All are
numpy arrays, deterministic under `seed` (a split draws from
``numpy.random.default_rng([seed, split])``, so the train and test sets of one
seed differ and each is the same on every call and platform), and need no
download. `saljax.models.quick` trains a zoo model on each in seconds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from saljax import _validation as V

SPLITS = ("train", "test")

# Class colours of the planted shapes (class k >= 1 uses PALETTE[k - 1]); the
# background is grey noise, far from every colour here.
PALETTE = np.array([
    [0.9, 0.1, 0.1],   # red
    [0.1, 0.8, 0.2],   # green
    [0.15, 0.3, 0.95],  # blue
    [0.95, 0.85, 0.1],  # yellow
    [0.8, 0.2, 0.85],   # magenta
    [0.1, 0.85, 0.9],   # cyan
], np.float32)

TABULAR = ("breast_cancer", "wine")


def _rng(seed: int, split: str) -> np.random.Generator:
  V.check_choice(split, "split", SPLITS)
  return np.random.default_rng([int(seed), SPLITS.index(split)])


def _count(n, name: str = "n") -> int:
  return V.check_positive_int(n, name)


def segmentation(n: int = 256, *, split: str = "train", seed: int = 0, size: int = 32,
                 num_classes: int = 3, max_shapes: int = 3, noise: float = 0.15
                 ) -> dict[str, np.ndarray]:
  """Images with planted squares and discs, and their per-pixel class masks.

  Each image is grey noise (``0.5 + noise * N(0, 1)`` per pixel and channel)
  with 1 to `max_shapes` shapes painted on it in order (a later shape covers
  an earlier one). A shape's class ``k`` in ``1..num_classes-1`` is drawn
  uniformly and decides its colour (`PALETTE`, plus a third of the noise); its
  form (square or disc), centre and size (half-side or radius from ``size/10``
  to ``size/5``) are drawn independently of the class, so only the colour
  tells the classes apart and only the shape's outline tells where it ends.
  Class 0 is the background.

  Args:
    n: number of images (default 256).
    split: ``"train"`` or ``"test"`` (different draws of one seed).
    seed: the seed.
    size: image side, a multiple of 4 (the U-Net pools twice); default 32.
    num_classes: ``K`` including the background, 2 to ``1 + len(PALETTE)``;
      default 3.
    max_shapes: most shapes per image (default 3).
    noise: standard deviation of the background noise (default 0.15).
  Returns:
    ``{"image": float32 [n, size, size, 3] in [0, 1], "mask": int32 [n, size, size]}``.
  """
  n = _count(n)
  size = V.check_positive_int(size, "size", minimum=8)
  if size % 4:
    raise ValueError(f"size: expected a multiple of 4 (the U-Net pools twice), got {size}")
  num_classes = V.check_positive_int(num_classes, "num_classes", minimum=2)
  if num_classes > 1 + len(PALETTE):
    raise ValueError(f"num_classes: expected at most {1 + len(PALETTE)} (background and"
                     f" one colour per class), got {num_classes}")
  max_shapes = _count(max_shapes, "max_shapes")
  if not 0.0 <= float(noise) <= 0.5:
    raise ValueError(f"noise: expected a standard deviation in [0, 0.5], got {noise!r}")
  rng = _rng(seed, split)
  image = (0.5 + noise * rng.standard_normal((n, size, size, 3))).astype(np.float32)
  mask = np.zeros((n, size, size), np.int32)
  yy, xx = np.mgrid[:size, :size]
  lo, hi = max(2, size // 10), max(3, size // 5)
  for i in range(n):
    for _ in range(rng.integers(1, max_shapes + 1)):
      k = int(rng.integers(1, num_classes))
      r = int(rng.integers(lo, hi + 1))
      cy, cx = rng.integers(r, size - r, size=2)
      if rng.random() < 0.5:
        inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
      else:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
      colour = PALETTE[k - 1] + (noise / 3) * rng.standard_normal((int(inside.sum()), 3))
      image[i][inside] = colour
      mask[i][inside] = k
  return {"image": np.clip(image, 0.0, 1.0), "mask": mask}


def trigger_tokens(n: int = 512, *, split: str = "train", seed: int = 0, length: int = 16,
                   vocab_size: int = 64, triggers: Sequence[int] = (1, 2, 3),
                   max_triggers: int = 2, positive_fraction: float = 0.5
                   ) -> dict[str, np.ndarray]:
  """Token sequences labelled 1 when a trigger token occurs, else 0.

  Negative sequences (label 0) draw every token uniformly from the vocabulary
  without the triggers; a positive sequence (label 1, with probability
  `positive_fraction`) then gets 1 to `max_triggers` trigger tokens (drawn
  from `triggers`) at distinct random positions. The label depends on those
  positions only, so a correct attribution of class 1 is concentrated on
  ``trigger_mask``.

  Args:
    n: number of sequences (default 512).
    split: ``"train"`` or ``"test"``.
    seed: the seed.
    length: tokens per sequence, ``T`` (default 16).
    vocab_size: token ids ``0..vocab_size-1`` (default 64).
    triggers: the trigger ids (default (1, 2, 3)).
    max_triggers: most triggers in one positive sequence (default 2).
    positive_fraction: share of positives (default 0.5).
  Returns:
    ``{"tokens": int32 [n, T], "label": int32 [n], "trigger_mask": bool [n, T]}``.
  """
  n = _count(n)
  length = V.check_positive_int(length, "length", minimum=2)
  vocab_size = V.check_positive_int(vocab_size, "vocab_size", minimum=2)
  trig = np.unique(np.asarray(list(triggers), np.int64))
  if trig.size == 0 or trig.min() < 0 or trig.max() >= vocab_size or trig.size >= vocab_size:
    raise ValueError(f"triggers: expected distinct ids in [0, {vocab_size}) that leave some"
                     f" ids free, got {list(triggers)}")
  max_triggers = V.check_positive_int(max_triggers, "max_triggers")
  if max_triggers > length:
    raise ValueError(f"max_triggers: expected at most length = {length}, got {max_triggers}")
  if not 0.0 <= float(positive_fraction) <= 1.0:
    raise ValueError(f"positive_fraction: expected a share in [0, 1], got {positive_fraction!r}")
  rng = _rng(seed, split)
  plain = np.setdiff1d(np.arange(vocab_size), trig)
  tokens = plain[rng.integers(0, plain.size, size=(n, length))]
  label = (rng.random(n) < positive_fraction).astype(np.int32)
  where = np.zeros((n, length), bool)
  for i in np.flatnonzero(label):
    count = int(rng.integers(1, max_triggers + 1))
    pos = rng.choice(length, size=count, replace=False)
    tokens[i, pos] = rng.choice(trig, size=count)
    where[i, pos] = True
  return {"tokens": tokens.astype(np.int32), "label": label, "trigger_mask": where}


def tabular(name: str = "breast_cancer", *, seed: int = 0, test_fraction: float = 0.25
            ) -> dict:
  """A scikit-learn tabular data set, split and standardized.

  ``breast_cancer`` (569 tumours, 30 features, 2 classes) or ``wine`` (178
  wines, 13 features, 3 classes), both shipped inside scikit-learn. The split
  is stratified (each class keeps its share in both parts) and drawn from
  `seed`; features are standardized with the *training* mean and standard
  deviation only, so nothing of the test set leaks into the model's input.

  Returns:
    ``{"train": {"x": float32 [N, F], "label": int32 [N]}, "test": {...},
    "mean": [F], "std": [F], "feature_names": [F], "class_names": [C]}``;
    ``x * std + mean`` gives the raw features back.
  """
  V.check_choice(name, "name", TABULAR)
  if not 0.0 < float(test_fraction) < 1.0:
    raise ValueError(f"test_fraction: expected a share in (0, 1), got {test_fraction!r}")
  from sklearn import datasets
  bunch = datasets.load_breast_cancer() if name == "breast_cancer" else datasets.load_wine()
  x = np.asarray(bunch.data, np.float64)
  y = np.asarray(bunch.target, np.int32)
  rng = np.random.default_rng([int(seed), 2])
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    test[idx[:int(round(float(test_fraction) * idx.size))]] = True
  mean = x[~test].mean(0)
  std = x[~test].std(0)
  std = np.where(std > 0, std, 1.0)  # a constant feature stays 0, not NaN

  def part(keep):
    return {"x": ((x[keep] - mean) / std).astype(np.float32), "label": y[keep]}

  return {"train": part(~test), "test": part(test), "mean": mean.astype(np.float32),
          "std": std.astype(np.float32), "feature_names": [str(s) for s in bunch.feature_names],
          "class_names": [str(s) for s in bunch.target_names]}
