"""Perturbation explainers checked against answers known in closed form."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import ops
from saljax import model as M
from saljax.explainers import _extremal, sensitivity as _sensitivity
from saljax.explainers import _masking as MK
from saljax.explainers import perturbation as P

KEY = jax.random.key(0)
H = W = 8
SEG4 = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)  # 2 x 2 blocks of 4 x 4


@pytest.fixture
def x8():
  return jax.random.normal(jax.random.key(3), (2, H, W, 3))


# Module-level models: one function object for every test, so compiled
# explainers (the model is a static argument) are reused across tests.
_LIN_W = jax.random.normal(jax.random.key(4), (H * W * 3, 4))
_K1, _K2 = jax.random.split(jax.random.key(5))
_MLP_W1 = jax.random.normal(_K1, (H * W * 3, 16)) / math.sqrt(H * W * 3)
_MLP_W2 = jax.random.normal(_K2, (16, 4))


def _lin(x):
  return x.reshape(x.shape[0], -1) @ _LIN_W


def _mlp(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ _MLP_W1 * 2) @ _MLP_W2


@pytest.fixture
def lin8():
  return _lin, _LIN_W


@pytest.fixture
def mlp8():
  return _mlp


def region_model(r0, r1, c0, c1):
  """A nonlinear model that reads only rows r0:r1, cols c0:c1."""
  def f(x):
    s = x[:, r0:r1, c0:c1, :].reshape(x.shape[0], -1)
    return jnp.stack([jnp.tanh(s).sum(1) + (s ** 2).sum(1), -s.sum(1)], -1)
  return f


def group_contrib(w, x, target, seg, fill=0.0):
  """Exact Shapley values of a linear model over groups: sum over the group of w (x - fill)."""
  c = (x - fill) * w[:, target].T.reshape(x.shape)
  return np.stack([[float(c[b][seg == j].sum()) for j in range(seg.max() + 1)]
                   for b in range(x.shape[0])])


def per_group(a, seg):
  a = np.asarray(a)
  out = []
  for b in range(a.shape[0]):
    vals = []
    for j in range(seg.max() + 1):
      v = a[b][seg == j].ravel()
      np.testing.assert_allclose(v, v[0], rtol=1e-5, atol=1e-6)  # constant over the group
      vals.append(v[0])
    out.append(vals)
  return np.asarray(out)


# ----------------------------------------------------------------------------
# Occlusion.


def test_occlusion_zero_outside_the_region_the_model_reads(x8):
  f = region_model(2, 4, 4, 6)
  t = jnp.array([0, 1])
  a = P.occlusion(f, x8, t, window=2, stride=2)
  assert a.shape == x8.shape
  inside = np.zeros((H, W), bool)
  inside[2:4, 4:6] = True
  # Zero up to float32 rounding (f(x) and the occluded copies run in batches of
  # different shapes), against values of order 1 inside.
  np.testing.assert_allclose(np.asarray(a)[:, ~inside], 0.0, atol=1e-5)
  assert np.abs(np.asarray(a)[:, inside]).min() > 1e-2  # the test can fail


def test_occlusion_one_pixel_window_on_linear_model_is_gradient_times_input(x8, lin8):
  f, w = lin8
  t = jnp.array([1, 3])
  a = P.occlusion(f, x8, t, window=1, stride=1)
  want = (x8 * w[:, t].T.reshape(x8.shape)).sum(-1, keepdims=True)
  np.testing.assert_allclose(a, jnp.broadcast_to(want, x8.shape), atol=1e-4)


def test_occlusion_overlapping_windows_average_and_border_windows_are_cropped(x8, lin8):
  f, w = lin8
  t = jnp.array([0, 2])
  # Window 3, stride 2 on 8 pixels: Captum's ceil(5 / 2) + 1 = 4 starts 0, 2,
  # 4, 6; the last window is cropped to pixels 6..7, so row/column 7 is covered.
  a = np.asarray(P.occlusion(f, x8, t, window=3, stride=2))
  c = np.asarray((x8 * w[:, t].T.reshape(x8.shape)).sum(-1))
  assert np.isfinite(a).all()
  np.testing.assert_allclose(a[:, 7, 7, 0], c[:, 6:8, 6:8].sum((1, 2)), rtol=1e-4, atol=1e-4)
  # Pixel (2, 2) is covered by the windows starting at rows {0, 2} x cols {0, 2}.
  diffs = [c[:, r:r + 3, q:q + 3].sum((1, 2)) for r in (0, 2) for q in (0, 2)]
  np.testing.assert_allclose(a[:, 2, 2, 0], np.mean(diffs, 0), rtol=1e-4, atol=1e-4)


def test_occlusion_blur_fill(x8, lin8):
  f, w = lin8
  t = jnp.array([0, 1])
  a = P.occlusion(f, x8, t, window=8, fill="blur", blur_sigma=2.0)
  blurred = ops.gaussian_blur(x8, 2.0, max_sigma=2.0, mode="reflect")
  want = M.target_score(f, x8, t, "logit") - M.target_score(f, blurred, t, "logit")
  np.testing.assert_allclose(a[:, 0, 0, 0], want, rtol=1e-4)


def test_occlusion_chunked_equals_unchunked(x8, mlp8):
  t = jnp.array([0, 1])
  a = P.occlusion(mlp8, x8, t, window=3, stride=1, batch_size=None)
  b = P.occlusion(mlp8, x8, t, window=3, stride=1, batch_size=5)  # 36 windows, remainder 1
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# RISE.


def test_rise_same_key_identical_and_chunking(x8, mlp8):
  t = jnp.array([0, 3])
  a = P.rise(mlp8, x8, t, key=KEY, masks=50, batch_size=7)  # 50 = 7 * 7 + 1
  b = P.rise(mlp8, x8, t, key=KEY, masks=50, batch_size=7)
  np.testing.assert_array_equal(a, b)
  c = P.rise(mlp8, x8, t, key=KEY, masks=50, batch_size=None)
  np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
  d = P.rise(mlp8, x8, t, key=jax.random.key(1), masks=50, batch_size=7)
  assert not np.allclose(a, d)


def test_rise_masks_statistics():
  m = P.rise_masks(KEY, 2000, (16, 16), 4, 0.3)
  assert m.shape == (2000, 16, 16)
  assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
  assert abs(float(m.mean()) - 0.3) < 0.02


def test_rise_constant_model_and_region_model():
  x = jnp.ones((1, 16, 16, 3))
  const = lambda x: jnp.zeros((x.shape[0], 2)) + jnp.array([2.0, 0.0])
  s = P.rise(const, x, 0, key=KEY, masks=500, score="logit")
  # sum_i c M_i / (N p) -> c, since E[M] = p.
  assert abs(float(s.mean()) - 2.0) < 0.1
  f = lambda x: jnp.stack([x[:, 2:6, 2:6].sum((1, 2, 3)), jnp.zeros(x.shape[0])], -1)
  s = np.asarray(P.rise(f, x, 0, key=KEY, masks=500, cells=4, score="logit"))[0, ..., 0]
  # Outside the region the map estimates E[f] = 48 p = 24; inside E[f M] / p is larger.
  assert abs(s[10:, 10:].mean() - 24) < 2.5
  assert s[2:6, 2:6].mean() > s[10:, 10:].mean() + 4


# ----------------------------------------------------------------------------
# LIME, KernelSHAP, Shapley sampling.


def test_kernel_shap_all_coalitions_recovers_linear_model(x8, lin8):
  f, w = lin8
  t = jnp.array([2, 0])
  a = P.kernel_shap(f, x8, t, exact=True, segments=SEG4)
  np.testing.assert_allclose(per_group(a, SEG4), group_contrib(w, x8, t, SEG4), rtol=1e-4, atol=1e-4)


def _exact_shapley(f, x, t, seg, fill=0.0):
  """Brute-force Shapley values over the groups of `seg` (test oracle, loops allowed here)."""
  m = seg.max() + 1
  seg_x = jnp.broadcast_to(jnp.asarray(seg)[None, :, :, None], x.shape)

  def value(s):
    keep = jnp.isin(seg_x, jnp.asarray(list(s) or [-1]))
    return np.asarray(M.target_score(f, jnp.where(keep, x, fill), t, "logit"))

  phi = np.zeros((x.shape[0], m))
  for j in range(m):
    others = [k for k in range(m) if k != j]
    for r in range(m):
      for s in itertools.combinations(others, r):
        wt = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
        phi[:, j] += wt * (value(s + (j,)) - value(s))
  return phi


def test_kernel_shap_exact_equals_brute_force_shapley_on_nonlinear_model(x8, mlp8):
  t = jnp.array([1, 2])
  a = P.kernel_shap(mlp8, x8, t, exact=True, segments=SEG4)
  np.testing.assert_allclose(per_group(a, SEG4), _exact_shapley(mlp8, x8, t, SEG4), atol=2e-4)


def test_kernel_shap_sampled_efficiency_and_key(x8, mlp8):
  t = jnp.array([1, 2])
  seg = np.arange(64).reshape(8, 8) // 8  # 8 row bands
  a = P.kernel_shap(mlp8, x8, t, key=KEY, samples=64, segments=seg)
  b = P.kernel_shap(mlp8, x8, t, key=KEY, samples=64, segments=seg)
  np.testing.assert_array_equal(a, b)
  phi = per_group(a, seg)
  gap = M.target_score(mlp8, x8, t, "logit") - M.target_score(mlp8, jnp.zeros_like(x8), t, "logit")
  np.testing.assert_allclose(phi.sum(1), gap, rtol=1e-4, atol=1e-4)


def test_kernel_shap_per_example_segment_counts(x8, lin8):
  """Examples with different numbers of groups (padding) still get exact values."""
  f, w = lin8
  t = jnp.array([0, 1])
  seg = np.stack([SEG4, np.where(SEG4 == 3, 0, SEG4) * 5])  # 4 groups; 3 groups with gaps in labels
  a = P.kernel_shap(f, x8, t, exact=True, segments=seg)
  for b in range(2):
    labels = np.unique(seg[b])
    got = [float(np.asarray(a)[b][seg[b] == lab][0, 0]) for lab in labels]
    c = np.asarray((x8 * w[:, t].T.reshape(x8.shape)).sum(-1))[b]
    want = [c[seg[b] == lab].sum() for lab in labels]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_lime_on_linear_model_recovers_group_contributions(x8, lin8):
  f, w = lin8
  t = jnp.array([3, 1])
  # An exactly linear response in z: the weighted fit is perfect whatever the weights.
  a = P.lime(f, x8, t, key=KEY, samples=200, segments=SEG4, fill=0.0, alpha=1e-6, score="logit")
  np.testing.assert_allclose(per_group(a, SEG4), group_contrib(w, x8, t, SEG4), rtol=1e-3, atol=1e-3)
  # Ridge shrinks the coefficients (sklearn's Ridge with alpha=1, lime's default).
  r = per_group(P.lime(f, x8, t, key=KEY, samples=200, segments=SEG4, fill=0.0, score="logit"), SEG4)
  exact = group_contrib(w, x8, t, SEG4)
  assert np.all(np.linalg.norm(r, axis=1) < np.linalg.norm(exact, axis=1))
  assert np.abs(r - exact).max() > 1e-2


def test_lime_mean_fill_and_default_segmentation(x8, mlp8):
  a = P.lime(mlp8, x8, jnp.array([0, 1]), key=KEY, samples=16)
  assert a.shape == x8.shape and bool(jnp.isfinite(a).all())
  labels, counts, m = MK.feature_groups(x8, SEG4)
  mean = MK.fill_values(x8, "mean", labels=labels, num_labels=m)
  np.testing.assert_allclose(mean[0, 0, 0], x8[0, :4, :4].mean((0, 1)), rtol=1e-5)


def test_shapley_sampling_efficiency_is_exact_and_error_shrinks(x8, mlp8):
  t = jnp.array([0, 3])
  gap = M.target_score(mlp8, x8, t, "logit") - M.target_score(mlp8, jnp.zeros_like(x8), t, "logit")
  exact = _exact_shapley(mlp8, x8, t, SEG4)
  errs = []
  for samples in (4, 256):
    a = P.shapley_sampling(mlp8, x8, t, key=KEY, samples=samples, segments=SEG4, batch_size=9)
    phi = per_group(a, SEG4)
    np.testing.assert_allclose(phi.sum(1), gap, rtol=1e-4, atol=1e-4)  # telescoping
    errs.append(np.abs(phi - exact).max())
  assert errs[1] < errs[0] / 2, errs
  assert errs[1] < 0.1 * np.abs(exact).max(), errs


def test_shapley_sampling_linear_is_exact_and_key(x8, lin8):
  f, w = lin8
  t = jnp.array([0, 3])
  a = P.shapley_sampling(f, x8, t, key=KEY, samples=3, segments=SEG4)
  np.testing.assert_allclose(per_group(a, SEG4), group_contrib(w, x8, t, SEG4), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(a, P.shapley_sampling(f, x8, t, key=KEY, samples=3, segments=SEG4))


def test_elements_segments_for_flat_inputs():
  w = jnp.arange(6.0).reshape(3, 2)
  f = lambda x: x @ w
  x = jnp.array([[1.0, 2.0, 3.0]])
  a = P.kernel_shap(f, x, 1, exact=True, segments="elements")
  np.testing.assert_allclose(a, x * w[:, 1], rtol=1e-5)


# ----------------------------------------------------------------------------
# Extremal perturbation, Sobol, HSIC.


def test_extremal_mask_has_requested_area():
  x = 2 * jax.random.normal(KEY, (2, 16, 16, 3))
  # Logits of order 1-10, as a trained classifier's (the area weight is tuned to that scale).
  f = lambda x: jnp.stack([(x[:, 4:9, 6:11] ** 2).mean((1, 2, 3)), jnp.zeros(x.shape[0])], -1)
  # No flip jitter: this toy model reads a fixed, asymmetric region.
  m = np.asarray(P.extremal_perturbation(f, x, 0, area=0.1, step=2, sigma=3.0, iterations=800,
                                         max_blur=4.0, levels=4, jitter=False))
  assert m.shape == x.shape and m.min() >= 0 and m.max() <= 1
  area = (m[..., 0] > 0.5).mean((1, 2))
  np.testing.assert_allclose(area, 0.1, atol=0.03)
  # The smooth borders (sigma) add soft mass around the binary core.
  np.testing.assert_allclose(m[..., 0].mean((1, 2)), 0.1, atol=0.05)
  # The mask sits on the region the model reads.
  assert m[:, 4:9, 6:11, 0].mean() > 5 * m[:, :, :, 0].mean() / 2


def test_mask_generator_constant_parameters_give_a_flat_mask():
  shape_in, padding, index, weight, margin = _extremal.mask_generator((14, 14), 7, 21.0)
  ones = _extremal._generate(jnp.ones(shape_in), padding, jnp.asarray(index), jnp.asarray(weight),
                             margin, (14, 14))
  # Softmax pooling of kernel weights <= 1 stays just under 1.
  np.testing.assert_allclose(ones, 1.0, atol=0.05)
  zeros = _extremal._generate(jnp.zeros(shape_in), padding, jnp.asarray(index), jnp.asarray(weight),
                              margin, (14, 14))
  np.testing.assert_allclose(zeros, 0.0)


def test_sobol_total_indices_of_an_additive_model():
  # f(x * M) = sum_i w_i M_i on a 4 x 4 grid over a 4 x 4 image: ST_i = w_i^2 / sum w^2.
  wts = jnp.arange(1.0, 17.0)
  f = lambda x: jnp.stack([x[..., 0].reshape(x.shape[0], -1) @ wts, jnp.zeros(x.shape[0])], -1)
  x = jnp.ones((1, 4, 4, 1))
  st = np.asarray(P.sobol(f, x, 0, grid=4, designs=256))[0, :, :, 0].ravel()
  want = np.asarray(wts ** 2 / (wts ** 2).sum())
  np.testing.assert_allclose(st, want, atol=0.03)
  assert np.corrcoef(st, want)[0, 1] > 0.98


def test_hsic_peaks_on_the_patch_the_model_reads():
  x = jnp.ones((2, 8, 8, 3))
  f = region_model(4, 6, 2, 4)  # patch (2, 1) of a 4 x 4 grid
  h = np.asarray(P.hsic(f, x, 0, key=KEY, grid=4, samples=128, batch_size=13))
  g = h[:, 1::2, 1::2, 0]  # one pixel per patch (2 x 2 patches)
  for b in range(2):
    assert np.unravel_index(g[b].argmax(), g[b].shape) == (2, 1)
  np.testing.assert_array_equal(h, P.hsic(f, x, 0, key=KEY, grid=4, samples=128, batch_size=13))


def test_hsic_scores_closed_form():
  m = jnp.array([[1, 0], [1, 1], [0, 0], [0, 1]], bool)
  y = jnp.array([3.0, 3.0, 1.0, 1.0])  # depends on column 0 only
  s = np.asarray(_sensitivity.hsic_scores(m, y))
  assert s[0] > 0 and abs(s[1]) < 1e-7


# ----------------------------------------------------------------------------
# Compile once, registry, bad input.


def test_one_compile_per_shape(x8):
  traces = []
  w = jax.random.normal(KEY, (H * W * 3, 4))

  def f(x):
    traces.append(1)
    return x.reshape(x.shape[0], -1) @ w

  P.rise(f, x8, jnp.array([0, 1]), key=KEY, masks=10, batch_size=4)
  n = len(traces)
  P.rise(f, x8 + 1, jnp.array([2, 3]), key=jax.random.key(9), masks=10, batch_size=4)
  P.kernel_shap(f, x8, jnp.array([0, 1]), key=KEY, samples=8, segments=SEG4)
  m = len(traces)
  P.kernel_shap(f, x8 * 2, jnp.array([1, 1]), key=jax.random.key(2), samples=8, segments=SEG4)
  P.occlusion(f, x8, jnp.array([0, 1]), window=2)
  k = len(traces)
  P.occlusion(f, x8 - 1, jnp.array([1, 0]), window=2)
  assert len(traces) == k and m > n
  assert n > 0


def test_registered():
  for name, stochastic in [("occlusion", False), ("rise", True), ("lime", True),
                           ("kernel_shap", True), ("shapley_sampling", True),
                           ("extremal_perturbation", False), ("sobol", False), ("hsic", True)]:
    e = saljax.explainers.entry(name)
    assert e.kind == "pixel" and e.stochastic == stochastic, name


def test_bad_inputs(x8, lin8):
  f, _ = lin8
  t = jnp.array([0, 1])
  with pytest.raises(ValueError, match=r"window: expected at most the image size \(8, 8\), got \(9, 9\)"):
    P.occlusion(f, x8, t, window=9)
  with pytest.raises(ValueError, match="masks: expected an int >= 1, got 0"):
    P.rise(f, x8, t, key=KEY, masks=0)
  with pytest.raises(ValueError, match="samples: expected an int >= 1, got 0"):
    P.shapley_sampling(f, x8, t, key=KEY, samples=0, segments=SEG4)
  with pytest.raises(ValueError, match="expected a jax.random key"):
    P.rise(f, x8, t)
  bad = SEG4.copy()
  bad[0, 0] = -1
  with pytest.raises(ValueError, match="do not cover the input"):
    P.kernel_shap(f, x8, t, key=KEY, segments=bad)
  with pytest.raises(ValueError, match=r"segments: expected a label array of shape"):
    P.lime(f, x8, t, key=KEY, segments=np.zeros((4, 4), np.int32))
  with pytest.raises(TypeError, match="integer label array"):
    P.lime(f, x8, t, key=KEY, segments=np.zeros((8, 8), np.float32))
  with pytest.raises(ValueError, match="exact=True .* M <= 16"):
    P.kernel_shap(f, x8, t, exact=True, segments="elements")
  with pytest.raises(ValueError, match="designs: expected a power of two"):
    P.sobol(f, x8, t, grid=2, designs=24)
  with pytest.raises(ValueError, match=r"area: expected a float in \(0, 1\)"):
    P.extremal_perturbation(f, x8, t, area=1.5)
  with pytest.raises(ValueError, match="score: expected one of"):
    P.rise(f, x8, t, key=KEY, score="softmax")
  with pytest.raises(ValueError, match="fill: expected a finite value"):
    P.occlusion(f, x8, t, fill=float("nan"))
  with pytest.raises(ValueError, match="fill: expected a float, an array, 'blur' or 'mean'"):
    P.occlusion(f, x8, t, fill="black")
  with pytest.raises(ValueError, match="fill='mean' needs feature groups"):
    P.occlusion(f, x8, t, fill="mean")
  with pytest.raises(ValueError, match="NHWC"):
    P.rise(lambda x: x, jnp.ones((2, 4)), t, key=KEY)


def test_data_dependent_segment_counts_are_padded_to_multiples_of_8(x8):
  labels, counts, m = MK.feature_groups(x8, "slic", {"n_segments": 5})
  assert m % 8 == 0 and m >= counts.max()
  labels, counts, m = MK.feature_groups(x8, SEG4)
  assert m == 4  # a given label array is not padded
