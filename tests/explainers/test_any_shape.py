"""Perturbation explainers on inputs that are not images: tables ``[B, D]``
and time series ``[B, T, C]`` (issue 21). Occlusion's windows slide over
every axis but the batch and the channels; with ``segments=`` occlusion,
RISE, Sobol and HSIC mask feature groups; image-only defaults refuse other
inputs with the ``segments=`` fix."""
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax.explainers import perturbation as P
from saljax.explainers import sensitivity as S

KEY = jax.random.key(0)
B, D, T, C = 2, 6, 10, 3

# Module-level models: one function object each, so compiled methods are reused.
_W = jax.random.normal(jax.random.key(1), (D, 4))
_K1, _K2, _K3, _K4 = jax.random.split(jax.random.key(2), 4)
_W1 = jax.random.normal(_K1, (D, 5))
_B1 = 0.1 * jax.random.normal(_K2, (5,))
_W2 = jax.random.normal(_K3, (5, 3))
_B2 = 0.1 * jax.random.normal(_K4, (3,))


def _linear(x):
  return x @ _W


def _mlp(x):
  return jnp.tanh(x @ _W1 + _B1) @ _W2 + _B2


def _steps_3_to_5(x):
  """A series model that reads only time steps 3, 4 and 5 (all channels);
  logit 0 is positive and grows with every step it reads."""
  s = x[:, 3:6]
  return jnp.stack([(s ** 2).sum((1, 2)) + 1.0, jnp.tanh(s).sum((1, 2))], -1)


READ = np.isin(np.arange(T), [3, 4, 5])
STEP_LABELS = np.repeat(np.arange(T)[:, None], C, 1)  # like x[0]: one group per time step


@pytest.fixture
def xt():
  return jax.random.normal(jax.random.key(3), (B, D))


@pytest.fixture
def xs():
  x = jax.random.normal(jax.random.key(4), (B, T, C))
  # The steps read are far from the fill 0, so each of them matters: a step
  # near 0 would explain almost nothing and hide in the estimators' noise.
  return x.at[:, 3:6].set(2 + jnp.abs(x[:, 3:6]))


def _per_step(a):
  """``[B, T]`` from a map ``[B, T, C]`` that must be equal across channels."""
  a = np.asarray(a)
  np.testing.assert_allclose(a, a[..., :1].repeat(a.shape[-1], -1), rtol=1e-6, atol=1e-7)
  return a[..., 0]


# ----------------------------------------------------------------------------
# Tables [B, D].


def test_occlusion_window_1_on_a_linear_table_is_x_minus_fill_times_w(xt):
  t = jnp.array([1, 3])
  for fill in (0.0, 0.5):
    want = (xt - fill) * _W[:, t].T
    np.testing.assert_allclose(P.occlusion(_linear, xt, t, window=1, fill=fill), want, atol=1e-5)
  # Window 1 is also the default off images (each feature on its own), and
  # "elements" groups give the same map.
  np.testing.assert_allclose(P.occlusion(_linear, xt, t), xt * _W[:, t].T, atol=1e-5)
  np.testing.assert_allclose(P.occlusion(_linear, xt, t, segments="elements"), xt * _W[:, t].T,
                             atol=1e-5)


