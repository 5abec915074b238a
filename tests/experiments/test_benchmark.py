"""The benchmark harness runs end to end on a small zoo model and writes one
JSON line per method with the yardsticks of the same run."""
import json

import pytest

from experiments import benchmark


def test_benchmark_rows(tmp_path):
  out = tmp_path / "bench.jsonl"
  rows = benchmark.run("cnn", ["gradient", "integrated_gradients", "occlusion", "deletion"],
                       batch=2, steps=3, chunk=2, dtype="float32", compare="none", repeats=1,
                       image_size=32, out=str(out))
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["method"] for r in lines] == ["gradient", "integrated_gradients", "occlusion",
                                          "deletion"]
  for r in lines:
    for k in ("images_per_s", "compile_s", "compiles", "trace_s", "first_call_s",
              "peak_memory_mb", "forward_images_per_s", "gradient_images_per_s"):
      assert r[k] >= 0, (r["method"], k)
    assert r["kind"] == "throughput" and r["batch"] == 2 and r["device"]
    assert r["steady_compiles"] == 0, r  # nothing recompiles per call
  ig = lines[1]
  assert ig["model_evals"] == 3 and ig["model_evals_per_s"] > 0 and ig["yardstick_ratio"] > 0
  assert ig["flops_per_image"] > 0
  assert lines[2]["model_evals"] == 2  # the clean forward and one 32x32 window on a 32x32 image
  assert lines[3]["model_evals"] == 4  # the clean image and 3 deletion steps
  assert rows == lines


def test_checkpoint_rows():
  """With `checkpoints`, each method is also run once on each of N new
  parameter sets after its first call: as data they compile nothing (the old
  design, every model a static argument, compiled every call), while fresh
  closures over the same weights compile each time."""
  rows = benchmark.run("cnn", ["gradient", "gradcam"], batch=2, steps=2, chunk=None,
                       dtype="float32", compare="none", repeats=1, image_size=24,
                       checkpoints=3, closures=1)
  assert [(r["kind"], r["method"]) for r in rows] == [
      ("throughput", "gradient"), ("checkpoints", "gradient"),
      ("throughput", "gradcam"), ("checkpoints", "gradcam")], rows
  for r in rows[::2]:  # a shape no other test compiles: the first call compiles, measured
    assert r["compiles"] >= 1 and r["compile_s"] > 0, r
  for r in rows[1::2]:
    assert "error" not in r, r
    assert r["checkpoints"] == 3 and r["checkpoint_calls_per_s"] > 0, r
    assert r["checkpoint_images_per_s"] == pytest.approx(2 * r["checkpoint_calls_per_s"]), r
    assert r["checkpoint_compiles"] == 0, r
    assert r["checkpoint_outputs_differ"], r  # the maps of the new parameters
    assert r["closures"] == 1 and r["closure_calls_per_s"] > 0, r
    assert r["closure_compiles"] > 0, r


def test_bf16_rows(tmp_path):
  rows = benchmark.run("cnn", ["integrated_gradients", "smoothgrad"], batch=2, steps=2, chunk=None,
                       dtype="bfloat16", compare="none", repeats=1, image_size=16)
  assert all("error" not in r for r in rows), rows
  assert all(r["dtype"] == "bfloat16" for r in rows)


def test_baseline_rows_on_the_same_weights():
  """`--compare` runs the baseline library on the converted weights in the same
  process; Quantus's pixel-flipping curve must equal saljax's deletion curve
  (the same work), so the ratio compares like with like."""
  # 64 px (the network pools globally): the same check at a twelfth of the
  # 224 px work, which made this the suite's slowest test.
  rows = benchmark.run("efficientnet_lite0", ["deletion"], batch=2, steps=16, chunk=None,
                       dtype="float32", compare="quantus", repeats=1, image_size=64)
  (row,) = rows
  assert row["baseline"] == "quantus" and row["ratio"] > 0, row
  assert row["baseline_max_abs_diff"] < 1e-4, row
  (row,) = benchmark.run("efficientnet_lite0", ["gradient"], batch=2, steps=1, chunk=None,
                         dtype="float32", compare="captum", repeats=1, image_size=64)
  assert row["baseline"] == "captum" and row["baseline_images_per_s"] > 0, row


