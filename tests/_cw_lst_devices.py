"""Run as a script under 8 simulated CPU devices: C&W L2 and Level Set
Traversal on a ragged batch of 6 sharded over 8 devices (padded) versus one
device. Prints JSON {name: max abs difference or an error string}. Used by
tests/test_attacks_cw.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from saljax import attacks, blindspots, parallel  # noqa: E402

assert jax.device_count() == 8, jax.devices()
k = jax.random.split(jax.random.key(0), 4)
w1 = jax.random.normal(k[0], (48, 16)) / 4
w2 = jax.random.normal(k[1], (16, 3))
f = jax.tree_util.Partial(lambda w1, w2, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2, w1, w2)
x = jax.random.uniform(k[2], (6, 4, 4, 3), minval=0.2, maxval=0.8)
t = jax.random.uniform(k[3], (6, 4, 4, 3), minval=0.2, maxval=0.8)
y = jnp.argmax(f(x), -1)
cases = {
    "cw_l2": (attacks.cw_l2, x, y, dict(binary_search_steps=3, max_iterations=20)),
    "level_set_traversal": (lambda f, s, tt, **o: blindspots.level_set_traversal(f, s, tt, **o)[0],
                            x, t, dict(steps=10, step_size=0.1)),
}
result = {}
for name, (fn, a, b, opts) in cases.items():
  try:
    one = np.asarray(fn(f, a, b, **opts))
    many = np.asarray(parallel.sharded_call(fn, f, a, b, **opts))
    result[name] = float(np.max(np.abs(one - many)))
  except Exception as e:  # reported to the test, which fails on it
    result[name] = f"{type(e).__name__}: {str(e)[:300]}"
print(json.dumps(result))
