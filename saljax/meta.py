"""Meta-evaluation of metrics: which metrics can be trusted to rank explanations?

MetaQuantus (Hedstrom, Bommer, Wickstrom, Samek, Lapuschkin, Hohne 2023, "The
Meta-Evaluation Problem in Explainable AI: Identifying Reliable Estimators with
MetaQuantus", TMLR, arXiv:2302.07265) perturbs the *evaluation problem* (the
model or the input) and watches how a metric's scores move:

- a **minor** perturbation (the resilience test: multiplicative N(1, 0.001)
  noise on every weight, or uniform +-0.001 noise on the input) should leave
  the prediction and the explanation alone, so a reliable metric's scores
  should not move either: **noise resilience (NR)**;
- a **major** perturbation (the adversary test: N(1, 2) on the weights, or
  +-5 on the input) breaks the model, so a reliable metric's scores should
  move, and get worse: **adversary reactivity (AR)**.

For `L` explainers, `N` examples and `K` perturbation draws it collects the
unperturbed scores ``q [L, N]`` and the perturbed ones ``q~ [K, L, N]`` (each
draw re-explains the perturbed problem and re-scores it), and keeps, per draw,
only the examples the test is about: those whose prediction did not change
(resilience) or did change (adversary). Then:

- **IAC** (intra-consistency), per draw and explainer: the p-value of a
  two-sided Wilcoxon signed-rank test between ``q[l]`` and ``q~[k, l]`` over the
  kept examples (``zero_method="zsplit"``). IAC_NR is the p-value (the scores
  come from the same distribution), IAC_AR is ``1 - p``.
- **IEC** (inter-consistency), per draw: IEC_NR is the share of (explainer,
  example) positions where the ranking of the explainers by score is the same
  before and after (``argsort`` over explainers, compared position by
  position); IEC_AR is the share of (explainer, example) pairs whose score got
  worse (``q > q~`` for a higher-is-better metric, ``q < q~`` for a lower one).
- **MC** (meta-consistency), per perturbation space (model or input): the mean
  of the four criteria, each averaged over draws (and explainers). 1 is ideal;
  a metric that returns noise sits near 0.5.

These follow MetaQuantus's code (``metaquantus/helpers/utils.py``,
``compute_iac_score``, ``compute_iec_resilience``, ``compute_iec_adversary``;
``meta_evaluation.py`` for MC) with these differences:

- the input test re-explains the *perturbed* input (MetaQuantus's ``ipt.py``
  explains the clean input and scores that map on the perturbed one; the
  paper perturbs the whole evaluation problem);
- the perturbed input is clipped to the clean batch's ``[min, max]``
  (``ipt.py`` clips only from below: its upper bound is the perturbed batch's
  own maximum);
- scores within a relative 1e-5 of the clean ones count as unchanged
  (`TIE_RTOL`: float32 rounding is not a change);
- a draw that keeps no example gives NaN and is left out of the means (MC is
  NaN when a whole criterion is), where MetaQuantus would hand scipy empty
  arrays;
- the metric and the explainers get the same random key in the clean problem
  and in every draw (common random numbers: the scores move because of the
  perturbation, not because of new subsets or noise). A metric whose output
  depends on nothing but its key therefore looks perfectly resilient here;
  such a metric ignores the model and the map, which MC cannot see anyway.

The expensive part (the clean problem and K perturbations per test, each with
L explanations and their scores) is one compiled function per metric, batched
over draws with `saljax.parallel.chunked_map`; the statistics are a few
hundred scalar tests on the host (scipy).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saljax import _validation as V
from saljax import model as M
from saljax import parallel

Array = jax.Array

SPACES = ("model", "input")
KINDS = ("resilience", "adversary")
CRITERIA = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")


@dataclasses.dataclass(frozen=True)
class PerturbationTest:
  """One perturbation of the evaluation problem.

  Attributes:
    space: ``"model"`` (every floating parameter multiplied by ``N(1,
      noise^2)`` noise, MetaQuantus's ``ModelPerturbationTest`` with
      ``noise_type="multiplicative"``) or ``"input"`` (``U(-noise, noise)``
      added to every input value, MetaQuantus's ``InputPerturbationTest``).
    kind: ``"resilience"`` (a minor perturbation: examples whose prediction
      stays are kept) or ``"adversary"`` (a major one: examples whose
      prediction changes are kept).
    noise: the standard deviation (model) or half-width (input).
  """
  space: str
  kind: str
  noise: float

  def __post_init__(self):
    V.check_choice(self.space, "space", SPACES)
    V.check_choice(self.kind, "kind", KINDS)
    if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not (
        math.isfinite(self.noise) and self.noise > 0):
      raise ValueError(f"noise: expected a positive float, got {self.noise!r}")

  @property
  def name(self) -> str:
    return f"{self.space}_{self.kind}"


# MetaQuantus's suite for MNIST-sized inputs in [0, 1] (its tests/conftest.py
# and the paper's Sec. 5): model std 0.001 / 2.0, input half-width 0.001 / 5.0.
DEFAULT_TESTS = (
    PerturbationTest("model", "resilience", 0.001),
    PerturbationTest("model", "adversary", 2.0),
    PerturbationTest("input", "resilience", 0.001),
    PerturbationTest("input", "adversary", 5.0),
)


@dataclasses.dataclass(frozen=True)
class Explainer:
  """An explainer under meta-evaluation: ``fn(f, x, target, *, key, **options)``."""
  name: str
  fn: Callable
  options: Any = ()

  def __post_init__(self):
    # Stored as sorted items: the record is a static argument of compiled code.
    items = self.options.items() if isinstance(self.options, Mapping) else self.options
    object.__setattr__(self, "options", tuple(sorted(dict(items).items())))


def _explainers(explainers: Any) -> tuple[Explainer, ...]:
  """Accepts a sequence of names / `Explainer`s or a ``{name: options}`` dict."""
  from saljax import explainers as X
  if isinstance(explainers, Mapping):
    explainers = [Explainer(n, X.get(n), dict(o or {})) for n, o in explainers.items()]
  out = []
  for e in explainers:
    if isinstance(e, str):
      e = Explainer(e, X.get(e))
    if not isinstance(e, Explainer):
      raise TypeError(f"explainers: expected names, Explainer records or a {{name: options}}"
                      f" dict, got {V.describe(e)}")
    out.append(e)
  if len(out) < 2:
    raise ValueError(f"explainers: expected at least 2 (the inter-consistency criteria rank"
                     f" explainers against each other), got {len(out)}")
  if len({e.name for e in out}) != len(out):
    raise ValueError(f"explainers: expected distinct names, got {[e.name for e in out]}")
  return tuple(out)


def _perturb_model(model, noise, key):
  """`model` with every floating leaf multiplied by ``1 + noise * N(0, 1)``."""
  leaves, tree = jax.tree_util.tree_flatten(model)
  keys = jax.random.split(key, max(len(leaves), 1))
  out = [a * (1 + noise * jax.random.normal(k, a.shape, a.dtype))
         if jnp.issubdtype(a.dtype, jnp.floating) else a for a, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(tree, out)


def _scores(metric, model, x, target, explainers, explainer_key, metric_key, metric_options):
  """``[L, N]`` scores of every explainer's map of `x` on `model`."""
  rows = []
  for i, e in enumerate(explainers):
    a = jnp.asarray(e.fn(model, x, target, key=explainer_key, **dict(e.options)), jnp.float32)
    opts = metric_options(e)
    s = metric(model, x, a, target, key=metric_key, **opts)
    if isinstance(s, dict):
      s = s["score"]
    rows.append(jnp.asarray(s, jnp.float32))
  return jnp.stack(rows)


@functools.partial(jax.jit, static_argnames=("metric", "explainers", "metric_options",
                                             "batch_size"))
def _draws(model, x, target, keys, model_noise, input_noise, explainer_key, metric_key, *,
           metric, explainers, metric_options, batch_size):
  """Scores ``[D, L, N]`` and predictions ``[D, N]`` of `D` draws, each with its
  own model and input noise (0 leaves that side exactly as it is, so the clean
  problem is a draw too): every test of a meta-evaluation in one program."""
  lo, hi = x.min(), x.max()

  def one(args):
    k, mn, xn = args
    km, kx = jax.random.split(k)
    m = _perturb_model(model, mn, km)
    # Clipped to the clean batch's range: the perturbed input stays in the
    # data's domain (MetaQuantus clips only from below, see the module doc).
    xp = jnp.clip(x + xn * jax.random.uniform(kx, x.shape, x.dtype, -1.0, 1.0), lo, hi)
    xp = jnp.where(xn > 0, xp, x)
    pred = jnp.argmax(M.as_model(m)(xp), -1)
    return _scores(metric, m, xp, target, explainers, explainer_key, metric_key,
                   metric_options), pred

  return parallel.chunked_map(one, (keys, model_noise, input_noise), batch_size=batch_size)


class _Options:
  """Hashable ``explainer -> metric options`` (a static argument of the compiled draws)."""

  def __init__(self, options: Mapping[str, Any], pass_explainer: bool):
    self.items = tuple(sorted(options.items()))
    self.pass_explainer = pass_explainer

  def __call__(self, e: Explainer) -> dict:
    opts = dict(self.items)
    if self.pass_explainer:  # robustness metrics re-run the explainer they judge
      opts.setdefault("explainer", e.fn)
      opts.setdefault("explainer_options", dict(e.options) or None)
    return opts

  def __hash__(self):
    return hash((self.items, self.pass_explainer))

  def __eq__(self, other):
    return isinstance(other, _Options) and (self.items, self.pass_explainer) == (
        other.items, other.pass_explainer)


@dataclasses.dataclass
class TestScores:
  """What one perturbation test produced.

  Attributes:
    test: the `PerturbationTest`.
    q: unperturbed scores ``[L, N]``.
    q_perturbed: scores of each draw ``[K, L, N]``.
    keep: ``[K, N]`` bool: the examples the test keeps in each draw.
  """
  test: PerturbationTest
  q: np.ndarray
  q_perturbed: np.ndarray
  keep: np.ndarray


def perturbation_scores(metric: Callable, model: Any, x: Array, target: Array, explainers: Any,
                        tests: Sequence[PerturbationTest] = DEFAULT_TESTS, *, draws: int = 10,
                        key: Any = None, metric_options: Mapping[str, Any] | None = None,
                        pass_explainer: bool = False, batch_size: int | None = None
                        ) -> list[TestScores]:
  """Scores of every explainer on the clean problem and on `draws` perturbations
  of it per test: one compiled program evaluates the clean problem and all
  ``len(tests) * draws`` perturbed ones, `batch_size` draws at a time.

  Args:
    metric: ``metric(f, x, attribution, target, *, key, **options)`` returning
      ``[N]`` scores or ``{"score": [N], ...}``; traced into one compiled
      function with the explainers, so it must be traceable (every registered
      saljax metric that claims jit and vmap is).
    model: a model whose floating leaves are its parameters (a
      `saljax.models.Classifier`, a `saljax.from_linen` model, ...); the model
      tests perturb them.
    x: inputs ``[N, ...]``; target: ``[N]`` int classes (MetaQuantus explains
      and scores the model's predictions).
    explainers: at least two (see `_explainers`).
    tests: the perturbations (default `DEFAULT_TESTS`).
    draws: perturbations `K` per test (default 10, MetaQuantus's
      ``nr_perturbations``).
    key: a jax.random key (required): the draws, and one explainer key and one
      metric key shared by the clean problem and every draw (common random
      numbers: scores move because of the perturbation only).
    metric_options: options passed to the metric.
    pass_explainer: pass each explainer (and its options) to the metric as
      ``explainer=`` (robustness metrics re-explain perturbed inputs).
    batch_size: draws evaluated together (None: `saljax.parallel`'s auto chunk).
  """
  from saljax.metrics import _common as C
  explainers = _explainers(explainers)
  key = C.check_key(key, "perturbation_scores")
  tests = tuple(tests)
  if not tests:
    raise ValueError("tests: expected at least one PerturbationTest, got none")
  for t in tests:
    if not isinstance(t, PerturbationTest):
      raise TypeError(f"tests: expected PerturbationTest records, got {V.describe(t)}")
  if len({t.name for t in tests}) != len(tests):
    raise ValueError(f"tests: expected one test per space and kind, got {[t.name for t in tests]}")
  draws = parallel.check_count(draws, "draws")
  batch_size = V.check_batch_size(batch_size)
  x = jnp.asarray(x)
  target = jnp.asarray(target, jnp.int32)
  if target.shape != x.shape[:1]:
    raise ValueError(f"target: expected shape {x.shape[:1]} (one class per example), got"
                     f" {tuple(target.shape)}")
  if any(t.space == "model" for t in tests) and not any(
      jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree_util.tree_leaves(M.as_data(model))):
    raise ValueError("model: the model perturbation tests need a model whose parameters are"
                     " pytree leaves (a saljax Classifier or saljax.from_linen model), got one"
                     f" with no floating leaves: {V.describe(model)}")
  opts = _Options(dict(metric_options or {}), pass_explainer)
  k_draw, k_expl, k_metric = jax.random.split(key, 3)
  # Draw 0 is the clean problem (no noise), then `draws` per test.
  mn = np.zeros(1 + len(tests) * draws, np.float32)
  xn = np.zeros_like(mn)
  for i, t in enumerate(tests):
    (mn if t.space == "model" else xn)[1 + i * draws:1 + (i + 1) * draws] = t.noise
  scores, pred = _draws(M.as_data(model), x, target, jax.random.split(k_draw, mn.size),
                        jnp.asarray(mn), jnp.asarray(xn), k_expl, k_metric, metric=metric,
                        explainers=explainers, metric_options=opts, batch_size=batch_size)
  scores, pred, y = np.asarray(scores, np.float64), np.asarray(pred), np.asarray(target)
  out = []
  for i, t in enumerate(tests):
    sl = slice(1 + i * draws, 1 + (i + 1) * draws)
    same = pred[sl] == y[None]
    out.append(TestScores(t, scores[0], scores[sl], same if t.kind == "resilience" else ~same))
  return out


# ----------------------------------------------------------------------------
# The criteria (host side: small arrays, scipy's exact Wilcoxon).


# Scores this close count as equal (a tie). The clean problem and the draws
# run through the same compiled program, but in differently sized vmapped
# chunks, so one value can come back a few float32 ulps apart; the signed-rank
# test would read a consistent 1-ulp shift as a significant change.
TIE_RTOL = 1e-5


def _tied(q: np.ndarray, q_perturbed: np.ndarray) -> np.ndarray:
  """`q_perturbed` with values within `TIE_RTOL` of `q` replaced by `q`."""
  close = np.abs(q_perturbed - q) <= TIE_RTOL * np.maximum(np.abs(q), np.abs(q_perturbed))
  return np.where(close, q, q_perturbed)


def wilcoxon_p(q: np.ndarray, q_perturbed: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value, ``zero_method="zsplit"``
  (MetaQuantus's `compute_iac_score`); 1 when every difference is 0 (no
  evidence of a change), NaN with no example."""
  import scipy.stats
  q, qp = np.asarray(q, np.float64), np.asarray(q_perturbed, np.float64)
  if q.size == 0:
    return float("nan")
  if np.all(q == qp):
    return 1.0
  return float(scipy.stats.wilcoxon(q, qp, alternative="two-sided", zero_method="zsplit")[1])


def intra_consistency(s: TestScores) -> np.ndarray:
  """IAC per draw and explainer ``[K, L]``: the Wilcoxon p-value (resilience)
  or ``1 - p`` (adversary) of the kept examples; NaN where none is kept.
  Scores within `TIE_RTOL` of the clean ones count as unchanged."""
  k, l, _ = s.q_perturbed.shape
  out = np.full((k, l), np.nan)
  qp = _tied(s.q[None], s.q_perturbed)
  for d in range(k):
    for e in range(l):
      p = wilcoxon_p(s.q[e][s.keep[d]], qp[d, e][s.keep[d]])
      out[d, e] = p if s.test.kind == "resilience" else 1.0 - p
  return out


def inter_consistency(s: TestScores, lower_is_better: bool) -> np.ndarray:
  """IEC per draw ``[K]``; NaN where no example is kept.

  Resilience: the share of (rank position, kept example) pairs where the
  explainers' order by score (stable argsort over explainers) is the same
  before and after. Adversary: the share of (explainer, kept example) pairs
  whose score got worse (``q > q~``, or ``q < q~`` when lower is better).
  Scores within `TIE_RTOL` of the clean ones count as unchanged.
  """
  out = np.full(s.q_perturbed.shape[0], np.nan)
  r0 = np.argsort(s.q, axis=0, kind="stable")
  for d, qp in enumerate(_tied(s.q[None], s.q_perturbed)):
    keep = s.keep[d]
    if not keep.any():
      continue
    if s.test.kind == "resilience":
      same = r0 == np.argsort(qp, axis=0, kind="stable")
      out[d] = same[:, keep].mean()
    else:
      worse = s.q < qp if lower_is_better else s.q > qp
      out[d] = worse[:, keep].mean()
  return out


def _nanmean(v) -> float:
  v = np.asarray(v, np.float64)
  return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def meta_consistency(results: Sequence[TestScores], lower_is_better: bool) -> dict[str, dict]:
  """The criteria and MC per perturbation space.

  Returns:
    ``{space: {"IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC", "kept_NR",
    "kept_AR"}}`` for every space with both a resilience and an adversary
    test; ``kept_*`` is the mean share of examples the test kept (an
    adversary test that flips no prediction measures nothing: NaN criteria).
  """
  by = {(r.test.space, r.test.kind): r for r in results}
  out = {}
  for space in SPACES:
    if (space, "resilience") not in by or (space, "adversary") not in by:
      continue
    nr, ar = by[space, "resilience"], by[space, "adversary"]
    row = {"IAC_NR": _nanmean(intra_consistency(nr)), "IAC_AR": _nanmean(intra_consistency(ar)),
           "IEC_NR": _nanmean(inter_consistency(nr, lower_is_better)),
           "IEC_AR": _nanmean(inter_consistency(ar, lower_is_better))}
    # NaN unless all four criteria were measured (a mean of some is not MC).
    row["MC"] = float(np.mean([row[c] for c in CRITERIA]))
    row["kept_NR"], row["kept_AR"] = float(nr.keep.mean()), float(ar.keep.mean())
    out[space] = row
  return out


def meta_evaluate(metric: Any, model: Any, x: Array, target: Array, explainers: Any, *,
                  key: Any = None, tests: Sequence[PerturbationTest] = DEFAULT_TESTS,
                  draws: int = 10, metric_options: Mapping[str, Any] | None = None,
                  lower_is_better: bool | None = None, batch_size: int | None = None
                  ) -> dict[str, Any]:
  """MetaQuantus's meta-evaluation of one metric (see the module docstring).

  Args:
    metric: a registered metric name or a metric callable.
    model, x, target, explainers, draws, batch_size: as in
      `perturbation_scores` (target: the model's predictions, as MetaQuantus).
    key: a jax.random key (required).
    tests: the perturbation tests, default `DEFAULT_TESTS` (MetaQuantus's).
    metric_options: options for the metric (a registered metric that needs an
      explainer gets each explainer under evaluation).
    lower_is_better: the metric's direction; default from the registry
      (required for a callable).

  Returns:
    ``{"metric", "lower_is_better", "draws", "scores": {space: criteria and
    MC}, "tests": {test name: TestScores}}``.
  """
  from saljax import metrics as S
  from saljax.metrics import _common as C
  name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
  pass_explainer = False
  if isinstance(metric, str):
    entry = S.entry(metric)
    extra = sorted(entry.needs - {"key", "explainer"})
    if extra:
      raise ValueError(f"{name}: needs {extra}, which the meta-evaluation cannot supply per"
                       " perturbation; pass a metric callable that closes over them")
    metric = entry.fn
    pass_explainer = "explainer" in entry.needs
    if lower_is_better is None:
      better = entry.better(**dict(metric_options or {}))
      if better not in ("higher", "lower"):
        raise ValueError(f"{name}: the registry states no direction; pass lower_is_better")
      lower_is_better = better == "lower"
  if not callable(metric):
    raise TypeError(f"metric: expected a registered metric name or a callable, got"
                    f" {V.describe(metric)}")
  if lower_is_better is None:
    raise ValueError("lower_is_better: required for a metric callable (True or False)")
  key = C.check_key(key, "meta_evaluate")
  results = perturbation_scores(metric, model, x, target, explainers, tests, draws=draws,
                                key=key, metric_options=metric_options,
                                pass_explainer=pass_explainer, batch_size=batch_size)
  out = {r.test.name: r for r in results}
  return {"metric": name, "lower_is_better": bool(lower_is_better), "draws": draws,
          "scores": meta_consistency(list(out.values()), bool(lower_is_better)), "tests": out}
