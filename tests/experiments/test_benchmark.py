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
  rows = benchmark.run("efficientnet_lite0", ["deletion"], batch=2, steps=16, chunk=None,
                       dtype="float32", compare="quantus", repeats=1)
  (row,) = rows
  assert row["baseline"] == "quantus" and row["ratio"] > 0, row
  assert row["baseline_max_abs_diff"] < 1e-4, row
  (row,) = benchmark.run("efficientnet_lite0", ["gradient"], batch=2, steps=1, chunk=None,
                         dtype="float32", compare="captum", repeats=1)
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
