"""Run as a script under 8 simulated CPU devices: prints max |sharded - single|
for layer and propagation explainers (ViT Grad-CAM shares the Grad-CAM core), as JSON (test_cam.py uses it)."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import saljax  # noqa: E402
from saljax import parallel  # noqa: E402
from _tiny_models import tiny_cnn  # noqa: E402

assert jax.device_count() == 8, jax.devices()
_, _, cnn = tiny_cnn(shape=(11, 8, 8, 3))
x = jax.random.normal(jax.random.key(2), (11, 8, 8, 3))  # 11: ragged over 8 devices
target = jnp.arange(11) % 5
cases = {
    "gradcam": (cnn, x, {"layer": ("block1", "block2")}),
    "scorecam": (cnn, x, {"layer": "block2", "batch_size": 3}),
    "normgrad": (cnn, x, {"layer": "block1", "variant": "selective"}),
    "lrp": (cnn, x, {"rules": "epsilon_gamma_box"}),
}
mesh = parallel.make_mesh()
out = {}
for name, (f, xs, opts) in cases.items():
  fn = saljax.explainers.get(name)
  single = fn(f, xs, target, **opts)
  sharded = parallel.sharded_call(fn, f, xs, target, mesh=mesh, **opts)
  if name == "lrp":
    xs16 = jnp.concatenate([xs, xs[:5]])
    placed, _ = parallel.shard_batch(xs16, mesh)
    res = fn(f, placed, jnp.concatenate([target, target[:5]]), **opts)
    assert len(res.sharding.device_set) == 8, res.sharding
  diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), single, sharded)
  out[name] = max(jax.tree_util.tree_leaves(diffs))
json.dump(out, sys.stdout)
