"""One of two processes of a loopback multi-process run (test_multihost.py).

argv: coordinator address, process id, output file.
"""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from saljax import parallel  # noqa: E402

address, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parallel.initialize_distributed(address, num_processes=2, process_id=pid)
import saljax  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 2
k1, k2 = jax.random.split(jax.random.key(1))
w1 = jax.random.normal(k1, (48, 16)) / 7
w2 = jax.random.normal(k2, (16, 5)) / 4


def f(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


x = np.asarray(jax.random.normal(jax.random.key(2), (8, 4, 4, 3)))
target = np.arange(8, dtype=np.int32) % 5
rows = slice(4 * pid, 4 * pid + 4)  # each process reads only its shard of the data
gx, gt = parallel.global_batch((x[rows], target[rows]))
assert not gx.is_fully_addressable
attr = saljax.integrated_gradients(f, gx, gt, steps=8)
sg = saljax.smoothgrad(f, gx, gt, key=jax.random.key(0), samples=4)
full = {"ig": parallel.gather(attr), "sg": parallel.gather(sg)}
if parallel.is_writer():
  np.savez(out, **full)
