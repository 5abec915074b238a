"""Two processes on the loopback address, joined by jax.distributed, explain
one global batch; together their maps equal a single-process run."""
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import saljax


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  worker = os.path.join(os.path.dirname(__file__), "_two_process_worker.py")
  address = f"127.0.0.1:{_free_port()}"
  out = tmp_path / "maps.npz"
  env = dict(os.environ, XLA_FLAGS="")
  procs = [subprocess.Popen([sys.executable, worker, address, str(i), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600) for p in procs]
  for p, (o, e) in zip(procs, logs):
    assert p.returncode == 0, e[-3000:]
  got = np.load(out)

  k1, k2 = jax.random.split(jax.random.key(1))
  w1 = jax.random.normal(k1, (48, 16)) / 7
  w2 = jax.random.normal(k2, (16, 5)) / 4
  f = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2
  x = jax.random.normal(jax.random.key(2), (8, 4, 4, 3))
  target = jnp.arange(8, dtype=jnp.int32) % 5
  np.testing.assert_allclose(got["ig"], saljax.integrated_gradients(f, x, target, steps=8),
                             atol=1e-6)
  np.testing.assert_allclose(
      got["sg"], saljax.smoothgrad(f, x, target, key=jax.random.key(0), samples=4), atol=1e-6)
