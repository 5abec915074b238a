"""MetaQuantus meta-evaluation (`saljax.meta`): known answers of the criteria on
metrics whose behaviour under perturbation is known, the statistics on hand-made
score arrays, and a smoke run of `experiments.meta_evaluate`."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from saljax import meta
from saljax.models import wrap

N = 32
SHAPE = (N, 6, 6, 3)


class Linear(nn.Module):
  """logits = W x + b: its input gradient is W[target], whatever x."""

  @property
  def default_layer(self):
    return "dense"

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4, name="dense")(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def problem():
  model = wrap(Linear(), input_shape=SHAPE[1:], seed=1)
  x = jax.random.normal(jax.random.key(2), SHAPE)
  return model, x, jnp.argmax(model(x), -1).astype(jnp.int32)


def _gradient(f, x, t, key=None):
  return saljax.explainers.gradient(f, x, t)


def _double_gradient(f, x, t, key=None):
  return 2.0 * saljax.explainers.gradient(f, x, t)


def _noise_metric(f, x, a, target, *, key=None):
  """Uniform noise re-drawn whenever the map or the input changes at all: a
  pseudo-random function of their bits, unrelated to any quality."""
  bits = jax.lax.bitcast_convert_type((a * a).sum((1, 2, 3)) + (x * x).sum((1, 2, 3)),
                                      jnp.uint32)
  return jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(key, b)))(bits)


def _norm_metric(f, x, a, target, *, key=None):
  """A fixed function of the map alone: its squared norm."""
  return (a * a).sum((1, 2, 3))


PATTERN = np.random.default_rng(0).normal(size=SHAPE[1:]).astype(np.float32)


def _constant(scale):
  def explain(f, x, t, key=None):
    return jnp.broadcast_to(scale * PATTERN, x.shape)
  return explain


def test_noise_metric_sits_at_chance(problem):
  """A metric that returns noise agrees with itself and ranks explainers no
  better than chance: every criterion near 0.5, and MC far below a metric that
  behaves (MetaQuantus's Fig. 4 puts random estimators at about 0.5)."""
  model, x, y = problem
  ex = [meta.Explainer("gradient", _gradient), meta.Explainer("double", _double_gradient)]
  r = meta.meta_evaluate(_noise_metric, model, x, y, ex, key=jax.random.key(0), draws=8,
                         lower_is_better=False)
  for space, s in r["scores"].items():
    assert s["kept_NR"] > 0.9 and 0.1 < s["kept_AR"] < 0.95, (space, s)  # the tests bite
    for c in ("IEC_NR", "IEC_AR"):  # hundreds of coin flips each
      assert abs(s[c] - 0.5) < 0.12, (space, c, s)
    for c in ("IAC_NR", "IAC_AR"):  # means of 16 p-values, uniform under noise
      assert 0.2 < s[c] < 0.8, (space, c, s)
    assert abs(s["MC"] - 0.5) < 0.12, (space, s)


def test_metric_of_a_fixed_map_cannot_react(problem):
  """Maps that depend on neither model nor input: every perturbed score equals
  the clean one, so noise resilience is perfect (p = 1, the same ranking) and
  adversary reactivity is nil (1 - p = 0, nothing got worse): MC = 0.5 exactly."""
  model, x, y = problem
  ex = [meta.Explainer("small", _constant(1.0)), meta.Explainer("large", _constant(3.0))]
  r = meta.meta_evaluate(_norm_metric, model, x, y, ex, key=jax.random.key(1), draws=3,
                         lower_is_better=True)
  for space in ("model", "input"):
    assert r["scores"][space] == pytest.approx({
        "IAC_NR": 1.0, "IAC_AR": 0.0, "IEC_NR": 1.0, "IEC_AR": 0.0, "MC": 0.5,
        "kept_NR": r["scores"][space]["kept_NR"], "kept_AR": r["scores"][space]["kept_AR"]})
  np.testing.assert_allclose(r["tests"]["input_adversary"].q[1], 9 * (PATTERN ** 2).sum(),
                             rtol=1e-5)


def test_norm_of_a_linear_gradient_behaves_as_predicted(problem):
  """The squared norm of a linear model's gradient (W[target]): the input does
  not move it (input test: as a fixed map, exact), while N(1, 2) noise on W
  multiplies its expected value by 5, so with lower-is-better nearly every
  kept score gets worse (IEC_AR near 1, Wilcoxon p tiny); twice the gradient
  always ranks the same against the gradient (IEC_NR = 1)."""
  model, x, y = problem
  ex = [meta.Explainer("gradient", _gradient), meta.Explainer("double", _double_gradient)]
  r = meta.meta_evaluate(_norm_metric, model, x, y, ex, key=jax.random.key(2), draws=4,
                         lower_is_better=True)
  s = r["scores"]["input"]
  assert (s["IAC_NR"], s["IAC_AR"], s["IEC_NR"], s["IEC_AR"]) == (1.0, 0.0, 1.0, 0.0), s
  s = r["scores"]["model"]
  assert s["IEC_NR"] == 1.0 and s["IEC_AR"] > 0.85 and s["IAC_AR"] > 0.95, s
  assert s["MC"] > 0.7, s
  # The clean scores are a draw without noise: the metric of the model's own maps.
  q = r["tests"]["model_adversary"].q
  np.testing.assert_allclose(q[0], _norm_metric(model, x, _gradient(model, x, y), y), rtol=1e-5)
  np.testing.assert_allclose(q[1], 4 * q[0], rtol=1e-5)


def test_statistics_on_known_arrays():
  """IAC and IEC on hand-made scores: MetaQuantus's definitions."""
  t = meta.PerturbationTest("model", "adversary", 2.0)
  q = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
  qp = np.stack([q - 1.0, q + np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])])
  keep = np.array([[True] * 6, [True, True, True, False, False, False]])
  s = meta.TestScores(t, q, qp, keep)
  iac = meta.intra_consistency(s)
  # Draw 0: all six differences equal 1 -> exact two-sided p = 2 / 2^6.
  np.testing.assert_allclose(iac[0], 1 - 2 / 64)
  iec = meta.inter_consistency(s, lower_is_better=False)
  # Draw 0: every score dropped; draw 1, kept examples 0..2: q > q~ at example 1 only.
  np.testing.assert_allclose(iec, [1.0, 2 / 6])
  nr = meta.TestScores(meta.PerturbationTest("model", "resilience", 0.1), q, qp, keep)
  # Orders over the two explainers flip where row 1 beats row 0 after the change.
  r0 = np.argsort(q, 0, kind="stable")
  same = [(r0 == np.argsort(p, 0, kind="stable"))[:, k].mean() for p, k in zip(qp, keep)]
  np.testing.assert_allclose(meta.inter_consistency(nr, False), same)
  assert meta.wilcoxon_p([], []) != meta.wilcoxon_p([], [])  # NaN: nothing kept


