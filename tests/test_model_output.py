"""A model that returns NaN or inf logits is refused by every registered method
that reads its logits, naming the method and the examples; a method that never
reads them says so in the registry, and the claim is checked here.

The check lives in the registry wrapper (saljax/_registry.py `_checked`), so a
new method is covered with no code of its own; if it turns non-finite logits
into a finite result, `test_every_method_refuses_nonfinite_logits` fails until
its entry is marked ``model_output="forward"``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
import _all_methods as A

CNN, VIT, X, TARGET = A.models()
BAD = (1, 5)  # the examples whose logits the poisoned model corrupts: NaN, inf
# Their markers, in the first input value: 8 makes the logits NaN, 9 makes them inf.
XB = X.at[1, 0, 0, 0].set(8.0).at[5, 0, 0, 0].set(9.0)


def poisoned(tapped):
  """`tapped`, whose logits are NaN on inputs whose first value lies in (5, 8.5)
  and inf above 8.5, and exactly the clean ones elsewhere (a factor of exactly
  1). The poison depends on the input values, not on a second model, so the
  poisoned and clean calls of a method share one compiled program. Arithmetic
  only (no comparison, which some interpreters of the model's program would
  treat as a layer), so the non-finite value also reaches gradients, as NaN
  weights would."""

  def forward(x, taps=None):
    logits, acts = tapped(x, taps)
    first = x.reshape(x.shape[0], -1)[:, 0]
    nan = 1.0 + 0.0 * jnp.sqrt((first - 5.0) * (first - 8.5))  # sqrt of a negative: NaN
    inf = jnp.exp(1000.0 * jax.nn.relu(first - 8.5))  # overflows to inf
    return logits * (nan * inf)[:, None], acts

  return saljax.Tapped(forward, tapped.layer_names)


# One poisoned model per kind, built once: every test here uses it (on X it is
# the clean model), so each method compiles once for this file.
PCNN, PVIT = poisoned(CNN), poisoned(VIT)
ATTR = saljax.gradient(CNN.logits, X, TARGET)
ROAR = saljax.metrics.get("roar")

ALL = [("explainer", n) for n in saljax.explainers.names()] + [
    ("metric", n) for n in saljax.metrics.names()]


def _call(kind, name, cnn, vit, x):
  if kind == "explainer":
    return A.call_explainer(name, cnn, vit, x, TARGET)
  return A.call_metric(name, cnn, x, ATTR, TARGET)


def _entry(kind, name):
  return (saljax.explainers if kind == "explainer" else saljax.metrics).entry(name)


@pytest.mark.parametrize("kind,name", ALL)
def test_every_method_refuses_nonfinite_logits(kind, name):
  """One call: example 1 has NaN logits, example 5 inf logits."""
  entry = _entry(kind, name)
  if entry.model_output == "unused":
    # The claim: the logits are never read, so the result is the clean model's.
    out = _call(kind, name, PCNN, PVIT, XB)
    want = _call(kind, name, CNN, VIT, XB)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           out, want)
    return
  with pytest.raises(ValueError, match=rf"^{name}: the model returned non-finite logits \(NaN or"
                                       rf" inf\) for examples \[1, 5\]"):
    _call(kind, name, PCNN, PVIT, XB)


def test_the_poison_is_nan_and_inf_and_clean_elsewhere():
  """The poisoned model is the clean one on unmarked inputs (the test above
  depends on it), NaN and inf on the marked ones, and no method is refused on
  clean inputs."""
  np.testing.assert_array_equal(np.asarray(PCNN.logits(X)), np.asarray(CNN.logits(X)))
  bad = np.asarray(PCNN.logits(XB))
  assert np.isnan(bad[1]).all() and np.isinf(bad[5]).all()
  assert np.isfinite(np.delete(bad, BAD, 0)).all()
  assert bool(jnp.isfinite(saljax.gradient(PCNN.logits, X, TARGET)).all())
  assert ROAR(PCNN.logits, X, ATTR, TARGET, **A.metric_options("roar")).shape == (8,)


def _counting(f):
  calls = []

  def g(x):
    calls.append(1)
    return f(x)

  return g, calls


def test_predicted_target_reuses_its_forward_and_refuses_before_work():
  """With target="predicted" the forward pass that resolves it also checks the
  logits: the error comes before the method traces its own work."""
  f, calls = _counting(PCNN.logits)
  with pytest.raises(ValueError, match=r"^integrated_gradients: the model returned non-finite"
                                       r" logits .* examples \[1, 5\]"):
    saljax.integrated_gradients(f, XB, "predicted", steps=4)
  clean, clean_calls = _counting(CNN.logits)
  saljax.integrated_gradients(clean, X, "predicted", steps=4)
  # The clean run traces the model for the shape, for "predicted" and for the
  # method's own work; the refused one stops after the first two.
  assert len(calls) == 2 < len(clean_calls), (len(calls), len(clean_calls))


def test_forward_check_reuses_the_predicted_forward(monkeypatch):
  """A "forward" method (roar) runs its extra forward only when target was not
  "predicted" (that forward already checked the logits)."""
  runs = []
  real = saljax.model._finite_logit_rows
  monkeypatch.setattr(saljax.model, "_finite_logit_rows",
                      lambda f, x: runs.append(x.shape) or real(f, x))
  ROAR(PCNN.logits, X, ATTR, "predicted", **A.metric_options("roar"))
  assert runs == []
  ROAR(PCNN.logits, X, ATTR, TARGET, **A.metric_options("roar"))
  assert runs == [X.shape]
  # A "result" method never runs it on the happy path.
  saljax.gradient(PCNN.logits, X, TARGET)
  assert runs == [X.shape]


def test_nonfinite_result_from_finite_logits_is_blamed_on_the_method():
  """sqrt(|x|) has finite values and an infinite derivative at 0: the gradient
  is refused, naming the method, the example and that the logits were finite."""
  f = lambda x: jnp.sqrt(jnp.abs(x)).reshape(x.shape[0], -1)[:, :3]
  x = jnp.ones((3, 4, 4, 3)).at[2, 0, 0, 0].set(0.0)
  with pytest.raises(ValueError, match=r"^gradient: produced non-finite values \(NaN or inf\) for"
                                       r" examples \[2\] although the model's logits for them are"
                                       r" finite"):
    saljax.gradient(f, x, 0)
  assert bool(jnp.isfinite(saljax.gradient(f, x.at[2, 0, 0, 0].set(1.0), 0)).all())


def test_under_a_users_jit_no_host_check_is_made():
  """Documented limit: inside jax.jit the values are tracers, so the NaN map is
  returned (the caller checks it); eagerly the same call raises."""
  out = jax.jit(lambda x: saljax.gradient(PCNN.logits, x, TARGET))(XB)
  bad = ~np.isfinite(np.asarray(out)).reshape(8, -1).all(1)
  assert np.flatnonzero(bad).tolist() == list(BAD)


def test_the_facts_are_known_values():
  for kind, name in ALL:
    assert _entry(kind, name).model_output in saljax._registry.MODEL_OUTPUT, name
