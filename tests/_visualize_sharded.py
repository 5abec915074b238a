"""Run as a script under 8 simulated CPU devices: `maximize` and `evolve` with the
objectives (keys and targets) sharded over the 8 devices versus on one device.
Prints JSON {case: max abs difference}. Used by test_visualize.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from saljax import parallel  # noqa: E402
from saljax import visualize as V  # noqa: E402
from saljax.models import cnn, wrap  # noqa: E402

assert jax.device_count() == 8, jax.devices()
clf = wrap(cnn(10, (4, 8), hidden=16), input_shape=(8, 8, 1))
keys = jax.random.split(jax.random.key(0), 8)
targets = jnp.arange(8) % 10
kw = dict(size=8, channels=1, steps=4, n_augment=2)
one = V.maximize(clf, V.classes(targets), key=keys, **kw).images
mesh = parallel.make_mesh()
sh = parallel.batch_sharding(mesh, 1)
many = V.maximize(clf, V.classes(jax.device_put(targets, sh)), key=jax.device_put(keys, sh),
                  **kw).images
assert len(many.sharding.device_set) == 8, many.sharding
e1 = V.evolve(clf, targets, key=jax.random.key(1), size=8, channels=1, generations=4,
              population=16).images
e8 = V.evolve(clf, jax.device_put(targets, sh), key=jax.random.key(1), size=8, channels=1,
              generations=4, population=16).images
print(json.dumps({"maximize": float(jnp.abs(one - many).max()),
                  "evolve": float(jnp.abs(e1 - e8).max())}))
