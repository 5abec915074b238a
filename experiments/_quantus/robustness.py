"""Quantus twins of the robustness and axiomatic metrics.

Quantus re-explains perturbed inputs with its own `explain_func`; each twin
gives it a torch explainer computing the explainer saljax re-runs (the gradient
of the target's logit, or gradient x input, by torch autograd on the twin
network), so both sides explain the same inputs. Where a metric samples, the
noise is drawn once by saljax's own derivation (`saljax.metrics.robustness.
sample_keys` and `noise`, exactly as the metric draws it from its key) and fed
to Quantus through its `perturb_func` argument (`_Feed`), one draw per Quantus
step, in NCHW layout. Quantus' defaults that change the number (``normalise``,
``abs``, ``softmax``, sample counts and bounds) are set explicitly to what
saljax computes; each metric's docstring says which defaults it keeps.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments._quantus import QuantusTwin, registry_count

# The representation layer of relative_representation_stability on the parity
# CNN, ``(torch module, saljax tap)``; on another model the caller puts its own
# pair in the context as ``representation`` (Lite0: ("_blocks.5", "blocks_5"),
# whose outputs agree to 2e-5 of activations up to 24).
REPRESENTATION = ("conv1", "conv1")

# Relative tolerance where float32 rounding is amplified: the relative
# stabilities divide by near-zero gradient entries and small input/logit
# changes (observed 2e-5 relative between torch and XLA).
RELATIVE_RTOL = 1e-4

SEED_KEY = 7   # saljax key = jax.random.key(SEED_KEY + seed)
SAMPLES = 6    # perturbations per sampling metric (parity needs few)
RADIUS = 0.05  # small enough that no perturbation changes the twin's prediction


def _nchw(a) -> np.ndarray:
  return np.asarray(a).transpose(0, 3, 1, 2).copy()


def _nhwc(a) -> np.ndarray:
  return np.asarray(a).transpose(0, 2, 3, 1).copy()


# ----------------------------------------------------------------------------
# Torch explainers for Quantus (explain_func(model, inputs, targets, **kw)).

def torch_gradient(model, inputs, targets, times_input: bool = False, **_):
  """d logit[target] / d input by torch autograd (numpy in and out, NCHW)."""
  import torch
  x = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
  logits = model(x)
  t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
  logits.gather(1, t[:, None]).sum().backward()
  g = x.grad.detach().numpy()
  return g * np.asarray(inputs, np.float32) if times_input else g


def torch_gradient_x_input(model, inputs, targets, **_):
  return torch_gradient(model, inputs, targets, times_input=True)


def _explainers(which: str):
  """(saljax explainer, torch explain_func)."""
  import saljax
  if which == "gradient":
    return saljax.explainers.gradient, torch_gradient
  return saljax.explainers.gradient_x_input, torch_gradient_x_input


class _Feed:
  """A Quantus `perturb_func` returning ``arr + draws[i]`` on its i-th call
  (draws flattened per example, NCHW order), so Quantus perturbs with saljax's
  draws instead of np.random's."""

  def __init__(self, draws: np.ndarray):
    self.draws = np.asarray(draws, np.float32)
    self.i = 0

  def __call__(self, arr, indices=None, **_):
    d = self.draws[self.i]
    self.i += 1
    return (np.asarray(arr, np.float32) + d.reshape(arr.shape)).astype(np.float32)


def _draws(x_nhwc, kind: str, radius: float, samples: int, seed: int) -> np.ndarray:
  """The metric's perturbations ``[samples, B, C*H*W]`` (NCHW flattened)."""
  from saljax.metrics import robustness as R
  x = jnp.asarray(x_nhwc)
  _, kn, _ = R.sample_keys(jax.random.key(SEED_KEY + seed), samples)
  d = np.stack([np.asarray(R.noise(k, x.shape, x.dtype, radius, kind)) for k in kn])
  return d.transpose(0, 1, 4, 2, 3).reshape(samples, x.shape[0], -1)


def _ctx(kind: str, radius: float):
  def context(x_nhwc, y, seed):
    return {"draws": _draws(x_nhwc, kind, radius, SAMPLES, seed), "seed": seed}
  return context


_COMMON = dict(disable_warnings=True, display_progressbar=False)
_CALL = dict(device="cpu", channel_first=True, softmax=False)


