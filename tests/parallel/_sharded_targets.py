"""Run as a script under 8 simulated CPU devices: callable targets with
per-example data, several targets and pytree inputs, on a ragged batch of 6
sharded over 8 devices (padded) versus one device. Prints JSON {case: max abs
difference or an error string}. Used by test_devices.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import saljax  # noqa: E402
from saljax import parallel  # noqa: E402
from saljax import targets as T  # noqa: E402

assert jax.device_count() == 8, jax.devices()
x = jax.random.normal(jax.random.key(0), (6, 8, 8, 3))
w = jax.random.normal(jax.random.key(1), (3, 4))
seg = jax.tree_util.Partial(lambda w, x: jnp.tanh(jnp.einsum("bhwc,ck->bhwk", x, w)), w)
region = jax.random.bernoulli(jax.random.key(2), 0.3, (6, 8, 8))
cls = jax.random.normal(jax.random.key(3), (8 * 8 * 3, 5))
clf = jax.tree_util.Partial(lambda m, x: jnp.tanh(x.reshape(x.shape[0], -1) @ m), cls)
meta = jax.random.normal(jax.random.key(4), (6, 2))
pair = jax.tree_util.Partial(
    lambda m, d: jnp.tanh(d["image"].reshape(d["image"].shape[0], -1) @ m) + d["meta"].sum(1,
                                                                                       keepdims=True),
    cls)
cases = {
    "segmentation_ig": (saljax.integrated_gradients, seg, x, T.segmentation(1, region),
                        {"steps": 4}),
    "segmentation_occlusion": (saljax.occlusion, seg, x, T.segmentation(2, region),
                               {"window": 4, "stride": 4}),
    "classes_by_row": (saljax.gradient, clf, x, T.class_logit(jnp.arange(6) % 5), {}),
    "several_targets": (saljax.gradient, clf, x, jnp.stack([jnp.arange(6) % 5,
                                                            (jnp.arange(6) + 1) % 5], 1), {}),
    "pytree_input": (saljax.integrated_gradients, pair, {"image": x, "meta": meta},
                     jnp.arange(6) % 5, {"steps": 4}),
}
result = {}
for name, (fn, f, xx, t, opts) in cases.items():
  try:
    one = fn(f, xx, t, **opts)
    many = parallel.sharded_call(fn, f, xx, t, **opts)
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (1 + np.max(np.abs(a))))
             for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(many))]
    shapes_ok = jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(many)
    result[name] = max(diffs) if shapes_ok else "structure differs"
  except Exception as e:  # reported to the test, which fails on it
    result[name] = f"{type(e).__name__}: {str(e)[:300]}"
print(json.dumps(result))
