"""Parity of saljax's randomization metrics with Quantus 0.6 (experiments/_quantus/randomization.py).

On the small CNN of `_twin` (three layers: conv1, conv2, head), both sides
run the same explainer (channel-summed gradient), Quantus re-initializes its
layers with saljax's draws, SmoothMPRT's noise and RandomLogit's off class are
saljax's. The randomization tests agree per layer (MPRT, SmoothMPRT: the
whole curve) and per example.
"""
import jax
import numpy as np
import pytest

import saljax
from experiments._quantus import randomization as QR
from _quantus_parity import quantus_metrics, quiet
from _twin import SmallCNN, small_twin

TWINS = {t.metric: t for t in QR.TWINS}
MODULE = SmallCNN(5)


def model_fn(p, x):
  return MODULE.apply({"params": p}, x)


@pytest.fixture(scope="module")
def setup():
  f, net, x, x_nchw, y = small_twin()
  params = MODULE.init(jax.random.key(0), x)["params"]  # small_twin's weights (seed 0)
  np.testing.assert_allclose(model_fn(params, x), f(x), atol=1e-6)
  return f, net, x, x_nchw, y, params


def test_every_quantus_randomisation_metric_has_a_twin():
  assert {t.quantus for t in QR.TWINS} == quantus_metrics("randomisation")
  assert set(TWINS) <= set(saljax.metrics.names("randomization"))


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("seed", [0, 3])
def test_parity(setup, name, seed):
  f, net, x, x_nchw, y, params = setup
  twin = TWINS[name]
  ctx = {**twin.context(x, y, seed), "model_fn": model_fn, "params": params}
  ours = twin.run_saljax(f, x, None, y, **ctx)
  theirs = quiet(twin.run_quantus, net, x_nchw, None, y, **ctx)
  assert ours.shape == theirs.shape and ours.shape[0] == 4
  np.testing.assert_allclose(ours, theirs, atol=twin.atol)
  assert np.ptp(ours) > 1e-3, ours  # scores that depend on the example


def test_layers_really_are_saljax_draws(setup):
  """The patched reset_parameters loads saljax's draws (and only while patched)."""
  import torch
  f, net, x, x_nchw, y, params = setup
  rand = QR._random(params, 0)
  with QR.saljax_draws(net, rand) as tnet:
    tnet.head.reset_parameters()
    np.testing.assert_array_equal(tnet.head.weight.detach().numpy(), rand["head"]["kernel"].T)
    assert not np.allclose(net.head.weight.detach().numpy(), rand["head"]["kernel"].T)
  # Outside the context torch draws its own (uniform, not saljax's std-0.01 normal).
  lin = torch.nn.Linear(8, 5)
  assert lin.weight.abs().max() > 0.05


def test_quantus_mprt_average_includes_the_unrandomized_score(setup):
  """Why the parity test compares curves: with return_average_correlation=True,
  Quantus 0.6 averages in the "original" score (mprt.py:407 skips a key "orig"
  stored as "original"), so its mean is (1 + sum of layers) / (layers + 1); saljax's
  score is the mean over the randomized layers."""
  import quantus
  f, net, x, x_nchw, y, params = setup
  curve = TWINS["model_parameter_randomization"].run_saljax(
      f, x, None, y, seed=0, model_fn=model_fn, params=params)
  ours = saljax.metrics.model_parameter_randomization(
      model_fn, x, None, y, params=params, key=jax.random.key(0),
      explainer=QR.gradient_map)["score"]
  np.testing.assert_allclose(ours, curve.mean(1), atol=1e-6)
  metric = quantus.MPRT(return_average_correlation=True, abs=True, normalise=False,
                        disable_warnings=True)
  with QR.saljax_draws(net, QR._random(params, 0)) as tnet:
    theirs = quiet(metric, model=tnet, x_batch=x_nchw, y_batch=y, a_batch=None,
                   explain_func=QR.torch_gradient_map, device="cpu", channel_first=True)
  np.testing.assert_allclose(theirs, (1.0 + curve.sum(1)) / 4, atol=1e-4)
