"""The Quantus twins off the 8x8 parity case: other widths, other batch sizes,
evaluation counts that follow the input, and the EfficientNet-Lite layer map
the benchmark uses for the randomization twins (experiments/_quantus/)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from experiments import _quantus as Q
from experiments._quantus import randomization as QR
from _quantus_parity import quiet
from _twin import small_twin, to_nchw

TWINS = Q.twins()


@pytest.fixture(scope="module")
def wide():
  """The parity CNN on 2 examples of 12 x 12: 2W + 1 = 25, which 5 divides, so
  Quantus' Continuity at 5 steps shifts past the image (the twin's old count)."""
  f, net, x, xc, y = small_twin(batch=2, size=12)
  a = np.asarray(saljax.gradient(f, x, jnp.asarray(y)))
  return f, net, np.asarray(x), xc, y, a


@pytest.mark.parametrize("name", ["continuity", "consistency"])
def test_twin_agrees_at_12px_batch_2(wide, name):
  f, net, x, xc, y, a = wide
  twin = TWINS[name]
  ctx = twin.context(x, y, 0) if twin.context else {}
  ours = twin.run_saljax(f, x, a, y, **ctx)
  theirs = quiet(twin.run_quantus, net, xc, to_nchw(a), y, **ctx)
  assert ours.shape == theirs.shape == (2,)
  np.testing.assert_allclose(ours, theirs, rtol=twin.rtol, atol=twin.atol)
  if name == "consistency":  # both rows share row 0's map and class: 1 each
    np.testing.assert_allclose(ours, [1.0, 1.0], atol=1e-6)
  else:
    assert (ours > 0).all()


def test_quantus_continuity_fails_where_the_step_count_divides_2w_plus_1(wide):
  """Why the twin uses an even step count: 5 steps at W = 12 reach a shift of
  13 pixels, past Quantus' translation (perturb_func.py L698)."""
  import quantus
  from experiments._quantus.robustness import torch_gradient
  f, net, x, xc, y, a = wide
  metric = quantus.Continuity(nr_steps=5, normalise=False, abs=False, disable_warnings=True,
                              display_progressbar=False,
                              return_nan_when_prediction_changes=False)
  with pytest.raises(IndexError):
    quiet(metric, model=net, x_batch=xc, y_batch=y, a_batch=to_nchw(a),
          explain_func=torch_gradient, device="cpu", channel_first=True, softmax=False)


def test_evaluation_counts_follow_the_input():
  """Counts are the registry's for the twin's options at the input's shape."""
  for size in (4, 12):
    f, net, x, xc, y = small_twin(batch=2, size=size)
    n = size * size
    ctx = lambda t: t.context(np.asarray(x), y, 0) if t.context else {}
    assert TWINS["pixel_flipping"].evals(f, x, ctx(TWINS["pixel_flipping"])) == n + 1
    assert TWINS["selectivity"].evals(f, x, {}) == 1 + (size // 2) ** 2
    assert TWINS["region_perturbation"].evals(f, x, {}) == 1 + min(10, (size // 2) ** 2)
    t = TWINS["monotonicity_correlation"]
    assert t.evals(f, x, ctx(t)) == saljax.metrics.entry(t.metric).cost(f, x, samples=3)
    assert t.evals(f, x, ctx(t)) > 3 * n
  # Sampling robustness twins: the prediction and one gradient per sample.
  from experiments._quantus.robustness import SAMPLES
  assert TWINS["max_sensitivity"].evals(f, x, {}) == 1 + SAMPLES


def test_efficientnet_lite_layer_map_places_every_resettable_module():
  """Every module Quantus re-initializes on the torch Lite0 maps to a flax
  layer of saljax's Lite0 with the same parameter shapes (torch layout)."""
  from efficientnet_lite_pytorch import EfficientNet
  from saljax.models import efficientnet
  net = EfficientNet.from_name("efficientnet-lite0")
  module = efficientnet.efficientnet_lite0()
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  pairs = QR.efficientnet_lite_layer_map(net)
  assert len(pairs) == 99 and pairs[0] == ("_conv_stem", "params/stem/conv")
  assert pairs[-1] == ("_fc", "params/fc")
  modules = dict(net.named_modules())
  for torch_name, flax_path in pairs:
    layer = QR._lookup(variables, flax_path)
    weight = layer["kernel"] if "kernel" in layer else layer["scale"]
    shape = weight.shape
    want = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    assert tuple(modules[torch_name].weight.shape) == tuple(want), torch_name


def test_batch_norm_reset_loads_saljax_draws_and_keeps_statistics():
  """The patched reset puts saljax's draws in a batch norm's weight and bias
  (flax "scale" / "bias") and leaves its running statistics, as saljax does."""
  import torch
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))
  with torch.no_grad():
    net[1].running_mean.fill_(0.5)
  draws = {"params": {"c": {"kernel": np.full((3, 3, 3, 4), 0.25, np.float32)},
                      "n": {"scale": np.arange(4, dtype=np.float32),
                            "bias": -np.arange(4, dtype=np.float32)}}}
  with QR.saljax_draws(net, draws, [("0", "params/c"), ("1", "params/n")]) as tnet:
    for m in tnet:
      m.reset_parameters()
  np.testing.assert_array_equal(tnet[0].weight.detach().numpy(), 0.25)
  np.testing.assert_array_equal(tnet[1].weight.detach().numpy(), np.arange(4))
  np.testing.assert_array_equal(tnet[1].bias.detach().numpy(), -np.arange(4))
  np.testing.assert_array_equal(tnet[1].running_mean.numpy(), 0.5)
  assert net[1].weight.detach().numpy().tolist() == [1.0] * 4  # the original is untouched
