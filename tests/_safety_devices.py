"""Run as a script under 8 simulated CPU devices: `saljax.safety`'s searches
with the query rows sharded over the 8 devices versus on one. Prints JSON
{search: true when every field is equal}. Used by test_safety.py."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.tree_util import Partial  # noqa: E402

from experiments import safety_test  # noqa: E402
from saljax import parallel, safety  # noqa: E402

assert jax.device_count() == 8, jax.devices()
params = safety_test._init(jax.random.key(3))  # untrained: equality needs no accuracy
f = Partial(safety_test.digits_cnn_apply, params)
x = np.asarray(jax.random.uniform(jax.random.key(4), (3, 8, 8, 1)))
out = {}
authors = dict(manipulation="extreme", backtrack=True)  # the SafeCV rules, backtracking sharded too
for name, search, kw in (("mcts", safety.feature_guided_search, {}), ("random", safety.random_search, {}),
                         ("mcts_authors", safety.feature_guided_search, authors),
                         ("random_authors", safety.random_search, authors)):
  a = search(f, x, key=jax.random.key(0), max_queries=60, max_pixels=6, **kw)
  b = search(f, x, key=jax.random.key(0), max_queries=60, max_pixels=6, mesh=parallel.make_mesh(), **kw)
  if kw:
    out[name + "_succeeded"] = bool(a.success.any())  # so backtracking had an example to work on
  out[name] = bool(all(np.array_equal(getattr(a, k), getattr(b, k)) for k in
                       ("l0", "queries", "adversarial_label")) and a.moves == b.moves
                   and np.allclose(a.adversarial, b.adversarial, atol=1e-6))
print(json.dumps(out))
