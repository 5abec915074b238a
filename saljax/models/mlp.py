"""A multilayer perceptron on flattened inputs.

Tappable layers: ``hidden_<i>`` (each hidden layer after its activation) and
``out`` (the logits). Default layer: the last hidden layer (an MLP has no
spatial map, so CAMs on it give a ``[B, 1, width]``-like vector, not an image).
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn


class DenseAct(nn.Module):
  """Dense -> activation, one tappable output."""
  features: int
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    return self.act(nn.Dense(self.features, name="dense")(x))


class MLP(nn.Module):
  """ReLU MLP: flatten -> hidden layers -> logits.

  Attributes:
    num_classes: logits size.
    hidden: widths of the hidden layers (default two of 256, as the BlockMNIST
      MLPs of Shah, Jain, Netrapalli 2021, arXiv:2102.12781).
  """
  num_classes: int = 10
  hidden: Sequence[int] = (256, 256)
  act: Callable = nn.relu

  @property
  def default_layer(self) -> str:
    return f"hidden_{len(self.hidden) - 1}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for i, w in enumerate(self.hidden):
      x = DenseAct(w, self.act, name=f"hidden_{i}")(x)
    return nn.Dense(self.num_classes, name="out")(x)


def mlp(num_classes: int = 10, hidden: Sequence[int] = (256, 256)) -> MLP:
  return MLP(num_classes=num_classes, hidden=tuple(hidden))