def _q(name):
  import quantus
  return getattr(quantus, name)


# ----------------------------------------------------------------------------
# Sampling metrics (re-explain x + d).

def _sampling_twin(metric: str, qname: str, kind: str, radius: float, *, qkw: dict,
                   skw: dict | None = None, which: str = "gradient",
                   tapped: bool = False, differs: str = "") -> QuantusTwin:
  def run_saljax(f, x, a, y, *, draws, seed, representation=None):
    import saljax
    explainer, _ = _explainers(which)
    model = tapped_of(f) if tapped else f
    more = dict(skw or {})
    if representation is not None:  # (torch module, saljax tap) of another model
      more["layer"] = representation[1]
    out = saljax.metrics.get(metric)(
        model, jnp.asarray(x), jnp.asarray(a), jnp.asarray(y),
        key=jax.random.key(SEED_KEY + seed), explainer=explainer, samples=SAMPLES,
        **{_radius_name(metric): radius}, **more)
    return np.asarray(out)

  def run_quantus(net, x, a, y, *, draws, seed, representation=None):
    _, explain = _explainers(which)
    more = dict(qkw)
    if representation is not None:
      more["layer_names"] = [representation[0]]
    m = _q(qname)(nr_samples=SAMPLES, perturb_func=_Feed(draws), normalise=False, abs=False,
                  **more, **_COMMON)
    return np.asarray(m(model=net, x_batch=x, y_batch=y, a_batch=a, explain_func=explain,
                        **_CALL), np.float64)

  def evaluations(f, x, ctx):
    # A prediction, then one explanation per sample (and one forward per
    # sample for the relative stabilities): the registry's count.
    import saljax
    explainer, _ = _explainers(which)
    return saljax.metrics.entry(metric).cost(f, x, samples=SAMPLES, explainer=explainer)

  return QuantusTwin(metric=metric, quantus=qname, run_saljax=run_saljax,
                     run_quantus=run_quantus, context=_ctx(kind, radius), differs=differs,
                     evaluations=evaluations,
                     rtol=RELATIVE_RTOL if kind.startswith("relative") else 0.0)


def tapped_of(f):
  """The `Tapped` model behind `f`: `f` itself, the tapped model whose
  ``as_model()`` `f` is (how `small_twin` and `from_linen(...).as_model()` build
  the plain model), or a pretrained classifier's ``.tapped``, so a runner given
  the plain model can read its layers."""
  from saljax import model as M
  if isinstance(f, M.Tapped):
    return f
  if isinstance(getattr(f, "tapped", None), M.Tapped):
    return f.tapped
  inner = f.unwrap() if isinstance(f, M.Model) else f
  args = getattr(inner, "args", ())
  if getattr(inner, "func", None) is M._tapped_logits and args and isinstance(args[0], M.Tapped):
    return args[0]
  raise TypeError("relative_representation_stability twin: expected a tapped model or its"
                  f" as_model(), got {type(f).__name__}")


def _radius_name(metric: str) -> str:
  return "std" if metric == "local_lipschitz" else "radius"


# ----------------------------------------------------------------------------
# Continuity (translations; no draws).

# Quantus' Continuity takes shifts -W + k * dx, k = 1..steps, dx = (2W + 1) // steps
# (continuity.py L325-337); when `steps` divides 2W + 1 the last shift is W + 1
# pixels and `batched_translation` indexes out of the image (perturb_func.py
# L698: np.arange(-|dx|, 0) on an axis of W) -- 5 steps fail at W = 32, 7 at
# W = 24. An even count never divides the odd 2W + 1, so the twin runs at any
# width; 6 keeps the parity case cheap (Quantus' default, 28, is even too).
CONTINUITY_STEPS = 6  # 8-pixel-wide twin: shifts -6, -4, -2, 0, 2, 4


def _continuity_saljax(f, x, a, y, **_):
  import saljax
  return np.asarray(saljax.metrics.continuity(
      f, jnp.asarray(x), jnp.asarray(a), jnp.asarray(y),
      explainer=saljax.explainers.gradient, steps=CONTINUITY_STEPS))


