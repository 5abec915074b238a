"""Quantus 0.6 twins of the faithfulness metrics (every class in
``quantus.metrics.faithfulness``).

How the twins line the two libraries up:
- Quantus ranks and removes array ELEMENTS of ``x[B, C, H, W]``; saljax removes
  PIXELS (all channels). `_spread` gives Quantus the pixel map with each
  channel offset by far less than the gap between pixel values, so the C
  channels of a pixel sit next to each other in every sort, and
  ``features_in_step = C`` removes one pixel per step. Sums of the spread map
  over a pixel are ``C * pixel + const``, which correlations ignore.
- Fills: Quantus' ``perturb_baseline="black"`` is each image's minimum; the
  twins pass ``perturb_baseline=0.0`` (saljax's ``"zeros"``).
- ``normalise=False`` and ``abs=False`` unless the metric's docstring says
  saljax ranks ``|a|`` (then Quantus gets the non-negative map already).
- Random draws: saljax's draws are recomputed from the same key and fed to
  Quantus through its ``perturb_func`` hook or by patching the numpy call it
  makes (`_patched`), in the order Quantus consumes them.
Each runner returns numpy arrays; where a metric has a curve both sides return
the comparable part of it.
"""
from __future__ import annotations

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from experiments._quantus import QuantusTwin, registry_count

Q_PATH = ".venv/lib/python3.11/site-packages/quantus"


def _q():
  import quantus
  return quantus


COMMON = dict(normalise=False, abs=False, disable_warnings=True, display_progressbar=False,
              return_aggregate=False)


def _call(metric, net, x, a, y, *, softmax: bool, **kw):
  out = metric(model=net, x_batch=np.asarray(x, np.float32), y_batch=np.asarray(y), a_batch=a,
               device="cpu", channel_first=True, softmax=softmax, batch_size=len(x), **kw)
  return out


def _pixels(a_nchw, absolute: bool = False) -> np.ndarray:
  """saljax's per-pixel relevance: the (absolute) channel sum, ``[B, H, W]``."""
  a = np.asarray(a_nchw, np.float64)
  return (np.abs(a) if absolute else a).sum(1)


def _spread(pix: np.ndarray, c: int) -> np.ndarray:
  """``[B, c, H, W]``: the pixel map on every channel, channel k offset by k * eps
  with eps a quarter of the smallest gap between distinct pixel values / c."""
  flat = np.sort(pix.reshape(pix.shape[0], -1), 1)
  gaps = np.diff(flat, axis=1)
  gap = gaps[gaps > 0].min() if (gaps > 0).any() else 1.0
  eps = gap / (4 * c)
  return pix[:, None] + eps * np.arange(c)[None, :, None, None]


def _element_indices(pixels: np.ndarray, c: int, hw: int) -> np.ndarray:
  """Flat NCHW element indices of the given flat pixel indices, all channels."""
  return (np.arange(c)[:, None] * hw + np.asarray(pixels)[None, :]).reshape(-1)


@contextlib.contextmanager
def _patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def _key(ctx_seed: int):
  return jax.random.key(ctx_seed)


# ----------------------------------------------------------------------------
# New metrics (saljax.metrics.perturbation).


def _sj(name, **kw):
  def run(f, x, a, y, **ctx):
    import saljax
    out = saljax.metrics.get(name)(f, x, a, jnp.asarray(y), **{**kw, **ctx})
    return out
  return run


def _estimate_saljax(f, x, a, y):
  return np.asarray(_sj("faithfulness_estimate")(f, x, a, y))


def _estimate_quantus(net, x, a, y):
  c = x.shape[1]
  m = _q().FaithfulnessEstimate(features_in_step=c, perturb_baseline=0.0, **COMMON)
  with _element_steps():
    return np.asarray(_call(m, net, x, _spread(_pixels(a), c), y, softmax=False))


def _monotonicity_saljax(f, x, a, y):
  return np.asarray(_sj("monotonicity")(f, x, a, y))


