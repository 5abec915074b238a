"""A planted-pattern image set and a tiny CNN trained on it, shared by the
TCAV and CRP tests (and their 8-device scripts).

Images are ``[N, 12, 12, 1]``: dim uniform noise in [0, 0.3]; class 1 images
also carry a 4x4 cross of value 1 at a random position, class 0 images a 4x4
solid square of value 0.6 (so the class depends on the cross's shape, not on
brightness alone). The CNN: conv 3x3 (4) + ReLU ("block1"), conv 3x3 stride 2
(8) + ReLU ("block2"), global mean, dense (2).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from saljax import model as M
from saljax.models import quick

HW = 12
CROSS = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]], np.float32)
SQUARE = np.full((4, 4), 0.6, np.float32)


class Block(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), strides=self.strides, name="conv")(x))


class PlantedCNN(nn.Module):
  """Conv "block1", strided conv "block2", global mean, dense `head` (2 classes)."""
  widths: tuple = (8, 8)
  head: str = "dense"

  @nn.compact
  def __call__(self, x):
    a = Block(self.widths[0], name="block1")(x)
    a = Block(self.widths[1], strides=2, name="block2")(a)
    return nn.Dense(2, name=self.head)(a.mean((1, 2)))


def background(rng, n):
  return rng.uniform(0, 0.3, size=(n, HW, HW, 1)).astype(np.float32)


def stamp(rng, imgs, patch):
  """Puts `patch` at a random position in each image (in place); returns the masks."""
  masks = np.zeros(imgs.shape[:3], bool)
  for i in range(len(imgs)):  # data generation only, in numpy
    r, c = rng.integers(0, HW - 4, size=2)
    imgs[i, r:r + 4, c:c + 4, 0] = np.maximum(imgs[i, r:r + 4, c:c + 4, 0], patch)
    masks[i, r:r + 4, c:c + 4] = True
  return masks


def dataset(seed, n):
  rng = np.random.default_rng(seed)
  x = background(rng, n)
  y = (np.arange(n) % 2).astype(np.int32)
  ones, zeros = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
  sub1, sub0 = x[ones], x[zeros]
  stamp(rng, sub1, CROSS)
  stamp(rng, sub0, SQUARE)
  x[ones], x[zeros] = sub1, sub0
  return x, y


def train(seed=0, n=512, steps=300):
  """``(tapped, accuracy on fresh data)``."""
  x, y = dataset(seed, n)
  module = PlantedCNN()
  variables, _, _ = quick._train(module, x, y, seed=seed, steps=steps, batch_size=64,
                                 learning_rate=3e-3)
  tapped = M.from_linen(module, variables, example=jnp.zeros((1, HW, HW, 1)))
  xt, yt = dataset(seed + 100, 256)
  acc = float((np.asarray(tapped.logits(jnp.asarray(xt))).argmax(-1) == yt).mean())
  return tapped, acc
