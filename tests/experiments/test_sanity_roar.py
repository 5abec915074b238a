"""experiments.sanity and experiments.roar on a tiny trained BlockMNIST MLP."""
import csv
import json
import os

import numpy as np
import pytest

from experiments import roar, sanity, train
from experiments.configs import blockmnist_standard


def tiny():
  c = blockmnist_standard.get_config()
  c.model.width = 16
  c.model.depth = 1
  c.train.steps = 30
  c.train.batch_size = 16
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  c.train.eval_examples = 16
  c.sanity.methods = ("gradient_x_input",)
  c.sanity.num_examples = 6
  c.sanity.similarities = ("spearman_abs", "spearman")
  c.roar.fractions = (0.5,)
  c.roar.retrain_steps = 5
  c.roar.seeds = (0,)
  c.roar.attribution_batch = 512
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("trained"))
  train.run(tiny(), wd)
  return wd


def test_sanity_curves_and_figures(trained):
  out = sanity.run(tiny(), trained)
  assert out["layers"] == ("out", "hidden_0")  # output first
  for m in ("gradient_x_input",):
    for sim in ("spearman_abs", "spearman"):
      curve = np.asarray(out["curves"][m][sim])
      assert curve.shape == (2,) and (np.abs(curve) <= 1 + 1e-5).all()
    assert os.path.exists(os.path.join(trained, f"sanity_{m}.png"))
  # Adebayo et al. Sec. 5: gradient x input keeps the input's structure, so its
  # absolute rank correlation stays above the signed one once layers are random.
  gxi = out["curves"]["gradient_x_input"]
  assert gxi["spearman_abs"][-1] > gxi["spearman"][-1]
  # Randomizing every layer flips the signs: the signed rank correlation collapses.
  assert gxi["spearman"][-1] < 0.5
  with open(os.path.join(trained, "sanity.csv")) as fh:
    assert len(list(csv.DictReader(fh))) == 1 * 2 * 2
  assert json.load(open(os.path.join(trained, "sanity.json")))["mode"] == "cascading"


def test_sanity_bad_inputs(trained):
  c = tiny()
  c.sanity.mode = "sideways"
  with pytest.raises(ValueError, match="sanity.mode"):
    sanity.run(c, trained)
  c = tiny()
  c.sanity.methods = ("gradcam",)
  with pytest.raises(ValueError, match="layer methods"):
    sanity.run(c, trained)
  c = tiny()
  c.sanity.similarities = ("kendall",)
  with pytest.raises(ValueError, match="sanity.similarities"):
    sanity.run(c, trained)


def test_masked_dataset_keeps_top_or_bottom_coordinates():
  from saljax.data import pipelines
  img = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
  ds = pipelines.ArrayDataset("t", "test", {"image": img, "label": np.zeros(1, np.int32)},
                              num_classes=2)
  scores = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4], np.float32).reshape(1, 2, 2, 2)
  top = roar.masked_dataset(ds, scores, 0.5, True, -1.0).batch([0])["image"].reshape(-1)
  bottom = roar.masked_dataset(ds, scores, 0.5, False, -1.0).batch([0])["image"].reshape(-1)
  # Per coordinate (channels included): the 4 largest scores are at 1, 2, 4, 6.
  np.testing.assert_array_equal(top, [-1, 2, 3, -1, 5, -1, 7, -1])
  np.testing.assert_array_equal(bottom, [1, -1, -1, 4, -1, 6, -1, 8])


def test_roar_rows_and_files(trained):
  out = roar.run(tiny(), trained)
  assert len(out["rows"]) == 1
  r = out["rows"][0]
  assert r["k"] == 0.5 and 0 <= r["acc_top"] <= 1 and 0 <= r["acc_bottom"] <= 1
  assert r["diffroar"] == pytest.approx(r["acc_top"] - r["acc_bottom"])
  for f in ("roar.csv", "roar.json", "roar.png"):
    assert os.path.exists(os.path.join(trained, f))


def test_roar_bad_inputs(trained):
  c = tiny()
  c.roar.fractions = (0.0, 0.5)
  with pytest.raises(ValueError, match="roar.fractions"):
    roar.run(c, trained)
  c = tiny()
  c.roar.method = "gradient_typo"
  with pytest.raises(ValueError, match="gradient_typo"):
    roar.run(c, trained)