def _monotonicity_quantus(net, x, a, y):
  c = x.shape[1]
  m = _q().Monotonicity(features_in_step=c, perturb_baseline=0.0, **COMMON)
  with _element_steps():
    return np.asarray(_call(m, net, x, _spread(_pixels(a, True), c), y, softmax=True), np.float64)


def _monocorr_context(x, y, seed):
  return {"key": _key(seed), "samples": 3}


def _monocorr_saljax(f, x, a, y, key, samples):
  return np.asarray(_sj("monotonicity_correlation")(f, x, a, y, key=key, samples=samples))


def _monocorr_quantus(net, x, a, y, key, samples):
  from saljax.metrics.perturbation import monotonicity_draws
  b, c = x.shape[:2]
  n = x.shape[2] * x.shape[3]
  draw_key = jax.random.split(key)[1]
  # saljax's draw j = step * samples + s: one value per example.
  u = np.asarray(jax.vmap(lambda j: monotonicity_draws(draw_key, j, b))(jnp.arange(n * samples)))
  calls = itertools.count()

  def perturb(arr, indices, **kw):
    out = np.array(arr, copy=True)
    vals = u[next(calls)]
    out[np.arange(b)[:, None], indices] = vals[:, None]
    return out

  m = _q().MonotonicityCorrelation(features_in_step=c, nr_samples=samples, perturb_func=perturb,
                                   **COMMON)
  with _element_steps():
    return np.asarray(_call(m, net, x, _spread(_pixels(a, True), c), y, softmax=True))


def _region_saljax(f, x, a, y):
  out = _sj("region_perturbation", patch_size=2, regions=10)(f, x, a, y)
  return np.asarray(out["curve"])[:, 1:]


def _region_quantus(net, x, a, y):
  m = _q().RegionPerturbation(patch_size=2, regions_evaluation=10, order="morf",
                              perturb_baseline=0.0, **COMMON)
  return np.asarray(_call(m, net, x, np.asarray(a, np.float64), y, softmax=True))


def _selectivity_saljax(f, x, a, y):
  return np.asarray(_sj("selectivity", patch_size=2)(f, x, a, y)["curve"])[:, 1:]


def _selectivity_quantus(net, x, a, y):
  m = _q().Selectivity(patch_size=2, perturb_baseline=0.0, **COMMON)
  return np.asarray(_call(m, net, x, np.asarray(a, np.float64), y, softmax=True))


def irof_segments(b: int, h: int, w: int) -> np.ndarray:
  """``[B, H, W]`` labels: up to 8 bands shifted by one column per example
  (irregular shapes, the same count in every example)."""
  base = (np.arange(w)[None, :] * 8 // w + (np.arange(h)[:, None] // max(1, h // 2))) % 8
  segs = [np.roll(base, i, axis=1) for i in range(b)]
  # Labels 0..S-1 without gaps: Quantus loops over range(number of labels).
  return np.stack([np.unique(s, return_inverse=True)[1].reshape(h, w) for s in segs]).astype(
      np.int32)


def _irof_context(x, y, seed):
  return {"segments": irof_segments(*x.shape[:3])}


def _irof_saljax(f, x, a, y, segments):
  out = _sj("irof", fill=0.0)(f, x, a, y, segments=segments)
  # Quantus' aggregate of the same curve: S - trapz(curve[1:], dx=1) (irof.py L388).
  ratio = np.asarray(out["curve"], np.float64)[:, 1:]
  return ratio.shape[1] - np.trapezoid(ratio, dx=1, axis=1)


@contextlib.contextmanager
def _numpy_trapz():
  if hasattr(np, "trapz"):
    yield
    return
  np.trapz = np.trapezoid
  try:
    yield
  finally:
    del np.trapz


def _irof_quantus(net, x, a, y, segments):
  from quantus.helpers import utils
  segs = iter(np.asarray(segments)) if segments is not None else None
  from quantus.functions.perturb_func import baseline_replacement_by_mask

  def perturb(arr, mask, **kw):
    # Quantus' IROF masks are [B, 1, H, W] (irof.py L369) and its default
    # perturb_func asserts arr.shape == mask.shape (perturb_func.py L196), so
    # IROF fails on every multi-channel image; the twin broadcasts the mask.
    return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape),
                                        perturb_baseline=0.0)

  m = _q().IROF(perturb_func=perturb, **COMMON)
  # Quantus' calculate_auc calls np.trapz (helpers/utils.py L1032), which numpy 2
  # removed; np.trapezoid is the same function under its new name.
  given = (lambda img, segmentation_method: next(segs)) if segments is not None else \
      utils.get_superpixel_segments  # None: Quantus segments the images itself (SLIC)
  with _patched(utils, "get_superpixel_segments", given), _numpy_trapz():
    return np.asarray(_call(m, net, x, np.asarray(a, np.float64), y, softmax=True))


