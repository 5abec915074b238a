"""Property-based checks of every registered explainer and metric on bad and
awkward inputs chosen from its registry entry (what it needs, which counts it
takes, whether it is stochastic, what it returns).

Every case is run for every method (a bad argument is refused before any
compile, so cases are cheap); hypothesis draws the bad values. The method must
either return a finite result of the shape its entry declares, or raise
ValueError/TypeError whose message names the offending argument, before any
work: the model (a fresh counting wrapper, so nothing is served from a compile
cache) is traced only by the abstract shape evaluations that validation needs
(`_allowed_traces`), and never for a bad `x`. A new method is covered through
its registry entry, with no edit here.

Non-finite model outputs are the subject of tests/test_model_output.py.
"""
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import saljax
import _all_methods as A

CNN, VIT, X, TARGET = A.models()
B = X.shape[0]
COUNTS = ("steps", "samples", "masks", "designs", "iterations")
# Each example runs every case of a method; the draws vary the bad values.
SETTINGS = settings(max_examples=2, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: the report lists every case
                    suppress_health_check=list(HealthCheck))


def _counting(tapped):
  calls = []

  def forward(x, taps=None):
    calls.append(tuple(x.shape))
    return tapped(x, taps)

  return saljax.Tapped(forward, tapped.layer_names), calls


def _x_cases():
  """(label, argument named in the error, new x)."""
  return [
      ("rank 1", "x", jnp.ones((48,))),
      ("int32", "x", jnp.ones(X.shape, jnp.int32)),
      ("bool", "x", jnp.ones(X.shape, bool)),
      ("uint8 numpy", "x", np.ones(X.shape, np.uint8)),
      ("NaN", "x", X.at[2, 3, 3, 0].set(jnp.nan)),
      ("inf", "x", X.at[2, 3, 3, 0].set(-jnp.inf)),
      ("channel-first", "x", jnp.moveaxis(X, -1, 1)),
      ("list", "x", [[1.0, 2.0]]),
      ("empty batch", "x", X[:0]),
  ]


def _target_cases(draw):
  return [
      ("out of range", "target", jnp.full((B,), draw(st.integers(5, 2**31 - 1)), jnp.int32)),
      ("negative", "target", draw(st.integers(-2**31, -1))),
      ("wrong shape", "target", jnp.zeros((B + draw(st.integers(1, 3)),), jnp.int32)),
      ("float", "target", jnp.zeros((B,), jnp.float32)),
      ("float scalar", "target", 1.5),
      ("unknown string", "target", "argmax"),
  ]


def _count_cases(entry, draw):
  params = inspect.signature(entry.fn).parameters
  out = []
  for c in COUNTS:
    if c in params:
      v = draw(st.sampled_from([0, -1, 10**9, 2.5, True, "4"]))
      out.append((f"{c}={v!r}", c, v))
  return out


def _key_cases(entry):
  if not entry.stochastic:
    return []
  return [("no key", "key", None), ("int key", "key", 0),
          ("uint32 of shape (3,)", "key", jnp.zeros((3,), jnp.uint32)),
          ("float key", "key", jnp.zeros((2,), jnp.float32))]


def _attribution_cases():
  return [("attribution wrong shape", "attribution", jnp.ones(X.shape[:2])),
          ("attribution NaN", "attribution", jnp.full(X.shape, jnp.nan)),
          ("attribution int", "attribution", jnp.ones(X.shape, jnp.int32))]


def _allowed_traces(entry, arg):
  """Abstract traces of the model that validation needs before refusing a bad
  argument: none for a bad `x`; the model's output shape; the explainer's output
  shape (a metric that re-explains checks `attribution` against it); the random
  model's shape (it runs the counted model too)."""
  if arg == "x":
    return 0
  return 1 + ("explainer" in entry.needs) + ("random_model" in entry.needs)


