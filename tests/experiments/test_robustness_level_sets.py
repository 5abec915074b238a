"""experiments.robustness and experiments.level_sets on tiny settings: JSON
lines with the numbers, and figures that show them."""
import json
import os

import numpy as np
from PIL import Image

from experiments import level_sets as L
from experiments import robustness as R
from experiments.configs import level_sets as lcfg
from experiments.configs import robustness as rcfg


def _tiny(c):
  c.data.n_train, c.data.n_test, c.data.size = 256, 16, 12
  c.model.features, c.model.hidden = (6, 12), 16
  c.train.steps = 120
  return c


def _png(path):
  img = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
  assert img.shape[0] > 200 and img.shape[1] > 400
  return img


def test_robustness_report(tmp_path):
  c = _tiny(rcfg.get_config())
  c.attack.linf_budgets, c.attack.l2_budgets = (0.0, 0.05), (0.0, 0.5, 2.0)
  c.attack.pgd_steps, c.attack.cw_search_steps, c.attack.cw_iterations = 5, 6, 30
  c.attack.cw_all_targets = False  # half the cost; all_targets is tested in tests/test_attacks_cw.py
  out = R.run(c, str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "robustness.jsonl").read_text().splitlines()]
  assert rows == json.loads(json.dumps(out["rows"]))
  by = {(r["attack"], r["norm"], r.get("epsilon")): r for r in rows}
  assert set(a for a, _, _ in by) == {"fgsm", "pgd", "cw_l2", "cw_l2_summary"}
  # Budget 0 is the clean accuracy for every attack.
  clean = {r["accuracy"] for r in rows if r.get("epsilon") == 0.0}
  assert clean == {out["accuracy"]}, clean
  assert out["accuracy"] > 0.7
  # Accuracy falls with the budget; PGD is at least as strong as FGSM.
  for a in ("pgd", "cw_l2"):
    assert by[(a, "l2", 2.0)]["accuracy"] <= by[(a, "l2", 0.0)]["accuracy"] - 0.3
  assert by[("pgd", "linf", 0.05)]["accuracy"] <= by[("fgsm", "linf", 0.05)]["accuracy"] + 1e-9
  s = by[("cw_l2_summary", "l2", None)]
  assert s["success_rate"] > 0.9 and 0.0 < s["median_l2"] < 2.0
  img = _png(tmp_path / "robustness.png")
  # Two panels of coloured lines on white: blue (FGSM), orange (PGD), green (C&W).
  assert (img > 0.95).all(-1).mean() > 0.6
  orange = (img[..., 0] > 0.9) & (img[..., 1] > 0.4) & (img[..., 1] < 0.6) & (img[..., 2] < 0.2)
  green = (img[..., 1] > 0.5) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)
  assert orange.sum() > 50 and green.sum() > 50
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_level_sets_binary(tmp_path):
  c = _tiny(lcfg.get_config())
  c.lst.pairs, c.lst.steps, c.lst.step_size, c.lst.segment_points = 8, 40, 0.1, 6
  out = L.run(c, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "level_sets.jsonl").read_text().splitlines()]
  rows, summary = lines[:-1], lines[-1]
  assert len(rows) == 8 and summary["summary"] and summary == out["summary"]
  for r in rows:
    assert r["target_class"] != r["source_true_class"]
    assert r["l2_end_target"] < r["l2_source_target"]
    assert r["ssim_end_target"] > r["ssim_source_target"]
    # Closer to the target to the pretrained network's features too.
    assert 0.0 < r["lpips_end_target"] < r["lpips_source_target"], r
  assert summary["criterion_rate"] >= 0.75, summary
  img = _png(tmp_path / "level_sets.png")
  assert (img > 0.95).all(-1).mean() > 0.4
  assert img.std() > 0.1  # lines and example images, not a blank canvas
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
