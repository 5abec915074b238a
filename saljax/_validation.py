"""Input checks shared by every explainer and metric.

All checks run at the Python boundary, before tracing, and raise
`TypeError`/`ValueError` whose message names what was expected and what came.
Value checks (NaN, inf, target range) need concrete arrays, so they are skipped
for tracers: an explainer called inside a user's `jit` still gets the shape
checks.
"""
from __future__ import annotations

import contextvars
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Call:
  """The outermost registered method being called (set by the registry wrapper),
  so shared checks can name it and record what they already verified."""

  __slots__ = ("name", "checked")

  def __init__(self, name: str):
    self.name = name
    # (model, x) pairs, as the caller passed them, whose logits were found finite.
    self.checked: list = []

  def was_checked(self, f: Any, x: Any) -> bool:
    return any(cf is f and cx is x for cf, cx in self.checked)


CURRENT: contextvars.ContextVar = contextvars.ContextVar("saljax_call", default=None)


def current_method() -> str:
  """The name of the registered method being called, or "saljax"."""
  call = CURRENT.get()
  return call.name if call is not None else "saljax"


def nonfinite_logits_error(rows, method: str | None = None) -> ValueError:
  """The error for a model whose logits are NaN or inf on examples `rows`."""
  rows = sorted(int(r) for r in rows)
  return ValueError(
      f"{method or current_method()}: the model returned non-finite logits (NaN or inf) for examples"
      f" {rows[:10]}{' ...' if len(rows) > 10 else ''} ({len(rows)} in all); an explanation or"
      " a score computed from them would mean nothing. Check the model's weights and inputs"
      " (e.g. evaluate it on these examples)")


def is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def all_finite(a: Any) -> bool:
  """False when a concrete array holds NaN or inf; True for tracers (unknown).

  Checked with numpy on the host, never with `jnp`: inside a user's `jit`
  even an operation on a concrete array is staged and gives a tracer.
  """
  return not is_concrete(a) or all(np.isfinite(b).all() for _, b in _local_rows(a))


def _local_rows(a: Any):
  """Yields ``(first_row, numpy block)`` for the rows this process can read.

  A multi-process global array is checked shard by shard on each process (each
  sees its own rows); a local array is one block.
  """
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    seen = set()
    for shard in a.addressable_shards:
      start = shard.index[0].start or 0 if shard.index else 0
      if start not in seen:
        seen.add(start)
        yield start, np.asarray(shard.data)
  else:
    yield 0, np.asarray(a)


def describe(x: Any) -> str:
  """A short description of what came, for error messages."""
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
  return f"{type(x).__name__} {x!r}"[:200]


def check_input(x: Any, *, name: str = "x", min_rank: int = 2) -> jax.Array:
  """Returns `x` as a floating JAX array `[B, ...]`, or raises.

  Raises:
    TypeError: `x` is not an array or not floating point.
    ValueError: rank below `min_rank`, an empty batch, NaN/inf values, or a
      rank-4 array that looks channel-first ``[B, C, H, W]`` (see
      `check_layout`; saljax expects images NHWC).
  """
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    if isinstance(x, (list, tuple)):
      raise TypeError(
          f"{name}: expected a floating array [B, ...], got a {type(x).__name__};"
          " convert it with jnp.asarray first")
    raise TypeError(f"{name}: expected a floating array [B, ...], got {describe(x)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name}: expected a floating-point array (float32/bfloat16/...), got"
        f" dtype {x.dtype}; images as uint8 must be preprocessed first")
  if x.ndim < min_rank:
    raise ValueError(
        f"{name}: expected a batched array with at least {min_rank} dims"
        f" [B, ...], got shape {tuple(x.shape)}")
  if x.shape[0] == 0:
    raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(x.shape)}")
  # Every explainer and metric passes its input through here (also via
  # `saljax.model.prepare`), so one layout check covers them all.
  check_layout(x, name=name)
  if is_concrete(x):
    bad = []
    for start, block in _local_rows(x):
      finite = np.isfinite(block).reshape(block.shape[0], -1).all(1)
      bad += (start + np.flatnonzero(~finite)).tolist()
    if bad:
      raise ValueError(
          f"{name}: expected finite values, got NaN or inf in batch rows {sorted(bad)[:10]}")
  return x if isinstance(x, jax.Array) else jnp.asarray(x)


def check_target(target: Any, batch: int, num_classes: int | None) -> jax.Array:
  """Returns `target` as an int32 array `[B]` with values in `[0, C)`."""
  if callable(target):
    raise TypeError(
        "target: this function takes class indices [B]; callable targets are accepted by the"
        " registered explainers and metrics (saljax.<name>, saljax.explainers.get(name))")
  if isinstance(target, (int, np.integer)):
    target = jnp.full((batch,), int(target), jnp.int32)
  if not hasattr(target, "shape"):
    target = np.asarray(target)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise TypeError(
        f"target: expected integer class indices [B] (or 'predicted'), got"
        f" {describe(target)}")
  if target.ndim == 0:
    target = jnp.full((batch,), target, jnp.int32)
  if target.shape != (batch,):
    raise ValueError(
        f"target: expected shape ({batch},) to match the batch of x, got"
        f" {tuple(target.shape)}")
  if num_classes is not None and is_concrete(target):
    for start, t in _local_rows(target):
      bad = (t < 0) | (t >= num_classes)
      if bad.any():
        raise ValueError(
            f"target: expected class indices in [0, {num_classes}), got"
            f" {t[bad][:10].tolist()} at rows {(start + np.flatnonzero(bad))[:10].tolist()}")
  if isinstance(target, jax.Array) and target.dtype == jnp.int32:
    return target
  return jnp.asarray(target, jnp.int32)