def test_occlusion_window_2_stride_1_averages_the_windows_over_features(xt):
  t = jnp.array([0, 2])
  c = np.asarray(xt * _W[:, t].T)
  a = np.asarray(P.occlusion(_linear, xt, t, window=2, stride=1))
  # Feature 0 is in window [0, 2) only; feature 3 in [2, 4) and [3, 5).
  np.testing.assert_allclose(a[:, 0], c[:, 0:2].sum(1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a[:, 3], (c[:, 2:4].sum(1) + c[:, 3:5].sum(1)) / 2, rtol=1e-5,
                             atol=1e-5)


def test_a_user_label_array_on_a_table(xt):
  t = jnp.array([2, 0])
  labels = np.array([0, 0, 1, 2, 2, 2], np.int32)  # like x[0]
  c = np.asarray((xt - 0.25) * _W[:, t].T)
  want = np.stack([c[:, labels == g].sum(1) for g in labels], 1)  # each feature: its group's sum
  a = P.occlusion(_linear, xt, t, segments=labels, fill=0.25)
  np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5)
  # Per-example labels [B, D]: example 1 puts every feature in one group.
  per_example = np.stack([labels, np.zeros(D, np.int32)])
  a = np.asarray(P.occlusion(_linear, xt, t, segments=per_example, fill=0.25))
  np.testing.assert_allclose(a[0], want[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a[1], np.full(D, c[1].sum()), rtol=1e-5, atol=1e-5)
  # RISE, Sobol and HSIC paint one value per group.
  for m in (P.rise(_mlp, xt, t, key=KEY, masks=32, segments=labels),
            S.sobol(_mlp, xt, t, designs=8, segments=labels),
            S.hsic(_mlp, xt, t, key=KEY, samples=32, segments=labels)):
    m = np.asarray(m)
    assert m.shape == xt.shape and np.isfinite(m).all()
    for g in range(3):
      np.testing.assert_allclose(m[:, labels == g], m[:, labels == g][:, :1].repeat(
          (labels == g).sum(), 1), rtol=1e-6)
    assert np.ptp(m[0]) > 0  # the groups are told apart


def test_occlusion_with_a_feature_mask_matches_captum_feature_ablation(xt):
  import captum.attr as ca  # torch and captum are in the test extra
  import torch

  net = torch.nn.Sequential(torch.nn.Linear(D, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
  with torch.no_grad():
    net[0].weight.copy_(torch.from_numpy(np.array(_W1, np.float64).T))
    net[0].bias.copy_(torch.from_numpy(np.array(_B1, np.float64)))
    net[2].weight.copy_(torch.from_numpy(np.array(_W2, np.float64).T))
    net[2].bias.copy_(torch.from_numpy(np.array(_B2, np.float64)))
  labels = np.array([0, 1, 1, 2, 0, 3], np.int64)
  target = np.array([2, 1])
  xt64 = torch.from_numpy(np.array(xt, np.float64))
  theirs = ca.FeatureAblation(net).attribute(
      xt64, target=torch.from_numpy(target), baselines=0.3,
      feature_mask=torch.from_numpy(labels)[None]).detach().numpy()
  ours = np.asarray(P.occlusion(_mlp, xt, jnp.asarray(target), segments=labels.astype(np.int32),
                                fill=0.3))
  assert np.abs(theirs).max() > 0.1  # the test can fail
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_occlusion_segments_on_images_equal_non_overlapping_windows():
  # 4 x 4 blocks as labels [H, W] occlude exactly what window=4, stride=4 does.
  x = jax.random.normal(jax.random.key(5), (B, 8, 8, 3))
  w = jax.random.normal(jax.random.key(6), (8 * 8 * 3, 2))
  f = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)
  blocks = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1).astype(np.int32)
  t = jnp.array([0, 1])
  np.testing.assert_allclose(P.occlusion(f, x, t, segments=blocks),
                             P.occlusion(f, x, t, window=4, stride=4), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Time series [B, T, C].


def test_occlusion_windows_slide_over_time_and_cover_all_channels(xs):
  t = jnp.array([0, 1])
  a = _per_step(P.occlusion(_steps_3_to_5, xs, t, window=2, stride=1))
  # Windows [s, s + 2) touch steps 3..5 for s = 2..5: steps 2..6 get a value.
  touched = np.isin(np.arange(T), [2, 3, 4, 5, 6])
  np.testing.assert_allclose(a[:, ~touched], 0.0, atol=1e-6)
  assert np.abs(a[:, READ]).min() > 1e-2


@pytest.mark.parametrize("method", ["occlusion", "sobol"])
def test_segments_are_exactly_zero_outside_the_steps_the_model_reads(xs, method):
  t = jnp.array([0, 1])
  if method == "occlusion":
    a = P.occlusion(_steps_3_to_5, xs, t, segments=STEP_LABELS)
  else:
    a = S.sobol(_steps_3_to_5, xs, t, designs=16, segments=STEP_LABELS)
  a = _per_step(a)
  # A step the model does not read changes no model input it sees: exactly 0.
  np.testing.assert_allclose(a[:, ~READ], 0.0, atol=1e-6)
  assert np.abs(a[:, READ]).min() > 1e-3


def test_rise_and_hsic_over_segments_peak_on_the_steps_the_model_reads(xs):
  # Logit 1: near 1 for each element read (tanh of values >= 2), 0 when masked.
  t = jnp.array([1, 1])
  r = _per_step(P.rise(_steps_3_to_5, xs, t, key=KEY, masks=2048, segments=STEP_LABELS,
                       score="logit"))
  # RISE's value of a group is the mean score of the masks keeping it: for
  # this additive model, p * sum(c) for a step it does not read (the
  # background, the same for all) and c_g + p * sum(c) - p * c_g for a step
  # g it reads, c_g = sum over channels of tanh(x). 2048 masks: noise ~0.1.
  c = np.asarray(jnp.tanh(xs).sum(-1))[:, READ]  # [B, 3]
  background = 0.5 * c.sum(1, keepdims=True)
  np.testing.assert_allclose(r[:, ~READ], np.broadcast_to(background, r[:, ~READ].shape),
                             atol=0.5)
  np.testing.assert_allclose(r[:, READ], background + 0.5 * c, atol=0.5)
  assert (r[:, READ].min(1) > r[:, ~READ].max(1)).all()
  h = _per_step(S.hsic(_steps_3_to_5, xs, t, key=KEY, samples=128, segments=STEP_LABELS))
  # HSIC: independent masks give scores near 0; the steps read are far above.
  assert (h[:, READ].min(1) > 3 * np.abs(h[:, ~READ]).max(1)).all()


def test_chunked_equals_unchunked(xs):
  t = jnp.array([0, 1])
  seg = STEP_LABELS
  calls = {
      "occlusion": lambda bs: P.occlusion(_steps_3_to_5, xs, t, segments=seg, batch_size=bs),
      "occlusion_windows": lambda bs: P.occlusion(_steps_3_to_5, xs, t, window=3, batch_size=bs),
      "rise": lambda bs: P.rise(_steps_3_to_5, xs, t, key=KEY, masks=20, segments=seg,
                                batch_size=bs),
      "sobol": lambda bs: S.sobol(_steps_3_to_5, xs, t, designs=4, segments=seg, batch_size=bs),
      "hsic": lambda bs: S.hsic(_steps_3_to_5, xs, t, key=KEY, samples=20, segments=seg,
                                batch_size=bs),
  }
  for name, call in calls.items():
    np.testing.assert_allclose(call(3), call(None), rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------
# Image-only defaults refuse other inputs, with the fix.


@pytest.mark.parametrize("shape", [(B, D), (B, T, C)])
@pytest.mark.parametrize("method", ["rise", "sobol", "hsic"])
def test_grid_defaults_refuse_other_inputs_and_name_segments(method, shape):
  x = jnp.ones(shape)
  f = lambda x: x.reshape(x.shape[0], -1)[:, :2]
  with pytest.raises(ValueError) as e:
    saljax.explainers.get(method)(f, x, jnp.array([0, 1]), key=KEY)
  msg = str(e.value)
  assert msg.startswith(method) and str(shape) in msg and "NHWC" in msg
  assert "segments='elements'" in msg and "label array" in msg


def test_blur_ig_is_image_only_and_points_to_integrated_gradients():
  f = lambda x: x[:, :2]
  with pytest.raises(ValueError, match=r"blur_ig: expected NHWC images.*height and width.*"
                                       r"\(2, 6\).*integrated_gradients"):
    saljax.blur_ig(f, jnp.ones((B, D)), jnp.array([0, 1]))


def test_segments_with_a_window_is_an_error(xt):
  with pytest.raises(ValueError, match="segments or window/stride, not both"):
    P.occlusion(_linear, xt, 0, window=2, segments="elements")
  # Sobol's design has two dimensions per group, and scipy's sequence stops at 21201.
  with pytest.raises(ValueError, match="sobol: 10800 feature groups .* fewer, larger segments"):
    S.sobol(lambda x: x[:, :2], jnp.ones((1, 10800)), 0, designs=2, segments="elements")


# ----------------------------------------------------------------------------
# The registry's cost counts the groups.

_ROWS = [0]
_LOCK = threading.Lock()


def _count(rows):
  with _LOCK:
    _ROWS[0] += int(np.asarray(rows).size)


def _counted_mlp(x):
  jax.debug.callback(_count, x[:, 0])
  return _mlp(x)


@pytest.mark.parametrize("name,opts", [
    ("occlusion", {"segments": np.array([0, 0, 1, 2, 2, 3], np.int32)}),
    ("occlusion", {"window": 2, "stride": 1}),
    ("rise", {"masks": 8, "segments": "elements"}),
    ("sobol", {"designs": 4, "segments": np.array([0, 1, 1, 2, 2, 2], np.int32)}),
    ("hsic", {"samples": 8, "segments": "elements"}),
])
def test_cost_counts_the_feature_groups(name, opts, xt):
  e = saljax.explainers.entry(name)
  key = {"key": KEY} if e.stochastic else {}
  _ROWS[0] = 0
  jax.block_until_ready(e.fn(_counted_mlp, xt, jnp.array([0, 1]), **key, **opts))
  jax.effects_barrier()  # host callbacks run asynchronously
  assert _ROWS[0] / B == e.cost(_counted_mlp, xt, **opts)
