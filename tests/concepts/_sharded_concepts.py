"""Run as a script under 8 simulated CPU devices: TCAV (argument ``tcav``) or
CRP (``crp``) with the class batch sharded over the 8 devices versus the same
batch on one device. Prints JSON {quantity: max abs difference}. Used by
test_tcav.py and test_crp.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from saljax import concepts, parallel  # noqa: E402
from saljax import model as M  # noqa: E402
import _planted as P  # noqa: E402

assert jax.device_count() == 8, jax.devices()
module = P.PlantedCNN()
variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, P.HW, P.HW, 1)))  # untrained
tapped = M.from_linen(module, variables, example=jnp.zeros((1, P.HW, P.HW, 1)))
rng = np.random.default_rng(1)
x = jnp.asarray(P.dataset(3, 11)[0])  # 11: ragged over 8 devices
mesh = parallel.make_mesh()
placed, n = parallel.shard_batch(x, mesh)
assert len(placed.sharding.device_set) == 8
out = {}
if sys.argv[1] == "tcav":
  conc = jnp.asarray(P.background(rng, 2 * 8).reshape(2, 8, P.HW, P.HW, 1))
  rand = jnp.asarray(P.background(rng, 3 * 8).reshape(3, 8, P.HW, P.HW, 1))
  opts = dict(layer="block2", key=jax.random.key(4), steps=50)
  single = concepts.tcav(tapped, x, 1, conc, rand, **opts)
  # Padded rows would count as class examples: the sharded batch is the 11 rows, placed.
  sharded = concepts.tcav(tapped, placed[:n], 1, conc, rand, **opts)
  for name in ("scores", "magnitudes", "random_scores", "cavs", "p_values"):
    out[name] = float(np.abs(getattr(single, name) - getattr(sharded, name)).max())
else:
  opts = dict(layer="block1", conditions=np.eye(8, dtype=bool), batch_size=3)
  single = concepts.crp(tapped, x, 1, **opts)
  sharded = concepts.crp(tapped, placed, 1, **opts)
  out["maps"] = float(jnp.abs(single.maps - sharded.maps[:n]).max())
  out["channels"] = float(jnp.abs(single.channel_relevance - sharded.channel_relevance[:n]).max())
json.dump(out, sys.stdout)
