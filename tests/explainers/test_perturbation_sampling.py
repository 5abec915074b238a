"""Perturbation explainers: Captum's occlusion windows, randomness that depends
on each example's index (not the batch size), and sample counts that are
bounded in memory and refused when they cannot finish."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saljax.explainers import perturbation as P
from saljax.explainers import sensitivity as S

from _tiny_models import torch_conv_relu_pool_linear

KEY = jax.random.key(0)
_K1, _K2 = jax.random.split(jax.random.key(21))
_W1 = jax.random.normal(_K1, (8 * 8 * 3, 16)) / math.sqrt(8 * 8 * 3)
_W2 = jax.random.normal(_K2, (16, 4))


def _mlp(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ _W1 * 2) @ _W2


def test_occlusion_parity_with_captum_when_the_stride_does_not_tile_the_image():
  import captum.attr as ca  # torch and captum are in the test extra
  import torch

  k = jax.random.normal(jax.random.key(12), (3, 3, 3, 4))  # HWIO
  bias = 0.1 * jax.random.normal(jax.random.key(13), (4,))
  w = jax.random.normal(jax.random.key(14), (4, 5))

  def f(x):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + bias).mean((1, 2)) @ w

  net = torch_conv_relu_pool_linear(k, bias, w)
  # 18 pixels, window 5, stride 4: starts 0, 4, 8, 12 and a last window at 16
  # cropped to 2 pixels; the old `arange(0, 14, 4)` left rows/cols 17 uncovered.
  x = jax.random.normal(jax.random.key(15), (2, 18, 18, 3))
  target = jnp.array([1, 4])
  xt = torch.from_numpy(np.array(x, np.float64).transpose(0, 3, 1, 2).copy())
  theirs = ca.Occlusion(net).attribute(
      xt, sliding_window_shapes=(3, 5, 5), strides=(3, 4, 4), baselines=0.0,
      target=torch.from_numpy(np.array(target)).long())
  theirs = theirs.detach().numpy().transpose(0, 2, 3, 1)
  ours = np.asarray(P.occlusion(f, x, target, window=5, stride=4))
  assert np.abs(theirs[:, -1]).max() > 1e-3  # the border is attributed
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
  assert len(P._occlusion_starts(x.shape, 5, 4)[0]) == 5 * 5


# Example 0 has 4 groups, example 1 has 16: a batch pads to M = 16, example 0
# alone has M = 4, so draws must not depend on the padded group count either.
_SEG = np.stack([np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1),
                 np.repeat(np.repeat(np.arange(16).reshape(4, 4), 2, 0), 2, 1),
                 np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)[::-1],
                 np.arange(64).reshape(8, 8) // 8]).astype(np.int32)

_STOCHASTIC = {
    "rise": lambda x, t, seg, **kw: P.rise(_mlp, x, t, masks=24, cells=2, **kw),
    "hsic": lambda x, t, seg, **kw: S.hsic(_mlp, x, t, grid=2, samples=16, **kw),
    "lime": lambda x, t, seg, **kw: P.lime(_mlp, x, t, samples=24, segments=seg, **kw),
    "kernel_shap": lambda x, t, seg, **kw: P.kernel_shap(_mlp, x, t, samples=24, segments=seg,
                                                         **kw),
    "shapley_sampling": lambda x, t, seg, **kw: P.shapley_sampling(_mlp, x, t, samples=2,
                                                                   segments=seg, **kw),
}


@pytest.mark.parametrize("name", sorted(_STOCHASTIC))
def test_an_examples_map_does_not_depend_on_its_batch(name):
  fn = _STOCHASTIC[name]
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
  t = jnp.array([0, 3, 1, 2])
  full = np.asarray(fn(x, t, _SEG, key=KEY, batch_size=5))
  one = np.asarray(fn(x[:1], t[:1], _SEG[:1], key=KEY, batch_size=3))
  scale = np.abs(full[:1]).max()
  assert scale > 0
  np.testing.assert_allclose(one, full[:1], rtol=1e-4, atol=1e-5 * scale)
  # The second example in a batch of two also keeps its map.
  two = np.asarray(fn(x[:2], t[:2], _SEG[:2], key=KEY, batch_size=None))
  np.testing.assert_allclose(two, full[:2], rtol=1e-4, atol=1e-5 * np.abs(full[:2]).max())


_HUGE = [
    ("masks", lambda x, t: P.rise(_mlp, x, t, key=KEY, masks=10**9)),
    ("samples", lambda x, t: P.lime(_mlp, x, t, key=KEY, samples=10**9, segments=_SEG[:2])),
    ("samples", lambda x, t: P.kernel_shap(_mlp, x, t, key=KEY, samples=10**9,
                                           segments=_SEG[:2])),
    ("samples", lambda x, t: P.shapley_sampling(_mlp, x, t, key=KEY, samples=10**9,
                                                segments=_SEG[:2])),
    ("samples", lambda x, t: S.hsic(_mlp, x, t, key=KEY, grid=2, samples=10**9)),
    ("designs", lambda x, t: S.sobol(_mlp, x, t, grid=2, designs=2**30)),
]


@pytest.mark.parametrize("case", range(len(_HUGE)))
def test_a_count_that_cannot_finish_is_refused_naming_the_option(case):
  option, call = _HUGE[case]
  x = jnp.ones((2, 8, 8, 3))
  with pytest.raises(ValueError, match=option) as e:
    call(x, jnp.array([0, 1]))
  msg = str(e.value)
  assert ("limit" in msg or "at most" in msg) and ("1000000000" in msg or str(2**30) in msg)


_OVER = [
    ("masks", lambda x, t: P.rise(_mlp, x, t, key=KEY, masks=3000, cells=2)),
    ("samples", lambda x, t: P.shapley_sampling(_mlp, x, t, key=KEY, samples=300,
                                                segments=_SEG[:2])),
    ("designs", lambda x, t: S.sobol(_mlp, x, t, grid=4, designs=64)),
    ("samples", lambda x, t: P.lime(_mlp, x, t, key=KEY, samples=1000, segments=_SEG[:2])),
]


@pytest.mark.parametrize("case", range(len(_OVER)))
def test_limits_are_read_from_the_environment_and_refuse_cheaply(case, monkeypatch):
  # Lowered limits, so a refusal is cheap to test (old code ran these counts).
  monkeypatch.setenv("SALJAX_MAX_COUNT", "2000")
  monkeypatch.setenv("SALJAX_MAX_EVALUATIONS", "1000")
  monkeypatch.setenv("SALJAX_MAX_DESIGN_ENTRIES", "10000")
  option, call = _OVER[case]
  with pytest.raises(ValueError, match=option):
    call(jnp.ones((2, 8, 8, 3)), jnp.array([0, 1]))


def test_rise_builds_no_key_array_over_the_masks_and_chunking_keeps_the_map():
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  t = jnp.array([0, 3])
  fill = jnp.zeros_like(x)
  jaxpr = str(jax.make_jaxpr(
      lambda x: P._rise(_mlp, x, t, KEY, fill, jnp.float32(0.5), 1000, 2, "probability", 8))(x))
  assert "key<fry>[1000]" not in jaxpr  # mask keys come from indices, chunk by chunk
  a = P.rise(_mlp, x, t, key=KEY, masks=1000, cells=2, batch_size=8)
  b = P.rise(_mlp, x, t, key=KEY, masks=1000, cells=2, batch_size=1000)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The masks `rise_masks` returns are the ones `rise` uses.
  m = P.rise_masks(KEY, 1000, (8, 8), 2, 0.5)
  y = jax.nn.softmax(_mlp((x[None] * m[:, None, :, :, None]).reshape(-1, 8, 8, 3)))
  y = y.reshape(1000, 2, -1)[:, jnp.arange(2), t]
  want = jnp.einsum("nb,nhw->bhw", y, m) / (1000 * 0.5)
  np.testing.assert_allclose(a[..., 0], want, rtol=1e-4, atol=1e-6)


def test_hsic_refuses_more_samples_than_its_pairwise_kernel_holds():
  x = jnp.ones((1, 8, 8, 3))
  with pytest.raises(ValueError, match=rf"samples={S.HSIC_MAX_SAMPLES + 1} .*limit"):
    S.hsic(_mlp, x, jnp.array([0]), key=KEY, grid=2, samples=S.HSIC_MAX_SAMPLES + 1)
