"""The model as data: explainers take models whose arrays are traced leaves.

Each test here fails on the first design (every model a static jit argument,
shapes cached per model object): new parameters recompiled, fresh closures
leaked their weights, NNX modules updated in place gave stale maps and Equinox
modules were rejected as unhashable.
"""
import contextlib
import gc
import resource

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.tree_util import Partial

import saljax
from saljax import model as M

X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
TARGET = jnp.array([1, 3])


@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations inside the block."""
  n = [0]

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      n[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield n
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    return nn.Dense(5, name="head")(h.mean((1, 2)))


class NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.head = nnx.Linear(4, 5, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.relu(self.conv(x)).mean((1, 2)))


class EqxNet(eqx.Module):
  conv: eqx.nn.Conv2d
  head: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
    self.head = eqx.nn.Linear(4, 5, key=k2)

  def __call__(self, x):  # NHWC batch -> logits, as the model contract asks
    h = jax.vmap(self.conv)(jnp.moveaxis(x, -1, 1))
    return jax.vmap(self.head)(jax.nn.relu(h).mean((2, 3)))


def _linen(seed):
  return M.from_linen(LinenNet(), LinenNet().init(jax.random.key(seed), X[:1]), example=X[:1])


NET = LinenNet()


def _partial(seed):
  # The Haiku-style pattern: one apply function, parameters per checkpoint.
  return Partial(NET.apply, NET.init(jax.random.key(seed), X[:1]))


MAKERS = {
    "linen": _linen,
    "nnx": lambda seed: NNXNet(nnx.Rngs(seed)),
    "equinox": lambda seed: EqxNet(jax.random.key(seed)),
    "partial": _partial,
}


def _layer_model(kind, seed):
  m = MAKERS[kind](seed)
  if kind == "nnx":
    return M.from_nnx(m, names=("conv", "head"))
  if kind == "linen":
    return m
  return None


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_new_parameters_compile_nothing(kind):
  """Pixel, layer and perturbation methods on a second set of parameters of the
  same architecture reuse every compiled program."""
  calls = [
      lambda m: saljax.gradient(m, X, TARGET),
      lambda m: saljax.occlusion(m, X, TARGET, window=4, stride=4),
      lambda m: saljax.integrated_gradients(m, X, TARGET, steps=4),
  ]
  first = MAKERS[kind](0)
  outs0 = [c(first) for c in calls]
  second = MAKERS[kind](1)
  with count_compiles() as n:
    outs1 = [c(second) for c in calls]
  assert n[0] == 0, f"{kind}: {n[0]} compilations for new parameters"
  for a, b in zip(outs0, outs1):  # and the maps are those of the new parameters
    assert not np.allclose(a, b)
  fresh = MAKERS[kind](1)
  np.testing.assert_allclose(outs1[0], saljax.gradient(fresh, X, TARGET), rtol=1e-6)
  tapped0, tapped1 = _layer_model(kind, 0), _layer_model(kind, 1)
  if tapped0 is not None:
    saljax.gradcam(tapped0, X, TARGET, layer="conv")
    with count_compiles() as n:
      saljax.gradcam(tapped1, X, TARGET, layer="conv")
    assert n[0] == 0, f"{kind}: gradcam compiled {n[0]} times for new parameters"


def test_new_pretrained_variables_compile_nothing():
  clf = saljax.models.load_pretrained("efficientnet_lite0")
  x = clf.preprocess(saljax.data.photos()["chelsea"])
  target = jnp.argmax(clf(x), -1)
  g0 = saljax.gradient(clf, x, target)
  other = clf.with_params(jax.tree_util.tree_map(lambda v: v * 1.01, clf.params))
  with count_compiles() as n:
    g1 = saljax.gradient(other, x, target)
  assert n[0] == 0
  assert not np.allclose(g0, g1)


def _rss_mb():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.fixture
def no_persistent_cache_writes():
  """Resident-memory checks run without writing JAX's persistent compilation
  cache (tests/conftest.py turns it on for speed): writing each fresh
  closure's program, 12 MiB of constants, serialized and compressed, leaves
  heap behind that these checks would count (they failed with it)."""
  key = "jax_persistent_cache_min_compile_time_secs"
  old = getattr(jax.config, key)
  jax.config.update(key, float("inf"))  # no compile is that slow: nothing is written
  yield
  jax.config.update(key, old)


def _big_params(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  # 12 MiB of weights: large against the allocator's noise.
  return {"w1": jax.random.normal(k1, (192, 16384)) / 14.0,
          "w2": jax.random.normal(k2, (16384, 5)) / 128.0}


def _mlp(p, x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"]) @ p["w2"]


def test_memory_is_flat_over_new_parameters(no_persistent_cache_writes):
  size_mb = sum(v.nbytes for v in _big_params(0).values()) / 2**20
  for s in range(20):  # warm up: compile, allocator pools
    saljax.gradient(Partial(_mlp, _big_params(s)), X, TARGET).block_until_ready()
  gc.collect()
  before = _rss_mb()
  for s in range(100):
    saljax.gradient(Partial(_mlp, _big_params(s)), X, TARGET).block_until_ready()
  gc.collect()
  grown = _rss_mb() - before
  assert grown < 2 * size_mb, f"resident memory grew {grown:.1f} MiB over 100 parameter sets"


def test_dropped_closures_are_freed(no_persistent_cache_writes):
  """A fresh closure per call compiles anew (documented) but its compiled
  program and captured weights go with it."""
  size_mb = sum(v.nbytes for v in _big_params(0).values()) / 2**20
  for s in range(3):
    p = _big_params(s)
    saljax.gradient(lambda x, p=p: _mlp(p, x), X, TARGET).block_until_ready()
  gc.collect()
  before = _rss_mb()
  for s in range(20):
    p = _big_params(s)
    saljax.gradient(lambda x, p=p: _mlp(p, x), X, TARGET).block_until_ready()
  del p
  gc.collect()
  grown = _rss_mb() - before
  assert grown < 2 * size_mb, f"resident memory grew {grown:.1f} MiB over 20 dropped closures"
  # A closure that stays alive keeps its compiled program: no recompilation.
  p = _big_params(0)
  f = lambda x: _mlp(p, x)  # noqa: E731
  saljax.gradient(f, X, TARGET)
  x1 = X + 1.0
  with count_compiles() as n:
    saljax.gradient(f, x1, TARGET)
  assert n[0] == 0


def test_nnx_module_updated_in_place_gives_the_new_map():
  module = NNXNet(nnx.Rngs(0))
  before = saljax.gradient(module, X, TARGET)
  opt = nnx.Optimizer(module, optax.sgd(0.5), wrt=nnx.Param)

  def loss(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(X), TARGET).mean()

  grads = nnx.grad(loss)(module)
  opt.update(module, grads)
  after = saljax.gradient(module, X, TARGET)
  assert not np.allclose(before, after)
  fresh = nnx.merge(*nnx.split(module))  # a new object with the updated weights
  np.testing.assert_allclose(after, saljax.gradient(fresh, X, TARGET), rtol=1e-6)


def test_equinox_module_is_accepted_and_matches_a_closure():
  net = EqxNet(jax.random.key(3))
  got = saljax.integrated_gradients(net, X, TARGET, steps=8)
  want = saljax.integrated_gradients(lambda x: net(x), X, TARGET, steps=8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_model_wraps_without_holding_arrays_in_its_structure():
  p = _big_params(0)
  m = M.Model(Partial(_mlp, p))
  leaves, treedef = jax.tree_util.tree_flatten(m)
  assert len(leaves) == 2 and all(isinstance(l, jax.Array) for l in leaves)
  # Two parameter sets of one architecture have one structure (one cache key).
  assert treedef == jax.tree_util.tree_structure(M.Model(Partial(_mlp, _big_params(1))))
  np.testing.assert_allclose(m(X), _mlp(p, X), rtol=1e-6)


def test_tapped_and_classifier_are_pytrees():
  tapped = _linen(0)
  leaves = jax.tree_util.tree_leaves(tapped)
  assert leaves and all(isinstance(l, jax.Array) for l in leaves)
  doubled = jax.tree_util.tree_map(lambda v: 2 * v, tapped)
  assert doubled.layer_names == tapped.layer_names
  clf = saljax.models.wrap(saljax.models.cnn(num_classes=5, features=(4, 8), hidden=8),
                           input_shape=(8, 8, 3))
  assert jax.tree_util.tree_leaves(clf)
  out = jax.jit(lambda c, x: c(x))(clf, X)
  np.testing.assert_allclose(out, clf(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,option,values", [
    ("smoothgrad", "noise_level", (0.1, 0.3)),
    ("guided_ig", "max_dist", (0.02, 0.1)),
    ("gradient_shap", "stdev", (0.0, 0.2)),
])
def test_numbers_that_are_not_shapes_are_traced(method, option, values):
  """A new noise level or step bound reuses the compiled program, changes the
  map, and can be traced by the caller (vmapped over its values)."""
  model = MAKERS["partial"](0)
  fn = saljax.explainers.get(method)
  extra = {"key": jax.random.key(0)} if saljax.explainers.entry(method).stochastic else {}
  if method == "gradient_shap":
    extra["references"] = jnp.zeros((2,) + X.shape[1:])
  small = {"samples": 3} if "key" in extra else {"steps": 4}
  call = lambda v: fn(model, X, TARGET, **extra, **small, **{option: v})
  a = call(values[0])
  with count_compiles() as n:
    b = call(values[1])
  assert n[0] == 0, f"{method}: a new {option} compiled {n[0]} programs"
  assert not np.allclose(a, b), f"{method} ignores {option}"
  both = jax.vmap(call)(jnp.asarray(values))
  np.testing.assert_allclose(both[1], b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("metric", ["max_sensitivity", "model_parameter_randomization"])
def test_explainer_options_given_as_arrays_are_traced_by_metrics(metric):
  """A metric that reruns an explainer passes its array options as traced
  arguments: a new SmoothGrad noise level reuses the metric's program."""
  model = MAKERS["partial"](0)
  fn = saljax.metrics.get(metric)
  key = jax.random.key(1)
  def call(level):
    opts = {"samples": 3, "noise_level": jnp.asarray(level, jnp.float32)}
    if metric == "max_sensitivity":
      return fn(model, X, None, TARGET, key=key, explainer="smoothgrad", explainer_options=opts,
                samples=2)
    return fn(model.func, X, None, TARGET, params=model.args[0], key=key, explainer="smoothgrad",
              explainer_options=opts)["score"]
  a = call(0.1)
  with count_compiles() as n:
    b = call(0.3)
  assert n[0] == 0, f"{metric}: a new traced explainer option compiled {n[0]} programs"
  assert not np.allclose(a, b)
