"""Run as a script under 8 simulated CPU devices: prints max |sharded - single|
for each gradient explainer, as JSON. Used by test_devices.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import saljax  # noqa: E402
from saljax import parallel  # noqa: E402

assert jax.device_count() == 8, jax.devices()
k1, k2 = jax.random.split(jax.random.key(1))
w1 = jax.random.normal(k1, (48, 16)) / 7
w2 = jax.random.normal(k2, (16, 5)) / 4


def f(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


x = jax.random.normal(jax.random.key(2), (11, 4, 4, 3))  # 11: ragged over 8 devices
target = jnp.arange(11) % 5
refs = jax.random.normal(jax.random.key(3), (4, 4, 4, 3))
cases = {
    "gradient": {},
    "integrated_gradients": {"steps": 8, "batch_size": 3},
    "smoothgrad": {"samples": 6, "key": jax.random.key(0)},
    "vargrad": {"samples": 6, "key": jax.random.key(0), "batch_size": 4},
    "expected_gradients": {"samples": 6, "key": jax.random.key(0), "references": refs},
    "guided_ig": {"steps": 5},
    "blur_ig": {"steps": 5, "max_sigma": 2.0},
}
mesh = parallel.make_mesh()
out = {}
for name, opts in cases.items():
  fn = saljax.explainers.get(name)
  single = fn(f, x, target, **opts)
  sharded = parallel.sharded_call(fn, f, x, target, mesh=mesh, **opts)
  # The sample keys are shared across the batch, so padding rows changes nothing
  # for the real rows of deterministic methods; stochastic ones draw noise for
  # the padded batch shape, so compare them on a batch that divides evenly.
  if "key" in opts:
    x16 = jnp.concatenate([x, x[:5]]); t16 = jnp.concatenate([target, target[:5]])
    single = fn(f, x16, t16, **opts)
    xs, _ = parallel.shard_batch(x16, mesh)
    ts, _ = parallel.shard_batch(t16, mesh)
    sharded = fn(f, xs, ts, **opts)
    assert len(sharded.sharding.device_set) == 8, sharded.sharding
  out[name] = float(jnp.abs(sharded - single).max())
json.dump(out, sys.stdout)
