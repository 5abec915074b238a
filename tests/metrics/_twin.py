"""A small flax CNN and its torch twin with the same weights (parity with Quantus).

`small_twin()` returns the saljax model `f` (NHWC), the torch module `net`
(NCHW, eval mode, float32), inputs in both layouts and labels that differ by row.
Convolutions are 3x3 stride 1 with SAME padding (torch padding=1), so both
frameworks compute the same function up to float rounding.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saljax import model as M


class SmallCNN(nn.Module):
  classes: int = 5

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), padding="SAME", name="conv1")(x))
    x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="conv2")(x))
    return nn.Dense(self.classes, name="head")(x.mean((1, 2)))


def torch_twin(params, classes: int = 5):
  """The torch module computing `SmallCNN` with `params` (flax's param dict)."""
  import torch

  class Net(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
      self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
      self.head = torch.nn.Linear(8, classes)

    def forward(self, x):
      x = torch.relu(self.conv1(x))
      x = torch.relu(self.conv2(x))
      return self.head(x.mean((2, 3)))

  net = Net()
  with torch.no_grad():
    for name in ("conv1", "conv2"):
      k = np.asarray(params[name]["kernel"])  # [kh, kw, in, out]
      getattr(net, name).weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
      getattr(net, name).bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))
    net.head.weight.copy_(torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy()))
    net.head.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))
  return net.eval()


def small_twin(batch: int = 4, size: int = 8, classes: int = 5, seed: int = 0):
  """(f, net, x_nhwc, x_nchw, y): the same CNN in JAX and torch, inputs, labels 0, 1, 2, ... by row.

  `f` is the plain ``x -> logits`` model; ``M.from_linen(SmallCNN(), ...)``
  gives the tapped one (layers "conv1", "conv2") where a metric needs it.
  """
  m = SmallCNN(classes)
  x = jax.random.normal(jax.random.key(seed + 1), (batch, size, size, 3))
  v = m.init(jax.random.key(seed), x)
  f = M.from_linen(m, v, example=x).as_model()
  net = torch_twin(v["params"], classes)
  # Labels differ by row (an untrained CNN predicts one class for all), so a
  # metric that mixes up rows cannot agree by accident.
  y = np.arange(batch) % classes
  x_nchw = np.asarray(x).transpose(0, 3, 1, 2).copy()
  return f, net, x, x_nchw, y


def to_nchw(a):
  """NHWC -> NCHW numpy."""
  return np.asarray(a).transpose(0, 3, 1, 2).copy()