def test_answer_rows_run_every_kind_in_one_call(tmp_path, monkeypatch):
  """--answers runs the answer-quality measurements in one call, tagging and
  appending each row; the measuring functions are replaced by stand-ins here
  (their own tests run them small), and an unknown kind is refused."""
  import json
  from absl import flags
  from experiments import _answers_ig, _answers_occlusion, _answers_shapley, benchmark
  monkeypatch.setattr(_answers_shapley, "shapley_error_rows", lambda: [{"estimator": "paired"}])
  monkeypatch.setattr(_answers_ig, "completeness_rows",
                      lambda: {"rows": [{"rule": "adaptive"}], "target": {"met": False}})
  monkeypatch.setattr(_answers_occlusion, "incremental_rows", lambda: [{"model": "resnet18"}])
  out = tmp_path / "answers.jsonl"
  rows = benchmark.answer_rows(["shapley", "completeness", "incremental"], str(out))
  assert [r["answers"] for r in rows] == ["shapley", "completeness", "completeness", "incremental"]
  assert rows[2] == {"answers": "completeness", "verdict": {"met": False}}
  assert [json.loads(l) for l in out.read_text().splitlines()] == rows
  flags.FLAGS(["benchmark", "--answers=shapley,bogus"])
  try:
    import pytest
    with pytest.raises(Exception, match="bogus"):
      benchmark.main(["benchmark"])
  finally:
    flags.FLAGS.unparse_flags()


def _standin_twins():
  """A module of stand-in twins: 'infidelity' computed by hand on both sides
  (two forwards per example, a shared noise draw), 'sparseness' (no model
  evaluation), a twin that documents a difference, and one that fails."""
  import types

  import jax.numpy as jnp
  import numpy as np
  import torch
  from experiments._quantus import QuantusTwin

  def context(x, y, seed):
    return {"noise": 0.01 * np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)}

  def infid_saljax(f, x, a, y, noise):
    pick = lambda v: jnp.take_along_axis(f(v), jnp.asarray(y)[:, None], 1)[:, 0]
    drop = pick(x) - pick(x - noise)
    return (jnp.sum(a * noise, (1, 2, 3)) - drop) ** 2

  def infid_quantus(net, x, a, y, noise):
    n = noise.transpose(0, 3, 1, 2)
    with torch.no_grad():
      pick = lambda v: net(torch.from_numpy(v)).numpy()[np.arange(len(y)), y]
      drop = pick(x) - pick((x - n).astype(np.float32))
    return ((a * n).sum((1, 2, 3)) - drop) ** 2

  def gini(a):
    v = np.sort(np.abs(np.asarray(a, np.float64)).reshape(len(a), -1), 1)
    n = v.shape[1]
    k = np.arange(1, n + 1)
    return ((2 * k - n - 1) * v).sum(1) / (n * v.sum(1))

  def broken(*args, **kwargs):
    raise RuntimeError("stand-in failure")

  mod = types.ModuleType("experiments._quantus.standin")
  mod.TWINS = [
      QuantusTwin("infidelity", "Infidelity", infid_saljax, infid_quantus, context=context,
                  evaluations=2, atol=1e-2),
      QuantusTwin("sparseness", "Sparseness", lambda f, x, a, y: gini(a),
                  lambda net, x, a, y: gini(a.transpose(0, 2, 3, 1))),
      QuantusTwin("complexity", "Complexity", lambda f, x, a, y: np.zeros(len(a)),
                  lambda net, x, a, y: np.ones(len(a)), differs="stand-in: Quantus differs"),
      QuantusTwin("insertion", "Insertion", broken, broken, evaluations=3),
      # saljax runs, Quantus cannot (as InputInvariance on Lite0).
      QuantusTwin("input_invariance", "InputInvariance", lambda f, x, a, y: np.ones(len(a)),
                  broken, evaluations=lambda f, x, ctx: 1 + x.shape[1]),
      # Quantus returns NaN for row 0 (a perturbation changed the prediction).
      QuantusTwin("max_sensitivity", "MaxSensitivity",
                  lambda f, x, a, y: np.arange(len(a), dtype=float),
                  lambda net, x, a, y: np.where(np.arange(len(a)) == 0, np.nan,
                                                np.arange(len(a), dtype=float))),
  ]
  return mod