def check_same_shape(a: Any, like: jax.Array, *, name: str, broadcast_batch: bool = True) -> jax.Array:
  """Checks that `a` has the shape of `like` (or `like[1:]` when broadcast_batch)."""
  if not hasattr(a, "shape"):
    a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    raise TypeError(f"{name}: expected a floating-point array, got {describe(a)}")
  shape = tuple(a.shape)
  if shape == tuple(like.shape):
    pass
  elif broadcast_batch and shape == tuple(like.shape[1:]):
    a = jnp.broadcast_to(a, like.shape)
  else:
    want = f"{tuple(like.shape)}" + (f" or {tuple(like.shape[1:])}" if broadcast_batch else "")
    raise ValueError(f"{name}: expected shape {want}, got {shape}")
  if not all_finite(a):
    raise ValueError(f"{name}: expected finite values, got NaN or inf")
  return a.astype(like.dtype) if isinstance(a, jax.Array) else jnp.asarray(a, like.dtype)


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
  return int(value)


def check_choice(value: Any, name: str, choices) -> str:
  if value not in choices:
    raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
  return value


def check_batch_size(batch_size: Any) -> int | None:
  if batch_size is None:
    return None
  return check_positive_int(batch_size, "batch_size")


@jax.tree_util.register_pytree_node_class
class Options:
  """Keyword options forwarded to an inner explainer (by the noise wrappers and
  the metrics that rerun an explainer).

  Arrays are pytree leaves, so they are traced and a new value reuses the
  compiled program; every other value (step counts, rule names, Python
  numbers) is static aux data, hashed into the compile key. Pass
  ``jnp.asarray(v)`` to trace a number the inner explainer accepts traced
  (e.g. SmoothGrad's ``noise_level``).
  """

  def __init__(self, static: tuple = (), dynamic: dict | None = None):
    self.static = static
    self.dynamic = dict(dynamic or {})

  @classmethod
  def split(cls, options: Any, name: str = "explainer_options") -> "Options":
    if options is None:
      options = {}
    if not isinstance(options, dict):
      raise TypeError(f"{name}: expected a dict of keyword options, got {describe(options)}")
    static, dynamic = [], {}
    for k, v in options.items():
      if not isinstance(k, str):
        raise TypeError(f"{name}: expected option names as strings, got {k!r}")
      if hasattr(v, "shape") and hasattr(v, "dtype"):
        dynamic[k] = v
        continue
      try:
        hash(v)
      except TypeError as e:
        raise TypeError(f"{name}: {k}={v!r} must be hashable or an array") from e
      static.append((k, v))
    return cls(tuple(sorted(static, key=lambda kv: kv[0])), dynamic)

  def kwargs(self) -> dict:
    return dict(self.static, **self.dynamic)

  def tree_flatten(self):
    keys = tuple(sorted(self.dynamic))
    return tuple(self.dynamic[k] for k in keys), (self.static, keys)

  @classmethod
  def tree_unflatten(cls, aux, children):
    static, keys = aux
    return cls(static, dict(zip(keys, children)))

  def __repr__(self):
    return f"Options({self.kwargs()!r})"


# Channel counts of images (grey, RGB, RGBA). A rank-4 array [B, c, H, W]
# with c one of these and a last axis that is none of them is almost surely
# NCHW; saljax reads rank-4 inputs as NHWC, so without this check occlusion
# and the metrics would treat the channel axis as height, silently.
_IMAGE_CHANNELS = (1, 3, 4)


def check_layout(x: Any, *, name: str = "x") -> None:
  """Raises a ValueError when a rank-4 `x` looks channel-first ``[B, C, H, W]``.

  saljax expects images NHWC ``[B, H, W, C]``. An input is refused as
  channel-first when ``x.shape[1]`` is 1, 3 or 4, ``x.shape[2] >= 8``,
  ``x.shape[3] >= 8`` and ``x.shape[3]`` is not 1, 3 or 4. The thresholds keep
  small NHWC images (e.g. ``[B, 3, 3, 16]``, ``[B, 4, 4, 3]``) and feature maps
  with many channels of a tiny grid accepted; an NHWC image 1, 3 or 4 pixels
  high and >= 8 wide with >= 8 channels would be refused (transpose twice, or
  pad, if that is really meant). Only shapes are read, so it works on tracers.
  """
  shape = tuple(getattr(x, "shape", ()))
  if (len(shape) == 4 and shape[1] in _IMAGE_CHANNELS and shape[2] >= 8 and shape[3] >= 8
      and shape[3] not in _IMAGE_CHANNELS):
    raise ValueError(
        f"{name}: expected images NHWC [B, H, W, C], got shape {shape}, which looks"
        f" channel-first [B, C, H, W] (C = {shape[1]}); saljax expects the channel axis"
        " last: convert with jnp.moveaxis(x, 1, -1) or x.transpose(0, 2, 3, 1)")
