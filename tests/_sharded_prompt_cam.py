"""Run as a script under 8 simulated CPU devices: prints max |sharded - single|
of Prompt-CAM maps (a tiny random Prompt-CAM model, a ragged batch of 11) as
JSON. Used by tests/test_prompt_cam.py."""
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import saljax  # noqa: E402
from saljax import parallel  # noqa: E402
from saljax.models import prompt_cam as pc  # noqa: E402

assert jax.device_count() == 8, jax.devices()
m = pc.prompt_cam("vit_tiny", 4, patch=4, dim=16, depth=2, num_heads=2, mlp_dim=32)
x = jax.random.uniform(jax.random.key(1), (11, 16, 8, 1))  # 11: ragged over 8 devices
v = m.init(jax.random.key(0), x[:1])
f = saljax.from_linen(m, v, example=x[:1])
t = jnp.arange(11) % 4
mesh = parallel.make_mesh()
out = {}
for name, opts in {"mean": {}, "chunked_per_head": {"per_head": True, "batch_size": 3},
                   "greedy": {"heads": "greedy", "top_k": 2, "per_head": True,
                              "batch_size": 3}}.items():
  single = saljax.prompt_cam(f, x, t, **opts)
  sharded = parallel.sharded_call(saljax.prompt_cam, f, x, t, mesh=mesh, **opts)
  out[name] = float(jnp.abs(jnp.asarray(sharded) - single).max())
print(json.dumps(out))