def test_bad_input_is_refused(problem):
  model, x, y = problem
  with pytest.raises(ValueError, match="at least 2"):
    meta.meta_evaluate("infidelity", model, x, y, ["gradient"], key=jax.random.key(0))
  with pytest.raises(ValueError, match="mask"):
    meta.meta_evaluate("pointing_game", model, x, y, ["gradient", "gradient_x_input"],
                       key=jax.random.key(0))
  with pytest.raises(ValueError, match="positive float"):
    meta.PerturbationTest("model", "adversary", -1.0)
  with pytest.raises(ValueError, match="space"):
    meta.PerturbationTest("weights", "adversary", 1.0)
  with pytest.raises(ValueError, match="lower_is_better"):
    meta.meta_evaluate(_norm_metric, model, x, y, ["gradient", "gradient_x_input"],
                       key=jax.random.key(0))
  with pytest.raises(ValueError, match="jax.random key"):
    meta.meta_evaluate("infidelity", model, x, y, ["gradient", "gradient_x_input"])
  with pytest.raises(ValueError, match="target"):
    meta.perturbation_scores(_norm_metric, model, x, y[:3], ["gradient", "gradient_x_input"],
                             key=jax.random.key(0))


def test_binary_smoke(tmp_path):
  """The binary trains, meta-evaluates, writes JSON lines and a table that
  agree, and reloads its own checkpoint to the same numbers."""
  from experiments import meta_evaluate as ME
  from experiments.configs import meta_evaluate as cfg_mod
  c = cfg_mod.get_config()
  c.data.size, c.data.n_train, c.data.n_eval = 8, 64, 12
  c.train.steps, c.train.features, c.train.hidden = 10, (4,), 8
  c.meta.metrics = ("sparseness",)
  c.meta.explainers = ("gradient", "gradient_x_input")
  c.meta.draws = 2
  out = ME.run(c, str(tmp_path / "a"))
  (row,) = [json.loads(l) for l in (tmp_path / "a" / "meta_evaluation.jsonl").read_text()
            .splitlines()]
  assert row["metric"] == "sparseness" and row["lower_is_better"] is False, row
  for space in ("model", "input"):
    s = row["scores"][space]
    for k in ("IAC_NR", "IEC_NR", "kept_NR"):
      assert 0.0 <= s[k] <= 1.0, (space, k, s)
    assert s["kept_NR"] > 0.5, s  # a minor perturbation keeps most predictions
  table = (tmp_path / "a" / "meta_evaluation.md").read_text()
  line = [l for l in table.splitlines() if l.startswith("| sparseness")][0]
  mc = row["scores"]["model"]["MC"]
  assert (f"**{mc:.3f}**" if mc is not None else "n/a") in line, (line, row)
  c.checkpoint = str(tmp_path / "a" / "model.msgpack")
  again = ME.run(c, str(tmp_path / "b"))
  assert again["accuracy"] == out["accuracy"]
  assert again["rows"][0]["scores"] == row["scores"]
  c.meta.metrics = ("no_such_metric",)
  with pytest.raises(ValueError, match="no_such_metric"):
    ME.run(c, str(tmp_path / "c"))