def _sufficiency_saljax(f, x, a, y):
  return np.asarray(_sj("sufficiency")(f, x, a, y))


def _sufficiency_quantus(net, x, a, y):
  # BatchSufficiency is the same computation (sufficiency.py L252-290 and
  # L532-570) but passes x_batch[0].shape to shape_input (L264), which fails to
  # reshape any batch of more than one example; tests/metrics/
  # test_quantus_faithfulness.py holds that.
  m = _q().Sufficiency(threshold=0.6, **{**COMMON, "abs": True})
  return np.asarray(_call(m, net, x, np.asarray(a, np.float64), y, softmax=True))


# ----------------------------------------------------------------------------
# Existing metrics (saljax.metrics.faithfulness).


def _pf_saljax(f, x, a, y):
  n = x.shape[1] * x.shape[2]
  return np.asarray(_sj("pixel_flipping", steps=n)(f, x, a, y)["curve"])[:, 1:]


@contextlib.contextmanager
def _element_steps():
  """Quantus checks that `features_in_step` divides H * W (pixel_flipping.py L277,
  sensitivity_n.py L299 pass x.shape[2:] to asserts.assert_features_in_step) while
  its loop steps over the C * H * W elements; one pixel per step (C elements)
  fails that check whenever C does not divide H * W, so the twins skip it."""
  from quantus.helpers import asserts
  with _patched(asserts, "assert_features_in_step", lambda **kw: None):
    yield


def _pf_quantus(net, x, a, y):
  c = x.shape[1]
  m = _q().PixelFlipping(features_in_step=c, perturb_baseline=0.0, **COMMON)
  with _element_steps():
    return np.asarray(_call(m, net, x, _spread(_pixels(a), c), y, softmax=True))


def _fc_context(x, y, seed):
  # Quantus checks subset_size (elements) against H * W (asserts.py via
  # faithfulness_correlation.py L295): C * 4 pixels fit 4x4 images and up.
  return {"key": _key(seed), "samples": 12, "subset_size": 4}


def _fc_saljax(f, x, a, y, key, samples, subset_size):
  return np.asarray(_sj("faithfulness_correlation")(f, x, a, y, key=key, samples=samples,
                                                     subset_size=subset_size))


def subset_draws(key, b: int, n_feat: int, n: int, samples: int) -> np.ndarray:
  """``[samples, B, N]`` bool: the pixel subsets `faithfulness_correlation` (and
  `sensitivity_n` for one size) draws from `key`."""
  from saljax.metrics import _common as C
  keys = jax.random.split(key, samples)
  return np.stack([np.asarray(C.ranks(jax.random.uniform(k, (b, n_feat))) < n) for k in keys])


