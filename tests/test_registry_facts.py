"""The registry's facts hold: families match the README, `needs` are what the
method requires, `returns` is the shape it returns, and `cost` is the number of
model evaluations it makes (counted, not read from the code)."""
import pathlib
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import _registry
import _all_methods as A

CNN, VIT, X, TARGET = A.models()
ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPLAINERS = saljax.explainers.names()
METRICS = saljax.metrics.names()


def _readme_families():
  """{family: {methods}} from the README's explainer table."""
  text = (ROOT / "README.md").read_text()
  rows = re.findall(r"^\| `?(\w+)`? \| (.*) \|$", text, re.M)
  known = set(EXPLAINERS)  # other backticked words are options (`epsilon_plus`)
  return {fam: set(re.findall(r"`(\w+)`", methods)) & known for fam, methods in rows
          if fam in saljax.explainers._REGISTRY.families()}


def test_readme_table_is_the_registry():
  table = _readme_families()
  assert set(table) == set(saljax.explainers._REGISTRY.families())
  for fam, methods in table.items():
    assert methods == set(saljax.explainers.names(fam)), fam


def test_readme_lists_every_metric_under_its_family():
  text = (ROOT / "README.md").read_text()
  for fam in saljax.metrics._REGISTRY.families():
    m = re.search(rf"{fam} \(([^)]*)\)", text)
    assert m, f"README: no metric family {fam!r}"
    assert set(re.findall(r"`(\w+)`", m.group(1))) == set(saljax.metrics.names(fam)), fam


@pytest.mark.parametrize("name", EXPLAINERS + METRICS)
def test_entry_is_complete(name):
  reg = saljax.explainers if name in EXPLAINERS else saljax.metrics
  e = reg.entry(name)
  assert e.returns in _registry.RETURNS and e.needs <= _registry.NEEDS
  e.options(**e.smoke)  # smoke options name real parameters
  if reg is saljax.metrics:
    assert e.better(**e.smoke) in ("higher", "lower"), name
  # A stochastic method refuses to run without a key; others run without one.
  assert ("key" in e.needs) == e.stochastic


@pytest.mark.parametrize("name", [n for n in EXPLAINERS if saljax.explainers.entry(n).stochastic])
def test_key_need_is_real(name):
  with pytest.raises((ValueError, TypeError), match="key"):
    A.call_explainer(name, CNN, VIT, X, TARGET, key=None)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_returns(name):
  e = saljax.explainers.entry(name)
  out = A.call_explainer(name, CNN, VIT, X, TARGET)
  if e.returns == "input":
    assert out.shape == X.shape
  elif e.returns == "image":
    assert out.shape == X.shape[:3]
  elif e.returns == "activation":
    which, opts = A.explainer_options(name)
    layer = (CNN if which == "cnn" else VIT).activation_shapes(X)[opts["layer"]]
    assert out.shape == layer.shape
  else:
    assert out.ndim == 3 and out.shape[0] == X.shape[0] and out.shape[1:] != X.shape[1:3]


# ----------------------------------------------------------------------------
# Model evaluations, counted: every forward pass reports its batch rows to the
# host, so vmapped, scanned and chunked evaluations are all seen.

_ROWS = [0]
_LOCK = threading.Lock()  # callbacks of one computation run on several threads


def _count(rows):
  with _LOCK:
    _ROWS[0] += int(np.asarray(rows).size)


def _counting(tapped):
  def forward(x, taps=None):
    rows = x.reshape(x.shape[0], -1)[:, 0]
    # A path that moves only a tap (layer integrated gradients) evaluates the
    # model once per tap value: the tap makes the counted rows vary too.
    for t in (taps or {}).values():
      rows = rows + (0 * t.reshape(t.shape[0], -1)[:, 0]).astype(rows.dtype)
    jax.debug.callback(_count, rows)
    return tapped(x, taps)
  return saljax.Tapped(forward, tapped.layer_names)


def _scaled(smoke):
  """The smoke options with every count doubled, to check the cost's scaling."""
  counts = ("steps", "samples", "masks", "designs", "iterations")
  return {k: 2 * v if k in counts else v for k, v in smoke.items()}


def _measure(call):
  _ROWS[0] = 0
  jax.block_until_ready(call())
  jax.effects_barrier()  # host callbacks run asynchronously
  return _ROWS[0] / X.shape[0]


@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_cost(name):
  e = saljax.explainers.entry(name)
  which, opts = A.explainer_options(name)
  tapped = _counting(CNN if which == "cnn" else A.vit_for(e, VIT))
  f = tapped if e.kind == "layer" or "tapped" in e.needs or "vit" in e.needs else tapped.logits
  key = {"key": jax.random.key(0)} if e.stochastic else {}
  for o in (opts, {**opts, **_scaled(e.smoke)}):
    got = _measure(lambda: e.fn(f, X, TARGET, **key, **o))
    assert got == e.cost(f, X, **o), (name, o, got)


def _metric_cost_call(name):
  e = saljax.metrics.entry(name)
  opts = A.metric_options(name)
  key = {"key": jax.random.key(0)} if e.stochastic else {}
  attr = saljax.gradient(CNN.logits, X, TARGET)
  counting = _counting(CNN)
  if "params" in e.needs:
    model_fn, params = A.cnn_as_function_of_params()

    def f(p, x):  # counts rows that depend on the parameters
      jax.debug.callback(_count, x.reshape(x.shape[0], -1)[:, 0] + 0 * jax.tree_util.tree_leaves(p)[0].sum())
      return model_fn(p, x)
    return e, f, lambda o: e.fn(f, X, attr, TARGET, params=params, **key, **o), {"params": params}
  extra = {}
  if "random_model" in e.needs:
    model_fn, params = A.cnn_as_function_of_params()
    other = jax.tree_util.tree_map(lambda w: -w[::-1], params)
    extra["random_model"] = _counting(saljax.from_linen(A._CNN[0], {"params": other}, example=X))
  f = counting if "tapped" in e.needs else counting.logits
  return e, f, lambda o: e.fn(f, X, attr, TARGET, **key, **extra, **o), {}


@pytest.mark.parametrize("name", METRICS)
def test_metric_cost(name):
  e, f, call, extra = _metric_cost_call(name)
  opts = A.metric_options(name)
  for o in (opts, {**opts, **_scaled(e.smoke)}):
    got = _measure(lambda: call(o))
    assert got == e.cost(f, X, **o, **extra), (name, o, got)
