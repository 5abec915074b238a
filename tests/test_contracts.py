"""Invariants every registered explainer and metric must keep: the contract's
shapes, finite output, one compile per shape, keys that decide the result, and
a docstring that names the paper."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
import _all_methods as A

CNN, VIT, X, TARGET = A.models()


def _counting(tapped):
  """The same tapped model, counting how often it is traced or run."""
  calls = []

  def forward(x, taps=None):
    calls.append(1)
    return tapped(x, taps)

  return saljax.Tapped(forward, tapped.layer_names), calls


def _has_paper(doc):
  return bool(doc) and re.search(r"(19|20)\d\d", doc) is not None


@pytest.mark.parametrize("name", saljax.explainers.names())
def test_explainer_contract(name):
  entry = saljax.explainers.entry(name)
  which, _ = A.explainer_options(name)
  cnn, cnn_calls = _counting(CNN)
  vit, vit_calls = _counting(VIT)
  calls = cnn_calls if which == "cnn" else vit_calls
  out = A.call_explainer(name, cnn, vit, X, TARGET)
  n = len(calls)
  out2 = A.call_explainer(name, cnn, vit, X + 0.5, TARGET)
  assert len(calls) == n, f"{name} traced the model again for a second call of the same shape"
  if entry.returns == "input":
    assert out.shape == X.shape, out.shape
  elif entry.returns == "activation":  # shaped like the layer's activation
    layer = A.explainer_options(name)[1]["layer"]
    assert out.shape == (CNN if which == "cnn" else VIT).activation_shapes(X)[layer].shape
  else:
    assert out.ndim == 3 and out.shape[0] == X.shape[0], out.shape
  assert bool(jnp.isfinite(out).all()) and bool(jnp.isfinite(out2).all())
  # deconvnet: on a ReLU net without max-pooling it does not depend on x;
  # internal_influence: the tiny CNN is linear after block2 (average pooling
  # and a dense head), so the gradient there, all it averages, is constant.
  if name not in ("deconvnet", "internal_influence"):
    assert not np.allclose(np.asarray(out), np.asarray(out2)), f"{name} ignores its input"
  assert _has_paper(entry.fn.__doc__), f"{name}: the docstring must name its paper and year"


@pytest.mark.parametrize("name", [n for n in saljax.explainers.names()
                                  if saljax.explainers.entry(n).stochastic])
def test_explainer_keys(name):
  a = A.call_explainer(name, CNN, VIT, X, TARGET, key=jax.random.key(1))
  b = A.call_explainer(name, CNN, VIT, X, TARGET, key=jax.random.key(1))
  c = A.call_explainer(name, CNN, VIT, X, TARGET, key=jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


ATTR = saljax.gradient(CNN.logits, X, TARGET)


@pytest.mark.parametrize("name", saljax.metrics.names())
def test_metric_contract(name):
  entry = saljax.metrics.entry(name)
  cnn, calls = _counting(CNN)
  out = A.call_metric(name, cnn, X, ATTR, TARGET)
  scores = out[0] if isinstance(out, tuple) else out
  scores = scores["score"] if isinstance(scores, dict) else scores
  assert scores.shape == (X.shape[0],), (name, scores.shape)
  assert bool(jnp.isfinite(scores).all()), name
  n = len(calls)
  A.call_metric(name, cnn, X + 0.5, ATTR * 2.0 + 0.1, TARGET)
  assert len(calls) == n, f"{name} traced the model again for a second call of the same shape"
  assert _has_paper(entry.fn.__doc__), f"{name}: the docstring must name its paper and year"