def _fc_quantus(net, x, a, y, key, samples, subset_size):
  b, c, h, w = x.shape
  chosen = subset_draws(key, b, h * w, subset_size, samples)
  calls = itertools.count()

  def choice(n_features, size, replace=True):
    t = next(calls)
    return _element_indices(np.flatnonzero(chosen[t // b, t % b]), c, h * w)

  m = _q().FaithfulnessCorrelation(nr_runs=samples, subset_size=c * subset_size,
                                   perturb_baseline=0.0, **COMMON)
  with _patched(np.random, "choice", choice):
    return np.asarray(_call(m, net, x, np.asarray(a, np.float64), y, softmax=False))


def _infid_context(x, y, seed):
  return {"key": _key(seed), "samples": 4, "noise_scale": 0.1}


def _infid_saljax(f, x, a, y, key, samples, noise_scale):
  return np.asarray(_sj("infidelity")(f, x, a, y, key=key, samples=samples,
                                       noise_scale=noise_scale))


def _infid_quantus(net, x, a, y, key, samples, noise_scale):
  b, c, h, w = x.shape
  # saljax's perturbations I (NHWC draws, as `_infidelity`), in NCHW.
  noise = [np.asarray(noise_scale * jax.random.normal(k, (b, h, w, c))).transpose(0, 3, 1, 2)
           for k in jax.random.split(key, samples)]
  calls = itertools.count()

  def perturb(arr, indices, **kw):  # x -> x - I: one block covers the image
    return np.asarray(arr) - noise[next(calls)].reshape(b, -1)

  if h != w:
    raise ValueError("the infidelity twin needs square images (one patch of side H)")
  m = _q().Infidelity(perturb_patch_sizes=[h], n_perturb_samples=samples, perturb_func=perturb,
                      **COMMON)
  return np.asarray(_call(m, net, x, np.asarray(a, np.float64), y, softmax=False))


ROAD_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _road_context(x, y, seed):
  return {"key": _key(seed)}


def _road_saljax(f, x, a, y, key):
  out = _sj("road", percentages=ROAD_FRACTIONS)(f, x, a, y, key=key)
  return np.asarray(out["curve"]).mean(0)


def _road_quantus(net, x, a, y, key):
  from quantus.functions import perturb_func as PF
  b, c, h, w = x.shape
  pix = _pixels(a)
  # Quantus ranks CHW elements (road.py L326) but imputes on the HW pixel grid
  # (perturb_func.py L750-753: mask over H*W): pixel ranks go in channel 0 and
  # the other channels rank last; Quantus' percentages count CHW elements, so
  # p% of them is C * p% of the pixels.
  a_q = np.concatenate([pix[:, None], np.full((b, c - 1, h, w), pix.min() - 1e6)], 1)
  order = np.argsort(-a_q.reshape(b, -1), axis=1)
  tie_key, noise_key = jax.random.split(key)
  eps = [np.asarray(jax.random.normal(k, (b, h, w, c))).transpose(0, 3, 1, 2).reshape(b, c, -1)
         for k in jax.random.split(noise_key, len(ROAD_FRACTIONS))]
  counts = [int(np.floor(p * h * w)) for p in ROAD_FRACTIONS]
  calls = itertools.count()

  def randn(*shape):
    t = next(calls)
    j, e = divmod(t, b)
    return eps[j][e][:, order[e, :counts[j]]]

  m = _q().ROAD(percentages=[100 * p / c for p in ROAD_FRACTIONS], noise=0.01, **COMMON)
  with _patched(np.random, "randn", randn):
    out = _call(m, net, x, a_q, y, softmax=True)
  return np.asarray([out[k] for k in sorted(out)], np.float64)


def _sn_context(x, y, seed):
  return {"key": _key(seed)}


def _sn_saljax(f, x, a, y, key):
  return np.asarray(_sj("sensitivity_n", samples=8, n_values=(4, 16))(f, x, a, y, key=key)["curve"])


def _sn_quantus(net, x, a, y, key):
  c = x.shape[1]
  m = _q().SensitivityN(features_in_step=c, perturb_baseline=0.0, **COMMON)
  with _element_steps():
    return np.asarray(_call(m, net, x, _spread(_pixels(a), c), y, softmax=False))


SENSITIVITY_N_DIFFERS = (
    "Quantus' SensitivityN is not Ancona et al.'s sensitivity-n: it removes features cumulatively"
    " in MoRF order (quantus/metrics/faithfulness/sensitivity_n.py L387-400) and correlates, per"
    " step, the step's attribution sum with the drop ACROSS the examples of the batch"
    " (custom_postprocess, L330-333: pred_deltas[:, :max_features].T), so it returns one number"
    " per step, not per example. The paper correlates, over random subsets of size n of ONE"
    " input, their attribution sum with the output drop; saljax implements that and the test"
    " asserts sensitivity-n = 1 for gradient*input on a linear model (Ancona et al. 2018, Prop. 1).")

MONOTONICITY_DIFFERS = (
    "Quantus' Monotonicity never puts the input back: it starts from the baseline and each step"
    " calls perturb_func on the baseline image itself (quantus/metrics/faithfulness/"
    "monotonicity.py L350: `x_baseline = self.perturb_func(arr=x_baseline, ...)`), which"
    " replaces baseline values by baseline values, so with a constant baseline the prediction"
    " never changes and every explanation is called monotonic (True). Arya et al. (AIX360"
    " `monotonicity_metric`) set the features to their values in x; saljax does, and the test"
    " asserts 1 for the target the region model's evidence supports and 0 for the other"
    " (and Quantus' all-True on the same case).")

# `evaluations`: the registry's count for the options each twin passes (pixel,
# patch and segment counts follow the input's shape).
_R = registry_count


def _pixel_steps(x, ctx):
  return {"steps": int(x.shape[1] * x.shape[2])}


TWINS = [
    QuantusTwin("faithfulness_estimate", "FaithfulnessEstimate", _estimate_saljax,
                _estimate_quantus, evaluations=_R("faithfulness_estimate")),
    QuantusTwin("monotonicity", "Monotonicity", _monotonicity_saljax, _monotonicity_quantus,
                differs=MONOTONICITY_DIFFERS, evaluations=_R("monotonicity")),
    QuantusTwin("monotonicity_correlation", "MonotonicityCorrelation", _monocorr_saljax,
                _monocorr_quantus, context=_monocorr_context,
                evaluations=_R("monotonicity_correlation", lambda x, c: {"samples": c["samples"]})),
    QuantusTwin("region_perturbation", "RegionPerturbation", _region_saljax, _region_quantus,
                evaluations=_R("region_perturbation", {"patch_size": 2, "regions": 10})),
    QuantusTwin("selectivity", "Selectivity", _selectivity_saljax, _selectivity_quantus,
                evaluations=_R("selectivity", {"patch_size": 2})),
    QuantusTwin("irof", "IROF", _irof_saljax, _irof_quantus, context=_irof_context,
                evaluations=_R("irof", lambda x, c: {"segments": c["segments"], "fill": 0.0})),
    QuantusTwin("sufficiency", "Sufficiency", _sufficiency_saljax, _sufficiency_quantus,
                evaluations=_R("sufficiency")),
    QuantusTwin("pixel_flipping", "PixelFlipping", _pf_saljax, _pf_quantus,
                evaluations=_R("pixel_flipping", _pixel_steps)),
    QuantusTwin("faithfulness_correlation", "FaithfulnessCorrelation", _fc_saljax, _fc_quantus,
                context=_fc_context, evaluations=_R(
                    "faithfulness_correlation",
                    lambda x, c: {"samples": c["samples"], "subset_size": c["subset_size"]})),
    QuantusTwin("infidelity", "Infidelity", _infid_saljax, _infid_quantus,
                context=_infid_context, evaluations=_R(
                    "infidelity", lambda x, c: {"samples": c["samples"],
                                                "noise_scale": c["noise_scale"]})),
    QuantusTwin("road", "ROAD", _road_saljax, _road_quantus, context=_road_context,
                evaluations=_R("road", {"percentages": ROAD_FRACTIONS})),
    QuantusTwin("sensitivity_n", "SensitivityN", _sn_saljax, _sn_quantus, context=_sn_context,
                differs=SENSITIVITY_N_DIFFERS,
                evaluations=_R("sensitivity_n", {"samples": 8, "n_values": (4, 16)})),
]
