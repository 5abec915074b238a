"""The real demo on a reduced setting: two photos, a few fast methods."""
import json

import numpy as np
import pytest

from experiments import demo


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setenv("SALJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
  out = tmp_path_factory.mktemp("demo")
  lines = []
  summary = demo.run(str(out), photos=["chelsea", "coffee"],
                     methods=["gradcam", "vargrad", "attention_rollout", "gradient_x_input"],
                     options={"gradient_x_input": {"bogus": 1}, "vargrad": {"samples": 2}},
                     log=lines.append, compilation_cache=False)
  skipped = demo.run(str(tmp_path_factory.mktemp("demo0")), photos=["coffee"], methods=["gradient"],
                     budget_s=0.0, log=lambda s: None,
                     compilation_cache=False)
  mp.undo()
  return out, summary, lines, skipped


def test_summary_has_top5_and_each_method(result):
  out, summary, lines, _ = result
  on_disk = json.loads((out / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  assert [c["class"] for c in on_disk["photos"]["chelsea"]][0] == 285
  assert on_disk["photos"]["coffee"][0]["name"] == "espresso"
  assert len(on_disk["photos"]["coffee"]) == 5
  m = on_disk["methods"]
  assert m["gradcam"]["status"] == "ok" and m["gradcam"]["options"]["layer"] == "head"
  assert m["vargrad"]["status"] == "ok" and m["vargrad"]["options"]["key"] == "jax.random.key(0)"
  assert m["vargrad"]["seconds"] > 0 and m["vargrad"]["options"]["samples"] == 2
  assert m["attention_rollout"]["status"] == "not applicable"
  assert m["gradient_x_input"]["status"] == "failed" and "bogus" in m["gradient_x_input"]["error"]
  assert on_disk["counts"] == {"ok": 2, "not applicable": 1, "failed": 1}
  assert any("[2/4]" in line for line in lines)  # progress is printed


def test_maps_and_grid_are_written(result):
  out, _, _, _ = result
  g = np.load(out / "maps" / "vargrad.npz")
  assert g["attribution"].shape == (2, 224, 224, 3)
  assert list(g["photos"]) == ["chelsea", "coffee"] and list(g["targets"]) == [285, 967]
  c = np.load(out / "maps" / "gradcam.npz")
  assert c["attribution"].shape == (2, 7, 7)
  assert not (out / "maps" / "gradient_x_input.npz").exists()
  assert (out / "grid.png").stat().st_size > 1000


def test_spent_budget_skips_methods(result):
  skipped = result[3]
  assert skipped["methods"]["gradient"]["status"] == "skipped"
  assert "budget" in skipped["methods"]["gradient"]["reason"]


def test_unknown_method_raises(tmp_path):
  with pytest.raises(ValueError, match="unknown explainer"):
    demo.run(str(tmp_path), methods=["no_such_method"], log=lambda s: None, compilation_cache=False)


def test_every_registered_method_gets_a_plan():
  # The options table only names registered methods, and every registered
  # method is either run or has a reason not to be.
  from saljax import explainers
  names = set(explainers.names())
  assert set(demo.DEMO_OPTIONS) <= names
  order = demo.method_order(sorted(names))
  assert sorted(order) == sorted(names)
