"""Chunked maps and reductions, and batch sharding over a device mesh.

Whatever multiplies work per example (IG steps, SmoothGrad samples, RISE masks,
occlusion windows, deletion steps) goes through these helpers, so peak memory is
set by `batch_size` (how many steps or samples are evaluated at once, for every
example of the batch), not by the number of steps. Reductions accumulate in a
`lax.scan` carry, so memory does not grow with the number of steps either.

``batch_size=None`` picks a chunk automatically: as many items as keep one
chunk at or under `max_evals_per_chunk()` model evaluations (64 by default, or
the ``SALJAX_MAX_EVALS_PER_CHUNK`` environment variable), where one item's
evaluations are the leading dimension of ``fn``'s output (the batch ``B`` for an
explainer step). Defaults therefore never grow memory with steps or samples;
pass an explicit `batch_size` to trade memory for speed on a large device.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


def _leading(xs) -> int:
  leaves = jax.tree_util.tree_leaves(xs)
  if not leaves:
    raise ValueError("chunked helpers need at least one array to map over")
  return leaves[0].shape[0]


def _split(xs, batch_size: int):
  n = _leading(xs)
  full, rem = divmod(n, batch_size)
  head = jax.tree_util.tree_map(
      lambda a: a[: full * batch_size].reshape((full, batch_size) + a.shape[1:]), xs)
  tail = jax.tree_util.tree_map(lambda a: a[full * batch_size:], xs)
  return full, rem, head, tail


def max_evals_per_chunk() -> int:
  """The automatic chunk's budget of model evaluations (``SALJAX_MAX_EVALS_PER_CHUNK``, 64)."""
  return int(os.environ.get("SALJAX_MAX_EVALS_PER_CHUNK", "64"))


def max_count() -> int:
  """The largest step or sample count a method accepts (``SALJAX_MAX_COUNT``, 10**6)."""
  return int(os.environ.get("SALJAX_MAX_COUNT", str(10**6)))


def check_count(value: Any, name: str, *, minimum: int = 1) -> int:
  """A step or sample count: an int >= `minimum` and at most `max_count()`.

  Memory is bounded by the chunk whatever the count, but time is not: at a
  million model evaluations per example a count is a typo (``10**9``), and
  the per-sample keys alone would take gigabytes. Refused before any work,
  with the way to allow it.
  """
  from saljax import _validation as V
  n = V.check_positive_int(value, name, minimum=minimum)
  limit = max_count()
  if n > limit:
    raise ValueError(
        f"{name}: expected at most {limit} (each one costs model evaluations per example, so"
        f" {n} cannot finish), got {n}; set the SALJAX_MAX_COUNT environment variable to allow"
        " more")
  return n


def auto_batch_size(fn: Callable, xs: Any, batch_size: int | None) -> int:
  """`batch_size`, or for None the largest chunk within `max_evals_per_chunk()`."""
  n = _leading(xs)
  if batch_size is not None:
    return batch_size
  one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
  out = jax.tree_util.tree_leaves(jax.eval_shape(fn, one))
  per_item = max([o.shape[0] for o in out if o.ndim >= 1] or [1])
  return max(1, min(n, max_evals_per_chunk() // per_item))


def chunked_map(fn: Callable, xs: Any, *, batch_size: int | None = None) -> Any:
  """``stack([fn(x) for x in xs])`` with at most `batch_size` calls vmapped at once.

  `None` picks the chunk automatically (module docstring). A length that is not
  a multiple of `batch_size` is handled by one extra vmapped call on the
  remainder.
  """
  n = _leading(xs)
  batch_size = auto_batch_size(fn, xs, batch_size)
  if batch_size is None or batch_size >= n:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=batch_size)


def chunked_sum(fn: Callable, xs: Any, *, batch_size: int | None = None) -> Any:
  """``sum(fn(x) for x in xs)``, accumulated in a scan carry.

  Peak memory holds `batch_size` evaluations of `fn`, whatever the length of
  `xs`.
  """
  n = _leading(xs)
  batch_size = auto_batch_size(fn, xs, batch_size)

  def block_sum(block):
    return jax.tree_util.tree_map(lambda a: a.sum(0), jax.vmap(fn)(block))

  if batch_size is None or batch_size >= n:
    return block_sum(xs)
  full, rem, head, tail = _split(xs, batch_size)
  first = jax.tree_util.tree_map(lambda a: a[0], head)
  init = jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(block_sum, first))

  def body(acc, block):
    return jax.tree_util.tree_map(jnp.add, acc, block_sum(block)), None

  acc, _ = jax.lax.scan(body, init, head)
  if rem:
    acc = jax.tree_util.tree_map(jnp.add, acc, block_sum(tail))
  return acc