def test_quantus_twin_rows(monkeypatch):
  """--compare=quantus times every twin of experiments._quantus.twins() on the
  pretrained model and its torch twin after the existing rows: both times, the
  ratio, model evaluations per second (the twin's count, checked against the
  forwards Quantus's side really made) and that rate over the model's own
  forward throughput; a failing twin gives an error row, not a stopped run."""
  import sys
  from experiments import _quantus as Q
  mod = _standin_twins()
  monkeypatch.setitem(sys.modules, "experiments._quantus.standin", mod)
  monkeypatch.setattr(Q, "FAMILIES", ("standin",))
  rows = benchmark.run("efficientnet_lite0", ["deletion"], batch=2, steps=16, chunk=None,
                       dtype="float32", compare="quantus", repeats=1, image_size=64,
                       twins=["all"])
  assert [(r.get("kind"), r["method"]) for r in rows] == [
      ("throughput", "deletion"), ("quantus_twin", "complexity"), ("quantus_twin", "infidelity"),
      ("quantus_twin", "input_invariance"), ("quantus_twin", "insertion"),
      ("quantus_twin", "max_sensitivity"), ("quantus_twin", "sparseness")], rows
  assert rows[0]["baseline_max_abs_diff"] < 1e-4, rows[0]  # the existing row still holds
  complexity, infid, no_quantus, broken, nan, sparse = rows[1:]
  # Quantus failing leaves saljax's timing and a count that follows the input (64 px).
  assert "error" not in no_quantus and "stand-in failure" in no_quantus["quantus_error"]
  assert no_quantus["saljax_s"] > 0 and no_quantus["model_evals"] == 65, no_quantus
  assert "ratio" not in no_quantus, no_quantus
  # A NaN from Quantus is counted and left out of the agreement.
  assert nan["agrees"] is True and nan["quantus_nan"] == 1 and nan["max_abs_diff"] == 0, nan
  assert infid["agrees"] is True and infid["max_abs_diff"] < 1e-2, infid
  assert infid["ratio"] == pytest.approx(infid["quantus_s"] / infid["saljax_s"]), infid
  assert infid["model_evals"] == 2 and infid["model_evals_source"] == "twin", infid
  assert infid["quantus_evals_measured"] == 2, infid  # two forwards of the batch
  assert infid["saljax_evals_per_s"] == pytest.approx(2 * 2 / infid["saljax_s"]), infid
  assert infid["quantus_evals_per_s"] == pytest.approx(2 * 2 / infid["quantus_s"]), infid
  assert infid["yardstick"] == "forward", infid
  assert infid["saljax_forward_fraction"] == pytest.approx(
      infid["saljax_evals_per_s"] / infid["forward_images_per_s"]), infid
  assert infid["quantus_forward_fraction"] == pytest.approx(
      infid["quantus_evals_per_s"] / infid["torch_forward_images_per_s"]), infid
  assert sparse["agrees"] is True and sparse["max_abs_diff"] < 1e-9, sparse
  assert sparse["model_evals"] == 0 and sparse["quantus_evals_measured"] == 0, sparse
  assert "saljax_evals_per_s" not in sparse and "saljax_forward_fraction" not in sparse, sparse
  assert complexity["agrees"] is None and complexity["max_abs_diff"] == 1.0, complexity
  assert "stand-in failure" in broken["error"], broken
  with pytest.raises(Exception, match="no_twin"):
    benchmark._twin_names(["no_twin"], ["infidelity"])
  assert benchmark._twin_names(["none"], ["infidelity"]) == []