def _continuity_quantus(net, x, a, y, **_):
  m = _q("Continuity")(nr_steps=CONTINUITY_STEPS, normalise=False, abs=False,
                       return_nan_when_prediction_changes=False, **_COMMON)
  return np.asarray(m(model=net, x_batch=x, y_batch=y, a_batch=a, explain_func=torch_gradient,
                      **_CALL), np.float64)


# ----------------------------------------------------------------------------
# Consistency: an untrained twin predicts one class for every row, and random
# maps never share their top features, so both would score trivially. The
# context makes rows 0-2 share row 0's attribution and moves row 2 to another
# class (channel 1 lowered by 2: class 4 on `small_twin`), row 3 alone:
# expected [0.5, 0.5, 0, 0]. Any batch size: rows 0..min(3, B)-1 share row 0's
# map, the class move applies where there is a third row.

CONSISTENCY_TOP_K = 5


def _consistency_ctx(x_nhwc, y, seed):
  b = x_nhwc.shape[0]
  rows = np.arange(b)
  rows[:3] = 0
  dx = np.zeros((b, 1, 1, x_nhwc.shape[-1]), np.float32)
  if b > 2 and x_nhwc.shape[-1] > 1:
    dx[2, 0, 0, 1] = -2.0
  return {"rows": rows, "dx": dx}


def _consistency_saljax(f, x, a, y, *, rows, dx):
  import saljax
  return np.asarray(saljax.metrics.consistency(
      f, jnp.asarray(x + dx), jnp.asarray(np.asarray(a)[rows]), jnp.asarray(y),
      top_k=CONSISTENCY_TOP_K))


def _consistency_quantus(net, x, a, y, *, rows, dx):
  from saljax.metrics.stability import top_k_signs_hash
  m = _q("Consistency")(
      discretise_func=functools.partial(top_k_signs_hash, k=CONSISTENCY_TOP_K),
      normalise=False, abs=False, **_COMMON)
  return np.asarray(m(model=net, x_batch=x + _nchw(dx), y_batch=y, a_batch=np.asarray(a)[rows],
                      explain_func=torch_gradient, **_CALL), np.float64)


# ----------------------------------------------------------------------------
# Axiomatic.

def _completeness_saljax(f, x, a, y, **_):
  import saljax
  return np.asarray(saljax.metrics.completeness(f, jnp.asarray(x), jnp.asarray(a),
                                                jnp.asarray(y), baseline="min"))


def quantus_completeness(net, x, a, y) -> tuple[np.ndarray, np.ndarray]:
  """(Quantus' own boolean result, the gap |sum(a) - (f(x) - f(baseline))| from
  the output change Quantus computed), baseline "black" (per-example minimum)."""
  seen = []

  def record(d):
    seen.append(np.asarray(d, np.float64))
    return d

  m = _q("Completeness")(normalise=False, abs=False, output_func=record,
                         perturb_baseline="black", **_COMMON)
  same = np.asarray(m(model=net, x_batch=x, y_batch=y, a_batch=a, explain_func=torch_gradient,
                      **_CALL))
  gap = np.abs(np.asarray(a, np.float64).reshape(len(x), -1).sum(1) - np.concatenate(seen))
  return same, gap


def _completeness_quantus(net, x, a, y, **_):
  return quantus_completeness(net, x, a, y)[1]


def _non_sensitivity_ctx(x_nhwc, y, seed):
  # Zero a quarter of the attribution (every 4th value): features the model
  # uses but the map ignores, so the count is not 0 on both sides by default.
  keep = np.ones(x_nhwc.shape, np.float32)
  keep.reshape(-1)[::4] = 0.0
  return {"keep": keep}


def _non_sensitivity_saljax(f, x, a, y, *, keep):
  import saljax
  return np.asarray(saljax.metrics.non_sensitivity(
      f, jnp.asarray(x), jnp.asarray(np.asarray(a) * keep), jnp.asarray(y), fill="min"))


def _non_sensitivity_quantus(net, x, a, y, *, keep):
  m = _q("NonSensitivity")(eps=1e-5, features_in_step=1, normalise=False, abs=True,
                           perturb_baseline="black", **_COMMON)
  return np.asarray(m(model=net, x_batch=x, y_batch=y, a_batch=a * _nchw(keep),
                      explain_func=torch_gradient, **_CALL), np.float64)


