"""Planted concepts: 16x16 images with up to three 6x6 patterns in distinct
cells of a 2x2 grid on a dark noisy background; the label is whether the
checkerboard (pattern 0) is present; stripes and a solid disc are
distractors, each present with probability 1/2 independently of the label.
A two-conv CNN (taps "block1", "block2") trained on it in a few seconds."""
import jax.numpy as jnp
import numpy as np

from saljax import model as M

import _planted  # noqa: E402  (the tiny CNN the TCAV/CRP tests share)

SIZE, PATCH = 16, 6


def _patterns() -> np.ndarray:
  yy, xx = np.mgrid[:PATCH, :PATCH]
  checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)
  stripes = (yy % 2 == 0).astype(np.float32)
  disc = (((yy - 2.5) ** 2 + (xx - 2.5) ** 2) <= 7).astype(np.float32)
  red, green, blue = np.eye(3, dtype=np.float32)
  # Checker red/yellow-ish, stripes green, disc blue: colours and textures differ.
  return np.stack([checker[..., None] * (red + 0.6 * green),
                   stripes[..., None] * green,
                   disc[..., None] * blue])


def planted(n: int, seed: int):
  """``(images [n, 16, 16, 3], labels [n], regions [n, 16, 16] of pattern 0)``."""
  rng = np.random.default_rng(seed)
  pats = _patterns()
  x = rng.uniform(0, 0.15, (n, SIZE, SIZE, 3)).astype(np.float32)
  present = rng.random((n, 3)) < 0.5
  region = np.zeros((n, SIZE, SIZE), np.float32)
  for i in range(n):  # data construction only, in numpy
    cells = rng.permutation(4)
    for p in range(3):
      if present[i, p]:
        cy, cx = divmod(int(cells[p]), 2)
        top = cy * 8 + rng.integers(0, 8 - PATCH + 1)
        left = cx * 8 + rng.integers(0, 8 - PATCH + 1)
        x[i, top:top + PATCH, left:left + PATCH] += pats[p]
        if p == 0:
          region[i, top:top + PATCH, left:left + PATCH] = 1
  return np.clip(x, 0, 1), present[:, 0].astype(np.int32), region


def PlantedCNN():  # noqa: N802  (a module, as the TCAV/CRP tests' CNN, wider)
  return _planted.PlantedCNN(widths=(8, 16), head="head")


def train(seed: int = 0, n: int = 512, steps: int = 200):
  """``(tapped, (x, y, region) of a held-out set, accuracy)``."""
  from saljax.models.quick import _train
  x, y, _ = planted(n, seed)
  module = PlantedCNN()
  variables, _, _ = _train(module, x, y, seed=seed, steps=steps, batch_size=32, learning_rate=1e-2)
  tapped = M.from_linen(module, variables, example=jnp.asarray(x[:1]))
  xt, yt, rt = planted(128, seed + 1)
  acc = float((np.asarray(jnp.argmax(tapped.logits(jnp.asarray(xt)), -1)) == yt).mean())
  return tapped, (xt, yt, rt), acc
