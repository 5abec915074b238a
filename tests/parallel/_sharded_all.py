"""Run as a script under 8 simulated CPU devices: every registered explainer
and metric on a batch sharded over the 8 devices versus the same batch on one.
Prints JSON {name: max abs difference or an error string}. Used by
test_devices.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import _all_methods as A  # noqa: E402
import saljax  # noqa: E402
from saljax import parallel  # noqa: E402

assert jax.device_count() == 8, jax.devices()
cnn, vit, x, target = A.models()
mesh = parallel.make_mesh()
xs, _ = parallel.shard_batch(x, mesh)
ts, _ = parallel.shard_batch(target, mesh)
names = sys.argv[1:] or (saljax.explainers.names() + saljax.metrics.names())
attr = saljax.gradient(cnn.logits, x, target)
attr_s, _ = parallel.shard_batch(attr, mesh)


def leaves(out):
  return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(out)
          if hasattr(a, "dtype")]


result = {}
for name in names:
  try:
    if name in saljax.explainers.names():
      one = A.call_explainer(name, cnn, vit, x, target)
      many = A.call_explainer(name, cnn, vit, xs, ts)
    else:
      one = A.call_metric(name, cnn, x, attr, target)
      many = A.call_metric(name, cnn, xs, attr_s, ts)
    diffs = [float(np.max(np.abs(a - b)) / (1.0 + np.max(np.abs(a))))
             for a, b in zip(leaves(one), leaves(many))]
    result[name] = max(diffs) if diffs else 0.0
  except Exception as e:  # reported to the test, which fails on it
    result[name] = f"{type(e).__name__}: {str(e)[:300]}"
print(json.dumps(result))