def _invariance_saljax(f, x, a, y, **_):
  import saljax
  return np.asarray(saljax.metrics.input_invariance(
      f, jnp.asarray(x), jnp.asarray(a), jnp.asarray(y), explainer=saljax.explainers.gradient,
      shift=-1.0))


def _invariance_quantus(net, x, a, y, **_):
  first = next(m for name, m in net.named_modules() if name)
  if getattr(first, "bias", None) is None:
    # Quantus shifts the first module's bias (pytorch_model.py L403-412); a
    # first convolution without one (EfficientNet-Lite's stem: batch norm
    # follows) fails inside Quantus with "'NoneType' object is not subscriptable".
    raise NotImplementedError(
        f"Quantus' InputInvariance needs a first layer with a bias; {type(net).__name__}'s first"
        f" module ({type(first).__name__}) has none, so Quantus cannot run this metric on it")
  m = _q("InputInvariance")(input_shift=-1, normalise=False, abs=False, **_COMMON)
  return np.asarray(m(model=net, x_batch=x, y_batch=y, a_batch=a, explain_func=torch_gradient,
                      **_CALL), np.float64)


INPUT_INVARIANCE_DIFFERS = (
    "Quantus' shifted model moves each first-layer bias by the minimum of that layer's"
    " response to the constant shift (quantus/helpers/model/pytorch_model.py lines 407-412,"
    " `torch.unique(fw[i])[0]`); with a zero-padded convolution the response varies at the"
    " border, so Quantus' model is not the original one and even the gradient fails"
    " (Kindermans et al. 2017 absorb the shift exactly: b' = b - W m). saljax explains"
    " f(x' - shift), the paper's model for any architecture.")

TWINS = [
    _sampling_twin("max_sensitivity", "MaxSensitivity", "max_sensitivity", RADIUS,
                   qkw=dict(lower_bound=RADIUS, return_nan_when_prediction_changes=False)),
    _sampling_twin("avg_sensitivity", "AvgSensitivity", "avg_sensitivity", RADIUS,
                   qkw=dict(lower_bound=RADIUS, return_nan_when_prediction_changes=False)),
    _sampling_twin("local_lipschitz", "LocalLipschitzEstimate", "local_lipschitz", RADIUS,
                   qkw=dict(perturb_std=RADIUS, return_nan_when_prediction_changes=False),
                   which="gradient_x_input"),
    _sampling_twin("relative_input_stability", "RelativeInputStability",
                   "relative_input_stability", RADIUS, qkw={}),
    _sampling_twin("relative_output_stability", "RelativeOutputStability",
                   "relative_output_stability", RADIUS, qkw={}),
    _sampling_twin("relative_representation_stability", "RelativeRepresentationStability",
                   "relative_representation_stability", RADIUS,
                   qkw=dict(layer_names=[REPRESENTATION[0]]), skw=dict(layer=REPRESENTATION[1]),
                   tapped=True),
    QuantusTwin(metric="continuity", quantus="Continuity", run_saljax=_continuity_saljax,
                run_quantus=_continuity_quantus,
                evaluations=registry_count("continuity", lambda x, c: {
                    "steps": CONTINUITY_STEPS, "explainer": _explainers("gradient")[0]})),
    QuantusTwin(metric="consistency", quantus="Consistency", run_saljax=_consistency_saljax,
                run_quantus=_consistency_quantus, context=_consistency_ctx,
                evaluations=registry_count("consistency")),
    QuantusTwin(metric="completeness", quantus="Completeness", run_saljax=_completeness_saljax,
                run_quantus=_completeness_quantus,
                evaluations=registry_count("completeness", {"baseline": "min"})),
    QuantusTwin(metric="non_sensitivity", quantus="NonSensitivity",
                run_saljax=_non_sensitivity_saljax, run_quantus=_non_sensitivity_quantus,
                context=_non_sensitivity_ctx,
                evaluations=registry_count("non_sensitivity", {"fill": "min"})),
    QuantusTwin(metric="input_invariance", quantus="InputInvariance",
                run_saljax=_invariance_saljax, run_quantus=_invariance_quantus,
                differs=INPUT_INVARIANCE_DIFFERS,
                evaluations=registry_count("input_invariance", lambda x, c: {
                    "explainer": _explainers("gradient")[0], "shift": -1.0})),
]
