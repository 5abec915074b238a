"""experiments.generalizability on tiny settings: k CNNs on folds of the
planted-shapes images, MeGe/ReCo per method written as JSON lines."""
import json
import os

import numpy as np

from experiments import generalizability as G
from experiments.configs import generalizability as cfg


def tiny():
  c = cfg.get_config()
  c.data.n_train, c.data.n_test, c.data.size = 96, 16, 16
  c.train.k, c.train.steps = 3, 40
  c.methods = ("gradient", "random")
  return c


def test_writes_mege_reco_per_method(tmp_path):
  out = G.run(tiny(), str(tmp_path))
  lines = (tmp_path / "generalizability.jsonl").read_text().splitlines()
  rows = [json.loads(l) for l in lines]
  assert [r["method"] for r in rows] == ["gradient", "random"]
  assert rows == json.loads(json.dumps(out["rows"]))
  for r in rows:
    assert r["k"] == 3 and r["n_test"] == 16 and len(r["accuracy"]) == 3
    assert 0.5 <= r["mege"] <= 1.0 and 0.0 <= r["reco"] <= 1.0
    # Every pair of the 3 models on every test image lands in S=, S!= or neither.
    assert r["equal"] + r["different"] <= 3 * 16
  acc = np.asarray(rows[0]["accuracy"])
  assert (acc > 0.7).all(), acc  # the shapes' colour is easy: the folds' models learn it
  random, gradient = rows[1]["mege"], rows[0]["mege"]
  # Uncorrelated maps: |rho| small, d = sqrt(1 - |rho|) near 1, MeGe near 1/2.
  assert abs(random - 0.5) < 0.05
  # Models trained on overlapping folds look at the same shapes.
  assert gradient > random + 0.02, (gradient, random)
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.jsonl")]
