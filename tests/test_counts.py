"""Step and sample counts are bounded: a count that cannot finish (``10**9``)
is refused by name before any work, for every registered method that takes
one, found through the registry (a new method is covered without edits)."""
import inspect

import jax
import jax.numpy as jnp
import pytest

import saljax
import _all_methods as A

COUNTS = ("steps", "samples", "masks", "designs", "iterations")
HUGE = 10**9


def _cases(reg):
  return [(n, c) for n in reg.names() for c in COUNTS
          if c in inspect.signature(reg.get(n)).parameters]


@pytest.fixture(scope="module")
def tiny():
  return A.models()


@pytest.mark.parametrize("name,count", _cases(saljax.explainers))
def test_explainer_refuses_a_count_that_cannot_finish(tiny, name, count):
  cnn, vit, x, target = tiny
  entry = saljax.explainers.entry(name)
  model, opts = A.explainer_options(name)
  tapped = cnn if model == "cnn" else vit
  f = tapped if entry.kind == "layer" else tapped.logits
  extra = {"key": jax.random.key(0)} if entry.stochastic else {}
  with pytest.raises(ValueError, match=rf"{count}: expected at most .*SALJAX_MAX_COUNT"):
    entry.fn(f, x, target, **extra, **{**opts, count: HUGE})


@pytest.mark.parametrize("name,count", _cases(saljax.metrics))
def test_metric_refuses_a_count_that_cannot_finish(tiny, name, count):
  cnn, _, x, target = tiny
  attribution = jax.random.normal(jax.random.key(1), x.shape)
  # call_metric gives each metric the model it needs (tapped, or a function
  # of its parameters).
  with pytest.raises(ValueError, match=rf"{count}: expected at most .*SALJAX_MAX_COUNT"):
    A.call_metric(name, cnn, x, attribution, target, **{count: HUGE})


def test_the_limit_is_a_setting(monkeypatch):
  f = lambda x: x.reshape(x.shape[0], -1)[:, :3]
  x = jnp.ones((1, 4, 4, 3))
  monkeypatch.setenv("SALJAX_MAX_COUNT", "8")
  with pytest.raises(ValueError, match="steps: expected at most 8"):
    saljax.integrated_gradients(f, x, 0, steps=9)
  assert saljax.integrated_gradients(f, x, 0, steps=8).shape == x.shape