def chunked_moments(fn: Callable, xs: Any, *, batch_size: int | None = None):
  """Mean and (population) variance of ``fn(x)`` over `xs`, chunked.

  Chunks are merged with Chan et al.'s parallel update, which avoids the
  cancellation of ``E[a^2] - E[a]^2`` in float32.
  """
  n = _leading(xs)
  batch_size = auto_batch_size(fn, xs, batch_size)

  def block_stats(block):
    vals = jax.vmap(fn)(block)
    mean = vals.mean(0)
    m2 = ((vals - mean) ** 2).sum(0)
    return jnp.asarray(vals.shape[0], jnp.float32), mean, m2

  def merge(a, b):
    na, ma, sa = a
    nb, mb, sb = b
    nt = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / nt)
    m2 = sa + sb + delta ** 2 * (na * nb / nt)
    return nt, mean, m2

  if batch_size is None or batch_size >= n:
    _, mean, m2 = block_stats(xs)
    return mean, m2 / n
  full, rem, head, tail = _split(xs, batch_size)
  first = jax.tree_util.tree_map(lambda a: a[0], head)
  stats0 = block_stats(first)
  rest = jax.tree_util.tree_map(lambda a: a[1:], head)
  stats, _ = jax.lax.scan(lambda s, blk: (merge(s, block_stats(blk)), None), stats0, rest)
  if rem:
    stats = merge(stats, block_stats(tail))
  _, mean, m2 = stats
  return mean, m2 / n


# ----------------------------------------------------------------------------
# Devices.


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (all devices by default), axis name ``"batch"``."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards axis 0 over the mesh, replicates the rest."""
  return NamedSharding(mesh, P(BATCH_AXIS, *([None] * (ndim - 1))))


def pad_batch(x: Any, multiple: int):
  """Pads axis 0 of every leaf (repeating the last row) to a multiple; returns (padded, n)."""
  n = _leading(x)
  pad = (-n) % multiple
  if pad == 0:
    return x, n
  return jax.tree_util.tree_map(
      lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], 0), x), n


def shard_batch(x: Any, mesh: Mesh | None = None):
  """Places every leaf of `x` on `mesh`, split along the batch axis.

  Returns ``(sharded, n)``; the batch is padded to a multiple of the mesh size
  (repeating the last row), and `n` is the true length to slice results with.
  """
  mesh = make_mesh() if mesh is None else mesh
  x, n = pad_batch(x, mesh.size)
  return jax.tree_util.tree_map(lambda a: jax.device_put(a, batch_sharding(mesh, a.ndim)), x), n


def sharded_call(explainer: Callable, f: Callable, x, target, *, mesh: Mesh | None = None, **options):
  """Runs an explainer or metric with `x` and `target` sharded along the batch.

  Pads a ragged batch to the mesh size and slices the result back, so any
  batch size works on any number of devices. `x` may be a pytree of arrays;
  `target` class indices (``[B]`` or ``[B, T]``), a string (``"predicted"``,
  ``"all"``), or a callable; a `saljax.targets.Target`'s per-example data is
  padded and sharded with the rows it belongs to.
  """
  from saljax import targets as T
  mesh = make_mesh() if mesh is None else mesh
  x = jax.tree_util.tree_map(jnp.asarray, x)
  if isinstance(target, T.Target) and target.has_rows:
    (xs, rows), n = shard_batch((x, target.per_example), mesh)
    ts = T.Target(target.fn, target.shared, rows, target.name)
  elif isinstance(target, str) or T.is_callable_target(target):
    xs, n = shard_batch(x, mesh)
    ts = target
  else:
    (xs, ts), n = shard_batch((x, jnp.asarray(target)), mesh)
  out = explainer(f, xs, ts, **options)
  return jax.tree_util.tree_map(lambda a: a[:n] if getattr(a, "ndim", 0) else a, out)


# ----------------------------------------------------------------------------
# Several hosts.


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

  On CPU, cross-process collectives use gloo. With no arguments JAX reads the
  cluster from the environment (SLURM, TPU pods, ...). Call it before any JAX
  computation.
  """
  if not jax.distributed.is_initialized():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def global_batch(local: Any, mesh: Mesh | None = None):
  """One global array, sharded along the batch, from each process's local rows.

  Every process passes its own rows (the same count on each); process `i`'s
  rows come `i`-th in the global batch.
  """
  mesh = make_mesh() if mesh is None else mesh
  return jax.tree_util.tree_map(
      lambda a: jax.make_array_from_process_local_data(batch_sharding(mesh, a.ndim), np.asarray(a)),
      local)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """Every leaf as one global array replicated over `mesh` (default: every
  device of every process). Each process passes the same values (the same
  checkpoint, say); model variables must be replicated this way before a jit
  mixes them with a batch sharded over several processes' devices."""
  mesh = make_mesh() if mesh is None else mesh
  sharding = NamedSharding(mesh, P())

  def one(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

  return jax.tree_util.tree_map(one, tree)


def broadcast_from_writer(x: Any) -> Any:
  """Process 0's value of `x` (numpy), on every process: so that decisions
  read from the file system (is this chunk already stored?) are the same
  everywhere and no process skips a collective the others enter."""
  if jax.process_count() == 1:
    return jax.tree_util.tree_map(np.asarray, x)
  from jax.experimental import multihost_utils
  return jax.tree_util.tree_map(np.asarray, multihost_utils.broadcast_one_to_all(x))


def gather(x: Any) -> Any:
  """The full value of a (possibly multi-process) sharded array, on every process, as numpy."""
  if jax.process_count() == 1:
    return jax.tree_util.tree_map(np.asarray, x)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(x, tiled=True)


def is_writer() -> bool:
  """True on process 0: the only one that writes logs, figures and files."""
  return jax.process_index() == 0
