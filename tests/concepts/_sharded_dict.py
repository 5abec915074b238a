"""Run as a script under 8 simulated CPU devices: concept fits and importances
with the batch sharded over 8 devices (11 rows: padded) versus one device.
Prints JSON {case: max abs difference}. Used by test_importance.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from saljax import concepts as C  # noqa: E402
from saljax import model as M  # noqa: E402
from saljax import parallel  # noqa: E402

assert jax.device_count() == 8, jax.devices()
key = jax.random.key(0)
wc = jax.random.normal(jax.random.key(1), (3, 3, 3, 10)) * 0.5
wh = jax.random.normal(jax.random.key(2), (10, 3))


def features(x):
  return jax.nn.relu(jax.lax.conv_general_dilated(
      x, wc, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))


tapped = M.from_features_head(features, lambda a: a.mean((1, 2)) @ wh, name="conv")
x = jax.random.uniform(jax.random.key(3), (16, 6, 6, 3))
xs, _ = parallel.shard_batch(x, parallel.make_mesh())
assert len(xs.sharding.device_set) == 8
out = {}
# Every fit method on the sharded stream (few epochs/steps: the check is
# sharded == unsharded, not convergence).
for method in C.METHODS:
  opts = dict(features=features, batch_size=8, epochs=3, code_steps=10)
  one = C.fit(key, x, method, 4, **opts)
  eight = C.fit(key, xs, method, 4, **opts)
  out[f"fit_{method}"] = float(jnp.abs(one.dictionary - eight.dictionary).max())
con = C.fit(key, x, "nmf", 4, features=features, batch_size=8, epochs=5)
t = jnp.arange(16) % 3
cases = {
    "sobol": lambda z: C.sobol(key, tapped, z, t, con, layer="conv", designs=8),
    "gradient_input": lambda z: C.gradient_input(tapped, z, t, con, layer="conv"),
    "occlusion": lambda z: C.occlusion(tapped, z, t, con, layer="conv", batch_size=2),
    "c_deletion": lambda z: C.c_deletion(tapped, z, t, con, jnp.ones((16, 4)).cumsum(1),
                                         layer="conv"),
    "concept_maps": lambda z: C.concept_maps(tapped, z, con, layer="conv"),
}
for name, fn in cases.items():
  out[name] = float(jnp.abs(fn(x) - fn(xs)).max())
json.dump(out, sys.stdout)
