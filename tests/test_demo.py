"""The real demo on a reduced setting: two photos, a few fast methods, judged
against the bundled ground truth, with its page opened in headless Chromium."""
import json

import numpy as np
import pytest

from experiments import demo
from tests import _browser


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setenv("SALJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
  out = tmp_path_factory.mktemp("demo")
  lines = []
  summary = demo.run(str(out), photos=["chelsea", "coffee"],
                     methods=["gradcam", "vargrad", "attention_rollout", "gradient_x_input", "rise"],
                     options={"gradient_x_input": {"bogus": 1}, "vargrad": {"samples": 2},
                              "rise": {"masks": 64}},
                     subset=["coffee"], log=lines.append, compilation_cache=False)
  late = demo.run(str(tmp_path_factory.mktemp("demo0")), photos=["coffee"], methods=["gradient"],
                  budget_s=1e-9, log=lambda s: None, compilation_cache=False, page=False)
  mp.undo()
  return out, summary, lines, late


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
  assert on_disk["counts"] == {"ok": 3, "not applicable": 1, "failed": 1}
  assert any("[2/5]" in line for line in lines)  # progress is printed


def test_methods_are_judged_against_the_boxes(result):
  _, summary, lines, _ = result
  gt = summary["ground_truth"]["boxes"]
  # The boxes were drawn for the model's top classes: both are used.
  assert gt["chelsea"]["used"] and gt["coffee"]["used"]
  m = summary["methods"]
  # Grad-CAM points into the box on both photos; one forward + backward pass.
  assert m["gradcam"]["scores"]["pointing_game"] == 1.0
  from saljax import explainers
  assert m["gradcam"]["evaluations"] == explainers.entry("gradcam").cost() == 1
  assert m["vargrad"]["evaluations"] == 2
  for name in ("gradcam", "vargrad", "rise"):
    s = m[name]["scores"]
    assert 0 <= s["energy_pointing_game"] <= 1 and 0 <= s["deletion"] <= 1 and 0 <= s["insertion"] <= 1
    assert len(m[name]["curves"]["deletion"]) == demo.JUDGE_STEPS + 1
  # A good map (Grad-CAM) deletes the class faster than it is inserted back.
  assert m["gradcam"]["scores"]["deletion"] < m["gradcam"]["scores"]["insertion"]
  # The costly method ran on the subset only, and its count is its masks + 1.
  assert m["rise"]["photos"] == ["coffee"] and m["rise"]["evaluations"] == 65
  assert list(m["rise"]["per_photo"]) == ["coffee"]
  # The one-screen table lists every method with its status.
  table = {line.split()[0]: line for line in lines if line.startswith(("gradcam ", "gradient_x_input "))}
  assert len(table) == 2 and "failed" in table["gradient_x_input"] and "1.000" in table["gradcam"]


def test_maps_rows_and_grid_are_written(result):
  out, _, _, _ = result
  g = np.load(out / "maps" / "vargrad.npz")
  assert g["attribution"].shape == (2, 224, 224, 3)
  assert list(g["photos"]) == ["chelsea", "coffee"] and list(g["targets"]) == [285, 967]
  c = np.load(out / "maps" / "gradcam.npz")
  assert c["attribution"].shape == (2, 7, 7)
  assert not (out / "maps" / "gradient_x_input.npz").exists()
  r = np.load(out / "maps" / "rise.npz")
  assert r["attribution"].shape[0] == 1 and list(r["photos"]) == ["coffee"]
  import matplotlib.image as mpimg
  grid = mpimg.imread(out / "grid.png")
  assert grid.shape[0] > 400 and grid[..., :3].std() > 0.1
  # The ground-truth boxes are outlined in the photo row.
  green = (grid[..., 0] < 0.4) & (grid[..., 1] > 0.85) & (grid[..., 2] < 0.3)
  assert green.sum() > 100
  assert (out / "rows" / "gradcam.png").stat().st_size > 1000


def test_page_opens_in_chromium_with_every_image(result):
  out, summary, _, _ = result
  facts = _browser.page_facts(out / "index.html")
  assert facts["images"], "the page shows no image"
  assert all(w > 0 for _, w in facts["images"]), facts["images"]
  srcs = {s for s, _ in facts["images"]}
  assert "grid.png" in srcs and "rows/gradcam.png" in srcs
  assert sorted(facts["methods"]) == sorted(summary["methods"])
  assert facts["rows"] == len(summary["methods"])
  assert facts["std"] > 20 and facts["nonwhite"] > 0.1


def test_a_method_past_the_budget_is_a_failure_not_a_skip(result):
  late = result[3]
  assert late["methods"]["gradient"]["status"] == "failed"
  assert "budget" in late["methods"]["gradient"]["error"]
  assert late["counts"] == {"failed": 1}


def test_unknown_method_and_bad_subset_raise(tmp_path):
  with pytest.raises(ValueError, match="unknown explainer"):
    demo.run(str(tmp_path), methods=["no_such_method"], log=lambda s: None, compilation_cache=False)
  with pytest.raises(ValueError, match="subset"):
    demo.run(str(tmp_path), photos=["coffee"], subset=["rocket"], log=lambda s: None,
             compilation_cache=False)


def test_every_registered_method_gets_a_plan():
  # The options table only names registered methods, and every registered
  # method is either run or has a reason not to be.
  from saljax import explainers
  names = set(explainers.names())
  assert set(demo.DEMO_OPTIONS) <= names and set(demo.ON_SUBSET) <= names
  order = demo.method_order(sorted(names))
  assert sorted(order) == sorted(names)
  # The pretrained model is a CNN: a method that needs a ViT is not applicable
  # (prompt_cam ran and failed in `make demo` before it was listed).
  needs_vit = {n for n in names if "vit" in explainers.entry(n).needs}
  assert needs_vit and needs_vit <= set(demo.NOT_APPLICABLE), needs_vit - set(demo.NOT_APPLICABLE)