def _check(name, entry, run, arg, label, calls):
  """None if the case behaved, else what went wrong."""
  try:
    out = run()
  except (ValueError, TypeError) as e:
    msg = str(e)
    if not (re.search(rf"(^|\W){re.escape(arg)}(\W|$)", msg) or name in msg):
      return f"[{label}]: the error does not name {arg!r}: {msg}"
    if len(calls) > _allowed_traces(entry, arg):
      return f"[{label}]: traced the model {len(calls)} times before refusing: {calls}"
    return None
  leaves = [np.asarray(l) for l in jax.tree_util.tree_leaves(out)]
  if not all(np.isfinite(l).all() for l in leaves if l.dtype.kind == "f"):
    return f"[{label}]: returned non-finite values"
  if leaves[0].shape[0] != B:
    return f"[{label}]: returned shape {leaves[0].shape}"
  return None


def _check_all(name, entry, cases, make_run):
  """Every case (they raise before compiling anything, so all are cheap); one
  report listing every misbehaving case."""
  bad = []
  for label, arg, value in cases:
    run, calls = make_run(arg, value)
    bad.append(_check(name, entry, run, arg, label, calls))
  bad = [b for b in bad if b]
  assert not bad, f"{name}:\n" + "\n".join(bad)


def _with_case(args, options, entry, arg, value):
  """The call's positional arguments and options (a key when the method
  samples), with the one argument under test set to `value`."""
  kwargs = dict(options)
  if entry.stochastic:
    kwargs["key"] = jax.random.key(0)
  if arg in args:
    args = {**args, arg: value}
  else:
    kwargs[arg] = value
  return args, kwargs


@pytest.mark.parametrize("name", saljax.explainers.names())
@SETTINGS
@given(data=st.data())
def test_explainer_bad_inputs(name, data):
  entry = saljax.explainers.entry(name)
  cases = (_x_cases() + _target_cases(data.draw) + _count_cases(entry, data.draw)
           + _key_cases(entry))
  which, opts = A.explainer_options(name)

  def make_run(arg, value):
    tapped, calls = _counting(CNN if which == "cnn" else VIT)
    f = tapped if entry.kind == "layer" else tapped.logits
    args, kwargs = _with_case({"x": X, "target": TARGET}, opts, entry, arg, value)
    return (lambda: entry.fn(f, args["x"], args["target"], **kwargs)), calls

  _check_all(name, entry, cases, make_run)


ATTR = jax.random.normal(jax.random.key(1), X.shape)


@pytest.mark.parametrize("name", saljax.metrics.names())
@SETTINGS
@given(data=st.data())
def test_metric_bad_inputs(name, data):
  entry = saljax.metrics.entry(name)
  cases = (_x_cases() + _count_cases(entry, data.draw) + _key_cases(entry)
           + _attribution_cases())
  if entry.model_output != "unused":  # metrics of the attribution alone ignore the target
    cases += _target_cases(data.draw)

  def make_run(arg, value):
    tapped, calls = _counting(CNN)
    args, kwargs = _with_case({"x": X, "target": TARGET, "attribution": ATTR},
                              A.metric_options(name), entry, arg, value)

    def run():
      if "params" in entry.needs:  # the model as a function of its parameters
        _, params = A.cnn_as_function_of_params()
        return entry.fn(A._params_model(tapped), args["x"], args["attribution"], args["target"],
                        params=params, **kwargs)
      if "random_model" in entry.needs:
        kwargs["random_model"] = A._random_label_model(tapped)
      return entry.fn(tapped.logits, args["x"], args["attribution"], args["target"], **kwargs)

    return run, calls

  _check_all(name, entry, cases, make_run)


# Awkward but valid inputs (batch of 1, odd batches, other float dtypes) compile
# new shapes, so they are drawn for one method of each kind of computation.
AWKWARD = ["gradient", "integrated_gradients", "gradcam", "occlusion"]


@pytest.mark.parametrize("name", AWKWARD)
@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(batch=st.sampled_from([1, 3]), dtype=st.sampled_from(["float32", "bfloat16", "float64"]))
def test_awkward_valid_inputs_give_finite_maps(name, batch, dtype):
  entry = saljax.explainers.entry(name)
  _, opts = A.explainer_options(name)
  x = X[:batch].astype(dtype)
  f = CNN if entry.kind == "layer" else CNN.logits
  out = entry.fn(f, x, TARGET[:batch], **opts)
  assert out.shape[0] == batch and (out.shape == x.shape or entry.kind == "layer")
  assert np.isfinite(np.asarray(out, np.float32)).all()
