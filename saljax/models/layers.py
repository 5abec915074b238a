"""Layers shared by the zoo: TF-"SAME" padding, depthwise convolution in two
formulations, and conv + batch norm + activation blocks.

Depthwise convolution. XLA lowers ``conv_general_dilated`` with
``feature_group_count=C`` to a grouped convolution that is slow on XLA:CPU,
forward and especially backward (the input gradient is what explainers need).
A k x k depthwise convolution is also the sum of k*k shifted copies of the
input, each scaled per channel: plain elementwise work that XLA fuses well.
Both give the same numbers (up to float summation order); which one runs is
chosen per backend (`DEPTHWISE_AUTO`, from the measurements in
docs/benchmarks.md) or forced with `set_depthwise_impl`. The choice is read
when a model is traced, so set it before the first call of a jitted function.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

DEPTHWISE_IMPLS = ("xla", "shifts")
# Per-backend choice measured in docs/benchmarks.md (experiments/depthwise_bench.py).
# Backends not listed use XLA's grouped convolution.
DEPTHWISE_AUTO = {"cpu": "shifts", "gpu": "xla", "tpu": "xla"}
_depthwise_impl = "auto"


def set_depthwise_impl(impl: str) -> None:
  """Forces the depthwise formulation: ``"xla"``, ``"shifts"`` or ``"auto"``.

  Takes effect for models traced afterwards (jitted functions already compiled
  keep the formulation they were traced with).
  """
  global _depthwise_impl
  if impl not in DEPTHWISE_IMPLS + ("auto",):
    raise ValueError(f"depthwise impl: expected one of {DEPTHWISE_IMPLS + ('auto',)}, got {impl!r}")
  _depthwise_impl = impl


def depthwise_impl() -> str:
  """The formulation used now: the forced one, or the backend's choice."""
  if _depthwise_impl != "auto":
    return _depthwise_impl
  return DEPTHWISE_AUTO.get(jax.default_backend(), "xla")


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow "SAME" padding ``(lo, hi)``: output ``ceil(size / stride)``,
  the odd pixel of padding at the end (as lax "SAME" and the reference
  PyTorch port's ``Conv2dStaticSamePadding``)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_conv_xla(x: Array, kernel: Array, stride: int) -> Array:
  """Depthwise conv NHWC, kernel ``[k, k, 1, C]``, TF-SAME padding, via XLA."""
  return lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def depthwise_conv_shifts(x: Array, kernel: Array, stride: int) -> Array:
  """Depthwise conv NHWC as a sum of ``k*k`` shifted, per-channel-scaled
  copies of the padded input (same result as `depthwise_conv_xla`)."""
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  ph, pw = same_pads(h, kh, stride), same_pads(w, kw, stride)
  oh, ow = -(-h // stride), -(-w // stride)
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  k = kernel.astype(x.dtype).reshape(kh, kw, c)
  out = None
  for i in range(kh):  # static unroll over the k*k kernel taps
    for j in range(kw):
      patch = lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                        (1, stride, stride, 1))
      term = patch * k[i, j]
      out = term if out is None else out + term
  return out


def depthwise_conv(x: Array, kernel: Array, stride: int, impl: str | None = None) -> Array:
  """Depthwise conv with the formulation `impl` (None: `depthwise_impl()`)."""
  impl = impl or depthwise_impl()
  if impl == "xla":
    return depthwise_conv_xla(x, kernel, stride)
  if impl == "shifts":
    return depthwise_conv_shifts(x, kernel, stride)
  raise ValueError(f"depthwise impl: expected one of {DEPTHWISE_IMPLS}, got {impl!r}")


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution, no bias, TF-SAME padding.

  The kernel ``[k, k, 1, C]`` has the layout of ``nn.Conv`` with
  ``feature_group_count=C``. `impl` forces a formulation (None: the switch).
  """
  kernel_size: int
  stride: int = 1
  impl: str | None = None
  kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, c))
    return depthwise_conv(x, kernel, self.stride, self.impl)


def relu6(x):
  # jax.nn.relu6 (not jnp.clip): one named activation that the propagation
  # explainers' jaxpr interpreter recognizes.
  return jax.nn.relu6(x)


class ConvBNAct(nn.Module):
  """Conv (TF-SAME, no bias) -> batch norm -> activation, one tappable output.

  `depthwise=True` makes the conv a `DepthwiseConv`. Batch norm uses running
  statistics unless ``train=True``.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  depthwise: bool = False
  act: Callable | None = relu6
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  impl: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.stride, impl=self.impl, name="conv")(x)
    else:
      x = nn.Conv(self.features, (self.kernel_size,) * 2, (self.stride,) * 2, padding="SAME",
                  use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, name="bn")(x)
    return self.act(x) if self.act is not None else x


def count_params(tree: Any) -> int:
  return sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))
